//! End-to-end tests of the failure paths: the command line refusing what it must (mkfs over a
//! volume, mount without --standalone), corrupt superblocks and metadata blocks (refusal or EIO,
//! never a panic, and fsck reporting them), and ENOSPC on a full volume without damage.
use mafs_tests::fs_mount::*;
use mafs_tests::wait_until;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn assert_no_panic(text: &str) {
    assert!(!text.contains("panicked"), "mafs panicked:\n{text}");
}

#[test]
fn mkfs_refuses_an_existing_volume_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("v");
    mkfs(&vol, "64M", &["--slots", "1"]);
    let (code, text) = code_and_text(&mafs([OsStr::new("mkfs"), vol.as_os_str(), OsStr::new("--size"), OsStr::new("64M")]));
    assert_ne!(code, 0, "mkfs over an existing volume must fail:\n{text}");
    assert!(text.contains("--force"), "the message should say how to override:\n{text}");
    assert_no_panic(&text);
    let (code, text) = code_and_text(&mafs([
        OsStr::new("mkfs"),
        vol.as_os_str(),
        OsStr::new("--size"),
        OsStr::new("64M"),
        OsStr::new("--slots"),
        OsStr::new("1"),
        OsStr::new("--force"),
    ]));
    assert_eq!(code, 0, "mkfs --force:\n{text}");
}

#[test]
fn mkfs_refuses_a_too_small_volume_with_a_size_hint() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("v");
    let (code, text) = code_and_text(&mafs([OsStr::new("mkfs"), vol.as_os_str(), OsStr::new("--size"), OsStr::new("1M")]));
    assert_ne!(code, 0);
    assert!(text.contains("too small"), "{text}");
    assert_no_panic(&text);
}

#[test]
fn mkfs_of_a_1_tib_sparse_file_succeeds_and_fsck_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("v");
    mkfs(&vol, "1T", &[]);
    assert_eq!(fs::metadata(&vol).unwrap().len(), 1 << 40);
    assert!(fs::metadata(&vol).unwrap().blocks() * 512 < 4 << 30, "the volume file stays sparse");
    let (code, text) = code_and_text(&mafs([OsStr::new("fsck"), vol.as_os_str()]));
    assert_eq!(code, 0, "fsck of a fresh 1 TiB volume:\n{text}");
}

#[test]
fn mount_without_standalone_is_refused_with_a_clear_error() {
    let mut m = Mounted::unmounted("64M", &["--slots", "1"]);
    let o = mafs([OsStr::new("mount"), m.vol.as_os_str(), m.mnt.as_os_str()]);
    let (code, text) = code_and_text(&o);
    assert_ne!(code, 0);
    assert!(text.contains("--standalone"), "the message should name --standalone:\n{text}");
    assert_no_panic(&text);
    assert!(!is_mounted(&m.mnt));
    m.mount();
    m.finish();
}

#[test]
fn mount_of_a_file_that_is_not_a_volume_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("junk");
    fs::write(&vol, pattern(1, 1 << 20)).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (code, text) = code_and_text(&mafs([OsStr::new("mount"), vol.as_os_str(), mnt.as_os_str(), OsStr::new("--standalone")]));
    assert_ne!(code, 0);
    assert_no_panic(&text);
    assert!(!is_mounted(&mnt));
    let (code, text) = code_and_text(&mafs([OsStr::new("fsck"), vol.as_os_str()]));
    assert_eq!(code, 8, "fsck of a non-volume:\n{text}");
}

#[test]
fn mafs_umount_unmounts_and_leaves_the_volume_clean() {
    let mut m = Mounted::new("64M");
    fs::write(m.path("f"), b"data").unwrap();
    let (code, text) = code_and_text(&mafs([OsStr::new("umount"), m.mnt.as_os_str()]));
    assert_eq!(code, 0, "mafs umount:\n{text}");
    assert!(!is_mounted(&m.mnt));
    m.unmount_clean();
    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    m.finish();
}

