//! End-to-end tests on a real FUSE mount: file contents (create/open/read/write, O_APPEND,
//! O_TRUNC, pread/pwrite, small inline files growing and shrinking), fallocate modes and
//! SEEK_DATA/SEEK_HOLE. Contents are checked byte for byte, also after a remount.
use mafs_tests::fs_mount::*;
use rand::{Rng, SeedableRng};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

/// Inline data lives in the inode block below this size.
const INLINE_MAX: usize = 3840;

#[test]
fn small_inline_files_grow_into_large_ones_and_shrink_back_byte_exact() {
    let mut m = Mounted::new("64M");
    let sizes = [0usize, 1, 100, INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1, 4095, 4096, 4097, 8191, 100_000, 1 << 20];
    for &n in &sizes {
        fs::write(m.path(format!("s{n}")), pattern(n as u64, n)).unwrap();
        assert_eq!(fs::metadata(m.path(format!("s{n}"))).unwrap().len(), n as u64);
    }
    // one file grown by appends across the inline limit, then cut back below it and regrown
    let p = m.path("grow");
    let mut model = Vec::new();
    let mut f = OpenOptions::new().create(true).append(true).open(&p).unwrap();
    for step in 0..40 {
        let chunk = pattern(1000 + step, 250);
        f.write_all(&chunk).unwrap();
        model.extend_from_slice(&chunk);
        if step % 7 == 0 {
            assert_eq!(fs::read(&p).unwrap(), model, "after {} bytes", model.len());
        }
    }
    assert!(model.len() > INLINE_MAX * 2);
    f.set_len(2000).unwrap();
    model.truncate(2000);
    assert_eq!(fs::read(&p).unwrap(), model, "cut back to an inline size");
    f.write_all(&pattern(77, 3000)).unwrap();
    model.extend_from_slice(&pattern(77, 3000));
    assert_eq!(fs::read(&p).unwrap(), model, "regrown past the inline limit");
    drop(f);
    m.remount();
    for &n in &sizes {
        assert!(fs::read(m.path(format!("s{n}"))).unwrap() == pattern(n as u64, n), "s{n} after remount");
    }
    assert_eq!(fs::read(&p).unwrap(), model, "grow after remount");
    m.finish();
}

#[test]
fn o_append_writes_at_the_end_and_o_trunc_empties() {
    let mut m = Mounted::new("64M");
    let p = m.path("log");
    fs::write(&p, b"start;").unwrap();
    {
        let mut a = OpenOptions::new().append(true).open(&p).unwrap();
        let mut b = OpenOptions::new().append(true).open(&p).unwrap();
        a.write_all(b"one;").unwrap();
        b.write_all(b"two;").unwrap();
        a.write_all(&[b'x'; 5000]).unwrap();
        b.write_all(b"end").unwrap();
    }
    let mut want = b"start;one;two;".to_vec();
    want.extend_from_slice(&[b'x'; 5000]);
    want.extend_from_slice(b"end");
    assert_eq!(fs::read(&p).unwrap(), want);
    let q = m.path("t");
    fs::write(&q, pattern(5, 20_000)).unwrap();
    let mut t = OpenOptions::new().write(true).truncate(true).open(&q).unwrap();
    assert_eq!(fs::metadata(&q).unwrap().len(), 0, "O_TRUNC");
    t.write_all(b"new").unwrap();
    drop(t);
    assert_eq!(fs::read(&q).unwrap(), b"new");
    m.remount();
    assert_eq!(fs::read(&p).unwrap(), want);
    assert_eq!(fs::read(&q).unwrap(), b"new");
    m.finish();
}

#[test]
fn pwrite_and_pread_at_offsets_leave_zeros_in_between() {
    let m = Mounted::new("64M");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    let off = (1 << 20) + 17;
    f.write_all_at(b"far away", off).unwrap();
    assert_eq!(f.metadata().unwrap().len(), off + 8);
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, 4096 * 3 + 5).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "unwritten range reads as zeros");
    let mut got = [0u8; 8];
    f.read_exact_at(&mut got, off).unwrap();
    assert_eq!(&got, b"far away");
    // a read past EOF returns what is there
    let mut tail = [0u8; 100];
    assert_eq!(f.read_at(&mut tail, off + 4).unwrap(), 4);
    assert_eq!(f.read_at(&mut tail, off + 1000).unwrap(), 0);
    // across block boundaries
    f.write_all_at(&pattern(9, 10_000), 4000).unwrap();
    let mut back = vec![0u8; 10_000];
    f.read_exact_at(&mut back, 4000).unwrap();
    assert!(back == pattern(9, 10_000));
    let mut edge = vec![0u8; 10];
    f.read_exact_at(&mut edge, 3995).unwrap();
    assert_eq!(&edge[..5], &[0; 5]);
    drop(f);
    m.finish();
}

