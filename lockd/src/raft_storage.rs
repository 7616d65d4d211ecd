//! The replica's Raft log, hard state and latest snapshot: kept in memory for raft-rs and made
//! durable in the data directory.
//!
//! Layout of `<data-dir>`:
//! - `snapshot.bin`: `MAFSSNP1`, crc32c (u32 LE) of the body, body length (u64 LE), body = an
//!   `eraftpb::Snapshot` (metadata: index, term, conf state; data: the state machine).
//!   Replaced atomically (write `snapshot.tmp`, fsync, rename, fsync the directory).
//! - `raft.log`: `MAFSRLG1`, then records `len u32 LE | crc32c u32 LE | kind u8 | payload`,
//!   crc over kind and payload. Kind 1 = one `eraftpb::Entry`, kind 2 = `eraftpb::HardState`.
//!   Entries are appended as raft-rs hands them over; replay applies the same "a new entry at
//!   index i cuts off everything from i on" rule, so overwritten suffixes need no in-place edit.
//!   After a snapshot the file is rewritten (tmp + rename) with only the entries past it.
//!   The file is kept 4 MiB ahead of the last record with written zeros (see `write_log`); zeros
//!   end the replay.
//!   A torn or corrupt tail (a crash mid-append) is cut off at the first bad record.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::errors::LockdError;

const LOG_MAGIC: &[u8; 8] = b"MAFSRLG1";
const SNAP_MAGIC: &[u8; 8] = b"MAFSSNP1";
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const LOG_FILE: &str = "raft.log";
/// How far ahead of the last record `raft.log` is filled with zeros.
const PREALLOCATE: u64 = 4 << 20;
const SNAP_FILE: &str = "snapshot.bin";

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
}

