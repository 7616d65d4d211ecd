//! mafs core: the shared-volume format, block devices, journal and filesystem logic. Nothing
//! here knows about FUSE or gRPC; `fuse/` is the kernel glue.
pub mod alloc;
pub mod btree;
pub mod cache;
pub mod change_tracking;
pub mod claim;
pub mod cover_versions;
pub mod data_cache;
pub mod device;
pub mod dir;
pub mod error;
pub mod filesystem;
pub mod format;
pub mod freeze_gate;
pub mod fsck;
pub mod journal;
pub mod locks;
pub mod mkfs;
pub mod mmp;
pub mod probe;
#[cfg(test)]
mod test_support;
pub mod volume;
pub mod xattr;