#[test]
fn second_mount_of_a_mounted_volume_is_refused() {
    let m = Mounted::new("64M");
    let other = m.scratch().join("mnt2");
    fs::create_dir(&other).unwrap();
    let mut child = std::process::Command::new(mafs_tests::mafs_bin())
        .args([OsStr::new("mount"), m.vol.as_os_str(), other.as_os_str(), OsStr::new("--standalone")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut st = None;
    let exited = wait_until(Duration::from_secs(60), || {
        st = child.try_wait().unwrap();
        st.is_some() || is_mounted(&other)
    });
    if is_mounted(&other) || !exited {
        let _ = umount2(&other, libc::MNT_DETACH);
        let _ = child.kill();
        panic!("a second mount of the same volume came up");
    }
    let o = child.wait_with_output().unwrap();
    let (code, text) = code_and_text(&o);
    assert_ne!(code, 0);
    assert!(text.contains("in use"), "{text}");
    assert_no_panic(&text);
    m.finish();
}

/// A small volume with some files, unmounted cleanly.
fn populated() -> Mounted {
    let mut m = Mounted::new("64M");
    fs::create_dir(m.path("dir")).unwrap();
    for i in 0..20 {
        fs::write(m.path(format!("dir/f{i}")), pattern(i, 10_000)).unwrap();
    }
    m.unmount_clean();
    m
}

#[test]
fn damaged_primary_superblock_mounts_from_the_backup_and_fsck_repairs_it() {
    let mut m = populated();
    corrupt_block(&m.vol, 0, 64, 200);
    let (code, text) = m.fsck();
    assert_eq!(code, 4, "fsck must report the damaged primary superblock:\n{text}");
    assert_no_panic(&text);
    match m.try_mount(&[]) {
        Ok(()) => {
            assert!(fs::read(m.path("dir/f3")).unwrap() == pattern(3, 10_000));
            let st = m.unmount();
            assert!(st.success(), "{}", m.log());
        }
        Err(e) => {
            // refusing is acceptable, as long as it is clean
            assert_no_panic(&e);
            assert!(e.contains("superblock"), "refusal should name the superblock:\n{e}");
        }
    }
    m.assert_no_panic();
    let (code, text) = m.fsck_repair();
    assert_eq!(code, 1, "fsck --repair fixes it:\n{text}");
    m.assert_fsck_clean();
    m.mount();
    assert!(fs::read(m.path("dir/f19")).unwrap() == pattern(19, 10_000));
    m.finish();
}

#[test]
fn both_superblocks_damaged_makes_mount_and_fsck_refuse_without_panic() {
    let mut m = populated();
    corrupt_block(&m.vol, 0, 0, 4096);
    corrupt_block(&m.vol, 1, 0, 4096);
    let e = m.try_mount(&[]).expect_err("mount of a volume without a readable superblock must fail");
    assert_no_panic(&e);
    assert!(e.contains("cannot mount") || e.contains("superblock") || e.contains("not a mafs"), "a clear message:\n{e}");
    assert!(!is_mounted(&m.mnt));
    let (code, text) = m.fsck();
    assert_eq!(code, 8, "fsck cannot check it:\n{text}");
    assert_no_panic(&text);
    assert!(text.contains("cannot check"), "{text}");
    let (code, text) = code_and_text(&mafs([OsStr::new("info"), m.vol.as_os_str()]));
    assert_ne!(code, 0);
    assert_no_panic(&text);
}

/// Mounts a volume whose metadata was damaged: either the mount refuses cleanly, or it mounts
/// and `check` (which sees the damage as EIO) runs; then no panic anywhere and fsck exits 4.
fn expect_eio_or_clean_refusal(m: &mut Mounted, fsck_must: &str, check: impl FnOnce(&Mounted)) {
    match m.try_mount(&[]) {
        Ok(()) => {
            check(m);
            m.unmount();
        }
        Err(e) => {
            eprintln!("mount refused:\n{e}");
            assert_no_panic(&e)
        }
    }
    m.assert_no_panic();
    let (code, text) = m.fsck();
    assert_eq!(code, 4, "{fsck_must}:\n{text}");
    assert_no_panic(&text);
}

#[test]
fn corrupt_file_inode_gives_eio_or_refusal_and_fsck_reports_it() {
    let mut m = Mounted::new("64M");
    fs::write(m.path("victim"), pattern(1, 20_000)).unwrap();
    fs::write(m.path("bystander"), b"fine").unwrap();
    let ino = fs::metadata(m.path("victim")).unwrap().ino();
    m.unmount_clean();
    // the inode number is the inode's block number
    corrupt_block(&m.vol, ino, 40, 64);
    expect_eio_or_clean_refusal(&mut m, "fsck must report the corrupt inode", |m| {
        let r = fs::read(m.path("victim"));
        assert_errno(r, libc::EIO, "read of a file with a corrupt inode");
        assert_eq!(fs::read(m.path("bystander")).unwrap(), b"fine", "other files still work");
    });
}

#[test]
fn corrupt_root_inode_gives_eio_or_refusal_and_fsck_reports_it() {
    let mut m = populated();
    let root: u64 = info_field(&m.vol, "root inode").parse().unwrap();
    corrupt_block(&m.vol, root, 300, 100);
    expect_eio_or_clean_refusal(&mut m, "fsck must report the corrupt root inode", |m| {
        assert_errno(fs::read_dir(&m.mnt).and_then(|d| d.collect::<Result<Vec<_>, _>>()), libc::EIO, "listing a corrupt root");
    });
}

#[test]
fn corrupt_directory_tree_block_gives_eio_or_refusal_and_fsck_reports_it() {
    let mut m = Mounted::new("64M");
    fs::create_dir(m.path("big")).unwrap();
    for i in 0..2000 {
        File::create(m.path(format!("big/entry-with-a-longish-name-{i}"))).unwrap();
    }
    m.unmount_clean();
    let nodes = find_blocks(&m.vol, MAGIC_TREE_NODE);
    assert!(!nodes.is_empty(), "a 2000-entry directory has index tree blocks");
    for &b in &nodes {
        corrupt_block(&m.vol, b, 100, 200);
    }
    expect_eio_or_clean_refusal(&mut m, "fsck must report the corrupt tree blocks", |m| {
        let r = fs::read_dir(m.path("big")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
        assert_errno(r, libc::EIO, "listing a directory whose tree blocks are corrupt");
        assert_errno(fs::metadata(m.path("big/entry-with-a-longish-name-1234")), libc::EIO, "lookup in it");
    });
}

#[test]
fn full_volume_gives_enospc_and_stays_usable_after_a_delete() {
    let mut m = Mounted::new("64M");
    let p = m.path("fill");
    let chunk = pattern(1, 1 << 20);
    let mut f = File::create(&p).unwrap();
    let mut written = 0u64;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        assert!(written < 128 << 20, "wrote {written} bytes into a 64 MiB volume without ENOSPC");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "error on a full volume: {err}");
    assert!(written > 20 << 20, "only {written} bytes fit");
    drop(f);
    // small creations fail cleanly too (or succeed if they fit in what is left)
    for i in 0..50 {
        if let Err(e) = fs::write(m.path(format!("small{i}")), b"x") {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "create on a full volume: {e}");
        }
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), written);
    fs::remove_file(&p).unwrap();
    fs::File::open(&m.mnt).unwrap().sync_all().unwrap();
    let free_again = wait_until(Duration::from_secs(30), || statfs(&m.mnt).f_bfree * 4096 > 30 << 20);
    assert!(free_again, "space did not come back after delete");
    let mut g = File::create(m.path("again")).unwrap();
    for _ in 0..20 {
        g.write_all(&chunk).unwrap();
    }
    g.sync_all().unwrap();
    drop(g);
    m.remount();
    assert_eq!(fs::metadata(m.path("again")).unwrap().len(), 20 << 20);
    m.finish();
}

