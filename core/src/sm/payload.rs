//! How an event's raw payload is kept in the state machine (`p/<event_id>`).
//!
//! GitHub's JSON compresses 3 – 5× with LZ4, and payloads are most of what a node
//! stores (sled pages, snapshots, disk per event), so a payload is kept compressed
//! when that saves at least an eighth of it. Workers and the API always get the bytes
//! exactly as received: [`unpack`] is the inverse of [`pack`].
//!
//! Record layouts, told apart by the first byte (the payload's own format version,
//! independent of [`crate::codec::FORMAT_VERSION`]):
//!
//! | first byte | rest                                                         |
//! |------------|--------------------------------------------------------------|
//! | `1`        | bincode byte string (u64 length, bytes): stored uncompressed |
//! | `2`        | LZ4 block (`lz4_flex`, u32 little-endian raw size prepended) |
//!
//! Layout `1` is what every build before compression wrote; it still decodes.
//!
//! Packing is a pure function of the bytes (no clock, no randomness), so every
//! replica that applies the same command stores a payload that unpacks the same.

use crate::codec;

/// Layout byte of an uncompressed payload.
const PLAIN: u8 = 1;
/// Layout byte of an LZ4-compressed payload.
const LZ4: u8 = 2;

/// Payloads smaller than this are stored as they are (LZ4 gains little on them).
const MIN_COMPRESS: usize = 256;

/// Why a stored payload cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("stored payload: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("stored payload has layout {0}, which this build does not know; upgrade aof-cluster or restore a matching data dir")]
    UnknownLayout(u8),
    #[error("stored payload is not valid LZ4 ({0}); the data dir is damaged: restore it or rejoin the node from a snapshot")]
    Lz4(#[from] lz4_flex::block::DecompressError),
}

/// The stored record for a payload: compressed when that saves ≥ 1/8, else plain.
pub fn pack(raw: &[u8]) -> Vec<u8> {
    if raw.len() >= MIN_COMPRESS {
        let compressed = lz4_flex::block::compress_prepend_size(raw);
        if compressed.len() < raw.len() - raw.len() / 8 {
            let mut out = Vec::with_capacity(compressed.len() + 1);
            out.push(LZ4);
            out.extend_from_slice(&compressed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 9);
    out.push(PLAIN);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(raw);
    out
}

/// The payload as received, from its stored record.
pub fn unpack(stored: &[u8]) -> Result<Vec<u8>, PayloadError> {
    match stored.first() {
        Some(&LZ4) => Ok(lz4_flex::block::decompress_size_prepended(&stored[1..])?),
        // A bincode byte string: u64 length, then the bytes.
        Some(&PLAIN) => Ok(bincode::deserialize::<serde_bytes::ByteBuf>(&stored[1..]).map_err(codec::CodecError::from)?.into_vec()),
        Some(&other) => Err(PayloadError::UnknownLayout(other)),
        None => Err(codec::CodecError::Empty.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_incompressible_payloads_are_stored_plain() {
        // xorshift64: bytes without repetitions for LZ4 to find.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        for raw in [b"{}".to_vec(), noise] {
            let packed = pack(&raw);
            assert_eq!(packed[0], PLAIN, "plain layout");
            assert_eq!(unpack(&packed).unwrap(), raw);
        }
    }

    /// Records written before compression (a bincode byte string) still read.
    #[test]
    fn the_uncompressed_layout_of_earlier_builds_reads() {
        // Layout 1: what builds before compression wrote (then also codec version 1).
        let old = [&[1u8][..], &bincode::serialize(serde_bytes::Bytes::new(b"{\"zen\":\"x\"}")).unwrap()].concat();
        assert_eq!(unpack(&old).unwrap(), b"{\"zen\":\"x\"}");
    }

    #[test]
    fn a_damaged_record_is_an_error() {
        let mut packed = pack(&vec![b'a'; 10_000]);
        assert_eq!(packed[0], LZ4);
        packed.truncate(packed.len() - 3);
        assert!(matches!(unpack(&packed), Err(PayloadError::Lz4(_))));
        assert!(matches!(unpack(&[9, 1, 2]), Err(PayloadError::UnknownLayout(9))));
        assert!(matches!(unpack(&[PLAIN, 1, 2]), Err(PayloadError::Codec(_))));
    }
}
