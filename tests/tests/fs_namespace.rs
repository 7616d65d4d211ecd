//! End-to-end tests on a real FUSE mount: names and attributes (lookup, getattr, setattr,
//! mkdir/rmdir/unlink, rename and its flags, links, symlinks, device nodes, readdir, name
//! limits, statfs, fsync). Each test ends with a clean unmount and `mafs fsck` exit 0.
use mafs_tests::fs_mount::*;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

fn ctime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.ctime(), m.ctime_nsec())
}

#[test]
fn chmod_and_chown_change_mode_owner_and_ctime_and_persist() {
    let mut m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    let c0 = ctime(&f);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4751);
    assert!(md.file_type().is_file());
    let c1 = ctime(&f);
    assert!(c1 > c0, "chmod must advance ctime: {c0:?} -> {c1:?}");
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.mode() & 0o7777, 0o751, "chown clears the set-user-ID bit (Linux)");
    let c2 = ctime(&f);
    assert!(c2 > c1, "chown must advance ctime: {c1:?} -> {c2:?}");
    // chown of the group only
    std::os::unix::fs::chown(&f, None, Some(42)).unwrap();
    assert_eq!((fs::metadata(&f).unwrap().uid(), fs::metadata(&f).unwrap().gid()), (1234, 42));
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
    m.remount();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o751, 1234, 42));
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o1777);
    m.finish();
}

#[test]
fn truncate_down_then_up_reads_zeros_beyond_the_cut() {
    let mut m = Mounted::new("64M");
    // one small (inline) and one large file, each cut and regrown
    for (name, len, cut, regrow) in
        [("small", 3000usize, 1000usize, 3500usize), ("large", 50_000, 10_001, 70_000), ("cross", 9000, 3000, 9000)]
    {
        let p = m.path(name);
        let data = pattern(len as u64, len);
        fs::write(&p, &data).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(cut as u64).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), cut as u64);
        f.set_len(regrow as u64).unwrap();
        drop(f);
        let got = fs::read(&p).unwrap();
        assert_eq!(got.len(), regrow, "{name}: size after regrow");
        assert!(got[..cut] == data[..cut], "{name}: data before the cut changed");
        assert!(got[cut..].iter().all(|&b| b == 0), "{name}: bytes beyond the cut are not zero after regrow");
    }
    m.remount();
    for (name, cut, regrow) in [("small", 1000usize, 3500usize), ("large", 10_001, 70_000), ("cross", 3000, 9000)] {
        let got = fs::read(m.path(name)).unwrap();
        assert_eq!(got.len(), regrow);
        assert!(got[cut..].iter().all(|&b| b == 0), "{name}: bytes beyond the cut are not zero after remount");
    }
    m.finish();
}

#[test]
fn truncate_changes_mtime_and_ctime() {
    let m = Mounted::new("64M");
    let p = m.path("f");
    fs::write(&p, b"hello").unwrap();
    utimensat(&p, (100, 0), (100, 0)).unwrap();
    let c0 = ctime(&p);
    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(2).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert!(md.mtime() > 100, "truncate must update mtime");
    assert!(ctime(&p) > c0, "truncate must update ctime");
    m.finish();
}

#[test]
fn utimensat_keeps_nanoseconds_and_honours_utime_now_and_omit() {
    let mut m = Mounted::new("64M");
    let p = m.path("f");
    fs::write(&p, b"t").unwrap();
    utimensat(&p, (1_000_000_000, 123_456_789), (1_500_000_000, 987_654_321)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 987_654_321));

    let c0 = ctime(&p);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    utimensat(&p, (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789), "UTIME_OMIT changed atime");
    assert!(md.mtime() >= before && md.mtime() <= before + 60, "UTIME_NOW: mtime {} not now ({before})", md.mtime());
    assert!(ctime(&p) > c0, "utimensat must update ctime");
    utimensat(&p, (0, libc::UTIME_NOW), (0, libc::UTIME_OMIT)).unwrap();
    let md2 = fs::metadata(&p).unwrap();
    assert!(md2.atime() >= before, "UTIME_NOW for atime");
    assert_eq!((md2.mtime(), md2.mtime_nsec()), (md.mtime(), md.mtime_nsec()), "UTIME_OMIT changed mtime");
    utimensat(&p, (7, 999_999_999), (8, 1)).unwrap();
    m.remount();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (7, 999_999_999, 8, 1), "times after remount");
    m.finish();
}

#[test]
fn timestamps_before_1970_keep_seconds_and_nanoseconds() {
    let mut m = Mounted::new("64M");
    let q = m.path("old");
    fs::write(&q, b"o").unwrap();
    utimensat(&q, (-1, 500), (-86_400, 1)).unwrap();
    let md = fs::metadata(&q).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (-1, 500, -86_400, 1));
    utimensat(&q, (-5, 0), (-86_400, 0)).unwrap();
    m.remount();
    let md = fs::metadata(&q).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (-5, 0, -86_400, 0), "pre-1970 times after remount");
    m.finish();
}

