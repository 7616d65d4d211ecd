//! Reading and writing a volume chunk by chunk, past the host's page cache (as a cluster
//! node does, so the snapshot sees what the nodes wrote, not what this host cached).
use std::path::Path;
use std::sync::Arc;

use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::format::layout::{Layout, CHUNK_BLOCKS};
use mafs_core::format::BLOCK_SIZE;

use crate::error::Result;

pub const CHUNK_BYTES: u64 = CHUNK_BLOCKS * BLOCK_SIZE as u64;

pub fn open_volume(path: &Path, read_only: bool) -> Result<Arc<dyn BlockDevice>> {
    mafs_core::claim::check_volume_path(path)?;
    Ok(Arc::new(FileDevice::open(path, &OpenOptions { direct: true, read_only, ..Default::default() })?))
}

/// Bytes of chunk `c` of a volume of `total_blocks` (the last chunk may be short).
pub fn chunk_len(total_blocks: u64, c: u64) -> usize {
    let start = c * CHUNK_BLOCKS;
    ((total_blocks - start).min(CHUNK_BLOCKS) as usize) * BLOCK_SIZE
}

pub fn read_chunk(dev: &dyn BlockDevice, total_blocks: u64, c: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; chunk_len(total_blocks, c)];
    dev.read_at(&mut buf, c * CHUNK_BYTES)?;
    Ok(buf)
}

/// Chunks a snapshot reads at every freeze whatever the change maps say: the superblocks and
/// slot headers (both copies), which a node may write while it holds no volume lock (its
/// multi-mount protection heartbeat).
pub fn always_read_chunks(layout: &Layout) -> Vec<u64> {
    let mut v: Vec<u64> = (0..layout.journal_start.div_ceil(CHUNK_BLOCKS)).collect();
    v.extend((0..layout.slot_count).map(|s| layout.slot_header_copy_blkno(s) / CHUNK_BLOCKS));
    v.sort_unstable();
    v.dedup();
    v
}
