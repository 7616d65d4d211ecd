//! `mafs snapshot delete`: removes snapshots, then every chunk no remaining snapshot names.
//! The collection holds the store's collect lock, so no create is between finding a chunk in
//! the store and writing the manifest that names it (`store_lock.rs`).
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::chunk::ChunkId;
use crate::error::{Result, SnapshotError};
use crate::manifest::Manifest;
use crate::store::Store;
use crate::store_lock::{LockKind, StoreLock};

#[derive(Debug, Default, Clone, Copy)]
pub struct Collected {
    pub chunks_deleted: u64,
    pub chunks_kept: u64,
}

/// Deletes the snapshots `ids` (each must exist), then collects unused chunks.
pub fn delete(store: Arc<dyn Store>, ids: &[String], wait: Duration) -> Result<Collected> {
    for id in ids {
        crate::catalog::read(&*store, id)?;
    }
    for id in ids {
        store.delete(&Manifest::key(id))?;
    }
    collect(store, wait)
}

/// Deletes every chunk no snapshot in the store names.
pub fn collect(store: Arc<dyn Store>, wait: Duration) -> Result<Collected> {
    let _lock = StoreLock::acquire(store.clone(), LockKind::Collect, wait)?;
    // A manifest that cannot be read names chunks we cannot see: collecting now could delete
    // them, so refuse (catalog::all fails on it).
    let manifests = crate::catalog::all(&*store).map_err(|e| {
        SnapshotError::store(&store.describe(), format!("not collecting unused chunks: {e}; delete or repair that snapshot first"))
    })?;
    let used: HashSet<ChunkId> = manifests.iter().flat_map(|m| m.stored_chunks().copied()).collect();
    let mut c = Collected::default();
    for (key, _) in store.list("chunks/")? {
        match ChunkId::parse(key.rsplit('/').next().unwrap_or("")) {
            Some(id) if used.contains(&id) => c.chunks_kept += 1,
            _ => {
                store.delete(&key)?;
                c.chunks_deleted += 1;
            }
        }
    }
    Ok(c)
}
