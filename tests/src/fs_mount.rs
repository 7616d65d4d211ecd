//! Real FUSE mounts of a scratch mafs volume for the `fs_*` end-to-end tests: [`Mounted`] makes
//! a volume file in a temporary folder, mounts it with `mafs mount --standalone` as a child
//! process and unmounts it on drop; plus thin `libc` wrappers returning `io::Result` so tests
//! can assert exact errno values.
use crate::{mafs_bin, wait_until};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// How long a mount may take to appear and an unmount to finish before a test gives up.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `mafs ARGS` to completion.
pub fn mafs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(mafs_bin()).args(args).stdin(Stdio::null()).output().expect("run mafs")
}

/// Exit code (or 128 + signal) and stdout + stderr of a finished command.
pub fn code_and_text(o: &Output) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    let code = o.status.code().unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0));
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (code, text)
}

/// Formats `vol` with `mafs mkfs VOL --size SIZE EXTRA...`; panics with mafs's output on failure.
pub fn mkfs(vol: &Path, size: &str, extra: &[&str]) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("mkfs"), vol.as_os_str(), OsStr::new("--size"), OsStr::new(size)];
    args.extend(extra.iter().map(OsStr::new));
    let o = mafs(&args);
    let (code, text) = code_and_text(&o);
    assert_eq!(code, 0, "mafs mkfs {} --size {size} failed:\n{text}", vol.display());
}

/// True if `path` is a mount point in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.as_os_str().as_bytes().to_vec();
    let mounts = std::fs::read("/proc/self/mounts").unwrap_or_default();
    mounts.split(|&b| b == b'\n').any(|line| {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        f.len() > 2 && unescape_mount_field(f[1]) == want
    })
}

fn unescape_mount_field(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 3 < f.len() && f[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// umount2(path, flags).
pub fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let c = cstr(path);
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) })
}

/// A scratch volume file, mounted (most of the time) by a `mafs mount --standalone` child.
pub struct Mounted {
    dir: tempfile::TempDir,
    /// The volume file.
    pub vol: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mounted {
    /// A fresh volume of `size` (a mkfs size such as "256M"), mounted.
    pub fn new(size: &str) -> Mounted {
        Self::with_mkfs_args(size, &["--slots", "1"])
    }

    /// A fresh volume formatted with extra mkfs arguments, mounted.
    pub fn with_mkfs_args(size: &str, extra: &[&str]) -> Mounted {
        let m = Self::unmounted(size, extra);
        let mut m = m;
        m.mount();
        m
    }

    /// A fresh formatted volume, not mounted yet.
    pub fn unmounted(size: &str, extra: &[&str]) -> Mounted {
        let dir = tempfile::Builder::new().prefix("mafs-fs-test.").tempdir().expect("tempdir");
        let dir_path = std::fs::canonicalize(dir.path()).expect("canonicalize tempdir");
        let vol = dir_path.join("volume.img");
        let mnt = dir_path.join("mnt");
        std::fs::create_dir(&mnt).expect("create mount point");
        // Let other users (the ACL tests run commands as nobody) reach the mount point.
        std::fs::set_permissions(&dir_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod tempdir");
        mkfs(&vol, size, extra);
        Mounted { log: dir_path.join("mount.log"), dir, vol, mnt, child: None }
    }

    /// `mnt/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The temporary folder holding the volume and mount point (for files outside the mount).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_mounted(&self) -> bool {
        self.child.is_some()
    }

    /// Mounts the volume; panics with the mount process's log if it does not come up.
    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    /// Mounts with extra `mafs mount` arguments; panics with the mount log if it fails.
    pub fn mount_with(&mut self, extra: &[&str]) {
        if let Err(e) = self.try_mount(extra) {
            panic!("mount failed: {e}");
        }
    }

    /// Starts `mafs mount VOL MNT --standalone EXTRA...` and waits until the mount point is
    /// mounted. If the process exits first, returns its exit code and its output.
    pub fn try_mount(&mut self, extra: &[&str]) -> Result<(), String> {
        assert!(self.child.is_none(), "already mounted");
        let mut args = vec!["--standalone"];
        args.extend_from_slice(extra);
        self.child = Some(spawn_mount(&self.vol, &self.mnt, &args, &self.log)?);
        Ok(())
    }

    pub fn unmount(&mut self) -> ExitStatus {
        let child = self.child.take().expect("not mounted");
        unmount_child(&self.mnt, child)
    }

    pub fn remount(&mut self) {
        self.unmount_clean();
        self.mount();
    }

    /// Unmounts, asserting that the mount process exited 0 without a panic and that
    /// `mafs fsck` exits 0.
    pub fn unmount_clean(&mut self) {
        let st = self.unmount();
        assert!(st.success(), "mafs mount exited with {st}:\n{}", self.log());
        self.assert_no_panic();
        self.assert_fsck_clean();
    }

    /// kill -9 of the mount process, then a lazy unmount of the dead mount.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("not mounted");
        let _ = child.kill();
        let _ = child.wait();
        if umount2(&self.mnt, 0).is_err() {
            let _ = umount2(&self.mnt, libc::MNT_DETACH);
        }
        assert!(wait_until(MOUNT_TIMEOUT, || !is_mounted(&self.mnt)), "dead mount would not go away");
    }

