//! Puts chunks into a store on several threads, each at most once: a chunk the store already
//! holds (from this snapshot, an earlier one, or another volume's) is only named.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use indicatif::ProgressBar;

use crate::chunk::{self, ChunkId};
use crate::error::Result;
use crate::store::Store;

pub struct Uploader {
    store: Arc<dyn Store>,
    known: parking_lot::Mutex<HashSet<ChunkId>>,
    added: AtomicU64,
    workers: usize,
}

impl Uploader {
    /// Lists the chunks `store` holds. The caller holds a create lock, so none of them goes
    /// before its manifest is written (`store_lock.rs`).
    pub fn new(store: Arc<dyn Store>, workers: usize) -> Result<Uploader> {
        let known = store.list("chunks/")?.into_iter().filter_map(|(k, _)| ChunkId::parse(k.rsplit('/').next().unwrap_or(""))).collect();
        Ok(Uploader { store, known: parking_lot::Mutex::new(known), added: AtomicU64::new(0), workers: workers.max(1) })
    }

    /// Bytes this uploader added to the store.
    pub fn bytes_added(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    /// Stores `data` unless the store has it; its name.
    pub fn put(&self, data: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(data);
        if id.is_zero() || self.known.lock().contains(&id) {
            return Ok(id);
        }
        let stored = chunk::encode(data)?;
        self.store.put(&id.key(), &stored)?;
        self.added.fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.known.lock().insert(id);
        Ok(id)
    }

    /// Stores the chunk `read(i)` gives for each of `items`, on the uploader's threads; their
    /// names in the order of `items`. The first error stops every thread.
    pub fn store_all(&self, items: &[u64], read: &(dyn Fn(u64) -> Result<Vec<u8>> + Sync), bar: &ProgressBar) -> Result<Vec<ChunkId>> {
        let next = AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let ids = parking_lot::Mutex::new(vec![ChunkId::ZERO; items.len()]);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.workers.min(items.len().max(1)))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= items.len() || failed.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            let stored = read(items[k]).and_then(|data| {
                                bar.inc(data.len() as u64);
                                self.put(&data)
                            });
                            match stored {
                                Ok(id) => ids.lock()[k] = id,
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        for r in results {
            r?;
        }
        Ok(ids.into_inner())
    }
}