#[test]
fn random_pwrites_and_truncates_match_a_model_across_remount() {
    let mut m = Mounted::new("128M");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let p = m.path("model");
    let mut model: Vec<u8> = Vec::new();
    File::create(&p).unwrap();
    for round in 0..3 {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        for op in 0..120 {
            match rng.gen_range(0..10) {
                0 => {
                    let n = rng.gen_range(0..(model.len() + 20_000).min(3 << 20));
                    f.set_len(n as u64).unwrap();
                    model.resize(n, 0);
                }
                _ => {
                    // mostly small writes near the inline limit, some large and far
                    let off = if rng.gen_bool(0.7) { rng.gen_range(0..8192) } else { rng.gen_range(0..(2 << 20)) };
                    let len = if rng.gen_bool(0.8) { rng.gen_range(1..5000) } else { rng.gen_range(1..300_000) };
                    let data = pattern(rng.gen(), len);
                    f.write_all_at(&data, off as u64).unwrap();
                    if model.len() < off + len {
                        model.resize(off + len, 0);
                    }
                    model[off..off + len].copy_from_slice(&data);
                }
            }
            if op % 10 == 0 {
                let mut got = Vec::new();
                File::open(&p).unwrap().read_to_end(&mut got).unwrap();
                assert!(
                    got.len() == model.len() && checksum(&got) == checksum(&model),
                    "round {round} op {op}: contents differ from the model (len {} vs {})",
                    got.len(),
                    model.len()
                );
            }
        }
        drop(f);
        m.remount();
        let got = fs::read(&p).unwrap();
        assert!(got.len() == model.len() && got == model, "round {round}: contents after remount differ from the model");
    }
    m.finish();
}

#[test]
fn file_contents_and_times_survive_remount_after_release() {
    let mut m = Mounted::new("64M");
    let mut f = File::create(m.path("f")).unwrap();
    f.write_all(&pattern(11, 300_000)).unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"HELLO").unwrap();
    drop(f);
    let mut want = pattern(11, 300_000);
    want[10..15].copy_from_slice(b"HELLO");
    let md = fs::metadata(m.path("f")).unwrap();
    m.remount();
    let md2 = fs::metadata(m.path("f")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec(), md.ino(), md.size()), (md2.mtime(), md2.mtime_nsec(), md2.ino(), md2.size()));
    assert!(fs::read(m.path("f")).unwrap() == want);
    m.finish();
}

fn blocks(f: &File) -> u64 {
    f.metadata().unwrap().blocks()
}

#[test]
fn fallocate_mode_0_allocates_zeros_and_grows_size() {
    let mut m = Mounted::new("64M");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    let b0 = blocks(&f);
    fallocate(&f, 0, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20, "size grows to the allocated end");
    assert!(blocks(&f) >= b0 + 2048, "1 MiB allocated: st_blocks {b0} -> {}", blocks(&f));
    let mut buf = vec![1u8; 1 << 20];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "allocated range reads as zeros");
    // fallocate inside existing data keeps it
    f.write_all_at(b"keep me", 100).unwrap();
    fallocate(&f, 0, 0, 8192).unwrap();
    let mut k = [0u8; 7];
    f.read_exact_at(&mut k, 100).unwrap();
    assert_eq!(&k, b"keep me");
    // a small file stays readable when fallocate extends it
    let g = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("g")).unwrap();
    g.write_all_at(b"inline", 0).unwrap();
    fallocate(&g, 0, 0, 10_000).unwrap();
    assert_eq!(g.metadata().unwrap().len(), 10_000);
    let mut h = vec![0u8; 10_000];
    g.read_exact_at(&mut h, 0).unwrap();
    assert_eq!(&h[..6], b"inline");
    assert!(h[6..].iter().all(|&b| b == 0));
    drop((f, g));
    m.remount();
    let f = File::open(m.path("f")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert!(blocks(&f) >= 2048);
    drop(f);
    m.finish();
}

