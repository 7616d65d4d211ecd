//! End-to-end tests on a real FUSE mount: extended attributes (user., trusted., security.) with
//! their flags and errno values, and POSIX ACLs through setfacl/getfacl, enforced for another
//! user (nobody, uid 65534).
use mafs_tests::fs_mount::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

#[test]
fn xattrs_in_user_trusted_security_namespaces_set_get_list_remove_and_persist() {
    let mut m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let d = m.path("d");
    let attrs: [(&str, Vec<u8>); 4] = [
        ("user.color", b"blue".to_vec()),
        ("trusted.secret", pattern(1, 300)),
        ("security.label", b"system_u:object_r:tmp_t".to_vec()),
        ("user.empty", Vec::new()),
    ];
    for p in [&f, &d] {
        for (n, v) in &attrs {
            setxattr(p, n, v, 0).unwrap();
        }
    }
    let check = |m: &Mounted| {
        for p in [m.path("f"), m.path("d")] {
            for (n, v) in &attrs {
                assert_eq!(&getxattr(&p, n).unwrap(), v, "{n} on {}", p.display());
            }
            let mut names = listxattr(&p).unwrap();
            names.sort();
            let mut want: Vec<String> = attrs.iter().map(|(n, _)| n.to_string()).collect();
            want.sort();
            assert_eq!(names, want);
        }
    };
    check(&m);
    // overwrite with a longer and a shorter value
    setxattr(&f, "user.color", b"a much longer shade of blue", 0).unwrap();
    assert_eq!(getxattr(&f, "user.color").unwrap(), b"a much longer shade of blue");
    setxattr(&f, "user.color", b"blue", 0).unwrap();
    m.remount();
    check(&m);
    removexattr(&m.path("f"), "trusted.secret").unwrap();
    assert_errno(getxattr(&m.path("f"), "trusted.secret"), libc::ENODATA, "get after remove");
    assert!(!listxattr(&m.path("f")).unwrap().contains(&"trusted.secret".to_string()));
    for (n, _) in &attrs {
        removexattr(&m.path("d"), n).unwrap();
    }
    assert!(listxattr(&m.path("d")).unwrap().is_empty());
    m.remount();
    assert!(listxattr(&m.path("d")).unwrap().is_empty());
    assert_eq!(listxattr(&m.path("f")).unwrap().len(), 3);
    m.finish();
}

