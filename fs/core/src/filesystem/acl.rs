//! POSIX ACLs (`system.posix_acl_access` / `system.posix_acl_default`). The kernel checks
//! permissions against the access ACL (FUSE_POSIX_ACL); the rest is the filesystem's, and is
//! kept here, each in the same transaction as the change it belongs to:
//! - a new node takes its directory's default ACL, or else the caller's umask (`inherit`,
//!   used by `Fs::create`: inode, name and ACLs in one transaction);
//! - chmod carries the new permission bits into the access ACL (`chmod`, used by
//!   `Fs::setattr` in the transaction that sets the mode);
//! - a new access ACL sets the permission bits (`Fs::setxattr`, in one transaction), and an
//!   ACL that says no more than the mode bits is not stored (as on ext4).
//!
//! Xattr format (Linux's): version u32 = 2, then entries of tag u16, perm u16, id u32.
use crate::error::{FsError, Result};
use crate::format::le::*;

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// True for the two names whose values are POSIX ACLs.
pub fn is_acl(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed, well-formed ACL.
#[derive(Debug, Clone)]
pub struct Acl(Vec<Entry>);

impl Acl {
    pub fn parse(v: &[u8]) -> Result<Acl> {
        if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || u32_at(v, 0) != VERSION {
            return Err(FsError::Invalid("malformed POSIX ACL"));
        }
        let es: Vec<Entry> = (0..(v.len() - 4) / 8)
            .map(|i| Entry { tag: u16_at(v, 4 + i * 8), perm: u16_at(v, 6 + i * 8), id: u32_at(v, 8 + i * 8) })
            .collect();
        let count = |t| es.iter().filter(|e| e.tag == t).count();
        let named = es.iter().any(|e| e.tag == USER || e.tag == GROUP);
        if count(USER_OBJ) != 1
            || count(GROUP_OBJ) != 1
            || count(OTHER) != 1
            || count(MASK) > 1
            || (named && count(MASK) != 1)
            || es.iter().any(|e| e.perm > 7 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag))
        {
            return Err(FsError::Invalid("malformed POSIX ACL"));
        }
        Ok(Acl(es))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![0u8; 4 + self.0.len() * 8];
        put_u32(&mut v, 0, VERSION);
        for (i, e) in self.0.iter().enumerate() {
            put_u16(&mut v, 4 + i * 8, e.tag);
            put_u16(&mut v, 6 + i * 8, e.perm);
            put_u32(&mut v, 8 + i * 8, e.id);
        }
        v
    }

    /// True if the ACL says no more than the mode bits (no named entries, no mask).
    pub fn is_minimal(&self) -> bool {
        self.0.len() == 3
    }

    /// The permission bits the ACL implies.
    pub fn mode(&self) -> u32 {
        let get = |t: u16| self.0.iter().find(|e| e.tag == t).map(|e| e.perm as u32);
        let user = get(USER_OBJ).unwrap_or(0);
        let group = get(MASK).or(get(GROUP_OBJ)).unwrap_or(0);
        let other = get(OTHER).unwrap_or(0);
        (user << 6) | (group << 3) | other
    }

    /// Applies the mode's permission bits to the ACL and the ACL's limits to the mode
    /// (posix_acl_create_masq in Linux); bits above the permissions stay as they are.
    fn create_masq(&mut self, mode: &mut u32) {
        let mut has_mask = false;
        for e in self.0.iter_mut() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((*mode >> 6) & 7) as u16;
                    *mode &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (*mode & 7) as u16;
                    *mode &= e.perm as u32 | !0o7;
                }
                MASK => has_mask = true,
                _ => {}
            }
        }
        let tag = if has_mask { MASK } else { GROUP_OBJ };
        if let Some(e) = self.0.iter_mut().find(|e| e.tag == tag) {
            e.perm &= ((*mode >> 3) & 7) as u16;
            *mode &= ((e.perm as u32) << 3) | !0o070;
        }
    }

    /// After chmod: the owner, mask (or, without a mask, group) and other entries take the
    /// new permission bits (posix_acl_chmod).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in self.0.iter_mut() {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }
}

/// What a new node gets from its directory.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The mode to create it with (type and all bits).
    pub mode: u32,
    /// ACL xattrs to store with it, in name order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Mode and ACLs of a node of `mode` (type and requested bits, not yet masked) created under