    /// `mafs fsck VOL`: exit code and output.
    pub fn fsck(&self) -> (i32, String) {
        code_and_text(&mafs([OsStr::new("fsck"), self.vol.as_os_str()]))
    }

    /// `mafs fsck --repair VOL`: exit code and output.
    pub fn fsck_repair(&self) -> (i32, String) {
        code_and_text(&mafs([OsStr::new("fsck"), OsStr::new("--repair"), self.vol.as_os_str()]))
    }

    pub fn assert_fsck_clean(&self) {
        let (code, text) = self.fsck();
        assert_eq!(code, 0, "mafs fsck is not clean:\n{text}");
    }

    /// Everything every mount process of this volume wrote to stdout/stderr.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, start: u64) -> String {
        log_since(&self.log, start)
    }

    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "a mount process panicked:\n{log}");
    }

    /// Runs `check` now, then again after a clean remount (fsck clean in between), and ends the
    /// test with a clean unmount: the usual way to prove that something persists.
    pub fn check_across_remount(mut self, check: impl Fn(&Mounted)) {
        check(&self);
        self.remount();
        check(&self);
        self.finish();
    }

    /// Unmounts cleanly with fsck clean: the usual end of a test.
    pub fn finish(mut self) {
        if self.is_mounted() {
            self.unmount_clean();
        }
    }
}

/// The text of `log` from byte `start` on.
pub fn log_since(log: &Path, start: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(log) {
        let mut all = Vec::new();
        let _ = f.read_to_end(&mut all);
        s = String::from_utf8_lossy(&all[(start as usize).min(all.len())..]).into_owned();
    }
    s
}

/// Starts `mafs mount VOL MNT ARGS...` with its output appended to `log`, and waits until the
/// mount point appears (the child is returned) or the process exits first (its log is the error).
pub fn spawn_mount(vol: &Path, mnt: &Path, args: &[&str], log: &Path) -> Result<Child, String> {
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let out = OpenOptions::new().create(true).append(true).open(log).expect("open mount log");
    let mut child = Command::new(mafs_bin())
        .arg("mount")
        .arg(vol)
        .arg(mnt)
        .args(args)
        // `MAFS_TEST_MOUNT_LOG=debug` (or any filter) to see more of a failing test's nodes.
        .env("MAFS_LOG", std::env::var("MAFS_TEST_MOUNT_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .spawn()
        .expect("spawn mafs mount");
    let mut exited = None;
    let up = wait_until(MOUNT_TIMEOUT, || {
        if is_mounted(mnt) {
            return true;
        }
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            return true;
        }
        false
    });
    match exited {
        Some(st) if !is_mounted(mnt) => Err(format!("mafs mount exited with {st} before mounting:\n{}", log_since(log, start))),
        _ if !up => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("mount point did not appear within {MOUNT_TIMEOUT:?}:\n{}", log_since(log, start)))
        }
        _ => Ok(child),
    }
}

