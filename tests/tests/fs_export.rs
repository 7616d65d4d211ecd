//! End-to-end tests of file handles on a real FUSE mount: `name_to_handle_at` +
//! `open_by_handle_at`, which NFS re-export and handle-based tools (and xfstests generic/426,
//! 467, 477) rely on. A handle names an inode by (node id, generation); once the kernel has
//! forgotten the inode, or after a remount, only the filesystem can turn it back into a file,
//! and a handle of a deleted file must stay stale even when its inode number is reused.
use mafs_tests::fs_mount::*;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ). The libc crate has
/// no wrappers for the two calls, so they go through `syscall`.
#[repr(C)]
#[derive(Clone)]
struct Handle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

impl Handle {
    fn bytes(&self) -> (i32, Vec<u8>) {
        (self.handle_type, self.f_handle[..self.handle_bytes as usize].to_vec())
    }
}

fn name_to_handle(p: &Path) -> Handle {
    let mut h = Handle { handle_bytes: 128, handle_type: 0, f_handle: [0; 128] };
    let mut mount_id: libc::c_int = 0;
    let c = cstr(p);
    // SAFETY: valid C string, a handle buffer of handle_bytes bytes, a valid int pointer.
    let rc = unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, libc::AT_FDCWD, c.as_ptr(), &mut h as *mut Handle, &mut mount_id as *mut libc::c_int, 0)
    };
    assert!(rc == 0, "name_to_handle_at {}: {}", p.display(), io::Error::last_os_error());
    h
}

/// open_by_handle_at(mount root, handle, flags) (needs CAP_DAC_READ_SEARCH: the tests run as root).
fn open_by_handle(m: &Mounted, h: &Handle, flags: i32) -> io::Result<File> {
    let root = File::open(&m.mnt)?;
    // SAFETY: a valid directory fd and a handle filled by name_to_handle_at.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, root.as_raw_fd(), h as *const Handle, flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

fn openat(dir: &File, name: &str, flags: i32) -> io::Result<File> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn read_all(mut f: &File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read through the handle");
    v
}

/// The path the kernel knows an open file by: for a directory opened by handle this is only
/// right if the kernel could reconnect it to the root through "..".
fn fd_path(f: &File) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("readlink /proc/self/fd")
}

/// Evicts every unused dentry and inode (and clean pages), so the kernel forgets the mount's
/// inodes and must ask the filesystem to decode a handle. Nothing in a test holds them open.
fn drop_kernel_caches() {
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches (needs root)");
}

fn assert_no_errors_logged(m: &Mounted) {
    let log = m.log();
    assert!(!log.contains("ERROR"), "decoding handles must not log errors:\n{log}");
}

#[test]
fn a_file_handle_opens_the_file_after_the_kernel_forgot_the_inode() {
    let m = Mounted::new("64M");
    fs::create_dir_all(m.path("a/b")).unwrap();
    let top = m.path("top");
    let deep = m.path("a/b/deep");
    fs::write(&top, b"top file").unwrap();
    fs::write(&deep, b"deep file").unwrap();
    let (top_ino, deep_ino) = (fs::metadata(&top).unwrap().ino(), fs::metadata(&deep).unwrap().ino());
    let (ht, hd) = (name_to_handle(&top), name_to_handle(&deep));
    for round in 0..2 {
        drop_kernel_caches();
        let f = open_by_handle(&m, &ht, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("round {round}: open_by_handle_at(top) after drop_caches: {e}"));
        assert_eq!(read_all(&f), b"top file");
        assert_eq!(f.metadata().unwrap().ino(), top_ino);
        drop(f);
        drop_kernel_caches();
        let f = open_by_handle(&m, &hd, libc::O_RDWR)
            .unwrap_or_else(|e| panic!("round {round}: open_by_handle_at(a/b/deep) after drop_caches: {e}"));
        assert_eq!(f.metadata().unwrap().ino(), deep_ino);
        assert_eq!(read_all(&f), b"deep file");
        drop(f);
    }
    // A write through a handle lands in the file the path names.
    drop_kernel_caches();
    let f = open_by_handle(&m, &hd, libc::O_WRONLY | libc::O_APPEND).unwrap();
    std::io::Write::write_all(&mut &f, b"+").unwrap();
    drop(f);
    assert_eq!(fs::read(&deep).unwrap(), b"deep file+");
    assert_no_errors_logged(&m);
    m.finish();
}

#[test]
fn handles_survive_an_unmount_and_remount() {
    let mut m = Mounted::new("64M");
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("f"), b"root file").unwrap();
    fs::write(m.path("d/sub/g"), b"nested file").unwrap();
    let inos: Vec<u64> = ["f", "d/sub/g", "d/sub", ""].iter().map(|p| fs::metadata(m.path(p)).unwrap().ino()).collect();
    let handles: Vec<Handle> = ["f", "d/sub/g", "d/sub", ""].iter().map(|p| name_to_handle(&m.path(p))).collect();
    m.remount();
    // Straight after the mount: the kernel knows nothing but the root.
    let f = open_by_handle(&m, &handles[0], libc::O_RDONLY).unwrap_or_else(|e| panic!("open_by_handle_at(f) after remount: {e}"));
    assert_eq!((read_all(&f), f.metadata().unwrap().ino()), (b"root file".to_vec(), inos[0]));
    let g = open_by_handle(&m, &handles[1], libc::O_RDONLY).unwrap_or_else(|e| panic!("open_by_handle_at(d/sub/g) after remount: {e}"));
    assert_eq!((read_all(&g), g.metadata().unwrap().ino()), (b"nested file".to_vec(), inos[1]));
    let sub = open_by_handle(&m, &handles[2], libc::O_RDONLY | libc::O_DIRECTORY)
        .unwrap_or_else(|e| panic!("open_by_handle_at(d/sub) after remount: {e}"));
    assert_eq!(sub.metadata().unwrap().ino(), inos[2]);
    assert_eq!(fd_path(&sub), m.path("d/sub"), "a directory opened by handle is reconnected to its path");
    let root = open_by_handle(&m, &handles[3], libc::O_RDONLY | libc::O_DIRECTORY)
        .unwrap_or_else(|e| panic!("open_by_handle_at(root) after remount: {e}"));
    assert_eq!(root.metadata().unwrap().ino(), inos[3]);
    drop((f, g, sub, root));
    assert_no_errors_logged(&m);
    m.finish();
}

