//! End-to-end tests on a real FUSE mount: what writes, truncates, chowns, fallocates and ACL
//! changes take from a file — the set-ID bits and the file capabilities — follow the VFS's
//! rules, and the kernel shows the result at once. mafs asks the kernel for
//! FUSE_HANDLE_KILLPRIV_V2, so these rules are ours to keep, not the kernel's (they are in
//! fs/core/src/filesystem/setid.rs). "nobody" (uid 65534) stands for a writer without
//! CAP_FSETID.
use mafs_tests::fs_mount::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn file_with_mode(m: &Mounted, name: &str, mode: u32) -> std::path::PathBuf {
    let p = m.path(name);
    fs::write(&p, b"0123456789").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(self::mode(&p), mode, "chmod {mode:o}");
    p
}

fn as_nobody(cmd: &str) {
    let o = run_as_nobody(cmd);
    assert!(o.status.success(), "as nobody: {cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_write_by_a_user_without_cap_fsetid_drops_setuid_and_executable_setgid() {
    let m = Mounted::new("64M");
    let f = file_with_mode(&m, "both", 0o6777);
    as_nobody(&format!("echo more >> '{}'", f.display()));
    assert_eq!(mode(&f), 0o0777);
    assert_eq!(fs::read(&f).unwrap(), b"0123456789more\n");
    // Set-group-ID without group execute marks mandatory locking: a write keeps it.
    let g = file_with_mode(&m, "locking", 0o2666);
    as_nobody(&format!("echo more >> '{}'", g.display()));
    assert_eq!(mode(&g), 0o2666);
}

#[test]
fn a_write_by_root_keeps_the_setid_bits() {
    let m = Mounted::new("64M");
    let f = file_with_mode(&m, "suid", 0o6755);
    let mut w = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut w, b"root was here").unwrap();
    drop(w);
    assert_eq!(mode(&f), 0o6755);
}

#[test]
fn a_truncate_drops_setid_bits_only_for_a_caller_without_cap_fsetid() {
    let m = Mounted::new("64M");
    let f = file_with_mode(&m, "t", 0o6777);
    fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(3).unwrap();
    assert_eq!(mode(&f), 0o6777, "root (CAP_FSETID) truncates and keeps them");
    as_nobody(&format!("truncate -s 1 '{}'", f.display()));
    assert_eq!(mode(&f), 0o0777);
    assert_eq!(fs::metadata(&f).unwrap().len(), 1);
    // O_TRUNC is a truncate too.
    let g = file_with_mode(&m, "otrunc", 0o4777);
    as_nobody(&format!(": > '{}'", g.display()));
    assert_eq!(mode(&g), 0o0777);
    assert_eq!(fs::metadata(&g).unwrap().len(), 0);
}

#[test]
fn chown_drops_setid_bits_even_by_root_but_not_from_directories() {
    let m = Mounted::new("64M");
    let f = file_with_mode(&m, "f", 0o6755);
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    assert_eq!(mode(&f), 0o0755);
    assert_eq!(fs::metadata(&f).unwrap().uid(), 65534);
    let g = file_with_mode(&m, "locking", 0o2644);
    std::os::unix::fs::chown(&g, Some(65534), None).unwrap();
    assert_eq!(mode(&g), 0o2644, "set-group-ID without group execute stays");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    assert_eq!(mode(&d), 0o2775, "a directory keeps set-group-ID (inheritance)");
}

