//! What can go wrong with a snapshot, a restore or an image, each saying what to do.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Volume(#[from] mafs_core::error::FsError),
    #[error("snapshot store {store}: {what}")]
    Store { store: String, what: String },
    #[error("chunk {id} in the store is damaged ({what}); restore from another snapshot, or take a new one")]
    BadChunk { id: String, what: String },
    #[error("snapshot {0} is not in the store (`mafs snapshot list --store ...` lists them)")]
    NoSuchSnapshot(String),
    #[error("manifest of snapshot {id} is damaged: {what}")]
    BadManifest { id: String, what: String },
    #[error("cannot freeze the volume: {0}")]
    Freeze(String),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl SnapshotError {
    pub fn store(store: &str, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Store { store: store.to_string(), what: what.into() }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io { what: what.into(), source }
    }
}

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;