#[test]
fn mkdir_rmdir_unlink_report_linux_errnos() {
    let m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_errno(fs::create_dir(&d), libc::EEXIST, "mkdir of an existing directory");
    fs::write(d.join("f"), b"1").unwrap();
    assert_errno(fs::remove_dir(&d), libc::ENOTEMPTY, "rmdir of a non-empty directory");
    assert_errno(fs::remove_dir(d.join("f")), libc::ENOTDIR, "rmdir of a file");
    assert_errno(fs::remove_file(&d), libc::EISDIR, "unlink of a directory");
    assert_errno(fs::remove_file(m.path("nope")), libc::ENOENT, "unlink of a missing name");
    assert_errno(fs::remove_dir(m.path("nope")), libc::ENOENT, "rmdir of a missing name");
    assert_errno(fs::metadata(m.path("nope")), libc::ENOENT, "stat of a missing name");
    assert_errno(fs::write(d.join("f/g"), b""), libc::ENOTDIR, "create below a file");
    assert_errno(fs::create_dir(d.join("f/g")), libc::ENOTDIR, "mkdir below a file");
    assert_errno(fs::write(m.path("missing/g"), b""), libc::ENOENT, "create in a missing directory");
    assert_errno(fs::OpenOptions::new().write(true).create_new(true).open(d.join("f")), libc::EEXIST, "O_EXCL create of an existing file");
    fs::remove_file(d.join("f")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_errno(fs::metadata(&d), libc::ENOENT, "stat after rmdir");
    // nested directories and the parent's link count
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 3);
    fs::create_dir(m.path("a/b2")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 4);
    fs::remove_dir(m.path("a/b/c")).unwrap();
    assert_eq!(fs::metadata(m.path("a/b")).unwrap().nlink(), 2);
    m.finish();
}