#[test]
fn filling_a_volume_with_small_files_gives_enospc_and_fsck_clean() {
    let mut m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let mut n = 0;
    let err = loop {
        match fs::write(d.join(format!("f{n}")), b"tiny") {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100_000, "no ENOSPC after {n} files");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "after {n} files: {err}");
    assert!(n > 1000, "only {n} files fit");
    // the failing fs::write may have created its file before the write failed: then it is empty
    let last = d.join(format!("f{n}"));
    let extra = match fs::metadata(&last) {
        Ok(md) => {
            assert_eq!(md.len(), 0, "a file whose only write failed with ENOSPC");
            1
        }
        Err(_) => 0,
    };
    m.remount();
    assert_eq!(names(&d).len(), n + extra, "every created file is still there");
    for i in 0..n + extra {
        fs::remove_file(d.join(format!("f{i}"))).unwrap();
    }
    m.finish();
}

/// Writes `chunk`-sized pieces (after a small unaligned head) to `name` until a write fails;
/// returns the error and the file's size then.
fn write_until_error(m: &Mounted, name: &str, chunk: usize) -> (std::io::Error, u64) {
    let mut f = File::create(m.path(name)).unwrap();
    f.write_all(&[b'h'; 1000]).unwrap();
    let data = pattern(9, chunk);
    let err = loop {
        if let Err(e) = f.write_all(&data) {
            break e;
        }
        assert!(f.metadata().unwrap().len() < 1 << 30, "no error after 1 GiB on a small volume");
    };
    (err, f.metadata().unwrap().len())
}