#[test]
fn xattr_create_replace_and_missing_names_give_eexist_and_enodata() {
    let m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    assert_errno(setxattr(&f, "user.a", b"1", libc::XATTR_REPLACE), libc::ENODATA, "XATTR_REPLACE of a missing attribute");
    setxattr(&f, "user.a", b"1", libc::XATTR_CREATE).unwrap();
    assert_errno(setxattr(&f, "user.a", b"2", libc::XATTR_CREATE), libc::EEXIST, "XATTR_CREATE of an existing attribute");
    assert_eq!(getxattr(&f, "user.a").unwrap(), b"1");
    setxattr(&f, "user.a", b"3", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.a").unwrap(), b"3");
    assert_errno(getxattr(&f, "user.missing"), libc::ENODATA, "getxattr of a missing attribute");
    assert_errno(removexattr(&f, "user.missing"), libc::ENODATA, "removexattr of a missing attribute");
    assert_errno(setxattr(&f, "unknown.ns", b"v", 0), libc::EOPNOTSUPP, "unknown namespace");
    assert_errno(getxattr(&m.path("nope"), "user.a"), libc::ENOENT, "getxattr of a missing file");
    let ctime0 = fs::metadata(&f).unwrap().ctime_nsec() + fs::metadata(&f).unwrap().ctime() * 1_000_000_000;
    setxattr(&f, "user.b", b"b", 0).unwrap();
    let ctime1 = fs::metadata(&f).unwrap().ctime_nsec() + fs::metadata(&f).unwrap().ctime() * 1_000_000_000;
    assert!(ctime1 > ctime0, "setxattr updates ctime");
    m.finish();
}

#[test]
fn xattr_small_buffers_give_erange_and_size_queries_the_length() {
    let m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    setxattr(&f, "user.long", &pattern(2, 1000), 0).unwrap();
    setxattr(&f, "user.other", b"v", 0).unwrap();
    assert_eq!(getxattr_sized(&f, "user.long", 0).unwrap().len(), 1000, "size query");
    assert_errno(getxattr_sized(&f, "user.long", 999), libc::ERANGE, "getxattr buffer one byte short");
    assert_eq!(getxattr_sized(&f, "user.long", 1000).unwrap(), pattern(2, 1000));
    let list_len = "user.long\0user.other\0".len();
    assert_eq!(listxattr_sized(&f, 0).unwrap().len(), 0);
    assert_errno(listxattr_sized(&f, list_len - 1), libc::ERANGE, "listxattr buffer one byte short");
    assert_eq!(listxattr_sized(&f, list_len).unwrap().len(), list_len);
    m.finish();
}

#[test]
fn xattr_values_larger_than_the_block_are_refused_with_e2big_or_enospc() {
    let mut m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    // all of an inode's attributes share one 4 KiB block: one value bigger than it is E2BIG
    assert_errno(setxattr(&f, "user.huge", &vec![7u8; 5000], 0), libc::E2BIG, "a 5000-byte value");
    // values that fit one by one but not together: ENOSPC, as on ext4
    setxattr(&f, "user.a", &vec![1u8; 1800], 0).unwrap();
    setxattr(&f, "user.b", &vec![2u8; 1800], 0).unwrap();
    assert_errno(setxattr(&f, "user.c", &vec![3u8; 1800], 0), libc::ENOSPC, "a third 1800-byte value");
    assert_errno(setxattr(&f, "user.a", &vec![1u8; 2500], 0), libc::ENOSPC, "growing a value past the block");
    assert_eq!(getxattr(&f, "user.a").unwrap(), vec![1u8; 1800], "a failed set leaves the old value");
    assert_errno(getxattr(&f, "user.c"), libc::ENODATA, "the refused attribute does not exist");
    // the largest value that fits alone
    let g = m.path("g");
    fs::write(&g, b"x").unwrap();
    let mut n = 4096usize;
    while setxattr(&g, "user.max", &vec![9u8; n], 0).is_err() {
        n -= 1;
        assert!(n > 3000, "no value of 3000+ bytes fits");
    }
    assert_eq!(getxattr(&g, "user.max").unwrap().len(), n);
    // the file is still fine
    assert_eq!(fs::read(&f).unwrap(), b"x");
    m.remount();
    assert_eq!(getxattr(&m.path("f"), "user.b").unwrap(), vec![2u8; 1800]);
    assert_eq!(getxattr(&m.path("g"), "user.max").unwrap().len(), n);
    m.finish();
}

fn setfacl(args: &[&str], p: &Path) {
    let o = Command::new("setfacl").args(args).arg(p).output().expect("run setfacl (Debian package acl)");
    assert!(o.status.success(), "setfacl {args:?} {}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
}

/// `getfacl -c -E` lines (no header, no effective-rights comments).
fn getfacl(p: &Path) -> Vec<String> {
    let o = Command::new("getfacl").args(["-c", "-E", "-p"]).arg(p).output().expect("run getfacl");
    assert!(o.status.success(), "getfacl {}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(|l| l.to_string()).collect()
}

fn nobody_can(cmd: &str) -> bool {
    run_as_nobody(cmd).status.success()
}

#[test]
fn access_acl_grants_another_user_and_is_enforced() {
    let mut m = Mounted::new("64M");
    let f = m.path("secret");
    fs::write(&f, b"for nobody's eyes").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let cat = format!("cat '{}' >/dev/null", f.display());
    assert!(!nobody_can(&cat), "mode 600 must keep nobody out");
    setfacl(&["-m", "u:nobody:r"], &f);
    assert!(getfacl(&f).contains(&"user:nobody:r--".to_string()), "getfacl: {:?}", getfacl(&f));
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640, "the mask shows in the group bits");
    assert!(nobody_can(&cat), "the ACL entry must let nobody read");
    assert!(!nobody_can(&format!("echo x >> '{}'", f.display())), "read-only ACL entry must not allow writing");
    m.remount();
    assert!(getfacl(&m.path("secret")).contains(&"user:nobody:r--".to_string()));
    assert!(nobody_can(&cat), "the ACL must survive a remount");
    setfacl(&["-x", "u:nobody"], &m.path("secret"));
    assert!(!nobody_can(&cat), "removing the entry must take the access away");
    m.finish();
}

#[test]
fn chmod_updates_the_acl_mask() {
    let m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"data").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    setfacl(&["-m", "u:nobody:rw"], &f);
    assert!(getfacl(&f).contains(&"mask::rw-".to_string()), "{:?}", getfacl(&f));
    let cat = format!("cat '{}' >/dev/null", f.display());
    assert!(nobody_can(&cat));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let acl = getfacl(&f);
    assert!(acl.contains(&"mask::---".to_string()), "chmod 600 must set the mask to ---: {acl:?}");
    assert!(acl.contains(&"user:nobody:rw-".to_string()), "the named entry itself stays: {acl:?}");
    assert!(!nobody_can(&cat), "the mask must now deny nobody");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(getfacl(&f).contains(&"mask::r--".to_string()), "{:?}", getfacl(&f));
    assert!(nobody_can(&cat));
    m.finish();
}

/// A directory `shared` (mode 700) with access and default ACL entries for nobody (rwx).
fn shared_dir_with_default_acl(m: &Mounted) -> std::path::PathBuf {
    // SAFETY: umask only changes this process's file creation mask (each test is its own process
    // under nextest; the value is the usual one anyway).
    unsafe { libc::umask(0o022) };
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    setfacl(&["-m", "u:nobody:rwx", "-d", "-m", "u:nobody:rwx"], &d);
    d
}

#[test]
fn default_acl_of_a_directory_is_inherited_by_new_files_and_dirs() {
    let mut m = Mounted::new("64M");
    let d = shared_dir_with_default_acl(&m);
    fs::write(d.join("new"), b"inherited").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let facl = getfacl(&d.join("new"));
    assert!(facl.contains(&"user:nobody:rwx".to_string()), "new file inherits the named entry: {facl:?}");
    assert!(facl.iter().any(|l| l.starts_with("mask::")), "with a mask: {facl:?}");
    assert!(!facl.iter().any(|l| l.starts_with("default:")), "a file has no default ACL: {facl:?}");
    let dacl = getfacl(&d.join("sub"));
    assert!(dacl.contains(&"user:nobody:rwx".to_string()), "new dir inherits the access entry: {dacl:?}");
    assert!(dacl.contains(&"default:user:nobody:rwx".to_string()), "new dir inherits the default ACL: {dacl:?}");
    assert!(nobody_can(&format!("cat '{}' >/dev/null", d.join("new").display())), "nobody can read the new file through the inherited ACL");
    assert!(!nobody_can(&format!("cat '{}' >/dev/null", m.path("lost+found").display())), "but not lost+found");
    m.remount();
    assert!(getfacl(&m.path("shared/sub")).contains(&"default:user:nobody:rwx".to_string()));
    assert!(getfacl(&m.path("shared/new")).contains(&"user:nobody:rwx".to_string()));
    m.finish();
}

#[test]
fn umask_is_ignored_when_the_parent_has_a_default_acl() {
    // On ext4, with umask 022, a file created with mode 0666 under a default ACL gets mask rw-
    // (the umask is not applied when a default ACL exists), and a directory mask rwx.
    let m = Mounted::new("64M");
    let d = shared_dir_with_default_acl(&m);
    fs::write(d.join("new"), b"inherited").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let facl = getfacl(&d.join("new"));
    assert!(facl.contains(&"mask::rw-".to_string()), "file mask: {facl:?}");
    let dacl = getfacl(&d.join("sub"));
    assert!(dacl.contains(&"mask::rwx".to_string()), "dir mask: {dacl:?}");
    assert!(nobody_can(&format!("echo more >> '{}'", d.join("new").display())), "nobody can write the new file through the inherited ACL");
    assert!(nobody_can(&format!("touch '{}'", d.join("sub/by-nobody").display())), "nobody can create in the new dir");
    assert_eq!(fs::metadata(d.join("sub/by-nobody")).unwrap().uid(), 65534);
    assert_eq!(fs::read(d.join("new")).unwrap(), b"inheritedmore\n");
    m.finish();
}

#[test]
fn posix_acl_default_on_a_file_is_refused() {
    let m = Mounted::new("64M");
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    let o = Command::new("setfacl").args(["-d", "-m", "u:nobody:r"]).arg(&f).output().unwrap();
    assert!(!o.status.success(), "a default ACL on a file must fail");
    m.finish();
}

#[test]
fn removing_an_absent_posix_acl_succeeds_as_on_ext4() {
    let m = Mounted::new("64M");
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        removexattr(&d, name).unwrap_or_else(|e| panic!("removexattr {name}: {e}"));
        // an ACL of no entries (just the version header) means "no ACL"
        setxattr(&d, name, &2u32.to_le_bytes(), 0).unwrap_or_else(|e| panic!("setxattr of an empty {name}: {e}"));
    }
    m.finish();
}