#[test]
fn rename_replaces_files_and_empty_dirs_and_refuses_with_linux_errnos() {
    let mut m = Mounted::new("64M");
    let p = |s: &str| m.path(s);
    // plain
    fs::write(p("a"), b"AAA").unwrap();
    let ino = fs::metadata(p("a")).unwrap().ino();
    fs::rename(p("a"), p("b")).unwrap();
    assert_errno(fs::metadata(p("a")), libc::ENOENT, "old name after rename");
    assert_eq!(fs::read(p("b")).unwrap(), b"AAA");
    assert_eq!(fs::metadata(p("b")).unwrap().ino(), ino);
    // over an existing file: replaced, the old target gone
    fs::write(p("c"), b"CCCC").unwrap();
    let held = fs::File::open(p("c")).unwrap();
    fs::rename(p("b"), p("c")).unwrap();
    assert_eq!(fs::read(p("c")).unwrap(), b"AAA");
    assert_eq!(held.metadata().unwrap().nlink(), 0, "replaced file keeps no link");
    drop(held);
    // a directory over an empty directory
    fs::create_dir(p("d1")).unwrap();
    fs::write(p("d1/inner"), b"i").unwrap();
    fs::create_dir(p("empty")).unwrap();
    fs::rename(p("d1"), p("empty")).unwrap();
    assert_eq!(fs::read(p("empty/inner")).unwrap(), b"i");
    assert_errno(fs::metadata(p("d1")), libc::ENOENT, "old directory name");
    // over a non-empty directory
    fs::create_dir(p("d2")).unwrap();
    assert_errno(fs::rename(p("d2"), p("empty")), libc::ENOTEMPTY, "rename over a non-empty directory");
    // file over directory and directory over file
    assert_errno(fs::rename(p("c"), p("d2")), libc::EISDIR, "rename of a file over a directory");
    assert_errno(fs::rename(p("d2"), p("c")), libc::ENOTDIR, "rename of a directory over a file");
    // a directory into its own subdirectory
    fs::create_dir_all(p("top/sub/subsub")).unwrap();
    assert_errno(fs::rename(p("top"), p("top/sub/subsub/x")), libc::EINVAL, "rename of a directory into its own subdirectory");
    assert_errno(fs::rename(p("top"), p("top/x")), libc::EINVAL, "rename of a directory into itself");
    // missing source
    assert_errno(fs::rename(p("nope"), p("x")), libc::ENOENT, "rename of a missing name");
    // across directories, with the moved directory's ".." following it
    fs::rename(p("top/sub"), p("d2/sub")).unwrap();
    assert_eq!(fs::metadata(p("d2/sub/..")).unwrap().ino(), fs::metadata(p("d2")).unwrap().ino());
    assert_eq!(fs::metadata(p("top")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    m.remount();
    assert_eq!(fs::read(m.path("c")).unwrap(), b"AAA");
    assert_eq!(names(&m.path("d2")), vec!["sub"]);
    assert_eq!(names(&m.path("d2/sub")), vec!["subsub"]);
    assert_eq!(fs::read(m.path("empty/inner")).unwrap(), b"i");
    m.finish();
}

#[test]
fn rename_noreplace_refuses_an_existing_target_with_eexist() {
    let m = Mounted::new("64M");
    fs::write(m.path("a"), b"a").unwrap();
    fs::write(m.path("b"), b"b").unwrap();
    assert_errno(renameat2(&m.path("a"), &m.path("b"), libc::RENAME_NOREPLACE), libc::EEXIST, "RENAME_NOREPLACE onto an existing file");
    assert_eq!(fs::read(m.path("a")).unwrap(), b"a");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"b");
    renameat2(&m.path("a"), &m.path("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(m.path("c")).unwrap(), b"a");
    assert_errno(renameat2(&m.path("c"), &m.path("b"), libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE), libc::EINVAL, "NOREPLACE|EXCHANGE");
    m.finish();
}

#[test]
fn rename_exchange_swaps_a_file_and_a_directory_across_directories() {
    let mut m = Mounted::new("64M");
    fs::create_dir(m.path("p1")).unwrap();
    fs::create_dir(m.path("p2")).unwrap();
    fs::write(m.path("p1/f"), b"file").unwrap();
    fs::create_dir(m.path("p2/d")).unwrap();
    fs::write(m.path("p2/d/child"), b"child").unwrap();
    let (fino, dino) = (fs::metadata(m.path("p1/f")).unwrap().ino(), fs::metadata(m.path("p2/d")).unwrap().ino());
    assert_eq!((fs::metadata(m.path("p1")).unwrap().nlink(), fs::metadata(m.path("p2")).unwrap().nlink()), (2, 3));
    renameat2(&m.path("p1/f"), &m.path("p2/d"), libc::RENAME_EXCHANGE).unwrap();
    let check = |m: &Mounted| {
        let a = fs::symlink_metadata(m.path("p1/f")).unwrap();
        let b = fs::symlink_metadata(m.path("p2/d")).unwrap();
        assert!(a.is_dir() && a.ino() == dino, "p1/f is now the directory");
        assert!(b.is_file() && b.ino() == fino, "p2/d is now the file");
        assert_eq!(fs::read(m.path("p1/f/child")).unwrap(), b"child");
        assert_eq!(fs::read(m.path("p2/d")).unwrap(), b"file");
        assert_eq!(fs::metadata(m.path("p1")).unwrap().nlink(), 3, "p1 gained a subdirectory");
        assert_eq!(fs::metadata(m.path("p2")).unwrap().nlink(), 2, "p2 lost its subdirectory");
        assert_eq!(fs::metadata(m.path("p1/f/..")).unwrap().ino(), fs::metadata(m.path("p1")).unwrap().ino(), ".. of the moved directory");
    };
    check(&m);
    assert_errno(
        renameat2(&m.path("p1/f"), &m.path("p2/missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "RENAME_EXCHANGE with a missing target",
    );
    // exchange within one directory
    fs::write(m.path("p2/x"), b"x").unwrap();
    renameat2(&m.path("p2/x"), &m.path("p2/d"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("p2/x")).unwrap(), b"file");
    assert_eq!(fs::read(m.path("p2/d")).unwrap(), b"x");
    renameat2(&m.path("p2/x"), &m.path("p2/d"), libc::RENAME_EXCHANGE).unwrap();
    m.remount();
    check(&m);
    m.finish();
}

#[test]
fn rename_between_hard_links_of_one_inode_changes_nothing() {
    let m = Mounted::new("64M");
    fs::write(m.path("a"), b"same").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"same", "source name stays (POSIX)");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"same");
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 2);
    m.finish();
}

#[test]
fn hard_links_count_and_refuse_directories() {
    let mut m = Mounted::new("64M");
    fs::write(m.path("a"), b"data").unwrap();
    fs::create_dir(m.path("sub")).unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    fs::hard_link(m.path("a"), m.path("sub/c")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.path("sub/c")).unwrap().ino(), fs::metadata(m.path("a")).unwrap().ino());
    assert_errno(fs::hard_link(m.path("a"), m.path("b")), libc::EEXIST, "link onto an existing name");
    assert_errno(fs::hard_link(m.path("sub"), m.path("sublink")), libc::EPERM, "link of a directory");
    assert_errno(fs::hard_link(m.path("nope"), m.path("x")), libc::ENOENT, "link of a missing file");
    fs::remove_file(m.path("a")).unwrap();
    assert_eq!(fs::metadata(m.path("b")).unwrap().nlink(), 2);
    m.remount();
    assert_eq!(fs::metadata(m.path("b")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.path("sub/c")).unwrap(), b"data");
    fs::remove_file(m.path("b")).unwrap();
    assert_eq!(fs::metadata(m.path("sub/c")).unwrap().nlink(), 1);
    m.finish();
}

#[test]
fn symlinks_of_short_3000_and_4000_byte_targets_read_back() {
    let mut m = Mounted::new("64M");
    let targets: Vec<(String, String)> = [5usize, 3000, 4000, 4095]
        .iter()
        .map(|&n| {
            let t: String = (0..n).map(|i| if i % 50 == 49 { '/' } else { (b'a' + (i % 26) as u8) as char }).collect();
            (format!("l{n}"), t)
        })
        .collect();
    for (name, t) in &targets {
        symlink(t, m.path(name)).unwrap();
    }
    symlink("f", m.path("rel")).unwrap();
    fs::write(m.path("f"), b"through the link").unwrap();
    let check = |m: &Mounted| {
        for (name, t) in &targets {
            let got = fs::read_link(m.path(name)).unwrap();
            assert_eq!(got.as_os_str().len(), t.len(), "{name}: target length");
            assert_eq!(got.to_str().unwrap(), t, "{name}: target");
            let md = fs::symlink_metadata(m.path(name)).unwrap();
            assert!(md.file_type().is_symlink());
            assert_eq!(md.len(), t.len() as u64, "{name}: st_size is the target length");
        }
        assert_eq!(fs::read(m.path("rel")).unwrap(), b"through the link");
    };
    check(&m);
    let long: String = "x".repeat(4096);
    assert_errno(symlink(&long, m.path("toolong")), libc::ENAMETOOLONG, "symlink target of 4096 bytes");
    assert_errno(symlink("t", m.path("f")), libc::EEXIST, "symlink onto an existing name");
    m.remount();
    check(&m);
    m.finish();
}

#[test]
fn mknod_fifo_char_block_devices_and_sockets_keep_type_and_rdev() {
    let mut m = Mounted::new("64M");
    mknod(&m.path("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    let chr = libc::makedev(1, 3);
    let blk = libc::makedev(259, 70000);
    mknod(&m.path("chr"), libc::S_IFCHR | 0o600, chr).unwrap();
    mknod(&m.path("blk"), libc::S_IFBLK | 0o660, blk).unwrap();
    mknod(&m.path("reg"), libc::S_IFREG | 0o644, 0).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(m.path("sock")).unwrap();
    assert_errno(mknod(&m.path("fifo"), libc::S_IFIFO | 0o640, 0), libc::EEXIST, "mknod onto an existing name");
    let check = |m: &Mounted| {
        let t = |n: &str| fs::symlink_metadata(m.path(n)).unwrap();
        assert!(t("fifo").file_type().is_fifo());
        assert_eq!(t("fifo").mode() & 0o7777, 0o640);
        assert!(t("chr").file_type().is_char_device());
        assert_eq!(t("chr").rdev(), chr, "char device rdev");
        assert!(t("blk").file_type().is_block_device());
        assert_eq!(t("blk").rdev(), blk, "block device rdev");
        assert!(t("reg").file_type().is_file());
        assert!(t("sock").file_type().is_socket());
    };
    check(&m);
    // the fifo works as a fifo through the mount
    let fifo = m.path("fifo");
    let writer = std::thread::spawn(move || fs::write(fifo, b"through the fifo").unwrap());
    assert_eq!(fs::read(m.path("fifo")).unwrap(), b"through the fifo");
    writer.join().unwrap();
    drop(sock);
    m.remount();
    check(&m);
    m.finish();
}

#[test]
fn readdir_lists_dot_dotdot_and_every_name_with_its_type() {
    let m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..300 {
        let n = format!("file-{i:03}-{}", "n".repeat(i % 200));
        fs::write(d.join(&n), b"").unwrap();
        want.insert(n);
    }
    fs::create_dir(d.join("subdir")).unwrap();
    symlink("x", d.join("link")).unwrap();
    want.extend(["subdir".to_string(), "link".to_string()]);
    let check = |m: &Mounted| {
        let mut r = DirReader::open(&m.path("d"));
        let mut all = Vec::new();
        loop {
            let b = r.next_batch(4096).unwrap();
            if b.is_empty() {
                break;
            }
            all.extend(b.into_iter().map(|(_, n)| String::from_utf8(n).unwrap()));
        }
        assert!(all.contains(&".".to_string()) && all.contains(&"..".to_string()), "no . or ..");
        let got: Vec<String> = all.iter().filter(|n| *n != "." && *n != "..").cloned().collect();
        assert_eq!(got.len(), want.len(), "each name once");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
        let types: HashMap<String, fs::FileType> = fs::read_dir(m.path("d"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().into_string().unwrap(), e.file_type().unwrap()))
            .collect();
        assert!(types["subdir"].is_dir() && types["link"].is_symlink() && types["file-000-"].is_file());
        assert_eq!(names(&m.mnt), vec!["d", "lost+found"]);
    };
    m.check_across_remount(check);
}

#[test]
fn readdir_offsets_stay_stable_while_the_directory_changes() {
    let m = Mounted::new("128M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    for i in 0..1000 {
        fs::File::create(d.join(format!("keep-{i}"))).unwrap();
    }
    for i in 0..400 {
        fs::File::create(d.join(format!("churn-{i}"))).unwrap();
    }
    let mut r = DirReader::open(&d);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cookies = Vec::new();
    let mut round = 0usize;
    loop {
        // small buffers: about 20 entries per call
        let batch = r.next_batch(700).unwrap();
        if batch.is_empty() {
            break;
        }
        for (off, n) in batch {
            cookies.push((off, String::from_utf8(n.clone()).unwrap()));
            *seen.entry(String::from_utf8(n).unwrap()).or_default() += 1;
        }
        // change the directory between calls: delete some churn entries, create new ones
        for k in 0..8 {
            let i = round * 8 + k;
            if i < 400 {
                fs::remove_file(d.join(format!("churn-{i}"))).unwrap();
            }
            fs::File::create(d.join(format!("new-{round}-{k}"))).unwrap();
        }
        round += 1;
    }
    assert!(round > 20, "the listing took several calls ({round})");
    for i in 0..1000 {
        let n = format!("keep-{i}");
        assert_eq!(seen.get(&n).copied().unwrap_or(0), 1, "{n} was returned {} times", seen.get(&n).copied().unwrap_or(0));
    }
    for (n, c) in &seen {
        assert_eq!(*c, 1, "{n} returned {c} times");
    }
    // seekdir back to a remembered cookie: the rest of the listing comes again, the same way
    let (mid_off, _) = cookies[cookies.len() / 2].clone();
    let expect_after: BTreeSet<String> =
        cookies[cookies.len() / 2 + 1..].iter().map(|(_, n)| n.clone()).filter(|n| n.starts_with("keep-")).collect();
    fs::File::create(d.join("late-addition")).unwrap();
    r.seek(mid_off);
    let mut again = BTreeSet::new();
    loop {
        let b = r.next_batch(700).unwrap();
        if b.is_empty() {
            break;
        }
        again.extend(b.into_iter().map(|(_, n)| String::from_utf8(n).unwrap()).filter(|n| n.starts_with("keep-")));
    }
    assert_eq!(again, expect_after, "entries after a remembered cookie");
    drop(r);
    m.finish();
}

#[test]
fn names_of_255_bytes_work_and_256_give_enametoolong() {
    let mut m = Mounted::new("64M");
    let n255 = "a".repeat(255);
    let n256 = "b".repeat(256);
    let d255 = "d".repeat(255);
    fs::write(m.path(&n255), b"255").unwrap();
    fs::create_dir(m.path(&d255)).unwrap();
    fs::write(m.path("short"), b"s").unwrap();
    let r255 = "r".repeat(255);
    fs::rename(m.path("short"), m.path(&r255)).unwrap();
    symlink("t", m.path("s".repeat(255))).unwrap();
    fs::hard_link(m.path(&n255), m.path("h".repeat(255))).unwrap();
    assert_errno(fs::write(m.path(&n256), b""), libc::ENAMETOOLONG, "create with a 256-byte name");
    assert_errno(fs::create_dir(m.path(&n256)), libc::ENAMETOOLONG, "mkdir with a 256-byte name");
    assert_errno(fs::rename(m.path(&n255), m.path(&n256)), libc::ENAMETOOLONG, "rename to a 256-byte name");
    assert_errno(fs::metadata(m.path(&n256)), libc::ENAMETOOLONG, "lookup of a 256-byte name");
    assert_errno(symlink("t", m.path(&n256)), libc::ENAMETOOLONG, "symlink with a 256-byte name");
    assert_errno(fs::hard_link(m.path(&n255), m.path(&n256)), libc::ENAMETOOLONG, "link with a 256-byte name");
    assert_errno(mknod(&m.path(&n256), libc::S_IFIFO | 0o600, 0), libc::ENAMETOOLONG, "mknod with a 256-byte name");
    m.remount();
    assert_eq!(fs::read(m.path(&n255)).unwrap(), b"255");
    assert_eq!(fs::read(m.path(&r255)).unwrap(), b"s");
    assert!(fs::metadata(m.path(&d255)).unwrap().is_dir());
    assert!(names(&m.mnt).contains(&n255));
    m.finish();
}

#[test]
fn statfs_reports_namemax_and_free_blocks_follow_writes_and_deletes() {
    let m = Mounted::new("128M");
    let s0 = statfs(&m.mnt);
    assert_eq!(s0.f_namelen, 255);
    assert_eq!(s0.f_bsize, 4096);
    assert!(s0.f_blocks > 0 && s0.f_bfree <= s0.f_blocks && s0.f_bavail <= s0.f_bfree);
    let data = pattern(1, 8 << 20);
    let f = m.path("big");
    fs::write(&f, &data).unwrap();
    let s1 = statfs(&m.mnt);
    assert!(s0.f_bfree - s1.f_bfree >= 2048, "8 MiB written: free blocks {} -> {}", s0.f_bfree, s1.f_bfree);
    fs::remove_file(&f).unwrap();
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    // freed blocks return to the allocator once the unlink is committed
    let back = mafs_tests::wait_until(Duration::from_secs(30), || statfs(&m.mnt).f_bfree >= s0.f_bfree.saturating_sub(16));
    assert!(back, "free blocks did not come back after delete: {} -> {} -> {}", s0.f_bfree, s1.f_bfree, statfs(&m.mnt).f_bfree);
    m.finish();
}

#[test]
fn fsync_fdatasync_and_fsyncdir_succeed() {
    let m = Mounted::new("64M");
    let mut f = fs::File::create(m.path("f")).unwrap();
    std::io::Write::write_all(&mut f, &pattern(3, 100_000)).unwrap();
    f.sync_data().unwrap();
    f.sync_all().unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::File::open(m.path("d")).unwrap().sync_all().unwrap();
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    drop(f);
    m.finish();
}

#[test]
fn setgid_directory_passes_its_group_and_the_bit_to_new_entries() {
    let m = Mounted::new("64M");
    let d = m.path("sgid");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(4321)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let check = |m: &Mounted| {
        let f = fs::metadata(m.path("sgid/f")).unwrap();
        assert_eq!(f.gid(), 4321, "file takes the directory's group");
        let s = fs::metadata(m.path("sgid/sub")).unwrap();
        assert_eq!(s.gid(), 4321, "subdirectory takes the directory's group");
        assert_ne!(s.mode() & libc::S_ISGID, 0, "subdirectory inherits the set-group-ID bit");
    };
    m.check_across_remount(check);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let m = Mounted::new("64M");
    let open = m.path("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(open.join("roots"), b"r").unwrap();
    let closed = m.path("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(closed.join("inside"), b"i").unwrap();
    let ok = |cmd: String| run_as_nobody(&cmd).status.success();
    assert!(ok(format!("touch '{}'", open.join("mine").display())), "nobody can create in a 1777 directory");
    assert_eq!(fs::metadata(open.join("mine")).unwrap().uid(), 65534);
    assert!(!ok(format!("rm -f '{}'", open.join("roots").display())), "the sticky bit stops nobody deleting root's file");
    assert!(fs::metadata(open.join("roots")).is_ok());
    assert!(ok(format!("rm '{}'", open.join("mine").display())), "nobody can delete its own file");
    assert!(!ok(format!("ls '{}'", closed.display())), "mode 700 keeps nobody out");
    assert!(!ok(format!("cat '{}'", closed.join("inside").display())), "nor through the directory");
    assert!(!ok(format!("touch '{}'", m.path("at-root").display())), "nobody cannot create in the 755 root");
    assert!(
        ok(format!("test -r '{}' && ! test -w '{}'", open.join("roots").display(), open.join("roots").display())),
        "access(2) reports r but not w"
    );
    m.finish();
}

#[test]
fn unlinked_open_file_stays_readable_until_the_last_close_then_frees_space() {
    let m = Mounted::new("128M");
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    let free0 = statfs(&m.mnt).f_bfree;
    let p = m.path("f");
    let data = pattern(5, 8 << 20);
    fs::write(&p, &data).unwrap();
    let f = fs::File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_errno(fs::metadata(&p), libc::ENOENT, "stat after unlink");
    assert!(!names(&m.mnt).contains(&"f".to_string()));
    let mut got = vec![0u8; data.len()];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 0).unwrap();
    assert!(got == data, "an unlinked open file keeps its data");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    let back = mafs_tests::wait_until(Duration::from_secs(30), || statfs(&m.mnt).f_bfree + 64 >= free0);
    assert!(back, "space not freed after the last close: {free0} -> {}", statfs(&m.mnt).f_bfree);
    m.finish();
}

#[test]
fn directory_operations_that_make_no_sense_fail_with_linux_errnos() {
    let m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_errno(fs::OpenOptions::new().write(true).open(&d), libc::EISDIR, "open of a directory for writing");
    assert_errno(
        fs::File::open(&d).and_then(|_| fs::OpenOptions::new().write(true).truncate(true).open(&d)),
        libc::EISDIR,
        "O_TRUNC of a directory",
    );
    let c = cstr(&d);
    // SAFETY: valid C string.
    assert_errno(cvt(unsafe { libc::truncate(c.as_ptr(), 0) }), libc::EISDIR, "truncate(2) of a directory");
    assert_errno(fs::remove_dir(d.join(".")), libc::EINVAL, "rmdir of .");
    fs::write(m.path("f"), b"x").unwrap();
    assert_errno(fs::read_dir(m.path("f")), libc::ENOTDIR, "opendir of a file");
    assert_errno(fs::metadata(m.path("f/")), libc::ENOTDIR, "a file with a trailing slash");
    fs::rename(m.path("f"), m.path("f")).unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x", "rename onto itself changes nothing");
    m.finish();
}

#[test]
fn concurrent_creates_and_deletes_in_one_directory_lose_nothing() {
    let m = Mounted::new("256M");
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = d.clone();
            s.spawn(move || {
                for i in 0..1500 {
                    fs::write(d.join(format!("t{t}-{i}")), format!("{t}:{i}")).unwrap();
                    if i % 3 == 0 {
                        fs::create_dir(d.join(format!("dir-t{t}-{i}"))).unwrap();
                    }
                    if i % 5 == 4 {
                        fs::remove_file(d.join(format!("t{t}-{}", i - 2))).unwrap();
                    }
                }
            });
        }
    });
    let expect = |i: usize| i % 5 != 2 || i + 2 >= 1500;
    let check = |m: &Mounted| {
        let d = m.path("shared");
        let got: BTreeSet<String> = names(&d).into_iter().collect();
        for t in 0..4 {
            for i in 0..1500 {
                let n = format!("t{t}-{i}");
                assert_eq!(got.contains(&n), expect(i), "{n}");
                if expect(i) {
                    assert_eq!(fs::read_to_string(d.join(&n)).unwrap(), format!("{t}:{i}"));
                }
            }
        }
        assert_eq!(fs::metadata(&d).unwrap().nlink(), 2 + 4 * 500, "link count of a directory with 2000 subdirectories");
    };
    m.check_across_remount(check);
}

#[test]
fn rename_exchange_of_two_directories_across_parents_keeps_link_counts() {
    let mut m = Mounted::new("64M");
    fs::create_dir_all(m.path("a/x/deep")).unwrap();
    fs::create_dir_all(m.path("b/y")).unwrap();
    fs::create_dir_all(m.path("b/z")).unwrap();
    renameat2(&m.path("a/x"), &m.path("b/y"), libc::RENAME_EXCHANGE).unwrap();
    let check = |m: &Mounted| {
        assert!(fs::metadata(m.path("a/x")).unwrap().is_dir() && names(&m.path("a/x")).is_empty());
        assert_eq!(names(&m.path("b/y")), vec!["deep"]);
        assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 3);
        assert_eq!(fs::metadata(m.path("b")).unwrap().nlink(), 4);
        assert_eq!(fs::metadata(m.path("b/y/..")).unwrap().ino(), fs::metadata(m.path("b")).unwrap().ino());
        assert_eq!(fs::metadata(m.path("a/x/..")).unwrap().ino(), fs::metadata(m.path("a")).unwrap().ino());
    };
    check(&m);
    assert_errno(
        renameat2(&m.path("b/y"), &m.path("b/y/deep"), libc::RENAME_EXCHANGE),
        libc::EINVAL,
        "exchange of a directory with its own child",
    );
    m.remount();
    check(&m);
    m.finish();
}

