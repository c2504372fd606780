//! Encoding of everything aof-cluster persists (sled values, snapshots) and sends
//! between nodes (Raft RPC payloads).
//!
//! **Architecture Invariant**: every persisted record starts with a one-byte format
//! version ([`FORMAT_VERSION`]), followed by bincode. A reader that meets a version it
//! does not know fails with a [`CodecError`] instead of guessing, so a future format
//! can be migrated explicitly.

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
}

/// Encode a value as a versioned record.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Size the buffer once (a cheap walk: byte strings count by length) instead of
    // growing and copying it while large payloads are written.
    let size = bincode::serialized_size(value).map_or(64, |n| n as usize + 1);
    let mut out = Vec::with_capacity(size);
    out.push(FORMAT_VERSION);
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
