//! Keeps garbage collection and snapshot creation apart in one store: a create relies on
//! chunks it found in the store staying there until its manifest names them, and a collection
//! deletes every chunk no manifest names. Each writes a lock object, then lists the others'
//! (so of two that start together at least one sees the other and backs off); a holder
//! renews its object every few seconds, and one not renewed for [`STALE`] is from a process
//! that died and is ignored. Any number of creates run together.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Result, SnapshotError};
use crate::store::Store;

const RENEW: Duration = Duration::from_secs(5);
/// A lock object older than this is from a process that died (its renewals stopped).
pub const STALE: Duration = Duration::from_secs(30);
const PREFIX: &str = "locks/";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockKind {
    Create,
    Collect,
}

impl LockKind {
    fn tag(self) -> &'static str {
        match self {
            LockKind::Create => "create",
            LockKind::Collect => "collect",
        }
    }

    fn what(self) -> &'static str {
        match self {
            LockKind::Create => "a snapshot is being created",
            LockKind::Collect => "a delete is collecting unused chunks",
        }
    }

    /// Whether a holder of `other` keeps this kind out.
    fn excluded_by(self, other: LockKind) -> bool {
        !(self == LockKind::Create && other == LockKind::Create)
    }
}

/// A held store lock; released (its object deleted) when dropped.
pub struct StoreLock {
    store: Arc<dyn Store>,
    key: String,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl StoreLock {
    /// Takes a `kind` lock, waiting up to `wait` for holders of conflicting kinds.
    pub fn acquire(store: Arc<dyn Store>, kind: LockKind, wait: Duration) -> Result<StoreLock> {
        let key = format!("{PREFIX}{}-{:016x}", kind.tag(), rand::random::<u64>());
        let body = format!("{} pid {}\n", mafs_core::mmp::this_host(), std::process::id());
        let start = std::time::Instant::now();
        loop {
            store.put(&key, body.as_bytes())?;
            let Some(other) = conflicting(&*store, kind, &key)? else { break };
            store.delete(&key)?;
            if start.elapsed() >= wait {
                return Err(SnapshotError::store(
                    &store.describe(),
                    format!("{} ({other}); try again when it has finished", other_kind(&other).what()),
                ));
            }
            tracing::info!("waiting: {} in the store ({other})", other_kind(&other).what());
            std::thread::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1000));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mafs-store-lock".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(RENEW);
                        if !stop.load(Ordering::Acquire) {
                            if let Err(e) = store.put(&key, body.as_bytes()) {
                                tracing::warn!("cannot renew the store lock {key}: {e}");
                            }
                        }
                    }
                })
                .map_err(|e| SnapshotError::io("cannot start the store lock's renewer", e))?
        };
        Ok(StoreLock { store, key, stop, renewer: Some(renewer) })
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(r) = self.renewer.take() {
            r.thread().unpark();
            let _ = r.join();
        }
        if let Err(e) = self.store.delete(&self.key) {
            tracing::warn!("cannot remove the store lock {}: {e} (it is ignored once {STALE:?} old)", self.key);
        }
    }
}

fn other_kind(key: &str) -> LockKind {
    if key.starts_with(&format!("{PREFIX}collect-")) {
        LockKind::Collect
    } else {
        LockKind::Create
    }
}

/// A live lock object other than `ours` that keeps `kind` out.
fn conflicting(store: &dyn Store, kind: LockKind, ours: &str) -> Result<Option<String>> {
    let now = SystemTime::now();
    for (key, written) in store.list(PREFIX)? {
        if key == ours || !kind.excluded_by(other_kind(&key)) {
            continue;
        }
        // Written in the future (another host's clock) counts as fresh.
        let age = now.duration_since(written).unwrap_or_default();
        if age < STALE {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn a_collection_waits_for_creates_and_creates_run_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path().to_str().expect("path")).expect("store"));
        let c1 = StoreLock::acquire(store.clone(), LockKind::Create, Duration::ZERO).expect("first create");
        let c2 = StoreLock::acquire(store.clone(), LockKind::Create, Duration::ZERO).expect("second create alongside");
        assert!(StoreLock::acquire(store.clone(), LockKind::Collect, Duration::ZERO).is_err(), "collect while creates run");
        drop(c1);
        drop(c2);
        let g = StoreLock::acquire(store.clone(), LockKind::Collect, Duration::ZERO).expect("collect once they are done");
        assert!(StoreLock::acquire(store.clone(), LockKind::Create, Duration::ZERO).is_err(), "create while collecting");
        drop(g);
        assert!(store.list(PREFIX).expect("list").is_empty(), "released locks leave nothing");
    }
}
