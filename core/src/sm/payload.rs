//! How an event's raw payload is kept in the state machine (`p/<event_id>`).
//!
//! GitHub's JSON compresses about 4× with LZ4 (6× with zstd), and payloads are most
//! of what a node stores and sends (log, sled pages, snapshots, AppendEntries), so a
//! payload is kept compressed when that saves at least an eighth of it. Workers and
//! the API always get the bytes exactly as received: [`unpack`] is the inverse of
//! [`pack_with`].
//!
//! Record layouts, told apart by the first byte (the payload's own format version,
//! independent of [`crate::codec::FORMAT_VERSION`]):
//!
//! | first byte | rest                                                         |
//! |------------|--------------------------------------------------------------|
//! | `1`        | bincode byte string (u64 length, bytes): stored uncompressed |
//! | `2`        | LZ4 block (`lz4_flex`, u32 little-endian raw size prepended) |
//! | `3`        | zstd frame (level [`ZSTD_LEVEL`], u32 little-endian raw size prepended) |
//!
//! [`pack_with`] writes layout `2` or `3` (or `1`, when compression does not pay),
//! as the gateway's `spec.gateway.payload_compression` says: LZ4 by default, since a
//! member of an earlier build refuses a layout-3 record in apply while members of
//! this build store it — the replicas would disagree — so zstd is switched on once
//! every member reads it (docs/OPERATIONS.md § Upgrades). Every layout decodes. On the
//! 181 payloads of the fixture corpus (2.05 MB, one at a time, release build): zstd
//! level 3 stores 334 KB, LZ4 490 KB — 32 % less of every copy of a payload — for
//! 35 µs against 15 µs to compress (once, at the gateway) and 11 µs against 4 µs to
//! decompress (on each replica: apply's [`check`], and each lease grant); measured
//! in a cluster in docs/BENCHMARKS.md (row 22).
//!
//! Since the ingest command's layout 3 ([`crate::types::Command::IngestPacked`]) the
//! gateway that accepted a delivery packs its payload, once, and the record travels
//! as it is through the forward hop, the log and AppendEntries into every replica's
//! state: no replica compresses. Apply only [checks](check) the record, the same way
//! on every replica: a known layout, a raw size within [`MAX_RAW_BYTES`], and bytes
//! that unpack to exactly that size (so nothing damaged is stored, and a stored
//! payload always unpacks). Commands of layout 2 (raw payload) are packed in apply,
//! as before ([`PackedDelivery::from`]).

use crate::codec;
use crate::types::{Delivery, PackedDelivery};

/// Layout byte of an uncompressed payload.
const PLAIN: u8 = 1;
/// Layout byte of an LZ4-compressed payload (the default).
const LZ4: u8 = 2;
/// Layout byte of a zstd-compressed payload.
const ZSTD: u8 = 3;

/// zstd's compression level for payloads: its default. On payloads of this size
/// level 1 is barely faster (32 against 35 µs) and stores 4 % more.
pub const ZSTD_LEVEL: i32 = 3;

/// Payloads smaller than this are stored as they are (compression gains little on them).
const MIN_COMPRESS: usize = 256;

/// The largest raw payload the state machine accepts (64 MiB; GitHub sends at most
/// 25 MB). A constant of the replicated state, not a node's setting, so every
/// replica refuses the same commands; the gateway's `spec.gateway.max_body_bytes`
/// is checked on the raw body before packing and is clamped to it.
pub const MAX_RAW_BYTES: usize = 64 << 20;

/// Why a stored payload cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("stored payload: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("stored payload has layout {0}, which this build does not know; upgrade aof-cluster or restore a matching data dir")]
    UnknownLayout(u8),
    #[error("stored payload is not valid LZ4 ({0}); the data dir is damaged: restore it or rejoin the node from a snapshot")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    #[error("stored payload is not valid zstd ({0}); the data dir is damaged: restore it or rejoin the node from a snapshot")]
    Zstd(std::io::Error),
    #[error("payload of {size} bytes is larger than the {max} bytes the state machine accepts; lower spec.gateway.max_body_bytes")]
    TooLarge { size: u64, max: usize },
    #[error("payload record says {declared} bytes but holds {actual}; the record is damaged (a node running a broken build forwarded it?)")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("payload record is cut short ({0} bytes, shorter than its header); the record is damaged")]
    Truncated(usize),
}