#[test]
fn rename_of_a_directory_into_one_5000_levels_deep_works() {
    let m = Mounted::new("128M");
    // build the chain with mkdirat/openat: the path is far beyond PATH_MAX
    let mut dfd = fs::File::open(&m.mnt).unwrap();
    for _ in 0..5000 {
        let c = cstr("d");
        // SAFETY: mkdirat/openat relative to an fd we own; the new fd is wrapped in a File.
        unsafe {
            use std::os::unix::io::{AsRawFd, FromRawFd};
            cvt(libc::mkdirat(dfd.as_raw_fd(), c.as_ptr(), 0o755)).unwrap();
            let fd = libc::openat(dfd.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(fd >= 0);
            dfd = fs::File::from_raw_fd(fd);
        }
    }
    fs::create_dir(m.path("mover")).unwrap();
    let (from, to) = (cstr(m.path("mover")), cstr("moved"));
    // SAFETY: renameat with valid C strings and an fd we own.
    let r = cvt(unsafe { libc::renameat(libc::AT_FDCWD, from.as_ptr(), std::os::unix::io::AsRawFd::as_raw_fd(&dfd), to.as_ptr()) });
    r.expect("rename into the deepest directory");
    // and the loop check still refuses moving the top of the chain into its own bottom
    let (top, bottom) = (cstr(m.path("d")), cstr("loop"));
    // SAFETY: as above.
    let r = cvt(unsafe { libc::renameat(libc::AT_FDCWD, top.as_ptr(), std::os::unix::io::AsRawFd::as_raw_fd(&dfd), bottom.as_ptr()) });
    assert_errno(r, libc::EINVAL, "moving a directory into its own descendant 5000 levels down");
    drop(dfd);
    m.assert_no_panic();
    m.finish();
}

#[test]
fn concurrent_renames_across_directories_neither_deadlock_nor_lose_files() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let mut m = Mounted::new("128M");
    let dirs = ["a", "b", "c", "a/x", "b/y"];
    for d in dirs {
        fs::create_dir(m.path(d)).unwrap();
    }
    // Every operation on a file name and its outcome, so a name that goes missing (or stays
    // when it should not) can be reported with its history.
    let history: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let mnt = m.mnt.clone();
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (mnt, tx, history) = (mnt.clone(), tx.clone(), history.clone());
            std::thread::spawn(move || {
                let note = |name: &str, what: String| history.lock().unwrap().entry(name.to_string()).or_default().push(what);
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let pick = |rng: &mut rand::rngs::StdRng| {
                    let all = ["a", "b", "c", "a/x", "b/y", "c/moved-x", "c/moved-y", "a/moved-y"];
                    mnt.join(all[rng.gen_range(0..all.len())])
                };
                let first_file = |d: &Path| {
                    fs::read_dir(d).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("file-"))
                };
                let rel = |p: &Path| p.strip_prefix(&mnt).unwrap_or(p).display().to_string();
                for i in 0..1500 {
                    let d1 = pick(&mut rng);
                    let d2 = pick(&mut rng);
                    match rng.gen_range(0..6) {
                        0 | 1 => {
                            let name = format!("file-{t}-{i}");
                            let r = fs::write(d1.join(&name), b"x");
                            note(&name, format!("create in {}: {r:?}", rel(&d1)));
                        }
                        2 | 3 => {
                            // move some file of d1 to d2
                            if let Some(name) = first_file(&d1) {
                                let r = fs::rename(d1.join(&name), d2.join(&name));
                                note(&name, format!("rename {} -> {}: {r:?}", rel(&d1), rel(&d2)));
                            }
                        }
                        4 => {
                            // move a directory around (may fail: EINVAL into itself, ENOENT, ...)
                            let (src, dst) = if rng.gen_bool(0.5) { ("a/x", "c/moved-x") } else { ("b/y", "c/moved-y") };
                            let (src, dst) = if rng.gen_bool(0.5) { (src, dst) } else { (dst, src) };
                            let _ = fs::rename(mnt.join(src), mnt.join(dst));
                            let _ = renameat2(&mnt.join("c/moved-y"), &mnt.join("a/moved-y"), libc::RENAME_NOREPLACE);
                            let _ = fs::rename(mnt.join("a/moved-y"), mnt.join("b/y"));
                        }
                        _ => {
                            if let Some(name) = first_file(&d1) {
                                let r = fs::remove_file(d1.join(&name));
                                note(&name, format!("remove from {}: {r:?}", rel(&d1)));
                            }
                        }
                    }
                }
                tx.send(()).unwrap();
            })
        })
        .collect();
    drop(tx);
    for _ in 0..4 {
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            m.kill9();
            panic!("concurrent renames did not finish within 2 minutes: deadlock in the mount");
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    let present = |m: &Mounted| {
        let mut found = BTreeMap::new();
        let mut stack = vec![m.mnt.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if e.file_name().to_string_lossy().starts_with("file-") {
                    found
                        .insert(e.file_name().to_string_lossy().into_owned(), e.path().strip_prefix(&m.mnt).unwrap().display().to_string());
                }
            }
        }
        found
    };
    let history = history.lock().unwrap().clone();
    let expected: BTreeSet<&String> = history
        .iter()
        .filter(|(_, h)| {
            h.iter().any(|e| e.starts_with("create") && e.ends_with("Ok(())"))
                && !h.iter().any(|e| e.starts_with("remove") && e.ends_with("Ok(())"))
        })
        .map(|(n, _)| n)
        .collect();
    for when in ["after the run", "after remount"] {
        let found = present(&m);
        let wrong: Vec<String> = history
            .iter()
            .filter(|(n, _)| expected.contains(n) != found.contains_key(*n))
            .map(|(n, h)| format!("{n} (found at {:?}): {}", found.get(n), h.join("; ")))
            .collect();
        assert!(wrong.is_empty(), "{when}: names lost or kept against the operations' results:\n{}", wrong.join("\n"));
        if when == "after the run" {
            m.remount();
        }
    }
    m.finish();
}

