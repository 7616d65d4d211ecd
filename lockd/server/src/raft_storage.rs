//! The replica's Raft log, hard state and latest snapshot: kept in memory for raft-rs and made
//! durable in the data directory.
//!
//! Layout of `<data-dir>`:
//! - `snapshot.bin`: `MAFSSNP1`, crc32c (u32 LE) of the body, body length (u64 LE), body = an
//!   `eraftpb::Snapshot` (metadata: index, term, conf state; data: the state machine).
//!   Replaced atomically (write `snapshot.tmp`, fsync, rename, fsync the directory).
//! - `raft.log`: `MAFSRLG2`, then records `len u32 LE | crc32c u32 LE | kind u8 | payload`,
//!   crc over kind and payload. Kind 1 = one `eraftpb::Entry`, kind 2 = `eraftpb::HardState`,
//!   kind 3 = "synced through" mark (see `KIND_SYNCED`).
//!   Entries are appended as raft-rs hands them over; replay applies the same "a new entry at
//!   index i cuts off everything from i on" rule, so overwritten suffixes need no in-place edit.
//!   After a snapshot the file is rewritten (tmp + rename) with only the entries past it.
//!   The file is kept 4 MiB ahead of the last record with written zeros (see `write_log`); zeros
//!   end the replay.
//!   A bad record that no later mark covers was never synced (a write torn by a crash) and is
//!   cut off with everything after it; one that a mark covers had been durable, and the open
//!   fails instead of cutting committed entries.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::errors::LockdError;

/// Logs that carry "synced through" marks (kind 3); an older `MAFSRLG1` log is read, and
/// rewritten in this format at open.
const LOG_MAGIC: &[u8; 8] = b"MAFSRLG2";
const LOG_MAGIC_V1: &[u8; 8] = b"MAFSRLG1";
const SNAP_MAGIC: &[u8; 8] = b"MAFSSNP1";
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
/// Written (not synced) right after each fsync: payload u64 LE, the offset through which the
/// log is durable. A mark after a damaged record proves that record had been synced, so it is
/// damage rather than a write torn by a crash.
const KIND_SYNCED: u8 = 3;
const LOG_FILE: &str = "raft.log";
/// How far ahead of the last record `raft.log` is filled with zeros.
const PREALLOCATE: u64 = 4 << 20;
const SNAP_FILE: &str = "snapshot.bin";
const SNAP_TMP: &str = "snapshot.tmp";

/// What a brand new bootstrap member starts from: the initial state machine and voters, as a
/// snapshot at `index` (with term `index`). The index is above 0 so that a replica added
/// later, which starts from an empty log at index 0, can never be sent entries from index 1:
/// the bootstrap voters live only in this snapshot, and a joiner that replayed the log without
/// them would end up with a voter set of its own (see docs/lockd.md, "Membership").
pub struct Bootstrap {
    pub data: Vec<u8>,
    pub voters: Vec<u64>,
    pub index: u64,
}

