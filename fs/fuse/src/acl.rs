//! POSIX ACLs (system.posix_acl_access / _default) with FUSE_POSIX_ACL: the kernel checks
//! permissions against the ACL, but inheriting a directory's default ACL at create, keeping
//! the ACL in step with chmod, and the mode in step with a new ACL are the filesystem's job.
//!
//! Xattr format (Linux's): version u32 = 2, then entries of tag u16, perm u16, id u32.
use mafs_core::error::{FsError, Result};
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::{Fs, SetAttr};
use mafs_core::format::le::*;

const ACCESS: &[u8] = b"system.posix_acl_access";
const DEFAULT: &[u8] = b"system.posix_acl_default";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(v: &[u8]) -> Result<Vec<Entry>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || u32_at(v, 0) != VERSION {
        return Err(FsError::Invalid("malformed POSIX ACL"));
    }
    let es: Vec<Entry> =
        (0..(v.len() - 4) / 8).map(|i| Entry { tag: u16_at(v, 4 + i * 8), perm: u16_at(v, 6 + i * 8), id: u32_at(v, 8 + i * 8) }).collect();
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
    Ok(es)
}

fn encode(es: &[Entry]) -> Vec<u8> {
    let mut v = vec![0u8; 4 + es.len() * 8];
    put_u32(&mut v, 0, VERSION);
    for (i, e) in es.iter().enumerate() {
        put_u16(&mut v, 4 + i * 8, e.tag);
        put_u16(&mut v, 6 + i * 8, e.perm);
        put_u32(&mut v, 8 + i * 8, e.id);
    }
    v
}

/// True if the ACL says no more than the mode bits (no named entries, no mask).
fn is_minimal(es: &[Entry]) -> bool {
    es.len() == 3
}

/// The permission bits the ACL implies.
fn mode_of(es: &[Entry]) -> u32 {
    let get = |t: u16| es.iter().find(|e| e.tag == t).map(|e| e.perm as u32);
    let user = get(USER_OBJ).unwrap_or(0);
    let group = get(MASK).or(get(GROUP_OBJ)).unwrap_or(0);
    let other = get(OTHER).unwrap_or(0);
    (user << 6) | (group << 3) | other
}

/// Applies the mode's permission bits to the ACL and the ACL's limits to the mode
/// (posix_acl_create_masq in Linux).
fn create_masq(es: &mut [Entry], mode: &mut u32) {
    let mut has_mask = false;
    for e in es.iter_mut() {
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
    if let Some(e) = es.iter_mut().find(|e| e.tag == tag) {
        e.perm &= ((*mode >> 3) & 7) as u16;
        *mode &= ((e.perm as u32) << 3) | !0o070;
    }
}

pub struct Inherited {
    pub mode: u32,
    pub xattrs: Vec<(&'static [u8], Vec<u8>)>,
}

impl Inherited {
    pub fn xattrs_empty(&self) -> bool {
        self.xattrs.is_empty()
    }
}

/// Mode and ACLs of a node created in `parent` with `mode` under `umask`.
pub fn inherit(fs: &Fs, parent: u64, mode: u32, umask: u32) -> Result<Inherited> {
    let default = match fs.getxattr(parent, DEFAULT) {
        Ok(v) => parse(&v)?,
        Err(FsError::NoAttr) => return Ok(Inherited { mode: mode & !(umask & 0o777), xattrs: Vec::new() }),
        Err(e) => return Err(e),
    };
    let mut m = mode;
    let mut access = default.clone();
    create_masq(&mut access, &mut m);
    let mut xattrs = Vec::new();
    if mode & libc::S_IFMT == libc::S_IFDIR {
        xattrs.push((DEFAULT, encode(&default)));
    }
    if !is_minimal(&access) {
        xattrs.push((ACCESS, encode(&access)));
    }
    Ok(Inherited { mode: m, xattrs })
}

/// After chmod: the access ACL's owner, mask (or group) and other entries follow the mode.
pub fn chmod(fs: &Fs, ino: u64, mode: u32) -> Result<()> {
    let mut es = match fs.getxattr(ino, ACCESS) {
        Ok(v) => parse(&v)?,
        Err(FsError::NoAttr) => return Ok(()),
        Err(e) => return Err(e),
    };
    let has_mask = es.iter().any(|e| e.tag == MASK);
    for e in es.iter_mut() {
        match e.tag {
            USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
            MASK => e.perm = ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
            OTHER => e.perm = (mode & 7) as u16,
            _ => {}
        }
    }
    fs.setxattr(ino, ACCESS, Some(&encode(&es)), XattrSet::Any)
}

/// setxattr, with ACL names validated and the mode kept in step with an access ACL; an ACL
/// that says no more than the mode is not stored (as on ext4). `may_keep_setgid(gid)` tells
/// whether the caller may leave set-group-ID on a file of group `gid` (posix_acl_update_mode).
pub fn setxattr(fs: &Fs, ino: u64, name: &[u8], value: &[u8], how: XattrSet, may_keep_setgid: &dyn Fn(u32) -> bool) -> Result<()> {
    if name == ACCESS || name == DEFAULT {
        if value.is_empty() {
            // An empty ACL removes it (what setfacl -b / -k send for some types).
            return removexattr(fs, ino, name);
        }
        let es = parse(value)?;
        let inode = fs.getattr(ino)?;
        if name == DEFAULT && !inode.is_dir() {
            return Err(if value.is_empty() { FsError::Invalid("default ACL on a non-directory") } else { FsError::NotPermitted });
        }
        if name == ACCESS {
            let mut mode = (inode.mode & !0o777) | mode_of(&es);
            if mode & libc::S_ISGID != 0 && !may_keep_setgid(inode.gid) {
                mode &= !libc::S_ISGID;
            }
            fs.setattr(ino, &SetAttr { mode: Some(mode & 0o7777), ..Default::default() })?;
            if is_minimal(&es) {
                return match fs.setxattr(ino, name, None, XattrSet::Any) {
                    Err(FsError::NoAttr) | Ok(()) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        }
    }
    fs.setxattr(ino, name, Some(value), how)
}

/// removexattr; removing a POSIX ACL that is not there succeeds, as on ext4 (the mode bits
/// already say everything such an ACL would).
pub fn removexattr(fs: &Fs, ino: u64, name: &[u8]) -> Result<()> {
    match fs.setxattr(ino, name, None, XattrSet::Any) {
        Err(FsError::NoAttr) if name == ACCESS || name == DEFAULT => Ok(()),
        r => r,
    }
}
