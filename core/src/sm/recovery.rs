//! Delivery recovery checkpoints: how far the leader's sweep of each GitHub hook's
//! delivery list got, so a new leader continues there instead of from scratch.
//!
//! Key space:
//!
//! | key                  | value                                   |
//! |----------------------|-----------------------------------------|
//! | `g/<source>`         | [`CheckpointRecord`] (versioned, below) |
//!
//! A record starts with its own format version byte (`1`), followed by the bincode
//! of [`CheckpointRecord`]; a later layout gets a new byte and this module keeps
//! reading the old one. A checkpoint only moves forward (by GitHub delivery id), so
//! replaying or reordering sweeps never sends a later leader back in time. Bounded:
//! one record per configured hook.

use serde::{Deserialize, Serialize};

use super::kv::{prefix_end, KvRead, Overlay};
use crate::codec;
use crate::types::{RecoveryCheckpoint, Response};

const CHECKPOINT: &[u8] = b"g/";
/// Layout byte of a version-1 record.
const V1: u8 = 1;
/// Longest source name kept (longer ones are cut, still unique enough for a key).
pub const MAX_SOURCE_LEN: usize = 256;

/// A stored checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub source: String,
    pub last_delivery_id: u64,
    pub last_delivered_at_ms: u64,
    /// Leader-stamped time of the sweep that wrote it.
    pub at_ms: u64,
    /// Deliveries ingested by recovery sweeps of this source, in total.
    pub recovered_total: u64,
    /// Sweeps that moved or confirmed this checkpoint.
    pub sweeps: u64,
}

fn key(source: &str) -> Vec<u8> {
    let s = &source.as_bytes()[..source.len().min(MAX_SOURCE_LEN)];
    [CHECKPOINT, s].concat()
}

fn encode(r: &CheckpointRecord) -> Vec<u8> {
    let mut out = vec![V1];
    out.extend_from_slice(&codec::encode(r));
    out
}

fn decode(v: &[u8]) -> Option<CheckpointRecord> {
    match v.split_first() {
        Some((&V1, rest)) => codec::decode(rest).ok(),
        _ => None,
    }
}

/// The checkpoint of `source`, if any.
pub fn get(state: &dyn KvRead, source: &str) -> Option<CheckpointRecord> {
    state.get(&key(source)).and_then(|v| decode(&v))
}

/// Every checkpoint, by source.
pub fn list(state: &dyn KvRead) -> Vec<CheckpointRecord> {
    state
        .range(CHECKPOINT, &prefix_end(CHECKPOINT))
        .filter_map(|(_, v)| decode(&v))
        .collect()
}

pub(super) fn checkpoint(state: &mut Overlay<'_>, now: u64, c: &RecoveryCheckpoint) -> Response {
    let prev = get(state, &c.source).unwrap_or_default();
    let advanced = c.last_delivery_id > prev.last_delivery_id;
    let rec = CheckpointRecord {
        source: c.source.clone(),
        last_delivery_id: prev.last_delivery_id.max(c.last_delivery_id),
        last_delivered_at_ms: if advanced {
            c.last_delivered_at_ms
        } else {
            prev.last_delivered_at_ms
        },
        at_ms: now,
        recovered_total: prev.recovered_total.saturating_add(c.recovered),
        sweeps: prev.sweeps.saturating_add(1),
    };
    state.put(key(&c.source), encode(&rec));
    Response::RecoveryCheckpointed {
        source: c.source.clone(),
        advanced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::kv::MemKv;

    fn apply(kv: &mut MemKv, now: u64, id: u64, recovered: u64) -> Response {
        let mut o = Overlay::new(kv);
        let c = RecoveryCheckpoint {
            source: "repo:acme/api/1".into(),
            last_delivery_id: id,
            last_delivered_at_ms: id * 10,
            recovered,
        };
        let r = checkpoint(&mut o, now, &c);
        let w = o.into_writes();
        kv.commit(w);
        r
    }

    #[test]
    fn a_checkpoint_never_moves_back() {
        let mut kv = MemKv::default();
        assert!(matches!(
            apply(&mut kv, 5, 100, 2),
            Response::RecoveryCheckpointed { advanced: true, .. }
        ));
        assert!(matches!(
            apply(&mut kv, 6, 50, 0),
            Response::RecoveryCheckpointed {
                advanced: false,
                ..
            }
        ));
        let c = get(&kv, "repo:acme/api/1").unwrap();
        assert_eq!(
            (
                c.last_delivery_id,
                c.last_delivered_at_ms,
                c.at_ms,
                c.recovered_total,
                c.sweeps
            ),
            (100, 1000, 6, 2, 2)
        );
        assert_eq!(list(&kv).len(), 1);
        // Record layout: version byte first.
        assert_eq!(kv.0.values().next().unwrap()[0], V1);
    }
}
