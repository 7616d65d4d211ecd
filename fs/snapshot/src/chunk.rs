//! A chunk as stored: 512 KiB of the volume, named by the hash of its bytes (so identical
//! chunks are stored once, across snapshots and volumes), compressed, and checksummed so that
//! a damaged object is found before anything is written from it. Layout: docs/snapshots.md.
use crate::error::{Result, SnapshotError};

const MAGIC: &[u8; 8] = b"MAFSCHK1";
const HEAD: usize = 16;

/// A chunk's name: the first 16 bytes of the BLAKE3 hash of its bytes. All zeros names the
/// chunk of zeros, which is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    pub const ZERO: ChunkId = ChunkId([0; 16]);

    pub fn of(data: &[u8]) -> ChunkId {
        if data.iter().all(|&b| b == 0) {
            return ChunkId::ZERO;
        }
        let h = blake3::hash(data);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.as_bytes()[..16]);
        // A real hash of all zeros would read as the zero chunk: vanishingly unlikely, and
        // then the chunk is merely stored under a neighbouring name.
        if id == [0; 16] {
            id[15] = 1;
        }
        ChunkId(id)
    }

    pub fn is_zero(&self) -> bool {
        *self == ChunkId::ZERO
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn parse(hex: &str) -> Option<ChunkId> {
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ChunkId(id))
    }

    /// Where the chunk lives in a store (two levels of fan-out for directory stores).
    pub fn key(&self) -> String {
        let h = self.hex();
        format!("chunks/{}/{}", &h[..2], h)
    }
}

/// The stored form of `data`: magic, raw length (u32 LE), crc32c of the compressed bytes
/// (u32 LE), zstd-compressed bytes.
pub fn encode(data: &[u8]) -> Result<Vec<u8>> {
    let packed = zstd::bulk::compress(data, 1).map_err(|e| SnapshotError::io("compressing a chunk", e))?;
    let mut out = Vec::with_capacity(HEAD + packed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&packed).to_le_bytes());
    out.extend_from_slice(&packed);
    Ok(out)
}

/// The bytes of the chunk `id` from its stored form, checked against its checksum and its name.
pub fn decode(id: ChunkId, stored: &[u8]) -> Result<Vec<u8>> {
    let bad = |what: &str| SnapshotError::BadChunk { id: id.hex(), what: what.to_string() };
    if stored.len() < HEAD || &stored[..8] != MAGIC {
        return Err(bad("not a mafs chunk"));
    }
    let raw_len = u32::from_le_bytes([stored[8], stored[9], stored[10], stored[11]]) as usize;
    let crc = u32::from_le_bytes([stored[12], stored[13], stored[14], stored[15]]);
    if crc32c::crc32c(&stored[HEAD..]) != crc {
        return Err(bad("checksum mismatch"));
    }
    let data = zstd::bulk::decompress(&stored[HEAD..], raw_len).map_err(|e| bad(&format!("cannot decompress: {e}")))?;
    if data.len() != raw_len || ChunkId::of(&data) != id {
        return Err(bad("its bytes do not hash to its name"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_any_flipped_byte_is_refused() {
        let data: Vec<u8> = (0..512 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let id = ChunkId::of(&data);
        let stored = encode(&data).expect("encode");
        assert!(stored.len() < data.len() / 4, "compressible data is compressed");
        assert_eq!(decode(id, &stored).expect("decode"), data);
        for at in [0, 9, 13, HEAD, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 0x40;
            assert!(decode(id, &bad).is_err(), "flipped byte {at} accepted");
        }
        assert!(decode(ChunkId::of(b"other"), &stored).is_err(), "stored under the wrong name");
    }

    #[test]
    fn zeros_are_the_zero_chunk_and_names_parse_back() {
        assert!(ChunkId::of(&[0u8; 4096]).is_zero());
        let id = ChunkId::of(b"x");
        assert_eq!(ChunkId::parse(&id.hex()), Some(id));
        assert_eq!(ChunkId::parse("zz"), None);
    }
}
