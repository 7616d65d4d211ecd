//! Snapshots of a mafs volume kept off the volume (the EBS snapshot workflow), restores to a
//! new volume, and golden images built from a directory tree (the AMI workflow). Design:
//! docs/snapshots.md.
pub mod catalog;
pub mod chunk;
pub mod create;
pub mod error;
pub mod freeze;
pub mod gc;
pub mod identity;
pub mod image;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod source_tree;
pub mod store;
pub mod store_lock;
pub mod uploader;
pub mod volume_io;
