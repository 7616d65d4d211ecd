//! `mafs snapshot create`: a consistent image of a volume in use, with writers held for
//! milliseconds. Read-before-release in two freezes (docs/snapshots.md):
//!
//! 1. freeze, move the change generation on, thaw;
//! 2. read and store every chunk changed since the parent snapshot, writers running;
//! 3. freeze again, read into memory the chunks changed since step 1 (and the slot headers),
//!    move the generation on, thaw;
//! 4. store those, then the manifest — only now is the snapshot visible.
//!
//! A chunk not changed since step 1 reads the same in step 2 as at the freeze of step 3, so
//! the image is the volume as it was at that freeze.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mafs_core::change_tracking::{read_state, read_volume_marks, write_state};
use mafs_core::device::BlockDevice;
use mafs_core::format::change_map::ChangeState;
use mafs_core::format::layout::CHUNK_BLOCKS;
use mafs_core::format::superblock::Superblock;

use crate::chunk::ChunkId;
use crate::error::Result;
use crate::freeze::Freezer;
use crate::manifest::{new_id, Manifest, SnapshotInfo};
use crate::progress::bytes_bar;
use crate::store::Store;
use crate::store_lock::{LockKind, StoreLock};
use crate::uploader::Uploader;
use crate::volume_io::{always_read_chunks, chunk_len, open_volume, read_chunk};

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub tags: BTreeMap<String, String>,
    /// Threads reading, compressing and storing chunks.
    pub workers: usize,
    /// Take a full snapshot even if an incremental one is possible.
    pub full: bool,
}

/// How long a create waits for a collection running in the store.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(600);

pub fn create(volume: &Path, store: Arc<dyn Store>, freezer: &dyn Freezer, opts: &CreateOptions) -> Result<Manifest> {
    let dev = open_volume(volume, false)?;
    let (sb, _) = mafs_core::volume::read_superblock(&*dev)?;
    let _lock = StoreLock::acquire(store.clone(), LockKind::Create, STORE_LOCK_WAIT)?;
    let uuid = sb.uuid_string();
    let tracks = sb.layout.tracks_changes();
    let state = if tracks { Some(read_state(&*dev, &sb)?) } else { None };
    // The parent's chunks stand for every chunk not marked since its freeze, if the marks
    // since then are whole (nothing wrote the volume without marking: `full_since`).
    let parent = match (opts.full, state) {
        (false, Some(st)) => crate::catalog::latest_of(&*store, &uuid)?
            .filter(|p| p.info.generation >= st.full_since && p.info.total_blocks == sb.layout.total_blocks),
        _ => None,
    };
    let uploader = Uploader::new(store.clone(), opts.workers.max(1))?;
    let mut run = Run { dev: &*dev, sb: &sb, uploader: &uploader, parent: parent.as_ref(), chunks_read: 0, frozen: Duration::ZERO };
    let (table, generation, created) = if freezer.exclusive() { run.single_pass()? } else { run.two_freezes(freezer)? };
    let info = SnapshotInfo {
        id: new_id(created),
        volume_uuid: uuid,
        label: sb.label.clone(),
        created,
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|p| p.info.id.clone()),
        generation,
        total_blocks: sb.layout.total_blocks,
        chunk_blocks: CHUNK_BLOCKS,
        chunks_read: run.chunks_read,
        bytes_added: uploader.bytes_added(),
        frozen_ms: run.frozen.as_millis() as u64,
    };
    let manifest = Manifest { info, chunks: table };
    // Last: until this put returns, the snapshot is not in the store.
    store.put(&Manifest::key(&manifest.info.id), &manifest.encode()?)?;
    Ok(manifest)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

struct Run<'a> {
    dev: &'a dyn BlockDevice,
    sb: &'a Superblock,
    uploader: &'a Uploader,
    parent: Option<&'a Manifest>,
    chunks_read: u64,
    frozen: Duration,
}