fn getcap(p: &Path) -> String {
    let o = Command::new("getcap").arg(p).output().expect("run getcap (Debian package libcap2-bin)");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn file_capabilities_go_on_any_write_truncate_or_chown_and_survive_otherwise() {
    let mut m = Mounted::new("64M");
    let names = ["written", "truncated", "chowned"];
    for n in names {
        let p = file_with_mode(&m, n, 0o755);
        let o = Command::new("setcap").args(["cap_net_raw+ep"]).arg(&p).output().expect("run setcap (Debian package libcap2-bin)");
        assert!(o.status.success(), "setcap: {}", String::from_utf8_lossy(&o.stderr));
        assert!(getcap(&p).contains("cap_net_raw"), "getcap: {}", getcap(&p));
    }
    // Reading, and a remount, keep them.
    assert_eq!(fs::read(m.path("written")).unwrap(), b"0123456789");
    m.remount();
    for n in names {
        assert!(getcap(&m.path(n)).contains("cap_net_raw"), "{n} after remount: {}", getcap(&m.path(n)));
    }
    let mut w = fs::OpenOptions::new().append(true).open(m.path("written")).unwrap();
    std::io::Write::write_all(&mut w, b"x").unwrap();
    drop(w);
    fs::OpenOptions::new().write(true).open(m.path("truncated")).unwrap().set_len(2).unwrap();
    std::os::unix::fs::chown(m.path("chowned"), Some(65534), None).unwrap();
    for n in names {
        assert_eq!(getcap(&m.path(n)), "", "{n} must have lost its capabilities");
        assert!(getxattr(&m.path(n), "security.capability").is_err());
    }
}

/// The mode as `stat -c %a` sees it: statx asking for STATX_MODE only, so the kernel answers
/// from its attribute cache whenever that is still valid (a full stat would refresh it after a
/// write, since a write invalidates the cached size and times).
fn cached_mode(p: &Path) -> u32 {
    let c = cstr(p);
    // SAFETY: zeroed statx is a valid out-buffer; c is a valid C string.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MODE, &mut stx) };
    assert_eq!(rc, 0, "statx {}: {}", p.display(), std::io::Error::last_os_error());
    stx.stx_mode as u32 & 0o7777
}

/// A file of nobody's with `mode` (chown first: a chown drops set-ID bits itself).
fn nobodys_file(m: &Mounted, name: &str, mode: u32) -> std::path::PathBuf {
    let p = m.path(name);
    fs::write(&p, vec![b'x'; 8192]).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(cached_mode(&p), mode, "chmod {mode:o}");
    p
}

#[test]
fn the_kernel_does_not_keep_showing_setid_bits_that_a_write_dropped() {
    let m = Mounted::new("64M");
    // generic/355: a direct write by the owner; and the same through the page cache.
    let d = nobodys_file(&m, "direct", 0o6777);
    as_nobody(&format!("dd if=/dev/zero of='{}' bs=4096 count=1 oflag=direct conv=notrunc status=none", d.display()));
    assert_eq!(cached_mode(&d), 0o0777, "after an O_DIRECT write by nobody");
    let b = nobodys_file(&m, "buffered", 0o4755);
    as_nobody(&format!("echo more >> '{}'", b.display()));
    assert_eq!(cached_mode(&b), 0o0755, "after a buffered write by nobody");
    assert_eq!(mode(&b), 0o0755);
    m.finish();
}

#[test]
fn fallocate_punch_hole_and_zero_range_by_a_user_without_cap_fsetid_drop_setid_bits() {
    let m = Mounted::new("64M");
    // generic/683, 684, 685.
    for (name, args) in [("alloc", "-o 0 -l 1M"), ("keep", "-n -o 0 -l 1M"), ("punch", "-p -o 0 -l 4096"), ("zero", "-z -o 0 -l 4096")] {
        let f = nobodys_file(&m, name, 0o6777);
        as_nobody(&format!("fallocate {args} '{}'", f.display()));
        assert_eq!(cached_mode(&f), 0o0777, "fallocate {args} by nobody (cached mode)");
        assert_eq!(mode(&f), 0o0777, "fallocate {args} by nobody");
        // Root has CAP_FSETID: its fallocate keeps them.
        let r = nobodys_file(&m, &format!("{name}-root"), 0o6777);
        let o = Command::new("fallocate").args(args.split(' ')).arg(&r).output().unwrap();
        assert!(o.status.success(), "fallocate {args}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(mode(&r), 0o6777, "fallocate {args} by root");
    }
    m.finish();
}

#[test]
fn setfacl_by_an_owner_outside_the_files_group_drops_setgid() {
    let m = Mounted::new("64M");
    // generic/375: nobody owns the files; "outside" is in root's group, which nobody is not in.
    let file = |name: &str, gid: u32| {
        let p = m.path(name);
        fs::write(&p, b"x").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o2755)).unwrap();
        p
    };
    // A minimal ACL (it becomes the mode) and one with a named entry (stored, with a mask).
    for (acl, mode_after) in [("u::rwx,g::rwx,o::rwx", 0o777), ("u:65534:rwx,g::rwx,o::rwx", 0o777)] {
        let f = file("outside", 0);
        as_nobody(&format!("setfacl -m {acl} '{}'", f.display()));
        assert_eq!(cached_mode(&f), mode_after, "setfacl -m {acl} by nobody outside the group (cached mode)");
        assert_eq!(mode(&f), mode_after, "setfacl -m {acl} by nobody outside the group");
        // In the file's group, the owner keeps it; so does root, who has CAP_FSETID.
        let g = file("inside", 65534);
        as_nobody(&format!("setfacl -m {acl} '{}'", g.display()));
        assert_eq!(mode(&g), 0o2000 | mode_after, "setfacl -m {acl} by nobody in the group");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o2755)).unwrap();
        let o = Command::new("setfacl").args(["-m", acl]).arg(&f).output().unwrap();
        assert!(o.status.success(), "setfacl: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(mode(&f), 0o2000 | mode_after, "setfacl -m {acl} by root");
        fs::remove_file(&f).unwrap();
        fs::remove_file(&g).unwrap();
    }
    m.finish();
}