#[test]
fn fallocate_keep_size_allocates_without_changing_size() {
    let m = Mounted::new("64M");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    f.write_all_at(&pattern(2, 10_000), 0).unwrap();
    let b0 = blocks(&f);
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 4 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10_000, "KEEP_SIZE leaves st_size");
    assert!(blocks(&f) >= b0 + 8000, "KEEP_SIZE still allocates: st_blocks {b0} -> {}", blocks(&f));
    let mut got = vec![0u8; 10_000];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == pattern(2, 10_000));
    // writing into the preallocated tail works and reads back
    f.write_all_at(b"tail", 3 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (3 << 20) + 4);
    let mut z = vec![1u8; 4096];
    f.read_exact_at(&mut z, 2 << 20).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    drop(f);
    m.finish();
}

#[test]
fn punch_hole_zeros_the_middle_and_frees_blocks() {
    let mut m = Mounted::new("64M");
    let len = 1usize << 20;
    let data = pattern(3, len);
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    let b0 = blocks(&f);
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 256 << 10, 256 << 10).unwrap();
    // a partial-block punch too
    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 1000, 5000).unwrap();
    let mut want = data.clone();
    want[256 << 10..512 << 10].fill(0);
    want[1000..6000].fill(0);
    let check = |f: &File| {
        assert_eq!(f.metadata().unwrap().len(), len as u64, "punch keeps the size");
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, 0).unwrap();
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(first_bad.is_none(), "contents differ after punch at byte {first_bad:?}");
    };
    check(&f);
    assert!(blocks(&f) + 512 <= b0, "256 KiB punched: st_blocks {b0} -> {}", blocks(&f));
    assert_errno(fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096), libc::EOPNOTSUPP, "PUNCH_HOLE without KEEP_SIZE");
    drop(f);
    m.remount();
    let f = File::open(m.path("f")).unwrap();
    check(&f);
    drop(f);
    m.finish();
}

#[test]
fn zero_range_zeros_bytes_and_can_extend_the_file() {
    let mut m = Mounted::new("64M");
    let len = 600_000usize;
    let data = pattern(4, len);
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    f.write_all_at(&data, 0).unwrap();
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 100_000, 100_123).unwrap();
    let mut want = data.clone();
    want[100_000..200_123].fill(0);
    let mut got = vec![0u8; len];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "zero range content, first difference at {:?}", got.iter().zip(&want).position(|(a, b)| a != b));
    assert_eq!(f.metadata().unwrap().len(), len as u64);
    // past EOF: grows unless KEEP_SIZE
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, len as u64, 10_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len as u64);
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, len as u64, 10_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len as u64 + 10_000);
    drop(f);
    m.remount();
    let got = fs::read(m.path("f")).unwrap();
    want.resize(len + 10_000, 0);
    assert!(got == want, "zero range content after remount");
    m.finish();
}

#[test]
fn seek_data_and_seek_hole_find_the_known_holes() {
    let mut m = Mounted::new("64M");
    let p = m.path("sparse");
    const K: u64 = 4096;
    {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        // data [0,4K), hole [4K,1M), data [1M,1M+8K), hole [1M+8K, 4M)
        f.write_all_at(&pattern(1, K as usize), 0).unwrap();
        f.write_all_at(&pattern(2, 2 * K as usize), 1 << 20).unwrap();
        f.set_len(4 << 20).unwrap();
    }
    let check = |p: &std::path::Path| {
        let f = File::open(p).unwrap();
        let mb = 1u64 << 20;
        assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
        assert_eq!(lseek(&f, 0, libc::SEEK_HOLE).unwrap(), K);
        assert_eq!(lseek(&f, 100, libc::SEEK_HOLE).unwrap(), K);
        assert_eq!(lseek(&f, K as i64, libc::SEEK_DATA).unwrap(), mb);
        assert_eq!(lseek(&f, 5000, libc::SEEK_DATA).unwrap(), mb);
        assert_eq!(lseek(&f, 5000, libc::SEEK_HOLE).unwrap(), 5000, "already in a hole");
        assert_eq!(lseek(&f, mb as i64, libc::SEEK_HOLE).unwrap(), mb + 2 * K);
        assert_eq!(lseek(&f, (mb + 10) as i64, libc::SEEK_DATA).unwrap(), mb + 10);
        assert_errno(lseek(&f, (mb + 2 * K) as i64, libc::SEEK_DATA), libc::ENXIO, "SEEK_DATA in the trailing hole");
        assert_eq!(lseek(&f, (4 * mb - 1) as i64, libc::SEEK_HOLE).unwrap(), 4 * mb - 1);
        assert_errno(lseek(&f, (4 * mb) as i64, libc::SEEK_DATA), libc::ENXIO, "SEEK_DATA at EOF");
        assert_errno(lseek(&f, (4 * mb) as i64, libc::SEEK_HOLE), libc::ENXIO, "SEEK_HOLE at EOF");
        assert_errno(lseek(&f, (8 * mb) as i64, libc::SEEK_HOLE), libc::ENXIO, "SEEK_HOLE past EOF");
    };
    check(&p);
    // a small inline file is all data
    fs::write(m.path("small"), b"abc").unwrap();
    let s = File::open(m.path("small")).unwrap();
    assert_eq!(lseek(&s, 1, libc::SEEK_DATA).unwrap(), 1);
    assert_eq!(lseek(&s, 1, libc::SEEK_HOLE).unwrap(), 3);
    assert_errno(lseek(&s, 3, libc::SEEK_DATA), libc::ENXIO, "SEEK_DATA at EOF of a small file");
    drop(s);
    m.remount();
    check(&p);
    m.finish();
}

