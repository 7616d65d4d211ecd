//! Helpers for the library's unit tests: a scratch volume in memory and a bare inode to hang an
//! index tree on.
use crate::alloc::BlockState;
use crate::cache::MetaBuf;
use crate::device::CrashDevice;
use crate::format::header::BlockType;
use crate::mkfs::{mkfs, MkfsOptions};
use crate::volume::Volume;
use std::sync::Arc;

/// A freshly formatted 64 MiB one-slot volume in memory.
pub fn scratch_device() -> Arc<CrashDevice> {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 1, ..Default::default() }).expect("mkfs");
    dev
}

/// A fresh inode block (zeroed inline area: an empty leaf root), committed.
pub fn new_tree_inode(vol: &Volume) -> Arc<MetaBuf> {
    let h = vol.journal.begin().expect("begin");
    let (blk, _) = vol.alloc.alloc(&h, 1, None, BlockState::Inode).expect("alloc inode");
    let buf = vol.cache.create(blk, BlockType::Inode, crate::cache::Cover::Volume);
    drop(h.write(&buf));
    drop(h);
    vol.commit().expect("commit");
    buf
}
