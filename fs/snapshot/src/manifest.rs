//! A snapshot's manifest: what it is of and which chunk holds each 512 KiB of the volume.
//! Written last, as one object, so a snapshot is in the store complete or not at all.
//! Layout: docs/snapshots.md.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::error::{Result, SnapshotError};

const MAGIC: &[u8; 8] = b"MAFSSNP1";

/// The manifest's described part (JSON in the object).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub volume_uuid: String,
    pub label: String,
    /// Seconds since the epoch when the volume was frozen.
    pub created: i64,
    pub tags: BTreeMap<String, String>,
    /// The snapshot whose chunks this one took unchanged, if incremental.
    pub parent: Option<String>,
    /// The volume's change generation once frozen: chunks marked above it changed after.
    pub generation: u64,
    pub total_blocks: u64,
    pub chunk_blocks: u64,
    /// Chunks read from the volume for this snapshot (all of them for a full one).
    pub chunks_read: u64,
    /// Bytes this snapshot added to the store (compressed chunks not already there).
    pub bytes_added: u64,
    /// How long writers were held, in milliseconds (both freezes together).
    pub frozen_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub info: SnapshotInfo,
    /// One per chunk of the volume, in order; [`ChunkId::ZERO`] for a chunk of zeros.
    pub chunks: Vec<ChunkId>,
}

impl Manifest {
    pub fn key(id: &str) -> String {
        format!("snapshots/{id}")
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(&self.info).map_err(|e| SnapshotError::Usage(format!("cannot describe the snapshot: {e}")))?;
        let table: Vec<u8> = self.chunks.iter().flat_map(|c| c.0).collect();
        let packed = zstd::bulk::compress(&table, 3).map_err(|e| SnapshotError::io("compressing a manifest", e))?;
        let mut out = Vec::with_capacity(16 + json.len() + packed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&packed);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    pub fn decode(id: &str, b: &[u8]) -> Result<Manifest> {
        let bad = |what: String| SnapshotError::BadManifest { id: id.to_string(), what };
        if b.len() < 16 || &b[..8] != MAGIC {
            return Err(bad("not a mafs snapshot manifest".into()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad("checksum mismatch".into()));
        }
        let json_len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        let json = body.get(12..12 + json_len).ok_or_else(|| bad("truncated".into()))?;
        let info: SnapshotInfo = serde_json::from_slice(json).map_err(|e| bad(format!("description unreadable: {e}")))?;
        let count = info.total_blocks.div_ceil(info.chunk_blocks.max(1)) as usize;
        let table = zstd::bulk::decompress(&body[12 + json_len..], count * 16).map_err(|e| bad(format!("chunk table unreadable: {e}")))?;
        if table.len() != count * 16 {
            return Err(bad(format!("chunk table holds {} entries, the volume has {count} chunks", table.len() / 16)));
        }
        let chunks = table
            .chunks_exact(16)
            .map(|c| {
                let mut id = [0u8; 16];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        Ok(Manifest { info, chunks })
    }

    /// Distinct stored chunks (not the zero chunk).
    pub fn stored_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.chunks.iter().filter(|c| !c.is_zero())
    }
}

/// A new snapshot's id: sortable by time, unique by its random tail.
pub fn new_id(created: i64) -> String {
    let secs = created.max(0) as u64;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("snap-{y:04}{m:02}{d:02}T{:02}{:02}{:02}-{:08x}", rem / 3600, rem % 3600 / 60, rem % 60, rand::random::<u32>())
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let info = SnapshotInfo {
            id: "snap-x".into(),
            volume_uuid: "u".into(),
            label: "l".into(),
            created: 1_764_547_200,
            tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
            parent: None,
            generation: 3,
            total_blocks: 1000,
            chunk_blocks: 128,
            chunks_read: 8,
            bytes_added: 5,
            frozen_ms: 1,
        };
        Manifest { info, chunks: (0..8u8).map(|i| if i == 3 { ChunkId::ZERO } else { ChunkId([i + 1; 16]) }).collect() }
    }

    #[test]
    fn a_manifest_round_trips_and_damage_is_refused() {
        let m = sample();
        let b = m.encode().expect("encode");
        assert_eq!(Manifest::decode("snap-x", &b).expect("decode"), m);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(Manifest::decode("snap-x", &bad).is_err());
        assert!(Manifest::decode("snap-x", &b[..b.len() - 5]).is_err());
        assert_eq!(m.stored_chunks().count(), 7);
    }

    #[test]
    fn ids_sort_by_time() {
        assert!(new_id(1_764_547_200).starts_with("snap-20251201T000000-"));
        assert!(new_id(1_764_547_200) < new_id(1_764_547_201));
    }
}