#[test]
fn o_direct_writes_and_reads_round_trip() {
    // O_DIRECT through FUSE: the kernel passes it on as direct I/O or refuses with EINVAL; when
    // the open succeeds, the data must be right.
    let m = Mounted::new("64M");
    let p = m.path("d");
    match OpenOptions::new().read(true).write(true).create(true).custom_flags(libc::O_DIRECT).open(&p) {
        Ok(f) => {
            let data = pattern(8, 1 << 16);
            f.write_all_at(&data, 0).unwrap();
            drop(f);
            assert!(fs::read(&p).unwrap() == data);
        }
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "O_DIRECT open: {e}"),
    }
    m.finish();
}

#[test]
fn shared_mmap_writes_reach_the_file() {
    let mut m = Mounted::new("64M");
    let p = m.path("mapped");
    let len = 3 * 4096 + 100;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
    f.set_len(len as u64).unwrap();
    let data = pattern(6, len);
    // SAFETY: a fresh shared mapping of a file we hold open, unmapped below; no other alias.
    unsafe {
        use std::os::unix::io::AsRawFd;
        let addr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, len);
        assert_eq!(libc::msync(addr, len, libc::MS_SYNC), 0, "msync: {}", std::io::Error::last_os_error());
        assert_eq!(libc::munmap(addr, len), 0);
    }
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(&p).unwrap() == data);
    m.remount();
    assert!(fs::read(m.path("mapped")).unwrap() == data, "mmap writes after remount");
    m.finish();
}

#[test]
fn concurrent_writers_of_disjoint_ranges_and_files_all_land() {
    let m = Mounted::new("256M");
    let shared = m.path("shared");
    File::create(&shared).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (shared, own) = (shared.clone(), m.path(format!("own{t}")));
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(&shared).unwrap();
                let mut o = File::create(&own).unwrap();
                for i in 0..64u64 {
                    // stripes of 12 KiB + 1 byte, so writers share blocks at the edges
                    let stripe = 12289u64;
                    let k = i * 4 + t;
                    f.write_all_at(&pattern(k, stripe as usize), k * stripe).unwrap();
                    o.write_all(&pattern(1000 + k, 5000)).unwrap();
                }
            });
        }
    });
    let check = |m: &Mounted| {
        let got = fs::read(m.path("shared")).unwrap();
        let stripe = 12289usize;
        assert_eq!(got.len(), 256 * stripe);
        for k in 0..256usize {
            assert!(got[k * stripe..(k + 1) * stripe] == pattern(k as u64, stripe), "stripe {k}");
        }
        for t in 0..4u64 {
            let own = fs::read(m.path(format!("own{t}"))).unwrap();
            let want: Vec<u8> = (0..64u64).flat_map(|i| pattern(1000 + i * 4 + t, 5000)).collect();
            assert!(own == want, "own{t}");
        }
    };
    m.check_across_remount(check);
}