impl Run<'_> {
    fn chunk_count(&self) -> u64 {
        self.sb.layout.chunk_count()
    }

    /// The table to start from: the parent's, or every chunk unknown.
    fn base_table(&self) -> Vec<ChunkId> {
        match self.parent {
            Some(p) => p.chunks.clone(),
            None => vec![ChunkId::ZERO; self.chunk_count() as usize],
        }
    }

    /// Chunks changed since the parent according to `marks` (all without a parent or marks).
    fn changed_since_parent(&self, marks: Option<&[u32]>) -> Vec<u64> {
        match (self.parent, marks) {
            (Some(p), Some(m)) => (0..self.chunk_count()).filter(|&c| m[c as usize] as u64 > p.info.generation).collect(),
            _ => (0..self.chunk_count()).collect(),
        }
    }

    fn marks(&self) -> Result<Option<Vec<u32>>> {
        if self.sb.layout.tracks_changes() {
            Ok(Some(read_volume_marks(self.dev, self.sb)?))
        } else {
            Ok(None)
        }
    }

    /// Reads and stores `chunks` from the volume into `table`.
    fn store_from_volume(&mut self, chunks: &[u64], table: &mut [ChunkId], what: &str) -> Result<()> {
        let total: u64 = chunks.iter().map(|&c| chunk_len(self.sb.layout.total_blocks, c) as u64).sum();
        let bar = bytes_bar(total, what);
        let tb = self.sb.layout.total_blocks;
        let dev = self.dev;
        let ids = self.uploader.store_all(chunks, &|c| read_chunk(dev, tb, c), &bar)?;
        bar.finish_and_clear();
        for (&c, id) in chunks.iter().zip(ids) {
            table[c as usize] = id;
        }
        self.chunks_read += chunks.len() as u64;
        Ok(())
    }

    /// An unmounted volume: nothing writes it while it is read.
    fn single_pass(&mut self) -> Result<(Vec<ChunkId>, u64, i64)> {
        let created = now_secs();
        let mut table = self.base_table();
        let changed = self.changed_since_parent(self.marks()?.as_deref());
        self.store_from_volume(&changed, &mut table, "snapshot")?;
        let generation = self.bump_generation()?;
        Ok((table, generation, created))
    }

    /// Moves the change generation on (writers held or absent); the new one.
    fn bump_generation(&self) -> Result<u64> {
        if !self.sb.layout.tracks_changes() {
            return Ok(0);
        }
        let st = read_state(self.dev, self.sb)?;
        let next = ChangeState { generation: st.generation + 1, ..st };
        write_state(self.dev, self.sb, next)?;
        Ok(next.generation)
    }

    fn two_freezes(&mut self, freezer: &dyn Freezer) -> Result<(Vec<ChunkId>, u64, i64)> {
        let t = Instant::now();
        let frozen = freezer.freeze()?;
        let first_gen = self.bump_generation()?;
        drop(frozen);
        self.frozen += t.elapsed();
        tracing::info!("first freeze ({}): {:?}", freezer.describe(), t.elapsed());

        let mut table = self.base_table();
        let before = self.changed_since_parent(self.marks()?.as_deref());
        self.store_from_volume(&before, &mut table, "snapshot")?;

        let t = Instant::now();
        let frozen = freezer.freeze()?;
        let created = now_secs();
        let marks = self.marks()?;
        let again = self.changed_at_freeze(marks.as_deref(), first_gen, &before);
        let tb = self.sb.layout.total_blocks;
        let read: Vec<(u64, Vec<u8>)> = again.iter().map(|&c| read_chunk(self.dev, tb, c).map(|d| (c, d))).collect::<Result<_>>()?;
        let generation = self.bump_generation()?;
        drop(frozen);
        self.frozen += t.elapsed();
        tracing::info!("second freeze ({}): {:?}, {} chunks read", freezer.describe(), t.elapsed(), read.len());

        let bar = bytes_bar(read.iter().map(|r| r.1.len() as u64).sum(), "frozen");
        let items: Vec<u64> = (0..read.len() as u64).collect();
        let ids = self.uploader.store_all(&items, &|k| Ok(read[k as usize].1.clone()), &bar)?;
        bar.finish_and_clear();
        for ((c, _), id) in read.iter().zip(ids) {
            table[*c as usize] = id;
        }
        self.chunks_read += read.len() as u64;
        Ok((table, generation, created))
    }

    /// What the second freeze reads: chunks marked since the first freeze, chunks changed since
    /// the parent that the pass in between did not read, and the slot headers.
    fn changed_at_freeze(&self, marks: Option<&[u32]>, first_gen: u64, read_before: &[u64]) -> Vec<u64> {
        let Some(m) = marks else {
            // No change maps: only a second full read gives a consistent image.
            return (0..self.chunk_count()).collect();
        };
        let done: std::collections::HashSet<u64> = read_before.iter().copied().collect();
        let since_parent = |c: u64| self.parent.is_none_or(|p| m[c as usize] as u64 > p.info.generation);
        let mut v: Vec<u64> =
            (0..self.chunk_count()).filter(|&c| m[c as usize] as u64 > first_gen || (since_parent(c) && !done.contains(&c))).collect();
        v.extend(always_read_chunks(&self.sb.layout));
        v.sort_unstable();
        v.dedup();
        v
    }
}