/// Unmounts `mnt` (retrying while busy) and waits for its mount process `child` to exit.
pub fn unmount_child(mnt: &Path, mut child: Child) -> ExitStatus {
    let r = wait_until(Duration::from_secs(20), || match umount2(mnt, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EINVAL) && !is_mounted(mnt),
    });
    if !r {
        let _ = umount2(mnt, libc::MNT_DETACH);
    }
    let st = wait_child(&mut child);
    assert!(r, "umount {} kept failing (EBUSY?); detached it", mnt.display());
    st
}

pub fn wait_child(child: &mut Child) -> ExitStatus {
    let mut st = None;
    if !wait_until(MOUNT_TIMEOUT, || {
        st = child.try_wait().ok().flatten();
        st.is_some()
    }) {
        let _ = child.kill();
        return child.wait().expect("wait mount process");
    }
    st.expect("exit status")
}

impl Drop for Mounted {
    fn drop(&mut self) {
        tear_down(&self.mnt, self.child.take());
    }
}

/// A test's end, whatever state it left: unmounts `mnt` (detaching it if busy), reaps its
/// mount process, and detaches a mount left behind by a process that died.
pub fn tear_down(mnt: &Path, child: Option<Child>) {
    if let Some(mut child) = child {
        if umount2(mnt, 0).is_err() {
            let _ = umount2(mnt, libc::MNT_DETACH);
        }
        wait_child(&mut child);
    }
    if is_mounted(mnt) {
        let _ = umount2(mnt, libc::MNT_DETACH);
    }
}

// ---------------------------------------------------------------------------------------------
// errno helpers and libc wrappers

/// The errno of a failed result (panics, naming `what`, if it succeeded).
pub fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("error without errno: {e}")),
    }
}

/// Asserts that `r` failed with exactly `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {} , got Ok({v:?})", errno_name(errno)),
        Err(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: expected {}, got {e}", errno_name(errno)),
    }
}

pub fn errno_name(e: i32) -> String {
    format!("{} (errno {e})", io::Error::from_raw_os_error(e))
}

pub fn cstr(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).expect("path without NUL")
}

pub fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cvt_size(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid C strings.
    cvt(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) })
}

pub fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fd owned by `f`.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) })
}

pub fn lseek(f: &File, off: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: fd owned by `f`.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) })
}

/// utimensat(AT_FDCWD, p, [atime, mtime], 0); use `libc::UTIME_NOW` / `UTIME_OMIT` in tv_nsec.
pub fn utimensat(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cstr(p);
    let ts = [libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 }, libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 }];
    // SAFETY: valid C string and a two-element array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) })
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the given length.
    cvt(unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

/// getxattr into a buffer of `size` bytes (0 asks for the length): bytes returned.
pub fn getxattr_sized(p: &Path, name: &str, size: usize) -> io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = cvt_size(unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
    if size == 0 {
        return Ok(vec![0u8; r]);
    }
    buf.truncate(r);
    Ok(buf)
}

pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    getxattr_sized(p, name, 65536)
}

/// listxattr: names, in the order the filesystem gives them.
pub fn listxattr(p: &Path) -> io::Result<Vec<String>> {
    Ok(listxattr_sized(p, 65536)?.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

pub fn listxattr_sized(p: &Path, size: usize) -> io::Result<Vec<u8>> {
    let c = cstr(p);
    let mut buf = vec![0u8; size];
    // SAFETY: valid C string and a buffer of the given length.
    let r = cvt_size(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
    buf.truncate(r);
    Ok(buf)
}

pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) })
}

