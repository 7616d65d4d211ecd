//! Why a node could not join or leave the cluster, in words that say what to do.
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach lockd at {endpoints}: {source}. Start lockd (`mafs lockd serve`, or `mafs cluster up`) or give the right --lockd endpoints")]
    Unreachable { endpoints: String, source: lockd_client::Error },
    #[error("a node named {name:?} is already mounted on this volume (or died moments ago and the others are recovering it: then try again in a few seconds); give this one another --node-name")]
    NameInUse { name: String },
    #[error("slot {slot} of the volume is in use by another mounted node; leave out --slot to take a free one")]
    SlotInUse { slot: u32 },
    #[error("every slot of the volume ({count}) is in use by a mounted node; unmount one, or make the volume with more slots (`mafs mkfs --slots`)")]
    NoFreeSlot { count: u32 },
    #[error("slot {slot} does not exist: the volume has {count} slots (0 to {})", count.saturating_sub(1))]
    NoSuchSlot { slot: u32, count: u32 },
    #[error("lockd did not give the lock {resource} within {waited:?}: {source}")]
    Lock { resource: String, waited: Duration, source: lockd_client::Error },
    #[error("cannot start the lockd client: {0}")]
    Runtime(std::io::Error),
    #[error("lockd session: {0}")]
    Session(lockd_client::Error),
}
