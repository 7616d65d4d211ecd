//! Where snapshots are kept: a flat namespace of objects (`chunks/..`, `snapshots/..`,
//! `locks/..`), in a local directory or an S3-compatible bucket. Every put is atomic: an
//! object is visible whole or not at all, which is what makes "the manifest last" mean a
//! snapshot is visible only when complete.
mod local;
mod s3;

use std::time::SystemTime;

use crate::error::{Result, SnapshotError};

pub use local::LocalStore;
pub use s3::S3Store;

pub trait Store: Send + Sync {
    /// Writes `data` under `key`, replacing what was there; readers see the old or the new
    /// object, never part of one.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// The object under `key`, or None.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The keys under `prefix` (which ends in `/`), with when each was last written.
    fn list(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>>;
    /// Removes `key`; removing what is not there is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// How to name the store in a message.
    fn describe(&self) -> String;
}

/// Opens the store `spec` names: `s3://BUCKET[/PREFIX]` (endpoint and credentials from the
/// usual AWS_* variables, `AWS_ENDPOINT_URL` for an S3-compatible server), a `file://` URL, or
/// a directory path (created if missing).
pub fn open(spec: &str) -> Result<std::sync::Arc<dyn Store>> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        return Ok(std::sync::Arc::new(S3Store::open(rest)?));
    }
    if spec.contains("://") && !spec.starts_with("file://") {
        return Err(SnapshotError::Usage(format!("store {spec}: give a directory, file://PATH or s3://BUCKET[/PREFIX]")));
    }
    Ok(std::sync::Arc::new(LocalStore::open(spec.strip_prefix("file://").unwrap_or(spec))?))
}