pub fn statfs(p: &Path) -> libc::statfs {
    let c = cstr(p);
    // SAFETY: zeroed POD out-parameter.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-parameter.
    cvt(unsafe { libc::statfs(c.as_ptr(), &mut s) }).expect("statfs");
    s
}

/// A directory fd read with getdents64 in small batches, so a test can change the directory
/// between batches; entries as (d_off, name).
pub struct DirReader {
    fd: File,
}

impl DirReader {
    pub fn open(p: &Path) -> DirReader {
        let fd = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(p).expect("open directory");
        DirReader { fd }
    }

    /// One getdents64 call with a buffer of `buf_len` bytes; an empty result is the end.
    pub fn next_batch(&mut self, buf_len: usize) -> io::Result<Vec<(i64, Vec<u8>)>> {
        let mut buf = vec![0u8; buf_len];
        // SAFETY: buffer of buf_len bytes.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, self.fd.as_raw_fd(), buf.as_mut_ptr(), buf_len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut o = 0usize;
        while o < n as usize {
            let d_off = i64::from_ne_bytes(buf[o + 8..o + 16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[o + 16..o + 18].try_into().unwrap()) as usize;
            let name = &buf[o + 19..o + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            out.push((d_off, name[..end].to_vec()));
            o += reclen;
        }
        Ok(out)
    }

    /// lseek on the directory (seekdir to a d_off cookie).
    pub fn seek(&mut self, off: i64) {
        lseek(&self.fd, off, libc::SEEK_SET).expect("seek directory");
    }
}

/// All names in a directory (without `.` and `..`), via std::fs::read_dir.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Deterministic pseudo-random bytes (the same `seed` and `len` always give the same data).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64-bit of `data` (a checksum for tests).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Runs `sh -c CMD` as user and group 65534 (nobody) with no supplementary groups.
pub fn run_as_nobody(cmd: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

/// Block type magic numbers of the mafs on-disk header (u32 at byte 0 of a metadata block).
pub const MAGIC_INODE: u32 = 0x4d41_494e;
pub const MAGIC_TREE_NODE: u32 = 0x4d41_5452;

/// Metadata blocks of the volume file whose header says `magic` and whose recorded block number
/// is where they lie (so journal copies are skipped). Skips holes with SEEK_DATA.
pub fn find_blocks(vol: &Path, magic: u32) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = File::open(vol).expect("open volume");
    let len = f.metadata().expect("stat volume").len();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut off = 0u64;
    while off < len {
        let data = match lseek(&f, off as i64, libc::SEEK_DATA) {
            Ok(d) => d / 4096 * 4096,
            Err(_) => break,
        };
        let hole = lseek(&f, data as i64, libc::SEEK_HOLE).unwrap_or(len);
        let mut b = data;
        while b < hole {
            f.read_exact_at(&mut buf, b).expect("read volume");
            let blk = b / 4096;
            if u32::from_le_bytes(buf[0..4].try_into().unwrap()) == magic && u64::from_le_bytes(buf[8..16].try_into().unwrap()) == blk {
                out.push(blk);
            }
            b += 4096;
        }
        off = hole.max(data + 4096);
    }
    out
}

/// Overwrites `len` bytes at byte `at` of block `blk` of the volume file with 0xA5.
pub fn corrupt_block(vol: &Path, blk: u64, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(vol).expect("open volume for writing");
    f.write_all_at(&vec![0xA5u8; len], blk * 4096 + at).expect("corrupt block");
    f.sync_all().expect("sync volume");
}

/// The value of a `name: value` line of `mafs info VOL`.
pub fn info_field(vol: &Path, name: &str) -> String {
    let (code, text) = code_and_text(&mafs([OsStr::new("info"), vol.as_os_str()]));
    assert_eq!(code, 0, "mafs info failed:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no `{name}:` in mafs info output:\n{text}"))
}
