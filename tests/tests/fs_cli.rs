//! The `mafs` command as an operator meets it: mkfs that will not destroy what is already on a
//! device and leaves nothing behind when it fails, fsck that does not write unless asked,
//! errors that name the volume, printing commands that stop quietly when their reader goes
//! away, a mount that shows as `fuse.mafs` and unmounts cleanly on Ctrl-C or SIGINT however
//! it was started, and no log noise from the ioctls every program sends.
use mafs_tests::fs_mount::*;
use mafs_tests::{mafs_bin, wait_until};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(args: &[&str], dir: &Path) -> (i32, String) {
    code_and_text(&Command::new(mafs_bin()).args(args).current_dir(dir).stdin(Stdio::null()).output().expect("run mafs"))
}

#[test]
fn mkfs_refuses_other_filesystems_and_data_and_leaves_nothing_behind_when_it_fails() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    // Nothing left behind by a refused geometry.
    let (code, text) = run(&["mkfs", "tiny", "--size", "1M"], d);
    assert_ne!(code, 0);
    assert!(text.contains("too small") && !text.contains("unsupported volume format"), "{text}");
    assert!(!d.join("tiny").exists(), "--size 1M left a file behind");
    let (code, text) = run(&["mkfs", "noslots", "--size", "1G", "--slots", "0"], d);
    assert_ne!(code, 0);
    assert!(text.contains("--slots"), "{text}");
    assert!(!d.join("noslots").exists(), "--slots 0 left a file behind");
    // An existing volume is neither overwritten nor grown by a refused mkfs.
    assert_eq!(run(&["mkfs", "vol", "--size", "1G"], d).0, 0);
    let (code, text) = run(&["mkfs", "vol", "--size", "2G"], d);
    assert_ne!(code, 0);
    assert!(text.contains("already holds a mafs volume") && text.contains("--force"), "{text}");
    assert_eq!(std::fs::metadata(d.join("vol")).expect("vol").len(), 1 << 30, "a refused mkfs grew the volume");
    // Another filesystem, random data: refused without --force, and left as they were.
    let ext4 = d.join("ext4.img");
    std::fs::File::create(&ext4).expect("img").set_len(64 << 20).expect("size");
    let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&ext4).status().expect("mkfs.ext4");
    assert!(st.success());
    let before = std::fs::read(&ext4).expect("read");
    let (code, text) = run(&["mkfs", "ext4.img"], d);
    assert_ne!(code, 0);
    assert!(text.contains("ext2/ext3/ext4"), "{text}");
    assert!(std::fs::read(&ext4).expect("read") == before, "mkfs changed the ext4 image");
    let random: Vec<u8> = (0..(100u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(d.join("data"), &random).expect("data");
    let (code, text) = run(&["mkfs", "data"], d);
    assert_ne!(code, 0);
    assert!(text.contains("holds data"), "{text}");
    assert!(std::fs::read(d.join("data")).expect("read") == random, "mkfs changed the data");
    assert_eq!(run(&["mkfs", "data", "--force"], d).0, 0, "--force formats it");
    // A directory is not a volume.
    std::fs::create_dir(d.join("dir")).expect("mkdir");
    let (code, text) = run(&["mkfs", "dir"], d);
    assert_ne!(code, 0);
    assert!(text.contains("dir is a directory"), "{text}");
}

#[test]
fn errors_name_the_volume_they_concern() {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(t.path().join("adir")).expect("mkdir");
    for args in [&["fsck", "missing.img"][..], &["info", "missing.img"], &["mount", "missing.img", "adir", "--standalone"]] {
        let (code, text) = run(args, t.path());
        assert_ne!(code, 0, "{args:?}");
        assert!(text.contains("missing.img") && !text.contains("at byte 0"), "{args:?}: {text}");
    }
    for args in [&["fsck", "adir"][..], &["info", "adir"]] {
        let (code, text) = run(args, t.path());
        assert_ne!(code, 0, "{args:?}");
        assert!(text.contains("adir is a directory"), "{args:?}: {text}");
    }
}

#[test]
fn printing_commands_stop_quietly_when_their_reader_goes_away() {
    let m = Mounted::unmounted("64M", &["--slots", "2"]);
    let vol = m.vol.to_str().expect("utf-8");
    for args in [&["info", vol][..], &["fsck", vol], &["lockd", "status", "--endpoints", "127.0.0.1:1"]] {
        // Stdout is a pipe nobody reads any more, as `| head -1` is once head has its line.
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors we own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors from pipe; the read end is closed at once.
        let write_end = unsafe {
            libc::close(fds[0]);
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
        };
        let out = Command::new(mafs_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .expect("run mafs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn check_without_repair_writes_nothing_even_after_a_crash() {
    let mut m = Mounted::new("64M");
    let mut f = std::fs::File::create(m.path("f")).expect("create");
    std::io::Write::write_all(&mut f, &[5u8; 100_000]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    m.kill9();
    let before = std::fs::read(&m.vol).expect("read volume");
    let (code, text) = m.fsck();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("nothing was written"), "{text}");
    assert!(std::fs::read(&m.vol).expect("read volume") == before, "fsck without --repair wrote to the volume");
    // The mount replays it for real.
    m.mount();
    assert_eq!(std::fs::read(m.path("f")).expect("read").len(), 100_000);
    m.finish();
}

#[test]
fn the_mount_is_listed_as_fuse_mafs_with_its_volume_as_source() {
    let m = Mounted::new("64M");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.mnt.to_str().expect("utf-8")))
        .unwrap_or_else(|| panic!("{} not in /proc/mounts", m.mnt.display()));
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[2], "fuse.mafs", "{line}");
    assert_eq!(f[0], m.vol.to_str().expect("utf-8"), "{line}");
    let df = Command::new("df").arg("--output=fstype,source").arg(&m.mnt).output().expect("df");
    let df = String::from_utf8_lossy(&df.stdout);
    assert!(df.contains("fuse.mafs") && df.contains(m.vol.to_str().expect("utf-8")), "{df}");
    m.finish();
}

#[test]
fn programs_probing_terminal_ioctls_get_enotty_without_log_lines() {
    let m = Mounted::new("64M");
    let p = m.path("py.txt");
    let st = Command::new("python3")
        .args(["-c", &format!("for i in range(50):\n    open('{}', 'w').write('x')\nprint(open('{}').read())", p.display(), p.display())])
        .status()
        .expect("python3");
    assert!(st.success());
    let f = std::fs::File::open(&p).expect("open");
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS into a termios we own.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::TCGETS, &mut term) };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOTTY));
    drop(f);
    let log = m.log();
    assert!(!log.contains("ioctl") && !log.contains("WARN"), "{log}");
    m.finish();
}