#[test]
fn a_directory_handle_resolves_dotdot_after_the_kernel_forgot_its_ancestors() {
    let m = Mounted::new("64M");
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::create_dir(m.path("x")).unwrap();
    fs::write(m.path("a/b/c/file"), b"in c").unwrap();
    let hc = name_to_handle(&m.path("a/b/c"));
    let hb = name_to_handle(&m.path("a/b"));
    let ino = |p: &str| fs::metadata(m.path(p)).unwrap().ino();
    let (a, b, c) = (ino("a"), ino("a/b"), ino("a/b/c"));

    drop_kernel_caches();
    let dc = open_by_handle(&m, &hc, libc::O_RDONLY | libc::O_DIRECTORY)
        .unwrap_or_else(|e| panic!("open_by_handle_at(a/b/c) after drop_caches: {e}"));
    assert_eq!(dc.metadata().unwrap().ino(), c);
    assert_eq!(fd_path(&dc), m.path("a/b/c"), "the kernel walked '..' up to the root");
    let up = openat(&dc, "..", libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert_eq!(up.metadata().unwrap().ino(), b, "'..' of a/b/c");
    let upup = openat(&up, "..", libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert_eq!(upup.metadata().unwrap().ino(), a, "'..' of a/b");
    assert_eq!(read_all(&openat(&dc, "file", libc::O_RDONLY).unwrap()), b"in c");
    drop((dc, up, upup));

    // After a directory moves to another parent, its handle and its ".." follow the move.
    fs::rename(m.path("a/b"), m.path("x/b")).unwrap();
    drop_kernel_caches();
    let db =
        open_by_handle(&m, &hb, libc::O_RDONLY | libc::O_DIRECTORY).unwrap_or_else(|e| panic!("open_by_handle_at(x/b) after rename: {e}"));
    assert_eq!(fd_path(&db), m.path("x/b"));
    let up = openat(&db, "..", libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert_eq!(up.metadata().unwrap().ino(), ino("x"), "'..' of a moved directory is its new parent");
    drop((db, up));
    drop_kernel_caches();
    let dc = open_by_handle(&m, &hc, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert_eq!(fd_path(&dc), m.path("x/b/c"));
    drop(dc);

    // A removed directory's handle is stale.
    fs::remove_file(m.path("x/b/c/file")).unwrap();
    fs::remove_dir(m.path("x/b/c")).unwrap();
    drop_kernel_caches();
    assert_errno(open_by_handle(&m, &hc, libc::O_RDONLY | libc::O_DIRECTORY), libc::ESTALE, "handle of a removed directory");
    assert_no_errors_logged(&m);
    m.finish();
}

#[test]
fn a_handle_of_a_deleted_file_never_opens_the_file_that_reused_its_inode_number() {
    let mut m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let old = d.join("old");
    fs::write(&old, b"old file").unwrap();
    let old_ino = fs::metadata(&old).unwrap().ino();
    let h_old = name_to_handle(&old);
    fs::remove_file(&old).unwrap();
    // The freed inode block becomes allocatable once its transaction commits (fsyncdir).
    File::open(&d).unwrap().sync_all().unwrap();

    // Stale before anything reuses the number: mafs is asked about a freed block.
    drop_kernel_caches();
    assert_errno(open_by_handle(&m, &h_old, libc::O_RDONLY), libc::ESTALE, "handle of a deleted file");

    // New files in the same directory take the lowest free block after it: the freed one.
    let mut reused = None;
    for i in 0..2000 {
        let p = d.join(format!("new{i}"));
        fs::write(&p, format!("new file {i}")).unwrap();
        if fs::metadata(&p).unwrap().ino() == old_ino {
            reused = Some(p);
            break;
        }
    }
    let new = reused.expect("no new file reused the deleted file's inode number");
    let want = fs::read(&new).unwrap();
    let h_new = name_to_handle(&new);
    assert_ne!(h_old.bytes(), h_new.bytes(), "the reused inode number must come with a new generation");

    // With the new file in the kernel's cache, the kernel itself compares generations...
    assert_errno(open_by_handle(&m, &h_old, libc::O_RDONLY), libc::ESTALE, "old handle, new file cached");
    // ...without it, mafs answers, and must tell the two files apart the same way.
    for phase in ["after drop_caches", "after remount"] {
        if phase == "after remount" {
            m.remount();
        } else {
            drop_kernel_caches();
        }
        assert_errno(open_by_handle(&m, &h_old, libc::O_RDONLY), libc::ESTALE, &format!("old handle {phase}"));
        let f = open_by_handle(&m, &h_new, libc::O_RDONLY).unwrap_or_else(|e| panic!("new handle {phase}: {e}"));
        assert_eq!(read_all(&f), want, "{phase}");
        assert_eq!(f.metadata().unwrap().ino(), old_ino);
        drop(f);
        assert_errno(open_by_handle(&m, &h_old, libc::O_RDONLY), libc::ESTALE, &format!("old handle, new file cached, {phase}"));
    }
    assert_no_errors_logged(&m);
    m.finish();
}
