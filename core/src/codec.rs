//! Encoding of everything aof-cluster persists (sled values, snapshots) and sends
//! between nodes (Raft RPC payloads).
//!
//! **Architecture Invariant**: every persisted value starts with a one-byte format
//! version, followed by bincode. A reader that meets a version it does not know
//! fails with a [`CodecError`] instead of guessing.
//!
//! Two kinds of values:
//! * the state machine's records (triggers, events, jobs, limits, buckets) are a
//!   [`Record`]: each type carries its own version and a migration from its previous
//!   layout (garage's `Migrate` pattern), so one type can change without the others;
//! * the envelopes — log entries ([`crate::types::Request`] and
//!   [`crate::types::Response`]), snapshot data, node-to-node payloads — use
//!   [`encode`] / [`decode`] under the global [`FORMAT_VERSION`].
//!
//! Before records were versioned on their own, every value carried
//! `FORMAT_VERSION` (2); each record type's first version is therefore 2, and every
//! existing data dir reads unchanged (`core/tests/records.rs` decodes records
//! written by this release).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current record format.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format version {0}, this build reads version {FORMAT_VERSION}; upgrade aof-cluster or restore a matching data dir")]
    UnknownVersion(u8),
    #[error("corrupt record: {0}")]
    Bincode(#[from] bincode::Error),
    #[error("{kind} record has version {found}, this build reads versions up to {current}; upgrade aof-cluster or restore a matching data dir")]
    RecordVersion { kind: &'static str, found: u8, current: u8 },
}

/// A persisted record type with its own layout version and a migration chain.
///
/// To change a record's layout: keep the old struct (renamed, e.g. `JobRecordV2`) with
/// its `Record` impl unchanged, give the new one `VERSION = old + 1`,
/// `type Previous = JobRecordV2` and a `migrate` from it. Readers then decode every
/// version ever written; writers write only the newest.
pub trait Record: Serialize + DeserializeOwned {
    /// A short name for errors.
    const KIND: &'static str;
    /// This layout's version: the record's first byte.
    const VERSION: u8;
    /// The layout this one replaced ([`NoPrevious`] for a type's first layout).
    type Previous: Record;
    /// Bring a record of the previous layout up to this one.
    fn migrate(previous: Self::Previous) -> Self;

    /// Encode as the newest layout.
    fn encode_record(&self) -> Vec<u8> {
        encode_as(Self::VERSION, self)
    }

    /// Decode any layout of the chain, migrating it to this one.
    fn decode_record(bytes: &[u8]) -> Result<Self, CodecError> {
        match bytes.first() {
            None => Err(CodecError::Empty),
            Some(&v) if v == Self::VERSION => Ok(bincode::deserialize(&bytes[1..])?),
            Some(&v) if v > Self::VERSION => Err(CodecError::RecordVersion { kind: Self::KIND, found: v, current: Self::VERSION }),
            Some(&v) => match Self::Previous::decode_record(bytes) {
                Ok(prev) => Ok(Self::migrate(prev)),
                Err(CodecError::RecordVersion { .. }) => {
                    Err(CodecError::RecordVersion { kind: Self::KIND, found: v, current: Self::VERSION })
                }
                Err(e) => Err(e),
            },
        }
    }
}

/// The end of every migration chain: no layout before the first.
#[derive(Debug, Serialize, serde::Deserialize)]
pub enum NoPrevious {}

impl Record for NoPrevious {
    const KIND: &'static str = "(none)";
    const VERSION: u8 = 0;
    type Previous = NoPrevious;
    fn migrate(previous: NoPrevious) -> Self {
        previous
    }
    fn decode_record(bytes: &[u8]) -> Result<Self, CodecError> {
        Err(CodecError::RecordVersion { kind: Self::KIND, found: bytes.first().copied().unwrap_or(0), current: 0 })
    }
}

/// Implement [`Record`] for a type's first layout (version 2, see the module docs).
#[macro_export]
macro_rules! first_record_layout {
    ($($ty:ty => $kind:literal),+ $(,)?) => {$(
        impl $crate::codec::Record for $ty {
            const KIND: &'static str = $kind;
            const VERSION: u8 = 2;
            type Previous = $crate::codec::NoPrevious;
            fn migrate(previous: $crate::codec::NoPrevious) -> Self {
                match previous {}
            }
        }
    )+};
}

/// Encode a value as a versioned record.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, value)
}

fn encode_as<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    // Size the buffer once (a cheap walk: byte strings count by length) instead of
    // growing and copying it while large payloads are written.
    let size = bincode::serialized_size(value).map_or(64, |n| n as usize + 1);
    let mut out = Vec::with_capacity(size);
    out.push(version);
    // Serializing our own types into a Vec cannot fail: they contain no maps with
    // non-string keys and no `deserialize_any`-only types.
    bincode::serialize_into(&mut out, value).expect("bincode serialization into a Vec");
    out
}

/// The size of `value`'s record, without encoding it (a walk that counts byte
/// strings by their length).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    bincode::serialized_size(value).map_or(usize::MAX, |n| n as usize + 1)
}

/// Decode a versioned record.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_VERSION) => Ok(bincode::deserialize(&bytes[1..])?),
        Some(&v) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_version_check() {
        let bytes = encode(&("a".to_string(), 7u64));
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode(&bytes).unwrap();
        assert_eq!(back, ("a".to_string(), 7));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(decode::<(String, u64)>(&future), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }

    /// A toy record whose layout changed once: the old bytes still decode, through
    /// the migration, and a version past the newest is refused.
    #[test]
    fn a_record_migrates_from_its_previous_layout() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V2 {
            name: String,
        }
        crate::first_record_layout!(V2 => "toy");
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V3 {
            name: String,
            weight: u32,
        }
        impl Record for V3 {
            const KIND: &'static str = "toy";
            const VERSION: u8 = 3;
            type Previous = V2;
            fn migrate(p: V2) -> Self {
                V3 { name: p.name, weight: 1 }
            }
        }
        let old = V2 { name: "a".into() }.encode_record();
        assert_eq!(old, encode(&V2 { name: "a".into() }), "a first layout is the old global format");
        assert_eq!(V3::decode_record(&old).unwrap(), V3 { name: "a".into(), weight: 1 });
        let new = V3 { name: "b".into(), weight: 7 }.encode_record();
        assert_eq!(new[0], 3);
        assert_eq!(V3::decode_record(&new).unwrap(), V3 { name: "b".into(), weight: 7 });
        let mut future = new.clone();
        future[0] = 4;
        assert!(matches!(V3::decode_record(&future), Err(CodecError::RecordVersion { found: 4, current: 3, .. })));
        let mut ancient = old.clone();
        ancient[0] = 1;
        assert!(matches!(V3::decode_record(&ancient), Err(CodecError::RecordVersion { found: 1, current: 3, .. })));
        assert!(matches!(V3::decode_record(&[]), Err(CodecError::Empty)));
    }

    /// `serde_bytes` fields keep the bincode layout of a plain `Vec<u8>` (u64 length,
    /// then the bytes), so records written before the annotation still decode.
    #[test]
    fn byte_strings_keep_the_vec_layout() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Old {
            payload: Vec<u8>,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct New {
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
        }
        let old = encode(&Old { payload: vec![1, 2, 255] });
        assert_eq!(old, encode(&New { payload: vec![1, 2, 255] }));
        assert_eq!(decode::<New>(&old).unwrap(), New { payload: vec![1, 2, 255] });
    }
}
