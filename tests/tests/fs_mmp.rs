//! Multi-mount protection: a volume mounted `--standalone` on one host cannot be mounted,
//! checked or formatted by another host attached to the same device, and the other host can
//! take it over once the first is dead. The second host is played by a UTS namespace with
//! another hostname, reaching the volume through a loop device (so the volume claim's flock,
//! which only works within one host, does not stop it: only MMP can).
use mafs_tests::fs_mount::*;
use mafs_tests::{mafs_bin, wait_until};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().expect("losetup");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// `mafs ARGS` as host "otherhost".
fn as_other_host(args: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-u", "sh", "-c", &format!("hostname otherhost && exec '{}' {args}", mafs_bin().display())]);
    c.stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run")
}

fn refused_naming_this_host(out: &Output, what: &str) {
    let text = String::from_utf8_lossy(&out.stderr);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert!(!out.status.success(), "{what} succeeded while the volume is mounted on another host");
    assert!(text.contains(&format!("in use by {}", host.trim())) && text.contains("--override-mmp"), "{what}: {text}");
}

#[test]
fn another_host_cannot_mount_check_or_format_a_mounted_volume_and_takes_over_a_dead_one() {
    let mut m = Mounted::new("256M");
    std::fs::write(m.path("from-first-host"), b"1").expect("write");
    let lo = Loop::attach(&m.vol);
    let mnt2 = m.scratch().join("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir");

    let out = run(as_other_host(&format!("mount {} '{}' --standalone", lo.0, mnt2.display())));
    refused_naming_this_host(&out, "mount");
    assert!(!is_mounted(&mnt2));
    let out = run(as_other_host(&format!("fsck {}", lo.0)));
    assert_eq!(out.status.code(), Some(8));
    refused_naming_this_host(&out, "fsck");
    let out = run(as_other_host(&format!("mkfs {} --force", lo.0)));
    refused_naming_this_host(&out, "mkfs --force");
    assert_eq!(std::fs::read(m.path("from-first-host")).expect("still there"), b"1");

    // The first host dies: its sequence stops, and the other host recovers the slot.
    m.kill9();
    let started = Instant::now();
    let mut second: Child = as_other_host(&format!("mount {} '{}' --standalone", lo.0, mnt2.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mount");
    assert!(wait_until(Duration::from_secs(20), || is_mounted(&mnt2)), "the other host could not take over a dead host's slot");
    assert!(started.elapsed() >= Duration::from_secs(2), "took over without watching the slot");
    assert_eq!(std::fs::read(mnt2.join("from-first-host")).expect("read"), b"1");
    umount2(&mnt2, 0).expect("umount");
    assert!(second.wait().expect("wait").success());
    let (code, text) = m.fsck();
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_second_path_to_the_same_device_on_one_host_is_refused_too() {
    let m = Mounted::new("256M");
    let lo = Loop::attach(&m.vol);
    let mnt2 = m.scratch().join("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir");
    // Same hostname, another file (the loop device): the flock does not see it, MMP does.
    let out = Command::new(mafs_bin()).args(["mount", &lo.0]).arg(&mnt2).arg("--standalone").stdin(Stdio::null()).output().expect("mount");
    refused_naming_this_host(&out, "a second mount through a loop device");
    assert!(!is_mounted(&mnt2));
    m.finish();
}