/// Check a payload record carried by a command before it is stored: a known layout,
/// a raw size of at most `max_raw`, and bytes that unpack to exactly that size. The
/// raw size is checked before anything is decompressed, and LZ4 output is bounded
/// by it, so a record cannot make a replica allocate more than `max_raw`. Returns
/// the raw size. A pure function of the bytes: every replica decides alike.
pub fn check(stored: &[u8], max_raw: usize) -> Result<u64, PayloadError> {
    let too_large = |size: u64| PayloadError::TooLarge { size, max: max_raw };
    match stored.first() {
        Some(&layout @ (LZ4 | ZSTD)) => {
            let (declared, block) = sized(stored)?;
            if declared > max_raw as u64 {
                return Err(too_large(declared));
            }
            let raw = decompress(layout, block, declared as usize)?;
            if raw.len() as u64 != declared {
                return Err(PayloadError::LengthMismatch { declared, actual: raw.len() as u64 });
            }
            Ok(declared)
        }
        Some(&PLAIN) => {
            let Some(prefix) = stored.get(1..9) else {
                return Err(PayloadError::Truncated(stored.len()));
            };
            let declared = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
            let actual = (stored.len() - 9) as u64;
            if actual > max_raw as u64 {
                return Err(too_large(actual));
            }
            if declared != actual {
                return Err(PayloadError::LengthMismatch { declared, actual });
            }
            Ok(actual)
        }
        Some(&other) => Err(PayloadError::UnknownLayout(other)),
        None => Err(codec::CodecError::Empty.into()),
    }
}

/// The migration of the ingest command from layout 2 (raw payload) to layout 3:
/// pack the payload. The gateway proposes through it, and apply brings log entries
/// of earlier builds up with it.
impl From<Delivery> for PackedDelivery {
    fn from(d: Delivery) -> Self {
        PackedDelivery::packed(d, Compression::Lz4)
    }
}

impl PackedDelivery {
    /// `d` with its payload packed with `compression` (see [`pack_with`]).
    pub fn packed(d: Delivery, compression: Compression) -> Self {
        PackedDelivery {
            payload: pack_with(&d.payload, compression),
            delivery_id: d.delivery_id,
            facts: d.facts,
            received_by: d.received_by,
            retention_ms: d.retention_ms,
            traceparent: d.traceparent,
            signed_by: d.signed_by,
        }
    }
}

/// The raw size a compressed record declares, and its compressed block.
fn sized(stored: &[u8]) -> Result<(u64, &[u8]), PayloadError> {
    let Some(prefix) = stored.get(1..5) else {
        return Err(PayloadError::Truncated(stored.len()));
    };
    Ok((u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as u64, &stored[5..]))
}

/// Decompress `block` of a compressed layout into at most `max` bytes.
fn decompress(layout: u8, block: &[u8], max: usize) -> Result<Vec<u8>, PayloadError> {
    match layout {
        LZ4 => Ok(lz4_flex::block::decompress(block, max)?),
        _ => zstd::bulk::decompress(block, max).map_err(PayloadError::Zstd),
    }
}

/// How payloads are compressed when packed (`spec.gateway.payload_compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 (layout 2): what every member of an earlier build reads.
    #[default]
    Lz4,
    /// zstd (layout 3): about a third fewer bytes; only once every member reads it.
    Zstd,
}

/// The stored record for a payload, compressed with LZ4 (see [`pack_with`]).
pub fn pack(raw: &[u8]) -> Vec<u8> {
    pack_with(raw, Compression::Lz4)
}