#[test]
fn write_that_runs_out_of_space_partway_leaves_fsck_clean() {
    let mut m = Mounted::new("64M");
    let (err, size) = write_until_error(&m, "fill", 3 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let md = fs::metadata(m.path("fill")).unwrap();
    assert!(md.blocks() * 512 >= size, "st_blocks covers st_size");
    // the file stays as it is: the volume must be consistent with it in place
    m.unmount_clean();
    m.mount();
    assert_eq!(fs::metadata(m.path("fill")).unwrap().len(), size);
    m.finish();
}

#[test]
fn fallocate_beyond_free_space_fails_with_enospc_and_leaves_the_volume_consistent() {
    let mut m = Mounted::new("64M");
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    assert_errno(fallocate(&f, 0, 0, 100 << 20), libc::ENOSPC, "fallocate of 100 MiB on a 64 MiB volume");
    let md = f.metadata().unwrap();
    assert!(md.blocks() * 512 >= md.len(), "st_blocks covers st_size");
    drop(f);
    m.unmount_clean();
    m.mount();
    fs::remove_file(m.path("f")).unwrap();
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    assert!(wait_until(Duration::from_secs(30), || statfs(&m.mnt).f_bfree * 4096 > 40 << 20), "space back after deleting the file");
    fs::write(m.path("after"), pattern(1, 1 << 20)).unwrap();
    m.finish();
}

#[test]
fn space_freed_by_a_delete_is_usable_at_once() {
    let m = Mounted::new("64M");
    let (err, _) = write_until_error(&m, "fill", 1 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    fs::remove_file(m.path("fill")).unwrap();
    assert!(statfs(&m.mnt).f_bfree * 4096 > 40 << 20, "statfs reports the space free");
    // no fsync, no waiting: as on ext4, which commits and retries the allocation on ENOSPC
    fs::write(m.path("again"), pattern(2, 8 << 20)).expect("write right after the delete");
    m.finish();
}

#[test]
fn a_full_volume_still_allows_deletes_truncates_and_attribute_changes() {
    let mut m = Mounted::new("64M");
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    setxattr(&m.path("d/x"), "user.a", b"v", 0).unwrap();
    let (err, _) = write_until_error(&m, "fill", 1 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let mut n = 0;
    while File::create(m.path(format!("d/f{n}"))).is_ok() {
        n += 1;
    }
    // metadata is full too now; none of these needs new space
    fs::set_permissions(m.path("d/x"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    utimensat(&m.path("d/x"), (5, 5), (6, 6)).unwrap();
    std::os::unix::fs::chown(m.path("d/x"), Some(7), Some(8)).unwrap();
    fs::remove_dir(m.path("empty")).unwrap();
    for i in 0..n {
        fs::remove_file(m.path(format!("d/f{i}"))).unwrap();
    }
    fs::OpenOptions::new().write(true).open(m.path("fill")).unwrap().set_len(10 << 20).unwrap();
    // with space again, everything works
    fs::rename(m.path("d/x"), m.path("y")).unwrap();
    fs::write(m.path("after"), pattern(3, 5 << 20)).unwrap();
    m.remount();
    let md = fs::metadata(m.path("y")).unwrap();
    assert_eq!((md.mode() & 0o777, md.uid(), md.gid(), md.mtime()), (0o600, 7, 8, 6));
    assert!(fs::read(m.path("after")).unwrap() == pattern(3, 5 << 20));
    m.finish();
}

#[test]
fn a_full_volume_still_allows_removing_and_replacing_xattrs() {
    let m = Mounted::new("64M");
    fs::write(m.path("x"), b"x").unwrap();
    setxattr(&m.path("x"), "user.a", b"value-1", 0).unwrap();
    setxattr(&m.path("x"), "user.b", b"b", 0).unwrap();
    let (err, _) = write_until_error(&m, "fill", 1 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let mut n = 0;
    while File::create(m.path(format!("f{n}"))).is_ok() {
        n += 1;
    }
    setxattr(&m.path("x"), "user.a", b"value-2", libc::XATTR_REPLACE).expect("replace a value in place on a full volume");
    removexattr(&m.path("x"), "user.b").expect("removexattr on a full volume");
    removexattr(&m.path("x"), "user.a").expect("removexattr of the last attribute on a full volume");
    m.finish();
}

#[test]
fn a_full_volume_still_allows_renames() {
    let m = Mounted::new("64M");
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/a"), b"a").unwrap();
    let (err, _) = write_until_error(&m, "fill", 1 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let mut n = 0;
    while File::create(m.path(format!("f{n}"))).is_ok() {
        n += 1;
    }
    fs::rename(m.path("d/a"), m.path("d/b")).expect("rename within a directory on a full volume");
    fs::rename(m.path("d/b"), m.path("b")).expect("rename across directories on a full volume");
    m.finish();
}

#[test]
fn concurrent_writers_and_deleters_on_a_nearly_full_volume_neither_deadlock_nor_corrupt() {
    use rand::{Rng, SeedableRng};
    let mut m = Mounted::new("64M");
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (mnt, tx) = (m.mnt.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut mine: Vec<std::path::PathBuf> = Vec::new();
                let mut enospc = 0;
                for i in 0..100 {
                    let p = mnt.join(format!("t{t}-{i}"));
                    match fs::write(&p, pattern(i, rng.gen_range(1..(8 << 20)))) {
                        Ok(()) => mine.push(p),
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                            enospc += 1;
                            let _ = fs::remove_file(&p);
                        }
                        Err(e) => panic!("write {}: {e}", p.display()),
                    }
                    if (mine.len() > 3 || rng.gen_bool(0.2)) && !mine.is_empty() {
                        let k = rng.gen_range(0..mine.len());
                        fs::remove_file(mine.swap_remove(k)).unwrap();
                    }
                }
                tx.send(enospc).unwrap();
                mine
            })
        })
        .collect();
    drop(tx);
    let mut enospc = 0;
    for _ in 0..4 {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(n) => enospc += n,
            Err(_) => {
                m.kill9();
                panic!("writers on a nearly full volume did not finish within 3 minutes: deadlock in the mount");
            }
        }
    }
    let kept: Vec<std::path::PathBuf> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    eprintln!("{enospc} writes hit ENOSPC; {} files kept", kept.len());
    m.remount();
    for p in &kept {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let i: u64 = name.split('-').nth(1).unwrap().parse().unwrap();
        let got = fs::read(m.path(&name)).unwrap();
        assert!(got == pattern(i, got.len()), "{name}");
    }
    m.finish();
}

#[test]
fn fsck_of_a_mounted_volume_refuses_with_exit_8_and_info_shows_the_slot_in_use() {
    let m = Mounted::new("64M");
    fs::write(m.path("f"), b"x").unwrap();
    let (code, text) = m.fsck();
    assert_eq!(code, 8, "fsck of a mounted volume:\n{text}");
    assert!(text.contains("in use"), "{text}");
    let (code, text) = code_and_text(&mafs([OsStr::new("info"), m.vol.as_os_str()]));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("IN USE"), "mafs info of a mounted volume:\n{text}");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"x", "the mount is unharmed");
    m.finish();
}