/// Waits for a mount process started outside `Mounted` to come up.
fn wait_mounted(mnt: &Path) {
    assert!(wait_until(Duration::from_secs(20), || is_mounted(mnt)), "{} did not mount", mnt.display());
}

fn slot_is_clean(vol: &Path) -> bool {
    let out = Command::new(mafs_bin()).arg("info").arg(vol).output().expect("info");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().any(|l| l.trim_start().starts_with("0 ") && l.contains("clean"))
}

#[test]
fn sigint_unmounts_cleanly_from_a_terminal_and_as_a_background_job() {
    let m = Mounted::unmounted("64M", &["--slots", "1"]);
    let mount = |pre: fn() -> std::io::Result<()>, stdin: Stdio| {
        let mut c = Command::new(mafs_bin());
        c.arg("mount").arg(&m.vol).arg(&m.mnt).arg("--standalone").stdin(stdin).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls in `pre`.
        unsafe { c.pre_exec(pre) };
        c.spawn().expect("mafs mount")
    };

    // A background job of a non-interactive shell starts with SIGINT ignored.
    let mut bg = mount(
        || {
            // SAFETY: setting a disposition in the child before exec.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
            Ok(())
        },
        Stdio::null(),
    );
    wait_mounted(&m.mnt);
    std::fs::write(m.path("a"), b"background").expect("write");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(bg.id() as i32, libc::SIGINT) };
    let gone = wait_until(Duration::from_secs(20), || bg.try_wait().ok().flatten().is_some());
    assert!(gone, "a background mount ignored SIGINT");
    assert!(bg.wait().expect("wait").success());
    assert!(!is_mounted(&m.mnt), "still mounted");
    assert!(slot_is_clean(&m.vol), "slot left in use");

    // Ctrl-C on the terminal the mount runs in.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we own from here on.
    assert_eq!(unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) }, 0);
    // SAFETY: fresh descriptors from openpty.
    let (mut master, slave) = unsafe {
        (
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master),
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave),
        )
    };
    let mut fg = mount(
        || {
            // SAFETY: a session of its own with the pty (stdin) as controlling terminal.
            unsafe {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            Ok(())
        },
        Stdio::from(slave),
    );
    wait_mounted(&m.mnt);
    assert_eq!(std::fs::read(m.path("a")).expect("read"), b"background");
    std::io::Write::write_all(&mut master, &[3]).expect("Ctrl-C");
    let gone = wait_until(Duration::from_secs(20), || fg.try_wait().ok().flatten().is_some());
    assert!(gone, "Ctrl-C did not end the mount");
    assert!(fg.wait().expect("wait").success(), "the mount died by the signal instead of unmounting");
    assert!(!is_mounted(&m.mnt), "still mounted");
    assert!(slot_is_clean(&m.vol), "slot left in use");
    let (code, text) = m.fsck();
    assert_eq!(code, 0, "{text}");
}

