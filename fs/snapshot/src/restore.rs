//! `mafs restore`: writes a snapshot out as a new volume, every chunk checked against its name
//! before it is written, then gives the volume a UUID of its own (`identity.rs`).
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::format::BLOCK_SIZE;

use crate::chunk;
use crate::error::{Result, SnapshotError};
use crate::manifest::Manifest;
use crate::progress::bytes_bar;
use crate::store::Store;
use crate::volume_io::{chunk_len, CHUNK_BYTES};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub workers: usize,
    /// Size of a new volume file; at least the snapshot's volume.
    pub size: Option<u64>,
    /// The UUID to give the volume (a new random one if None).
    pub uuid: Option<[u8; 16]>,
}

/// The volume written: its new UUID.
pub fn restore(store: Arc<dyn Store>, id: &str, target: &Path, opts: &RestoreOptions) -> Result<String> {
    let m = crate::catalog::read(&*store, id)?;
    let need = m.info.total_blocks * BLOCK_SIZE as u64;
    let dev = open_target(target, need, opts.size)?;
    let fresh_file = !std::fs::metadata(target).map(|md| std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type())).unwrap_or(false);
    write_chunks(&*store, &m, &dev, fresh_file, opts.workers.max(1))?;
    dev.flush()?;
    let uuid = opts.uuid.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    let sb = crate::identity::make_own(&dev, uuid)?;
    Ok(sb.uuid_string())
}

/// A new volume file of `size` (sparse), or a block device that is empty and large enough.
fn open_target(target: &Path, need: u64, size: Option<u64>) -> Result<Arc<dyn BlockDevice>> {
    let size = size.unwrap_or(need);
    if size < need {
        return Err(SnapshotError::Usage(format!("--size {size} is smaller than the snapshot's volume ({need} bytes)")));
    }
    if size > need {
        return Err(SnapshotError::Usage(format!(
            "--size {size} is larger than the snapshot's volume ({need} bytes): growing a volume is not supported yet; \
             restore at its size"
        )));
    }
    match std::fs::metadata(target) {
        Ok(md) if std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()) => {
            let dev = FileDevice::open(target, &OpenOptions { direct: true, ..Default::default() })?;
            if dev.size() < need {
                return Err(SnapshotError::Usage(format!("{} holds {} bytes; the snapshot needs {need}", target.display(), dev.size())));
            }
            if let Some(what) = mafs_core::probe::existing_contents(&dev) {
                return Err(SnapshotError::Usage(format!("{} already holds {what}; restore onto an empty device", target.display())));
            }
            Ok(Arc::new(dev))
        }
        Ok(_) => {
            Err(SnapshotError::Usage(format!("{} exists; restore makes a new volume: give a path that does not exist", target.display())))
        }
        Err(_) => {
            Ok(Arc::new(FileDevice::open(target, &OpenOptions { direct: true, create: true, size: Some(size), ..Default::default() })?))
        }
    }
}

fn write_chunks(store: &dyn Store, m: &Manifest, dev: &Arc<dyn BlockDevice>, fresh_file: bool, workers: usize) -> Result<()> {
    let tb = m.info.total_blocks;
    let bar = bytes_bar(tb * BLOCK_SIZE as u64, "restore");
    let next = AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = m.chunks.get(c) else { return Ok(()) };
                        let len = chunk_len(tb, c as u64);
                        let at = c as u64 * CHUNK_BYTES;
                        if id.is_zero() {
                            // A new file reads zeros already; a device is zeroed without writing.
                            if !fresh_file {
                                dev.zero_range(at, len as u64)?;
                            }
                        } else {
                            let stored = store.get(&id.key())?.ok_or_else(|| SnapshotError::BadChunk {
                                id: id.hex(),
                                what: format!("missing from the store, which snapshot {} needs", m.info.id),
                            })?;
                            let data = chunk::decode(*id, &stored)?;
                            if data.len() != len {
                                return Err(SnapshotError::BadChunk {
                                    id: id.hex(),
                                    what: format!("{} bytes where {len} belong", data.len()),
                                });
                            }
                            dev.write_at(&data, at)?;
                        }
                        bar.inc(len as u64);
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    bar.finish_and_clear();
    results.into_iter().collect()
}