#[test]
fn space_freed_by_a_delete_is_usable_at_once_by_fallocate() {
    // generic/213: fallocate most of the volume and delete it, again and again, without waiting
    // for the commit that makes the freed blocks allocatable.
    let m = Mounted::new("64M");
    let len = statfs(&m.mnt).f_bavail * 4096 * 7 / 10 / 4096 * 4096;
    let p = m.path("big");
    for round in 0..4 {
        let f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&p).unwrap();
        fallocate(&f, 0, 0, len).unwrap_or_else(|e| panic!("round {round}: fallocate of {len} bytes: {e}"));
        assert!(f.metadata().unwrap().blocks() * 512 >= len, "round {round}: the blocks are allocated");
        drop(f);
        fs::remove_file(&p).unwrap();
    }
    m.finish();
}

#[test]
fn a_fallocate_that_fails_with_enospc_leaves_no_partial_allocation() {
    let m = Mounted::new("64M");
    let p = m.path("f");
    let data = pattern(3, 1 << 20);
    fs::write(&p, &data).unwrap();
    let blocks = fs::metadata(&p).unwrap().blocks();
    let free = statfs(&m.mnt).f_bfree;
    let f = fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    for (mode, what) in [(0, "fallocate"), (libc::FALLOC_FL_KEEP_SIZE, "fallocate --keep-size")] {
        assert_errno(fallocate(&f, mode, 0, 100 << 20), libc::ENOSPC, &format!("{what} of 100 MiB on a 64 MiB volume"));
        let md = f.metadata().unwrap();
        assert_eq!((md.len(), md.blocks()), (1 << 20, blocks), "{what}: size and blocks as before");
        assert_eq!(statfs(&m.mnt).f_bfree, free, "{what}: free space as before");
    }
    drop(f);
    assert!(fs::read(&p).unwrap() == data, "the file's data is intact");
    m.finish();
}

#[test]
fn a_long_symlink_that_fails_with_enospc_leaves_no_name_behind() {
    let mut m = Mounted::new("64M");
    let (err, _) = write_until_error(&m, "fill", 1 << 20);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Too long for the inode's inline area: the target needs a block of its own.
    let target = "t/".repeat(2000);
    let link = m.path("L");
    assert_errno(std::os::unix::fs::symlink(&target, &link), libc::ENOSPC, "a 4000-byte symlink on a full volume");
    assert_errno(fs::symlink_metadata(&link), libc::ENOENT, "lstat of the link that failed");
    assert!(!names(&m.mnt).contains(&"L".to_string()), "the failed link is not listed: {:?}", names(&m.mnt));
    m.remount();
    assert!(!names(&m.mnt).contains(&"L".to_string()), "after a remount either: {:?}", names(&m.mnt));
    // The name is free: once there is room, the same link can be made.
    fs::remove_file(m.path("fill")).unwrap();
    std::os::unix::fs::symlink(&target, &link).expect("the same symlink once there is room");
    m.check_across_remount(|m| assert_eq!(fs::read_link(m.path("L")).unwrap().to_str(), Some(target.as_str())));
}