pub struct DiskStorage {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.index + 1` when not empty.
    entries: Vec<Entry>,
    /// Shared so that an fsync can run on a blocking thread while the runtime sends messages.
    log: Arc<File>,
    /// End of the valid records in `raft.log`; past it the file holds preallocated zeros.
    log_end: u64,
    log_len: u64,
    /// raft-rs asked for a snapshot ours cannot serve (it predates the requester's membership);
    /// the raft loop takes a fresh one.
    fresh_snapshot_wanted: std::cell::Cell<bool>,
    /// The log was read in the older format without sync marks; rewritten at open.
    upgrade: bool,
}

fn pb_err(e: protobuf::ProtobufError) -> LockdError {
    LockdError::Storage(format!("protobuf: {e}"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_at(path: &Path, what: &str, e: std::io::Error) -> LockdError {
    LockdError::Storage(format!("{what} {}: {e}", path.display()))
}

/// Records longer than this are damage, not data (a snapshot never goes through the log).
const MAX_RECORD: usize = 256 << 20;

/// The record at `off`: kind, payload and where the next one starts; `None` when there is no
/// whole record with a matching checksum there.
fn parse_record(buf: &[u8], off: usize) -> Option<(u8, &[u8], usize)> {
    let hdr = buf.get(off..off.checked_add(9)?)?;
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let end = off + 9 + len;
    let body = buf.get(off + 8..end)?;
    (crc32c::crc32c(body) == crc).then(|| (body[0], &body[1..], end))
}

/// Why the damaged record at `bad` must have been synced, if it must: a sync mark after it
/// that covers it (`marked` logs), or any valid record after it (older logs, which carry no
/// marks and so cannot tell a torn batch from damage).
fn synced_past(buf: &[u8], bad: usize, marked: bool) -> Option<String> {
    let first = next_valid_record(buf, bad + 1)?;
    if !marked {
        return Some(format!("a valid record follows at byte {first}"));
    }
    let mut off = first;
    loop {
        let next = match parse_record(buf, off) {
            Some((KIND_SYNCED, p, next)) => {
                let through = p.get(..8).map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    u64::from_le_bytes(a)
                });
                if through.is_some_and(|t| t > bad as u64) {
                    return Some(format!("the mark at byte {off} says the log was durable through byte {}", through.unwrap_or(0)));
                }
                next
            }
            Some((_, _, next)) => next,
            // Another damaged stretch: go on from the next valid record after it.
            None => next_valid_record(buf, off + 1)?,
        };
        off = next;
    }
}

/// The offset of the first whole, checksummed record of a known kind at or after `from`.
fn next_valid_record(buf: &[u8], from: usize) -> Option<usize> {
    let last_nonzero = buf.iter().rposition(|b| *b != 0)?;
    (from..=last_nonzero).find(|&off| matches!(parse_record(buf, off), Some((KIND_ENTRY | KIND_HARD_STATE | KIND_SYNCED, _, _))))
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 1);
    body.push(kind);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

impl DiskStorage {
    /// Opens `dir`, or initializes it. `initial` is what a brand new bootstrap member starts
    /// from; `None` starts empty and waits for the leader's snapshot (a replica joining a
    /// running cluster).
    pub fn open(dir: &Path, initial: Option<Bootstrap>) -> Result<DiskStorage, LockdError> {
        fs::create_dir_all(dir).map_err(|e| io_at(dir, "creating the data directory", e))?;
        let snap_path = dir.join(SNAP_FILE);
        let snap_tmp = dir.join(SNAP_TMP);
        let log_path = dir.join(LOG_FILE);
        let gone = |what: &str| LockdError::CorruptLog(format!("{what} in {}: this replica's durable state is gone", dir.display()));
        let fresh = match (snap_path.exists(), log_path.exists()) {
            (true, true) => false,
            (false, false) => true,
            // A crash in the middle of initializing: the snapshot was written and synced, the
            // log too, only the final rename is missing (compaction always leaves a snapshot.bin).
            (false, true) if snap_tmp.exists() => {
                fs::rename(&snap_tmp, &snap_path)
                    .and_then(|()| sync_dir(dir))
                    .map_err(|e| io_at(&snap_path, "finishing the initialization of", e))?;
                false
            }
            (false, true) => return Err(gone(&format!("{LOG_FILE} exists without {SNAP_FILE}"))),
            (true, false) => return Err(gone(&format!("{SNAP_FILE} exists without {LOG_FILE}"))),
        };
        let snapshot = if fresh {
            let mut s = Snapshot::default();
            if let Some(b) = initial {
                s.set_data(b.data.into());
                let meta = s.mut_metadata();
                meta.index = b.index;
                meta.term = b.index;
                meta.mut_conf_state().set_voters(b.voters);
            }
            s
        } else {
            read_snapshot(&snap_path)?
        };
        let mut st = DiskStorage {
            dir: dir.to_path_buf(),
            hard_state: HardState::default(),
            conf_state: snapshot.get_metadata().get_conf_state().clone(),
            snapshot,
            entries: Vec::new(),
            log: Arc::new(File::open("/dev/null")?),
            log_end: 0,
            log_len: 0,
            fresh_snapshot_wanted: std::cell::Cell::new(false),
            upgrade: false,
        };
        st.hard_state.term = st.snapshot.get_metadata().term;
        st.hard_state.commit = st.snapshot.get_metadata().index;
        if fresh {
            // Snapshot to its temporary name, the log, then the rename: a crash at any point
            // leaves either nothing to trust (start afresh) or both files.
            write_snapshot_tmp(dir, &st.snapshot)?;
            st.rewrite_log()?;
            fs::rename(&snap_tmp, &snap_path).and_then(|()| sync_dir(dir)).map_err(|e| io_at(&snap_path, "writing", e))?;
        } else {
            st.replay_log(&log_path)?;
            if st.upgrade {
                st.rewrite_log()?;
            }
        }
        st.log = Arc::new(OpenOptions::new().write(true).open(&log_path).map_err(|e| io_at(&log_path, "opening", e))?);
        st.log_len = st.log.metadata()?.len();
        Ok(st)
    }

    fn replay_log(&mut self, path: &Path) -> Result<(), LockdError> {
        let buf = fs::read(path).map_err(|e| io_at(path, "reading", e))?;
        let magic = buf.get(..8);
        let marked = magic == Some(LOG_MAGIC.as_slice());
        if !marked && magic != Some(LOG_MAGIC_V1.as_slice()) {
            return Err(LockdError::Storage(format!("{} is not a lockd raft log", path.display())));
        }
        let mut off = 8;
        let good_end = loop {
            let Some((kind, payload, next)) = parse_record(&buf, off) else {
                break off;
            };
            match kind {
                KIND_ENTRY => {
                    let mut e = Entry::default();
                    e.merge_from_bytes(payload).map_err(pb_err)?;
                    self.append_in_memory(std::slice::from_ref(&e))?;
                }
                KIND_HARD_STATE => {
                    let mut hs = HardState::default();
                    hs.merge_from_bytes(payload).map_err(pb_err)?;
                    self.hard_state = hs;
                }
                KIND_SYNCED => {}
                k => return Err(LockdError::Storage(format!("unknown record kind {k} at byte {off} of {}", path.display()))),
            }
            off = next;
        };
        // Past the last record there are preallocated zeros. Anything else is either a write
        // torn by a crash (never synced, so never acknowledged: cutting it off is safe), or
        // damage to what had been synced. Cutting that would silently drop entries this replica
        // acknowledged, and with the same damage on a majority roll committed state back, so
        // the replica stops instead. A "synced through" mark past the bad record proves it was
        // synced; a log without marks (older format) counts any valid record after it as proof.
        let tail = &buf[good_end..];
        if tail.iter().any(|b| *b != 0) {
            if let Some(proof) = synced_past(&buf, good_end, marked) {
                return Err(LockdError::CorruptLog(format!(
                    "{}: the record at byte {good_end} is damaged (checksum mismatch or bad \
                     length) although it had been synced ({proof}), so this is not a write \
                     torn by a crash; this replica's log cannot be trusted",
                    path.display()
                )));
            }
            tracing::warn!(path = %path.display(), at = good_end, dropped = buf.len() - good_end, "cutting off a torn raft log tail");
            let f = OpenOptions::new().write(true).open(path).map_err(|e| io_at(path, "opening", e))?;
            f.set_len(good_end as u64).and_then(|()| f.sync_all()).map_err(|e| io_at(path, "truncating", e))?;
        }
        self.log_end = good_end as u64;
        if !marked {
            self.upgrade = true;
        }
        let snap_index = self.snapshot.get_metadata().index;
        if self.hard_state.commit < snap_index {
            self.hard_state.commit = snap_index;
        }
        // The hard state says entries up to `commit` were committed, and this replica had them
        // durably before it wrote that; missing ones mean the log lost acknowledged data.
        if self.hard_state.commit > self.last() {
            return Err(LockdError::CorruptLog(format!(
                "{}: the hard state says entries up to {} are committed but the log ends at {}",
                path.display(),
                self.hard_state.commit,
                self.last()
            )));
        }
        Ok(())
    }

    fn append_in_memory(&mut self, ents: &[Entry]) -> Result<(), LockdError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let snap_index = self.snapshot.get_metadata().index;
        // Entries at or below the snapshot are already folded into it (a crash between writing
        // the snapshot and rewriting the log leaves them behind).
        let skip = snap_index.saturating_sub(first.index - 1).min(ents.len() as u64) as usize;
        let ents = &ents[skip..];
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index > self.last() + 1 {
            return Err(LockdError::Storage(format!("raft log gap: last {} then {}", self.last(), first.index)));
        }
        let keep = (first.index - (snap_index + 1)) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    fn last(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn last_log_index(&self) -> u64 {
        self.last()
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn take_fresh_snapshot_wanted(&self) -> bool {
        self.fresh_snapshot_wanted.replace(false)
    }

    pub fn snapshot_data(&self) -> &[u8] {
        self.snapshot.get_data()
    }

    /// Appends entries handed over by a Ready (written, not yet synced).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), LockdError> {
        let mut buf = Vec::new();
        for e in ents {
            buf.extend(record(KIND_ENTRY, &e.write_to_bytes().map_err(pb_err)?));
        }
        self.write_log(&buf)?;
        self.append_in_memory(ents)
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), LockdError> {
        self.write_log(&record(KIND_HARD_STATE, &hs.write_to_bytes().map_err(pb_err)?))?;
        self.hard_state = hs;
        Ok(())
    }

    /// A commit index learned from a light ready. Not worth an fsync: after a crash raft-rs
    /// learns it again from the leader.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LockdError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Writes at the end of the valid records. The file is kept ahead of the writes by
    /// preallocated zeros, so that the per-commit `fdatasync` flushes data only: an append that
    /// grows the file also has to journal the new size, which costs ext4 more than the data.
    fn write_log(&mut self, buf: &[u8]) -> Result<(), LockdError> {
        let end = self.log_end + buf.len() as u64;
        if end > self.log_len {
            let new_len = end + PREALLOCATE;
            let zeros = vec![0u8; 1 << 20];
            let mut off = self.log_len;
            while off < new_len {
                let n = (new_len - off).min(zeros.len() as u64) as usize;
                self.log.write_all_at(&zeros[..n], off)?;
                off += n as u64;
            }
            self.log.sync_all()?;
            self.log_len = new_len;
        }
        self.log.write_all_at(buf, self.log_end)?;
        self.log_end = end;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), LockdError> {
        self.log.sync_data()?;
        self.mark_synced()
    }

    /// Records that everything written so far is durable (after an fsync of the log made
    /// elsewhere). The mark itself is not synced: it becomes durable with the next fsync, and
    /// a crash before that only leaves the last batch without proof, where a damaged record
    /// is taken for a torn one.
    pub fn mark_synced(&mut self) -> Result<(), LockdError> {
        self.write_log(&record(KIND_SYNCED, &self.log_end.to_le_bytes()))
    }

    /// The log file, for an fsync made off the runtime thread ([`sync`](Self::sync) there).
    pub fn log_file(&self) -> Arc<File> {
        self.log.clone()
    }

    /// Conf state after applying a conf change; durable through the log (replayed on restart)
    /// and the next snapshot.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Installs a snapshot received from the leader: everything in the log is superseded.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), LockdError> {
        let meta = snap.get_metadata();
        if meta.index < self.snapshot_index() {
            return Err(LockdError::Raft(format!("snapshot {} older than ours {}", meta.index, self.snapshot_index())));
        }
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snap;
        write_snapshot(&self.dir, &self.snapshot)?;
        self.rewrite_log()
    }

    /// Takes a snapshot of the state machine at `index` (already applied) and drops the log up to
    /// it, so the log stays bounded.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), LockdError> {
        if index <= self.snapshot_index() || index > self.last() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let drop = (index - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snap;
        write_snapshot(&self.dir, &self.snapshot)?;
        self.rewrite_log()
    }

    fn rewrite_log(&mut self) -> Result<(), LockdError> {
        let tmp = self.dir.join("raft.log.tmp");
        let mut buf = LOG_MAGIC.to_vec();
        for e in &self.entries {
            buf.extend(record(KIND_ENTRY, &e.write_to_bytes().map_err(pb_err)?));
        }
        buf.extend(record(KIND_HARD_STATE, &self.hard_state.write_to_bytes().map_err(pb_err)?));
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        sync_dir(&self.dir)?;
        self.log_end = buf.len() as u64;
        self.log_len = buf.len() as u64;
        self.log = Arc::new(OpenOptions::new().write(true).open(self.dir.join(LOG_FILE))?);
        self.mark_synced()
    }
}

/// Writes and syncs `snapshot.tmp`.
fn write_snapshot_tmp(dir: &Path, snap: &Snapshot) -> Result<(), LockdError> {
    let body = snap.write_to_bytes().map_err(pb_err)?;
    let mut buf = SNAP_MAGIC.to_vec();
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
    buf.extend_from_slice(&body);
    let tmp = dir.join(SNAP_TMP);
    File::create(&tmp).and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all())).map_err(|e| io_at(&tmp, "writing", e))
}

fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<(), LockdError> {
    write_snapshot_tmp(dir, snap)?;
    let path = dir.join(SNAP_FILE);
    fs::rename(dir.join(SNAP_TMP), &path).and_then(|()| sync_dir(dir)).map_err(|e| io_at(&path, "writing", e))
}

fn read_snapshot(path: &Path) -> Result<Snapshot, LockdError> {
    let buf = fs::read(path).map_err(|e| io_at(path, "reading", e))?;
    let bad = |why: &str| LockdError::Storage(format!("{}: {why}", path.display()));
    if buf.len() < 20 || &buf[..8] != SNAP_MAGIC {
        return Err(bad("not a lockd snapshot"));
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&buf[12..20]);
    let body = buf.get(20..20 + u64::from_le_bytes(len8) as usize).ok_or_else(|| bad("truncated"))?;
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut s = Snapshot::default();
    s.merge_from_bytes(body).map_err(pb_err)?;
    Ok(s)
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - snap.index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snapshot.get_metadata().get_conf_state();
        // A replica added after our snapshot would refuse it (it is not in its conf state).
        let knows_to = cs.voters.contains(&to) || cs.learners.contains(&to);
        if self.snapshot_index() < request_index || !knows_to {
            tracing::debug!(to, index = self.snapshot_index(), "snapshot predates the peer; taking a fresh one");
            self.fresh_snapshot_wanted.set(true);
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(data: &[u8], voters: &[u64], index: u64) -> Bootstrap {
        Bootstrap { data: data.to_vec(), voters: voters.to_vec(), index }
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    #[test]
    fn log_survives_reopen_with_overwrites_compaction_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path(), Some(boot(b"sm", &[1, 2, 3], 0))).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]).unwrap();
            // A new leader overwrites index 3 onwards.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState { term: 2, vote: 1, commit: 3, ..Default::default() };
            s.set_hard_state(hs).unwrap();
            s.sync().unwrap();
        }
        let mut s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.last_log_index(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        s.compact(3, b"sm@3".to_vec()).unwrap();
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(matches!(s.entries(2, 4, None, GetEntriesContext::empty(false)), Err(raft::Error::Store(StorageError::Compacted))));
        s.append(&[entry(5, 2, b"e")]).unwrap();
        s.sync().unwrap();
        drop(s);
        // A crash mid-append leaves half a record behind.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(LOG_FILE)).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.snapshot_index(), 3);
        assert_eq!(s.snapshot_data(), b"sm@3");
        assert_eq!(s.last_log_index(), 5);
        let got = s.entries(4, 6, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.get_data().to_vec()).collect::<Vec<_>>(), vec![b"d".to_vec(), b"e".to_vec()]);
    }

    #[test]
    fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStorage::open(dir.path(), Some(boot(b"x", &[1], 0))).unwrap());
        let p = dir.path().join(SNAP_FILE);
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        fs::write(&p, b).unwrap();
        assert!(DiskStorage::open(dir.path(), None).is_err());
    }

    /// A log of `n` entries of 100 bytes each, synced, in a fresh data dir.
    fn log_with(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), Some(boot(b"sm", &[1], 0))).unwrap();
        for i in 1..=n {
            s.append(&[entry(i, 1, &[i as u8; 100])]).unwrap();
        }
        s.set_hard_state(HardState { term: 1, vote: 1, commit: n, ..Default::default() }).unwrap();
        s.sync().unwrap();
        dir
    }

    /// What a lost write leaves: `len` zero bytes at `at`.
    fn zero(path: &Path, at: u64, len: usize) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0u8; len], at).unwrap();
    }

    fn flip(path: &Path, at: u64) {
        let mut b = fs::read(path).unwrap();
        b[at as usize] ^= 0x40;
        fs::write(path, b).unwrap();
    }

    #[test]
    fn a_flipped_byte_mid_log_stops_the_replica_and_cuts_nothing() {
        let dir = log_with(200);
        let log = dir.path().join(LOG_FILE);
        let len_before = fs::metadata(&log).unwrap().len();
        // Inside the 50th entry record: records are 9 + ~110 bytes.
        flip(&log, 8 + 50 * 119 + 40);
        let err = DiskStorage::open(dir.path(), None).err().expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, LockdError::CorruptLog(_)), "{msg}");
        assert!(msg.contains(&log.display().to_string()) && msg.contains("byte"), "{msg}");
        assert_eq!(fs::metadata(&log).unwrap().len(), len_before, "nothing cut off");
        // And it stays refused: nothing was "repaired" on the way.
        assert!(DiskStorage::open(dir.path(), None).is_err());
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let dir = log_with(20);
        let log = dir.path().join(LOG_FILE);
        let mut s = DiskStorage::open(dir.path(), None).unwrap();
        let end = s.log_end;
        s.append(&[entry(21, 1, &[7u8; 3000])]).unwrap();
        drop(s);
        // The crash wrote the record's first part only: the rest stayed preallocated zeros.
        zero(&log, end + 1200, 2000);
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.last_log_index(), 20);
        assert_eq!(s.log_end, end);
    }

    #[test]
    fn a_missing_log_or_snapshot_is_refused_with_the_remedy() {
        let dir = log_with(5);
        fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        let msg = DiskStorage::open(dir.path(), Some(boot(b"sm", &[1], 0))).err().expect("refused").to_string();
        assert!(msg.contains("raft.log") && msg.contains("remove-member"), "{msg}");

        let dir = log_with(5);
        fs::remove_file(dir.path().join(SNAP_FILE)).unwrap();
        let msg = DiskStorage::open(dir.path(), None).err().expect("refused").to_string();
        assert!(msg.contains("snapshot.bin"), "{msg}");
    }

    #[test]
    fn an_interrupted_initialization_is_finished_on_open() {
        let dir = log_with(3);
        fs::rename(dir.path().join(SNAP_FILE), dir.path().join(SNAP_TMP)).unwrap();
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.last_log_index(), 3);
        assert!(dir.path().join(SNAP_FILE).exists());
    }

    #[test]
    fn a_bootstrap_snapshot_sits_above_index_zero() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(dir.path(), Some(boot(b"sm", &[1, 2], 5))).unwrap();
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.term(5).unwrap(), 5);
        // A joiner's probe at index 0 finds it compacted, so the leader sends a snapshot.
        assert!(matches!(s.term(0), Err(raft::Error::Store(StorageError::Compacted))));
    }

    #[test]
    fn a_damaged_last_record_that_was_synced_is_refused() {
        let dir = log_with(30);
        let log = dir.path().join(LOG_FILE);
        let b = fs::read(&log).unwrap();
        // The last record before the final sync mark is the hard state; damage it.
        let mut off = 8;
        let mut last = 8;
        while let Some((kind, _, next)) = parse_record(&b, off) {
            if kind != KIND_SYNCED {
                last = off;
            }
            off = next;
        }
        flip(&log, last as u64 + 12);
        let msg = DiskStorage::open(dir.path(), None).err().expect("refused").to_string();
        assert!(msg.contains("durable through"), "{msg}");
    }

    #[test]
    fn a_batch_torn_out_of_order_by_a_power_loss_is_cut_not_refused() {
        let dir = log_with(10);
        let mut s = DiskStorage::open(dir.path(), None).unwrap();
        let start = s.log_end;
        // One unsynced batch: entries then the hard state.
        s.append(&[entry(11, 1, &[1u8; 600]), entry(12, 1, &[2u8; 600])]).unwrap();
        s.set_hard_state(HardState { term: 1, vote: 1, commit: 10, ..Default::default() }).unwrap();
        drop(s);
        // The power loss kept the later sector but not the first one of the batch.
        zero(&dir.path().join(LOG_FILE), start + 20, 300);
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.last_log_index(), 10);
        assert_eq!(s.log_end, start);
    }

    #[test]
    fn an_older_log_without_sync_marks_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStorage::open(dir.path(), Some(boot(b"sm", &[1], 0))).unwrap());
        let mut v1 = LOG_MAGIC_V1.to_vec();
        for i in 1..=3 {
            v1.extend(record(KIND_ENTRY, &entry(i, 1, b"x").write_to_bytes().unwrap()));
        }
        let hs = HardState { term: 1, vote: 1, commit: 3, ..Default::default() };
        v1.extend(record(KIND_HARD_STATE, &hs.write_to_bytes().unwrap()));
        fs::write(dir.path().join(LOG_FILE), &v1).unwrap();
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.last_log_index(), 3);
        drop(s);
        assert_eq!(&fs::read(dir.path().join(LOG_FILE)).unwrap()[..8], LOG_MAGIC);
        assert_eq!(DiskStorage::open(dir.path(), None).unwrap().last_log_index(), 3);
    }
}
