//! End-to-end tests on a real FUSE mount at scale: a sparse file up to 1 TiB, a 200 MiB file
//! written sequentially, and a directory of 100,000 entries; each ends with fsck clean.
use mafs_tests::fs_mount::*;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

const TIB: u64 = 1 << 40;

#[test]
fn sparse_file_written_up_to_1_tib_minus_1_reads_back_with_few_blocks() {
    let mut m = Mounted::new("256M");
    let p = m.path("sparse");
    let spots: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(1, 100)),
        (1 << 30, pattern(2, 5000)),
        ((1 << 32) + 7, pattern(3, 10)),
        (TIB / 2 - 2, pattern(4, 4)),
        (TIB - 4096 - 10, pattern(5, 4096)),
        (TIB - 1, vec![0xEE]),
    ];
    {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        for (off, d) in &spots {
            f.write_all_at(d, *off).unwrap();
        }
        f.sync_all().unwrap();
    }
    let check = |m: &Mounted| {
        let f = File::open(m.path("sparse")).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), TIB, "st_size");
        assert!(md.blocks() < 200 * 8, "only a few blocks used: st_blocks {}", md.blocks());
        for (off, d) in &spots {
            let mut got = vec![0u8; d.len()];
            f.read_exact_at(&mut got, *off).unwrap();
            assert!(&got == d, "data at {off}");
        }
        let mut hole = vec![1u8; 8192];
        f.read_exact_at(&mut hole, TIB / 4).unwrap();
        assert!(hole.iter().all(|&b| b == 0), "hole reads zeros");
        let mut past = [0u8; 10];
        assert_eq!(f.read_at(&mut past, TIB).unwrap(), 0, "read at EOF");
        assert_eq!(lseek(&f, (TIB / 4) as i64, libc::SEEK_DATA).unwrap(), TIB / 2 - 4096, "SEEK_DATA finds the next data block");
    };
    check(&m);
    m.remount();
    check(&m);
    // growing past 1 TiB by a byte works too and truncating back frees the far blocks
    let f = OpenOptions::new().write(true).open(m.path("sparse")).unwrap();
    f.set_len(4096).unwrap();
    assert!(f.metadata().unwrap().blocks() <= 2 * 8);
    drop(f);
    m.finish();
}

#[test]
fn file_of_200_mib_written_sequentially_reads_back_with_the_same_checksum() {
    let mut m = Mounted::new("512M");
    let p = m.path("big");
    let chunk = 1usize << 20;
    let mut sum_in = Vec::with_capacity(200);
    {
        let mut f = File::create(&p).unwrap();
        for i in 0..200u64 {
            let d = pattern(i, chunk);
            sum_in.push(checksum(&d));
            f.write_all(&d).unwrap();
        }
        f.sync_all().unwrap();
    }
    let read_sums = |p: &std::path::Path| {
        let mut f = File::open(p).unwrap();
        let mut buf = vec![0u8; chunk];
        let mut sums = Vec::new();
        for _ in 0..200 {
            f.read_exact(&mut buf).unwrap();
            sums.push(checksum(&buf));
        }
        assert_eq!(f.read(&mut buf).unwrap(), 0, "nothing after 200 MiB");
        sums
    };
    assert_eq!(fs::metadata(&p).unwrap().len(), 200 << 20);
    assert!(read_sums(&p) == sum_in, "checksums differ");
    m.remount();
    assert!(read_sums(&m.path("big")) == sum_in, "checksums differ after remount");
    assert!(fs::metadata(m.path("big")).unwrap().blocks() >= (200 << 20) / 512);
    fs::remove_file(m.path("big")).unwrap();
    m.finish();
}

#[test]
fn directory_of_100000_entries_lookup_list_and_delete() {
    let mut m = Mounted::new("1G");
    let d = m.path("many");
    fs::create_dir(&d).unwrap();
    const N: usize = 100_000;
    let name = |i: usize| format!("entry-{i:06}");
    let dc = cstr(&d);
    // SAFETY: open of a directory path.
    let dfd = unsafe { libc::open(dc.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(dfd >= 0);
    for i in 0..N {
        let c = cstr(name(i));
        // SAFETY: openat relative to an open directory fd; the fd is closed right away.
        let fd = unsafe { libc::openat(dfd, c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644) };
        assert!(fd >= 0, "create {}: {}", name(i), std::io::Error::last_os_error());
        // SAFETY: fd just opened.
        unsafe { libc::close(fd) };
    }
    // SAFETY: closing our fd.
    unsafe { libc::close(dfd) };
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    m.remount();
    let d = m.path("many");
    for i in 0..N {
        let md = fs::symlink_metadata(d.join(name(i))).unwrap_or_else(|e| panic!("stat {}: {e}", name(i)));
        assert!(md.is_file());
    }
    assert_errno(fs::metadata(d.join("entry-x")), libc::ENOENT, "lookup of a missing name in a big directory");
    let listed = names(&d);
    assert_eq!(listed.len(), N, "readdir count");
    assert!(listed.iter().enumerate().all(|(i, n)| *n == name(i)), "readdir names");
    for i in 0..N {
        fs::remove_file(d.join(name(i))).unwrap_or_else(|e| panic!("unlink {}: {e}", name(i)));
    }
    assert!(names(&d).is_empty());
    fs::remove_dir(&d).unwrap();
    m.finish();
}
