//! Journal replay: find every complete transaction in a slot's journal from its tail, and write
//! their block images home, honouring revokes. Used at mount of one's own slot and, in cluster
//! mode, by a survivor recovering a dead node's slot.
use super::records::{self, REVOKE_BIT};
use crate::device::BlockDevice;
use crate::error::Result;
use crate::format::header::{self, BlockType};
use crate::format::layout::Layout;
use crate::format::slot::SlotHeader;
use crate::format::{BlockNo, BLOCK_SIZE};
use std::collections::HashMap;

pub struct Transaction {
    pub seq: u64,
    /// (home block, image); images only, revokes are in `revokes`.
    pub images: Vec<(u64, Vec<u8>)>,
    pub revokes: Vec<u64>,
    pub start: u64,
    pub len: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub transactions: u64,
    pub blocks_written: u64,
    pub blocks_revoked: u64,
    /// Sequence the next transaction in this slot must carry.
    pub next_seq: u64,
    /// How long the scan and the writes home took (for the log and the recovery benchmark).
    pub took: std::time::Duration,
}

/// Reads the complete transactions of `slot`'s journal, oldest first.
pub fn scan(dev: &dyn BlockDevice, layout: &Layout, slot: &SlotHeader, seed: u32) -> Result<Vec<Transaction>> {
    let (jstart, jlen) = layout.journal_range(slot.index);
    let jlen = jlen as u64;
    let mut pos = slot.journal_tail;
    let mut expect = slot.tail_seq;
    let mut txns = Vec::new();
    let mut block = vec![0u8; BLOCK_SIZE];
    'txns: while pos < jlen {
        let start = pos;
        let mut raw: Vec<u8> = Vec::new();
        let mut images = Vec::new();
        let mut revokes = Vec::new();
        loop {
            if pos >= jlen {
                break 'txns;
            }
            dev.read_at(&mut block, BlockNo(jstart + pos).byte_offset())?;
            if header::verify(&block, BlockType::JournalDesc, jstart + pos, seed).is_err() || header::seq_of(&block) != expect {
                break 'txns;
            }
            let Some((entries, last)) = records::decode_desc(&block) else { break 'txns };
            raw.extend_from_slice(&block);
            pos += 1;
            for e in entries {
                if e & REVOKE_BIT != 0 {
                    revokes.push(e & !REVOKE_BIT);
                    continue;
                }
                if pos >= jlen {
                    break 'txns;
                }
                let mut img = vec![0u8; BLOCK_SIZE];
                dev.read_at(&mut img, BlockNo(jstart + pos).byte_offset())?;
                raw.extend_from_slice(&img);
                images.push((e, img));
                pos += 1;
            }
            if last {
                break;
            }
        }
        if pos >= jlen {
            break;
        }
        dev.read_at(&mut block, BlockNo(jstart + pos).byte_offset())?;
        if header::verify(&block, BlockType::JournalCommit, jstart + pos, seed).is_err() || header::seq_of(&block) != expect {
            break;
        }
        let (n, crc) = records::decode_commit(&block);
        if n as usize * BLOCK_SIZE != raw.len() || records::txn_crc(&raw, expect) != crc {
            break;
        }
        pos += 1;
        txns.push(Transaction { seq: expect, images, revokes, start, len: pos - start });
        expect += 1;
    }
    Ok(txns)
}

/// Writes the images of `txns` home, skipping any block revoked by the same or a later
/// transaction, then flushes.
pub fn apply(dev: &dyn BlockDevice, txns: &[Transaction]) -> Result<ReplayStats> {
    let mut revoked_at: HashMap<u64, u64> = HashMap::new();
    for t in txns {
        for r in &t.revokes {
            revoked_at.insert(*r, t.seq);
        }
    }
    let mut stats = ReplayStats::default();
    for t in txns {
        stats.transactions += 1;
        for (blk, img) in &t.images {
            if revoked_at.get(blk).is_some_and(|&rs| rs >= t.seq) {
                stats.blocks_revoked += 1;
                continue;
            }
            dev.write_at(img, BlockNo(*blk).byte_offset())?;
            stats.blocks_written += 1;
        }
    }
    dev.flush()?;
    Ok(stats)
}

pub fn replay(dev: &dyn BlockDevice, layout: &Layout, slot: &SlotHeader, seed: u32) -> Result<ReplayStats> {
    let start = std::time::Instant::now();
    let txns = scan(dev, layout, slot, seed)?;
    let mut stats = apply(dev, &txns)?;
    stats.next_seq = txns.last().map(|t| t.seq + 1).unwrap_or(slot.tail_seq);
    stats.took = start.elapsed();
    Ok(stats)
}