#[test]
fn umount_that_times_out_names_what_still_holds_the_volume() {
    let m = Mounted::new("64M");
    // Another mount namespace takes a copy of the mount and keeps it.
    let mut keeper = Command::new("unshare").args(["-m", "--propagation", "private", "sleep", "60"]).spawn().expect("unshare");
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(mafs_bin()).arg("umount").arg(&m.mnt).args(["--timeout", "2"]).output().expect("mafs umount");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("mount namespace") && text.contains(&keeper.id().to_string()) && text.contains("nsenter"), "{text}");
    assert!(!text.contains("in use by another mafs process"), "{text}");
    let _ = keeper.kill();
    let _ = keeper.wait();
}

#[test]
fn every_option_of_every_command_has_help_text() {
    let commands: &[&[&str]] = &[
        &["mkfs"],
        &["mount"],
        &["umount"],
        &["fsck"],
        &["info"],
        &["status"],
        &["cluster", "up"],
        &["cluster", "down"],
        &["lockd"],
        &["lockd", "status"],
        &["lockd", "dump"],
        &["lockd", "add-member"],
        &["lockd", "remove-member"],
        &["lock"],
    ];
    for cmd in commands {
        let out = Command::new(mafs_bin()).args(*cmd).arg("--help").output().expect("mafs --help");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with('-')) {
            // "  -x, --name <VALUE>  what it does", or the text on the lines below, indented more.
            let same_line = line.trim_start().split("  ").filter(|part| !part.trim().is_empty()).count() >= 2;
            let below =
                lines.get(i + 1).is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-') && indent(n) > indent(line));
            assert!(same_line || below, "mafs {}: option without help text: {line:?}", cmd.join(" "));
        }
    }
}

#[test]
fn fsck_of_a_large_volume_shows_its_progress_on_a_terminal() {
    use std::io::Read;
    let t = tempfile::tempdir().expect("tempdir");
    let vol = t.path().join("big.img");
    let (code, text) = run(&["mkfs", vol.to_str().expect("utf-8"), "--size", "512G", "--slots", "1"], t.path());
    assert_eq!(code, 0, "{text}");
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we own from here on.
    assert_eq!(unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) }, 0);
    // SAFETY: fresh descriptors from openpty.
    let (mut master, slave) = unsafe {
        (
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master),
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave),
        )
    };
    let mut child = Command::new(mafs_bin())
        .arg("fsck")
        .arg(&vol)
        .stdin(Stdio::null())
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("fsck");
    // Read while it runs: a terminal nobody reads fills up and blocks the writer.
    let mut seen = Vec::new();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    let st = loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
            let mut b = [0u8; 4096];
            if let Ok(n) = master.read(&mut b) {
                seen.extend_from_slice(&b[..n]);
            }
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
    };
    assert_eq!(st.code(), Some(0));
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("allocation groups"), "no progress shown: {seen:?}");
}
