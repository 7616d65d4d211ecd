//! The snapshots a store holds: their manifests, read back and checked.
use crate::error::{Result, SnapshotError};
use crate::manifest::Manifest;
use crate::store::Store;

/// Every complete snapshot in `store`, oldest first. A damaged manifest is reported and left
/// out (its chunks then look unused to a collection: see `gc.rs`, which refuses to run then).
pub fn all(store: &dyn Store) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (key, _) in store.list("snapshots/")? {
        let id = key.trim_start_matches("snapshots/");
        out.push(read(store, id)?);
    }
    out.sort_by(|a, b| (a.info.created, &a.info.id).cmp(&(b.info.created, &b.info.id)));
    Ok(out)
}

/// The snapshot `id`.
pub fn read(store: &dyn Store, id: &str) -> Result<Manifest> {
    if id.is_empty() || id.contains('/') {
        return Err(SnapshotError::NoSuchSnapshot(id.to_string()));
    }
    let bytes = store.get(&Manifest::key(id))?.ok_or_else(|| SnapshotError::NoSuchSnapshot(id.to_string()))?;
    Manifest::decode(id, &bytes)
}

/// The newest snapshot of the volume `uuid`, if any.
pub fn latest_of(store: &dyn Store, uuid: &str) -> Result<Option<Manifest>> {
    Ok(all(store)?.into_iter().rev().find(|m| m.info.volume_uuid == uuid))
}
