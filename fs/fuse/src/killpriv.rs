//! Dropping set-ID bits and file capabilities ourselves (FUSE_HANDLE_KILLPRIV_V2).
//!
//! Why: without it the kernel asks for `security.capability` (a GETXATTR round trip) before
//! every write to see whether there is anything to drop; that was one request in six of a small
//! file's create-write-close (docs/benchmarks.md). With it the kernel skips the check and tells
//! us instead: a write carries FUSE_WRITE_KILL_SUIDGID when the writer lacks CAP_FSETID. The
//! rest of the contract fuser does not pass through (FATTR_KILL_SUIDGID on SETATTR), so it is
//! derived here from the request, by the VFS's own rules:
//! - chown of a non-directory always drops them (`notify_change` with ATTR_KILL_SUID);
//! - a truncate drops them when the caller lacks CAP_FSETID (`should_remove_suid`), read from
//!   `/proc/<pid>/status`;
//! - a fallocate (any mode: allocate, punch hole, zero range) drops them when the caller lacks
//!   CAP_FSETID (`file_modified`, as ext4 and xfs call it); the kernel sends no flag for this;
//! - setting an access ACL drops set-group-ID when the caller is neither in the file's group
//!   nor has CAP_FSETID (`posix_acl_update_mode`); the kernel says so only with
//!   FUSE_SETXATTR_EXT, which fuser 0.18 cannot take;
//! - the capability xattr goes on every write, truncate and chown, whoever makes it.
//!
//! The kernel keeps its own copy of the mode and learns of none of these drops made in a WRITE
//! or FALLOCATE (their replies carry no attributes), so files with such bits get attributes
//! with no cache lifetime (`fs/fuse/src/lib.rs`, `attr_ttl`).
use fuser::{Request, WriteFlags};

/// `CAP_FSETID` from linux/capability.h: keeps set-ID bits across writes and truncates.
const CAP_FSETID: u32 = 4;

/// Whether a write must drop the set-ID bits.
pub fn write_kills_setid(flags: WriteFlags) -> bool {
    flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
}

/// Whether a SETATTR must drop privileges, and the set-ID bits with them: `None` when it
/// changes nothing that would (or sets the mode itself, which then wins).
pub fn setattr_kills(req: &Request, mode: Option<u32>, owner_changes: bool, truncates: bool) -> Option<bool> {
    if mode.is_some() || !(owner_changes || truncates) {
        return None;
    }
    Some(owner_changes || !has_cap_fsetid(req))
}

/// Whether a fallocate must drop the set-ID bits.
pub fn fallocate_kills_setid(req: &Request) -> bool {
    !has_cap_fsetid(req)
}

/// Whether setting an access ACL on a file of group `gid` may leave set-group-ID in place:
/// the caller is in that group (its filesystem gid or a supplementary group) or has CAP_FSETID.
pub fn may_keep_setgid(req: &Request, gid: u32) -> bool {
    if req.gid() == gid || has_cap_fsetid(req) {
        return true;
    }
    match status_field(req, "Groups:") {
        Some(groups) => groups.split_whitespace().any(|g| g.parse::<u32>() == Ok(gid)),
        None => req.uid() == 0,
    }
}

/// Reads the calling thread's effective capabilities; if it is gone already, root stands in for
/// CAP_FSETID as it does by default.
fn has_cap_fsetid(req: &Request) -> bool {
    let caps = status_field(req, "CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match caps {
        Some(c) => c & (1 << CAP_FSETID) != 0,
        None => req.uid() == 0,
    }
}

/// A line of the caller's `/proc/<pid>/status`, after its label.
fn status_field(req: &Request, label: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).ok()?;
    s.lines().find_map(|l| l.strip_prefix(label)).map(str::to_string)
}
