//! The lockd resources of one volume, named after its UUID so that volumes sharing a lockd
//! never share a lock.

/// The resource names of a volume's locks.
#[derive(Debug, Clone)]
pub struct VolumeNames {
    prefix: String,
}

impl VolumeNames {
    pub fn new(volume_uuid: &str) -> VolumeNames {
        VolumeNames { prefix: format!("mafs/{volume_uuid}") }
    }

    /// The prefix of every lock of this volume.
    pub fn prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The volume lock: every request holds it PR; EX freezes the volume (every node writes it
    /// back and waits).
    pub fn volume(&self) -> String {
        format!("{}/volume", self.prefix)
    }

    /// The number after this volume's `kind` in `resource` (`/inode/7` -> 7), if it is one.
    fn numbered<T: std::str::FromStr>(&self, resource: &str, kind: &str) -> Option<T> {
        resource.strip_prefix(&self.prefix)?.strip_prefix(kind)?.parse().ok()
    }

    /// This volume's `kind` lock number `n` (`/inode/`, 7 -> `mafs/<uuid>/inode/7`), built
    /// without the formatting machinery: a request names several inode locks, and `format!`
    /// was a measurable part of a create on a node working alone.
    fn numbered_name(&self, kind: &str, n: u64) -> String {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let mut name = String::with_capacity(self.prefix.len() + kind.len() + digits.len() - at);
        name.push_str(&self.prefix);
        name.push_str(kind);
        name.extend(digits[at..].iter().map(|&d| char::from(d)));
        name
    }

    /// An inode's lock (`inode_locks.rs`): PR to read the inode and what hangs below it (its
    /// tree, its xattr block, a directory's entries), EX to change them.
    pub fn inode(&self, ino: u64) -> String {
        self.numbered_name("/inode/", ino)
    }

    /// The inode whose lock `resource` is, if it is one of this volume's.
    pub fn inode_of(&self, resource: &str) -> Option<u64> {
        self.numbered(resource, "/inode/")
    }

    /// An allocation group's lock, EX by the node that allocates from it or frees into it.
    pub fn group(&self, ag: u32) -> String {
        self.numbered_name("/group/", u64::from(ag))
    }

    /// The allocation group whose lock `resource` is, if it is one of this volume's.
    pub fn group_of(&self, resource: &str) -> Option<u32> {
        self.numbered(resource, "/group/")
    }

    /// Held EX for a rename between two directories (the VFS's s_vfs_rename_mutex, cluster
    /// wide): parent links change only under it, so an ancestry walk under it is stable.
    pub fn rename(&self) -> String {
        format!("{}/rename", self.prefix)
    }

    /// Held PR by every node that has inode `ino` open (see `open_locks.rs`).
    pub fn open(&self, ino: u64) -> String {
        self.numbered_name("/open/", ino)
    }

    /// The inode whose open lock `resource` is, if it is one of this volume's.
    pub fn open_ino(&self, resource: &str) -> Option<u64> {
        self.numbered(resource, "/open/")
    }

    /// Where the slot locks are: a prefix for lockd's dump.
    pub fn slot_prefix(&self) -> String {
        format!("{}/slot/", self.prefix)
    }

    /// The slot whose lock `resource` is, if it is one of this volume's.
    pub fn slot_of(&self, resource: &str) -> Option<u32> {
        resource.strip_prefix(&self.slot_prefix())?.parse().ok()
    }

    /// Held EX by the node recovering `slot` after its node died (see `recovery.rs`).
    pub fn recovery(&self, slot: u32) -> String {
        format!("{}/recovery/{slot}", self.prefix)
    }

    /// Held EX by the node mounted in `slot`, for as long as it is mounted: its journal.
    pub fn slot(&self, slot: u32) -> String {
        format!("{}/slot/{slot}", self.prefix)
    }

    /// Held EX by the node called `name`, for as long as it is mounted: names are unique.
    pub fn node(&self, name: &str) -> String {
        format!("{}/node/{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_read_back_as_their_numbers() {
        let names = VolumeNames::new("0148b97a-d317-4134-915e-8bc7b748f3db");
        for n in [0u64, 7, 10, 33029, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(names.inode(n), format!("mafs/0148b97a-d317-4134-915e-8bc7b748f3db/inode/{n}"));
            assert_eq!(names.inode_of(&names.inode(n)), Some(n));
            assert_eq!(names.open_ino(&names.open(n)), Some(n));
        }
        assert_eq!(names.group_of(&names.group(12)), Some(12));
        assert_eq!(names.inode_of(&names.open(5)), None);
    }
}