/// The stored record for a payload: compressed with `compression` when that saves
/// ≥ 1/8, else plain.
pub fn pack_with(raw: &[u8], compression: Compression) -> Vec<u8> {
    if raw.len() >= MIN_COMPRESS && raw.len() <= u32::MAX as usize {
        // A failure (none is expected for in-memory input) stores the payload plain.
        let compressed = match compression {
            Compression::Lz4 => Some((LZ4, lz4_flex::block::compress(raw))),
            Compression::Zstd => zstd::bulk::compress(raw, ZSTD_LEVEL).ok().map(|c| (ZSTD, c)),
        };
        if let Some((layout, compressed)) = compressed.filter(|(_, c)| c.len() + 4 < raw.len() - raw.len() / 8) {
            let mut out = Vec::with_capacity(compressed.len() + 5);
            out.push(layout);
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
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
        Some(&layout @ (LZ4 | ZSTD)) => {
            let (declared, block) = sized(stored)?;
            decompress(layout, block, declared as usize)
        }
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

    /// What a gateway packs passes the check in apply, with its raw size.
    #[test]
    fn packed_records_pass_the_check() {
        for raw in [b"{}".to_vec(), vec![b'a'; 10_000], Vec::new()] {
            assert_eq!(check(&pack(&raw), MAX_RAW_BYTES).unwrap(), raw.len() as u64);
        }
    }

    /// LZ4 records, as builds before zstd wrote them (layout 2).
    fn lz4_record(raw: &[u8]) -> Vec<u8> {
        [&[LZ4][..], &lz4_flex::block::compress_prepend_size(raw)].concat()
    }

    /// Payloads are packed with zstd when asked, else LZ4; LZ4 records of earlier
    /// builds still read and pass the check.
    #[test]
    fn payloads_are_packed_with_zstd_and_lz4_records_still_read() {
        let raw = br#"{"action":"opened","number":1,"pull_request":{"title":"x"}}"#.repeat(20);
        let packed = pack_with(&raw, Compression::Zstd);
        assert_eq!(packed[0], ZSTD);
        assert_eq!(pack(&raw)[0], LZ4, "LZ4 unless zstd is asked for");
        assert!(packed.len() < raw.len() / 4, "{} of {}", packed.len(), raw.len());
        assert_eq!(unpack(&packed).unwrap(), raw);
        let old = lz4_record(&raw);
        assert_eq!(unpack(&old).unwrap(), raw);
        assert_eq!(check(&old, MAX_RAW_BYTES).unwrap(), raw.len() as u64);
    }

    /// A record whose raw size is past the limit is refused from its header, before
    /// anything is decompressed; one that lies about its size is refused too. For
    /// both compressed layouts.
    #[test]
    fn the_check_refuses_oversized_and_lying_records() {
        let raw = vec![b'a'; 10_000];
        assert_eq!(pack(&raw), lz4_record(&raw), "the LZ4 layout is the one earlier builds wrote");
        for packed in [pack_with(&raw, Compression::Zstd), lz4_record(&raw)] {
            let layout = packed[0];
            // Within a smaller limit: refused, and the error names the raw size.
            assert!(matches!(check(&packed, 9_999), Err(PayloadError::TooLarge { size: 10_000, max: 9_999 })));
            assert_eq!(check(&packed, 10_000).unwrap(), 10_000);
            // A header claiming 4 GiB: refused without allocating it.
            let mut huge = packed.clone();
            huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(matches!(check(&huge, MAX_RAW_BYTES), Err(PayloadError::TooLarge { .. })));
            // A header claiming more than the block holds (within the limit).
            let mut more = packed.clone();
            more[1..5].copy_from_slice(&20_000u32.to_le_bytes());
            assert!(
                matches!(check(&more, MAX_RAW_BYTES), Err(PayloadError::LengthMismatch { declared: 20_000, actual: 10_000 })),
                "layout {layout}"
            );
            // A header claiming less: the block does not fit it.
            let mut less = packed.clone();
            less[1..5].copy_from_slice(&5_000u32.to_le_bytes());
            let r = check(&less, MAX_RAW_BYTES);
            assert!(matches!(r, Err(PayloadError::Lz4(_) | PayloadError::Zstd(_))), "layout {layout}: {r:?}");
            // A damaged block.
            let mut cut = packed.clone();
            cut.truncate(cut.len() - 3);
            assert!(check(&cut, MAX_RAW_BYTES).is_err(), "layout {layout}");
            assert!(unpack(&cut).is_err(), "layout {layout}");
            // Cut-off header.
            assert!(matches!(check(&[layout, 1, 2], MAX_RAW_BYTES), Err(PayloadError::Truncated(3))));
        }
        // Plain records: the length must match, and count against the limit.
        let plain = pack(b"{}");
        assert_eq!(plain[0], PLAIN);
        let mut longer = plain.clone();
        longer.push(b' ');
        assert!(matches!(check(&longer, MAX_RAW_BYTES), Err(PayloadError::LengthMismatch { declared: 2, actual: 3 })));
        assert!(matches!(check(&plain, 1), Err(PayloadError::TooLarge { size: 2, max: 1 })));
        // Cut-off headers, unknown layouts, nothing at all.
        assert!(matches!(check(&[PLAIN, 1], MAX_RAW_BYTES), Err(PayloadError::Truncated(2))));
        assert!(matches!(check(&[7, 0, 0], MAX_RAW_BYTES), Err(PayloadError::UnknownLayout(7))));
        assert!(matches!(check(&[], MAX_RAW_BYTES), Err(PayloadError::Codec(_))));
    }

    #[test]
    fn a_damaged_record_is_an_error() {
        assert!(matches!(unpack(&[9, 1, 2]), Err(PayloadError::UnknownLayout(9))));
        assert!(matches!(unpack(&[PLAIN, 1, 2]), Err(PayloadError::Codec(_))));
    }
}
