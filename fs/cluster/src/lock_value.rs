//! What an inode lock's lock value block holds, and what a node writes there as it gives the
//! lock up or downgrades it: the version of the inode's blocks, i.e. the fencing token of the
//! last grant under which a node changed them (8 bytes, little-endian; empty: unknown).
//! A node that gives up an inode it did not change keeps its cached blocks, valid for the
//! version it was granted with; taking the lock again, it keeps them only if the version is
//! still the same (`mafs_core::cover_versions`; docs/design.md, "Keeping a cache across a
//! hand-over").
use lockd_client::Session;
use mafs_core::filesystem::Fs;
use mafs_core::format::InodeNo;

/// What giving up (or downgrading) an inode's lock writes and keeps.
pub(crate) struct HandOver {
    /// The node changed the inode since it last gave the lock up or downgraded it: those
    /// changes must be written back first. Otherwise nothing of the inode is in its journal
    /// (that hand-over wrote everything back), and nothing need be.
    pub(crate) changed: bool,
    /// The lock value block to write, if it changes.
    pub(crate) lvb: Option<Vec<u8>>,
    /// The version the node's cached blocks of the inode stay valid for once the lock is
    /// released (`None`: forget them).
    pub(crate) version: Option<Vec<u8>>,
}

/// The hand-over of inode `ino`, whose lock `resource` the node holds (under the grant its
/// lockd client caches, if it knows it).
pub(crate) fn hand_over(fs: &Fs, session: Option<&Session>, resource: &str, ino: InodeNo) -> HandOver {
    let grant = session.and_then(|s| s.cached_grant(resource));
    let grant = grant.as_ref();
    let changed = fs.take_changed(ino);
    match (changed, grant.and_then(|g| g.token)) {
        (true, Some(token)) => {
            let v = token.get().to_le_bytes().to_vec();
            HandOver { changed, lvb: Some(v.clone()), version: Some(v) }
        }
        // Changed under a grant whose token the node does not know: nobody may trust the
        // version any more.
        (true, None) => HandOver { changed, lvb: Some(Vec::new()), version: None },
        (false, _) => HandOver { changed, lvb: None, version: grant.map(|g| g.lvb.clone()).filter(|v| !v.is_empty()) },
    }
}