/// `umask` in a directory whose default ACL is `default` (its xattr value, if it has one): the
/// default ACL, cut down to the requested bits, replaces the umask, and a directory also
/// inherits the default ACL itself (posix_acl_create). Symbolic links take neither.
pub fn inherit(default: Option<&[u8]>, mode: u32, umask: u32) -> Result<Inherited> {
    let ftype = mode & libc::S_IFMT;
    if ftype == libc::S_IFLNK {
        return Ok(Inherited { mode, xattrs: Vec::new() });
    }
    let Some(default) = default else {
        return Ok(Inherited { mode: mode & !(umask & 0o777), xattrs: Vec::new() });
    };
    let default = Acl::parse(default)?;
    let mut mode = mode;
    let mut access = default.clone();
    access.create_masq(&mut mode);
    let mut xattrs = Vec::new();
    if !access.is_minimal() {
        xattrs.push((ACCESS.to_vec(), access.encode()));
    }
    if ftype == libc::S_IFDIR {
        xattrs.push((DEFAULT.to_vec(), default.encode()));
    }
    Ok(Inherited { mode, xattrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl(entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect()).encode()
    }

    const NONE: u32 = u32::MAX;

    #[test]
    fn a_default_acl_replaces_the_umask_and_is_cut_down_to_the_requested_bits() {
        let default = acl(&[(USER_OBJ, 7, NONE), (USER, 7, 1000), (GROUP_OBJ, 5, NONE), (MASK, 7, NONE), (OTHER, 5, NONE)]);
        let file = inherit(Some(&default), libc::S_IFREG | 0o666, 0o077).unwrap();
        assert_eq!(file.mode, libc::S_IFREG | 0o664);
        let access = acl(&[(USER_OBJ, 6, NONE), (USER, 7, 1000), (GROUP_OBJ, 5, NONE), (MASK, 6, NONE), (OTHER, 4, NONE)]);
        assert_eq!(file.xattrs, vec![(ACCESS.to_vec(), access)]);
        let dir = inherit(Some(&default), libc::S_IFDIR | 0o777, 0o077).unwrap();
        assert_eq!(dir.mode, libc::S_IFDIR | 0o775);
        assert_eq!(dir.xattrs, vec![(ACCESS.to_vec(), default.clone()), (DEFAULT.to_vec(), default.clone())]);
        let link = inherit(Some(&default), libc::S_IFLNK | 0o777, 0o077).unwrap();
        assert_eq!((link.mode, link.xattrs.len()), (libc::S_IFLNK | 0o777, 0));
    }

    #[test]
    fn without_a_default_acl_the_umask_applies_and_a_minimal_acl_is_not_stored() {
        let plain = inherit(None, libc::S_IFREG | 0o666, 0o022).unwrap();
        assert_eq!((plain.mode, plain.xattrs.len()), (libc::S_IFREG | 0o644, 0));
        let minimal = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 0, NONE), (OTHER, 0, NONE)]);
        let file = inherit(Some(&minimal), libc::S_IFREG | 0o666, 0o022).unwrap();
        assert_eq!((file.mode, file.xattrs.len()), (libc::S_IFREG | 0o600, 0));
    }

    #[test]
    fn chmod_sets_the_mask_not_the_group_entry_and_malformed_acls_are_refused() {
        let mut a =
            Acl::parse(&acl(&[(USER_OBJ, 7, NONE), (USER, 7, 1000), (GROUP_OBJ, 5, NONE), (MASK, 7, NONE), (OTHER, 5, NONE)])).unwrap();
        a.chmod(0o640);
        assert_eq!(a.mode(), 0o640);
        assert_eq!(a.encode(), acl(&[(USER_OBJ, 6, NONE), (USER, 7, 1000), (GROUP_OBJ, 5, NONE), (MASK, 4, NONE), (OTHER, 0, NONE)]));
        // A named entry needs a mask.
        assert!(Acl::parse(&acl(&[(USER_OBJ, 7, NONE), (USER, 7, 1000), (GROUP_OBJ, 5, NONE), (OTHER, 5, NONE)])).is_err());
        assert!(inherit(Some(b"junk"), libc::S_IFREG | 0o666, 0).is_err());
    }
}
