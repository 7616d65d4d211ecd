//! The caller of a request, as mafs-core's POSIX rules take it ([`Caller`]; the rules are in
//! `mafs_core::filesystem::{acl, setid}`). The ids and the umask come with the request. Whether
//! the caller holds CAP_FSETID the kernel says for a WRITE (FUSE_WRITE_KILL_SUIDGID, under
//! FUSE_HANDLE_KILLPRIV_V2, is set when the writer lacks it); for the rest, and for the
//! supplementary groups, it would say only through flags fuser 0.18 does not pass on
//! (FATTR_KILL_SUIDGID on SETATTR, FUSE_SETXATTR_EXT's), so they are read from the caller's
//! `/proc/<pid>/status`, once per request and only when a rule asks.
use fuser::{Request, WriteFlags};
use mafs_core::filesystem::{Caller, CallerPrivileges};
use std::cell::OnceCell;

/// `CAP_FSETID` from linux/capability.h.
const CAP_FSETID: u32 = 4;

/// What a request tells of its caller's privileges.
pub struct RequestCaller<'a> {
    req: &'a Request,
    /// CAP_FSETID, when the kernel said.
    cap_fsetid: Option<bool>,
    /// The caller's `/proc/<pid>/status`, read at the first question (None: it is gone).
    status: OnceCell<Option<String>>,
}

impl<'a> RequestCaller<'a> {
    pub fn new(req: &'a Request) -> RequestCaller<'a> {
        RequestCaller { req, cap_fsetid: None, status: OnceCell::new() }
    }

    /// The caller of a WRITE, whose flags say whether it holds CAP_FSETID.
    pub fn writer(req: &'a Request, flags: WriteFlags) -> RequestCaller<'a> {
        RequestCaller { cap_fsetid: Some(!flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)), ..Self::new(req) }
    }

    /// The caller, with `umask` (sent with creates; 0 for other requests, where it means nothing).
    pub fn with_umask(&self, umask: u32) -> Caller<'_> {
        Caller { uid: self.req.uid(), gid: self.req.gid(), umask, privileges: self }
    }

    pub fn caller(&self) -> Caller<'_> {
        self.with_umask(0)
    }

    /// A line of the caller's `/proc/<pid>/status`, after its label.
    fn status_field(&self, label: &str) -> Option<&str> {
        let status = self.status.get_or_init(|| std::fs::read_to_string(format!("/proc/{}/status", self.req.pid())).ok());
        status.as_deref()?.lines().find_map(|l| l.strip_prefix(label))
    }
}

/// If the caller is gone already, root stands in for the privileges as it holds them by default.
impl CallerPrivileges for RequestCaller<'_> {
    fn in_supplementary_group(&self, gid: u32) -> bool {
        match self.status_field("Groups:") {
            Some(groups) => groups.split_whitespace().any(|g| g.parse::<u32>() == Ok(gid)),
            None => self.req.uid() == 0,
        }
    }

    fn has_cap_fsetid(&self) -> bool {
        if let Some(c) = self.cap_fsetid {
            return c;
        }
        match self.status_field("CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok()) {
            Some(c) => c & (1 << CAP_FSETID) != 0,
            None => self.req.uid() == 0,
        }
    }
}