fn pb_err(e: protobuf::ProtobufError) -> LockdError {
    LockdError::Storage(format!("protobuf: {e}"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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
    /// Opens `dir`, or initializes it. `initial` is the state machine image and voter set a brand
    /// new member starts from (the bootstrap members); `None` starts empty and waits for the
    /// leader's snapshot (a replica joining a running cluster).
    pub fn open(
        dir: &Path,
        initial: Option<(Vec<u8>, Vec<u64>)>,
    ) -> Result<DiskStorage, LockdError> {
        fs::create_dir_all(dir)?;
        let snap_path = dir.join(SNAP_FILE);
        let log_path = dir.join(LOG_FILE);
        let snapshot = if snap_path.exists() {
            read_snapshot(&snap_path)?
        } else if !log_path.exists() {
            let mut s = Snapshot::default();
            if let Some((data, voters)) = initial {
                s.set_data(data.into());
                s.mut_metadata().mut_conf_state().set_voters(voters);
            }
            write_snapshot(dir, &s)?;
            s
        } else {
            return Err(LockdError::Storage(format!(
                "{} exists without {SNAP_FILE}",
                log_path.display()
            )));
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
        };
        st.hard_state.term = st.snapshot.get_metadata().term;
        st.hard_state.commit = st.snapshot.get_metadata().index;
        if log_path.exists() {
            st.replay_log(&log_path)?;
        } else {
            st.rewrite_log()?;
        }
        st.log = Arc::new(OpenOptions::new().write(true).open(&log_path)?);
        st.log_len = st.log.metadata()?.len();
        Ok(st)
    }

    fn replay_log(&mut self, path: &Path) -> Result<(), LockdError> {
        let mut buf = Vec::new();
        File::open(path)?.read_to_end(&mut buf)?;
        if buf.len() < 8 || &buf[..8] != LOG_MAGIC {
            return Err(LockdError::Storage(format!(
                "{} is not a lockd raft log",
                path.display()
            )));
        }
        let mut off = 8;
        let good_end = loop {
            let Some(hdr) = buf.get(off..off + 9) else {
                break off;
            };
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let Some(body) = buf.get(off + 8..off + 9 + len) else {
                break off;
            };
            if crc32c::crc32c(body) != crc {
                break off;
            }
            let payload = &body[1..];
            match body[0] {
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
                k => {
                    return Err(LockdError::Storage(format!(
                        "unknown record kind {k} in {}",
                        path.display()
                    )))
                }
            }
            off += 9 + len;
        };
        // Past the last record there are preallocated zeros; anything else is a record torn by a
        // crash mid-write, which was never acknowledged.
        if buf[good_end..].iter().any(|b| *b != 0) {
            tracing::warn!(path = %path.display(), at = good_end, dropped = buf.len() - good_end, "cutting off a torn raft log tail");
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(good_end as u64)?;
            f.sync_all()?;
        }
        self.log_end = good_end as u64;
        let snap_index = self.snapshot.get_metadata().index;
        if self.hard_state.commit < snap_index {
            self.hard_state.commit = snap_index;
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
        let skip = snap_index
            .saturating_sub(first.index - 1)
            .min(ents.len() as u64) as usize;
        let ents = &ents[skip..];
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index > self.last() + 1 {
            return Err(LockdError::Storage(format!(
                "raft log gap: last {} then {}",
                self.last(),
                first.index
            )));
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
        self.write_log(&record(
            KIND_HARD_STATE,
            &hs.write_to_bytes().map_err(pb_err)?,
        ))?;
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
        Ok(())
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
            return Err(LockdError::Raft(format!(
                "snapshot {} older than ours {}",
                meta.index,
                self.snapshot_index()
            )));
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
        buf.extend(record(
            KIND_HARD_STATE,
            &self.hard_state.write_to_bytes().map_err(pb_err)?,
        ));
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        sync_dir(&self.dir)?;
        self.log_end = buf.len() as u64;
        self.log_len = buf.len() as u64;
        self.log = Arc::new(
            OpenOptions::new()
                .write(true)
                .open(self.dir.join(LOG_FILE))?,
        );
        Ok(())
    }
}

fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<(), LockdError> {
    let body = snap.write_to_bytes().map_err(pb_err)?;
    let mut buf = SNAP_MAGIC.to_vec();
    buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
    buf.extend_from_slice(&body);
    let tmp = dir.join("snapshot.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(SNAP_FILE))?;
    sync_dir(dir)?;
    Ok(())
}

fn read_snapshot(path: &Path) -> Result<Snapshot, LockdError> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let bad = |why: &str| LockdError::Storage(format!("{}: {why}", path.display()));
    if buf.len() < 20 || &buf[..8] != SNAP_MAGIC {
        return Err(bad("not a lockd snapshot"));
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&buf[12..20]);
    let body = buf
        .get(20..20 + u64::from_le_bytes(len8) as usize)
        .ok_or_else(|| bad("truncated"))?;
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut s = Snapshot::default();
    s.merge_from_bytes(body).map_err(pb_err)?;
    Ok(s)
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
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
            tracing::debug!(
                to,
                index = self.snapshot_index(),
                "snapshot predates the peer; taking a fresh one"
            );
            self.fresh_snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_survives_reopen_with_overwrites_compaction_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let init = Some((b"sm".to_vec(), vec![1, 2, 3]));
        {
            let mut s = DiskStorage::open(dir.path(), init.clone()).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrites index 3 onwards.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            };
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
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        s.append(&[entry(5, 2, b"e")]).unwrap();
        s.sync().unwrap();
        drop(s);
        // A crash mid-append leaves half a record behind.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let s = DiskStorage::open(dir.path(), None).unwrap();
        assert_eq!(s.snapshot_index(), 3);
        assert_eq!(s.snapshot_data(), b"sm@3");
        assert_eq!(s.last_log_index(), 5);
        let got = s
            .entries(4, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter()
                .map(|e| e.get_data().to_vec())
                .collect::<Vec<_>>(),
            vec![b"d".to_vec(), b"e".to_vec()]
        );
    }

    #[test]
    fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStorage::open(dir.path(), Some((b"x".to_vec(), vec![1]))).unwrap());
        let p = dir.path().join(SNAP_FILE);
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        fs::write(&p, b).unwrap();
        assert!(DiskStorage::open(dir.path(), None).is_err());
    }
}
