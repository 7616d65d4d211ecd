//! Journal records. A transaction in a slot's journal is laid out as
//!
//! ```text
//! [descriptor][image]...[descriptor][image]... [commit]
//! ```
//!
//! A descriptor (a sealed block of type JournalDesc at its absolute block number) lists up to
//! `DESC_CAPACITY` entries: the home block number of each image that follows it, or, with the
//! top bit set, a *revoke* (the block was freed: do not replay older images of it; no image
//! follows). The commit block carries the number of blocks in the transaction and a crc32c over
//! all of them seeded with the transaction sequence, so a torn transaction or one left from an
//! earlier lap of the journal never replays.
use crate::format::header::{self, BlockType, HEADER_LEN};
use crate::format::le::*;
use crate::format::BLOCK_SIZE;

pub const REVOKE_BIT: u64 = 1 << 63;
/// Body of a descriptor: count u32 at 32, "last descriptor" flag u32 at 36, entries from 40.
pub const DESC_ENTRIES_AT: usize = HEADER_LEN + 8;
pub const DESC_CAPACITY: usize = (BLOCK_SIZE - DESC_ENTRIES_AT) / 8;

pub fn encode_desc(entries: &[u64], last: bool, abs_blkno: u64, seq: u64, seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_u32(&mut b, HEADER_LEN, entries.len() as u32);
    put_u32(&mut b, HEADER_LEN + 4, last as u32);
    for (i, e) in entries.iter().enumerate() {
        put_u64(&mut b, DESC_ENTRIES_AT + i * 8, *e);
    }
    header::seal(&mut b, BlockType::JournalDesc, abs_blkno, seq, seed);
    b
}

/// Entries and the "last" flag of a descriptor that verified.
pub fn decode_desc(b: &[u8]) -> Option<(Vec<u64>, bool)> {
    let n = u32_at(b, HEADER_LEN) as usize;
    if n > DESC_CAPACITY {
        return None;
    }
    let last = u32_at(b, HEADER_LEN + 4) != 0;
    Some(((0..n).map(|i| u64_at(b, DESC_ENTRIES_AT + i * 8)).collect(), last))
}

pub fn txn_crc(blocks: &[u8], seq: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), blocks)
}

pub fn encode_commit(nblocks: u32, crc: u32, abs_blkno: u64, seq: u64, seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_u32(&mut b, HEADER_LEN, nblocks);
    put_u32(&mut b, HEADER_LEN + 4, crc);
    header::seal(&mut b, BlockType::JournalCommit, abs_blkno, seq, seed);
    b
}

pub fn decode_commit(b: &[u8]) -> (u32, u32) {
    (u32_at(b, HEADER_LEN), u32_at(b, HEADER_LEN + 4))
}

/// Splits a transaction's entries into descriptor groups and lays out the whole transaction
/// (without its commit block) into `out`, as contiguous blocks starting at `abs_start`. `out`
/// is cleared first: a buffer kept from the last commit saves faulting in megabytes of fresh
/// pages every time.
pub fn build_txn(out: &mut Vec<u8>, items: &[(u64, Option<&[u8]>)], abs_start: u64, seq: u64, seed: u32) {
    out.clear();
    out.reserve((items.len() + items.len() / DESC_CAPACITY + 1) * BLOCK_SIZE);
    let chunks = if items.is_empty() { vec![&items[..0]] } else { items.chunks(DESC_CAPACITY).collect() };
    let nchunks = chunks.len();
    for (ci, chunk) in chunks.into_iter().enumerate() {
        let entries: Vec<u64> = chunk.iter().map(|(blk, img)| if img.is_some() { *blk } else { *blk | REVOKE_BIT }).collect();
        let pos = abs_start + (out.len() / BLOCK_SIZE) as u64;
        out.extend_from_slice(&encode_desc(&entries, ci + 1 == nchunks, pos, seq, seed));
        for (_, img) in chunk {
            if let Some(img) = img {
                out.extend_from_slice(img);
            }
        }
    }
}