#[test]
fn an_open_removed_directory_stays_a_readable_empty_directory() {
    let m = Mounted::new("64M");
    fs::create_dir(m.path("gone")).unwrap();
    fs::write(m.path("gone/f"), b"x").unwrap();
    let mut r = DirReader::open(&m.path("gone"));
    let held = fs::File::open(m.path("gone")).unwrap();
    fs::remove_file(m.path("gone/f")).unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    // commit, then reuse blocks: the removed directory's inode must not be handed out while open
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    for i in 0..5 {
        fs::write(m.path(format!("new{i}")), b"new").unwrap();
    }
    let md = held.metadata().expect("fstat of an open, removed directory");
    assert!(md.is_dir(), "still a directory");
    assert_eq!(md.nlink(), 0, "with no links");
    match r.next_batch(4096) {
        Ok(b) => assert!(b.iter().all(|(_, n)| n == b"." || n == b".."), "a removed directory lists no names: {b:?}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "getdents on a removed directory: {e}"),
    }
    drop((r, held));
    assert!(!m.log().contains("corrupt"), "the mount logged corruption:\n{}", m.log());
    m.finish();
}

#[test]
fn names_replaced_by_rename_stay_valid_through_open_handles() {
    let m = Mounted::new("64M");
    fs::create_dir(m.path("a")).unwrap();
    fs::create_dir(m.path("b")).unwrap();
    fs::write(m.path("a/in"), b"i").unwrap();
    fs::write(m.path("x"), b"old").unwrap();
    let mut dir = DirReader::open(&m.path("b"));
    let dir_fd = fs::File::open(m.path("b")).unwrap();
    let file = fs::File::open(m.path("x")).unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    fs::write(m.path("y"), b"new").unwrap();
    fs::rename(m.path("y"), m.path("x")).unwrap();
    // commit and allocate: the replaced inodes must not be reused while open
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    for i in 0..8 {
        fs::write(m.path(format!("n{i}")), b"zzz").unwrap();
    }
    let md = dir_fd.metadata().unwrap();
    assert!(md.is_dir() && md.nlink() == 0, "the replaced directory: dir {} nlink {}", md.is_dir(), md.nlink());
    let listed = dir.next_batch(4096).unwrap_or_default();
    assert!(listed.iter().all(|(_, n)| n == b"." || n == b".."), "the replaced directory is empty: {listed:?}");
    let mut old = [0u8; 3];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut old, 0).unwrap();
    assert_eq!(&old, b"old", "the replaced file's data through its open handle");
    assert_eq!(fs::read(m.path("x")).unwrap(), b"new");
    assert_eq!(names(&m.path("b")), vec!["in"]);
    drop((dir, dir_fd, file));
    assert!(!m.log().contains("corrupt"), "{}", m.log());
    m.finish();
}