#[test]
fn copy_and_large_single_writes_round_trip() {
    let m = Mounted::new("128M");
    let data = pattern(12, (5 << 20) + 333);
    // one 5 MiB write(2) call: the kernel splits it into FUSE writes of at most max_write
    let mut f = File::create(m.path("src")).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    // std::fs::copy uses copy_file_range where it can; the result must match either way
    fs::copy(m.path("src"), m.path("dst")).unwrap();
    assert!(fs::read(m.path("dst")).unwrap() == data);
    // one big read(2)
    let mut back = vec![0u8; data.len()];
    File::open(m.path("dst")).unwrap().read_exact(&mut back).unwrap();
    assert!(back == data);
    m.finish();
}

#[test]
fn writes_into_holes_between_extents_keep_both_neighbours() {
    let mut m = Mounted::new("64M");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("f")).unwrap();
    let mut model = vec![0u8; 64 * 4096];
    f.set_len(model.len() as u64).unwrap();
    for blk in (0..64).step_by(4) {
        let d = pattern(blk, 4096);
        f.write_all_at(&d, blk * 4096).unwrap();
        model[blk as usize * 4096..(blk as usize + 1) * 4096].copy_from_slice(&d);
    }
    // fill the holes, partly, with writes that straddle block edges
    for blk in (2..62).step_by(4) {
        let off = blk * 4096 - 100;
        let d = pattern(500 + blk as u64, 4096 + 200);
        f.write_all_at(&d, off as u64).unwrap();
        model[off..off + d.len()].copy_from_slice(&d);
    }
    let mut got = vec![0u8; model.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == model);
    drop(f);
    m.remount();
    assert!(fs::read(m.path("f")).unwrap() == model, "after remount");
    m.finish();
}

#[test]
fn fallocate_and_seek_refuse_what_linux_refuses() {
    let m = Mounted::new("64M");
    fs::write(m.path("f"), b"data").unwrap();
    let ro = File::open(m.path("f")).unwrap();
    assert_errno(fallocate(&ro, 0, 0, 4096), libc::EBADF, "fallocate on a read-only descriptor");
    let rw = OpenOptions::new().read(true).write(true).open(m.path("f")).unwrap();
    assert_errno(fallocate(&rw, 0, 0, 0), libc::EINVAL, "fallocate of length 0");
    assert_errno(fallocate(&rw, 0x100, 0, 4096), libc::EOPNOTSUPP, "unknown fallocate mode bits");
    assert_errno(lseek(&rw, -1, libc::SEEK_DATA), libc::ENXIO, "SEEK_DATA from a negative offset");
    fs::create_dir(m.path("d")).unwrap();
    let d = File::open(m.path("d")).unwrap();
    assert_errno(fallocate(&d, 0, 0, 4096), libc::EBADF, "fallocate on a directory descriptor");
    drop((ro, rw, d));
    m.finish();
}

#[test]
fn mount_with_direct_io_round_trips_data() {
    let mut m = Mounted::unmounted("128M", &["--slots", "1"]);
    m.mount_with(&["--direct-io"]);
    let big = pattern(13, (3 << 20) + 77);
    fs::write(m.path("big"), &big).unwrap();
    fs::write(m.path("small"), b"small").unwrap();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.path("odd")).unwrap();
    f.write_all_at(b"odd", 12345).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount_clean();
    m.mount_with(&["--direct-io"]);
    assert!(fs::read(m.path("big")).unwrap() == big);
    assert_eq!(fs::read(m.path("small")).unwrap(), b"small");
    let odd = fs::read(m.path("odd")).unwrap();
    assert_eq!(odd.len(), 12348);
    assert!(odd[..12345].iter().all(|&b| b == 0) && &odd[12345..] == b"odd");
    m.finish();
}

#[test]
fn reading_updates_atime_relatime_style() {
    let m = Mounted::new("64M");
    let p = m.path("f");
    fs::write(&p, b"data").unwrap();
    utimensat(&p, (100, 0), (200, 0)).unwrap();
    fs::read(&p).unwrap();
    let a1 = fs::metadata(&p).unwrap().atime();
    assert!(a1 > 200, "a read after a change updates atime (atime {a1})");
    // atime now newer than mtime and ctime: another read within a day leaves it alone
    let md = fs::metadata(&p).unwrap();
    fs::read(&p).unwrap();
    let md2 = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (md2.atime(), md2.atime_nsec()), "relatime: no update on a second read");
    assert_eq!(md2.mtime(), 200, "reading does not touch mtime");
    m.finish();
}
