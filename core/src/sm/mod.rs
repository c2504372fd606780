//! The deterministic core of the replicated state machine.
//!
//! [`apply`] takes the current state (a [`KvRead`] view), the log index and one
//! [`Request`] (a command or a batch of them), records its writes in an [`Overlay`]
//! and returns the [`Response`].
//!
//! **Architecture Invariant**: `apply` is a pure function of (state, index, request).
//! It does no IO, reads no clock and no random source; "now" is `Request::time_ms`,
//! stamped by the leader. Every replica therefore computes the same state and the same
//! answer. Input validation happens before a command is proposed (at the HTTP / gRPC
//! edge); `apply` only decides outcomes that depend on the replicated state (CAS,
//! dedup, leases).

pub mod controls;
pub mod events;
pub mod kv;
pub mod outbox;
pub mod payload;
pub mod queue;
pub mod recovery;
#[cfg(test)]
mod queue_tests;
pub mod triggers;

pub use kv::{KvRead, MemKv, Overlay};

use crate::types::{seq, Command, Request, Response, MAX_BATCH};

/// Known bugs planted on purpose so the fault-injection checkers can prove they catch
/// them. The node decides them at start (its `planted-bugs` feature, never in
/// release builds) and passes them in, so `apply` reads no environment; all `false`
/// in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    /// Extend / Complete / Fail accept any token for a leased job.
    pub skip_fencing: bool,
}

/// Key of the state machine's own clock: the largest leader-stamped time applied so
/// far. Leader clocks may step backwards across a failover; `now` never does.
const CLOCK_KEY: &[u8] = b"m/clock";

/// Apply the log entry at `index`: one command, or a [`Command::Batch`] of them.
///
/// Triggers get the log index as their revision; events, jobs and leases get the
/// command's sequence number ([`crate::types::seq`]).
pub fn apply(state: &mut Overlay<'_>, index: u64, req: &Request, planted: Planted) -> Response {
    let now = advance_clock(state, req.time_ms);
    // Retention is enforced a little on every entry (first, so a command never sees
    // a record whose time is up), and in bulk by `Tick`.
    let expired = events::expire(state, now, events::GC_BUDGET_PER_COMMAND);
    outbox::expire(state, now, outbox::GC_BUDGET_PER_COMMAND);
    match &req.cmd {
        Command::Batch(cmds) => Response::Batch(
            cmds.iter()
                .enumerate()
                .map(|(pos, cmd)| {
                    if cmd.is_batchable() && pos < MAX_BATCH {
                        apply_one(state, index, seq(index, pos), now, cmd, 0, planted)
                    } else {
                        Response::NotBatchable { kind: cmd.kind().to_string() }
                    }
                })
                .collect(),
        ),
        cmd => apply_one(state, index, seq(index, 0), now, cmd, expired, planted),
    }
}

fn apply_one(state: &mut Overlay<'_>, index: u64, seq: u64, now: u64, cmd: &Command, expired: u64, planted: Planted) -> Response {
    match cmd {
        Command::PutTrigger { name, doc_json, if_match } => {
            triggers::put(state, index, now, name, doc_json, *if_match)
        }
        Command::DeleteTrigger { name, if_match } => triggers::delete(state, index, name, *if_match),
        Command::IngestWebhook(d) => events::ingest_raw(state, seq, now, d),
        Command::IngestPacked(d) => events::ingest_packed(state, seq, now, d),
        Command::Tick { policy } => {
            let (expired_leases, released) = queue::tick(state, seq, now, policy);
            let expired_events = expired + events::expire(state, now, events::GC_BUDGET_PER_TICK);
            outbox::expire(state, now, outbox::GC_BUDGET_PER_TICK);
            Response::Ticked { expired_events, expired_leases, released }
        }
        Command::Grant(g) => queue::grant(state, seq, now, g),
        Command::Extend { job_id, token, extend_ms } => queue::extend(state, seq, now, job_id, *token, *extend_ms, planted),
        Command::Complete { job_id, token, result } => queue::complete(state, seq, now, job_id, *token, result, planted),
        Command::Fail { job_id, token, error, retryable, delay_ms, policy } => {
            queue::fail(state, seq, now, job_id, *token, error, *retryable, *delay_ms, policy, planted)
        }
        Command::Redrive { job_id } => queue::redrive(state, seq, now, job_id.as_deref()),
        Command::Purge { job_id } => queue::purge(state, seq, now, job_id.as_deref()),
        Command::Batch(_) => Response::NotBatchable { kind: cmd.kind().to_string() },
        Command::RecoveryCheckpoint(c) => recovery::checkpoint(state, now, c),
        Command::CancelJob { job_id, by, reason } => controls::cancel(state, seq, now, job_id, by, reason),
        Command::RerunEvent { event_id, by } => controls::rerun(state, seq, now, *event_id, by),
        Command::SetTargetLimits { target, limits } => controls::set_limits(state, target, *limits),
        Command::CallbackAttempt(a) => outbox::attempt(state, now, a),
    }
}

/// The state machine's notion of "now" after seeing a leader stamp.
fn advance_clock(state: &mut Overlay<'_>, stamped_ms: u64) -> u64 {
    let prev = read_clock(state);
    let now = prev.max(stamped_ms);
    if now != prev {
        state.put(CLOCK_KEY.to_vec(), now.to_be_bytes().to_vec());
    }
    now
}

/// The largest leader-stamped time applied so far (0 before the first command).
pub fn read_clock(state: &dyn KvRead) -> u64 {
    state
        .get(CLOCK_KEY)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Key of the cluster's identity. Set only by a restore (`aofctl snapshot restore`
/// writes it into the snapshot the new cluster starts from); no command changes it,
/// so every member and every later joiner (which starts from a snapshot) agrees.
const CLUSTER_ID_KEY: &[u8] = b"m/cluster_id";

/// The cluster's id, if it was ever given one (see [`with_cluster_id`]).
pub fn cluster_id(state: &dyn KvRead) -> Option<String> {
    state.get(CLUSTER_ID_KEY).and_then(|v| String::from_utf8(v).ok())
}

/// Snapshot data (the encoded key/value pairs of the whole state) with the cluster id
/// set to `id`: the seed of a restored cluster.
pub fn with_cluster_id(snapshot_data: &[u8], id: &str) -> Result<Vec<u8>, crate::codec::CodecError> {
    let mut pairs: Vec<(kv::Key, kv::Value)> = crate::codec::decode(snapshot_data)?;
    pairs.retain(|(k, _)| k.as_slice() != CLUSTER_ID_KEY);
    pairs.push((CLUSTER_ID_KEY.to_vec(), id.as_bytes().to_vec()));
    pairs.sort();
    Ok(crate::codec::encode(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_snapshot_carries_its_new_cluster_id() {
        let pairs: Vec<(kv::Key, kv::Value)> = vec![(b"a".to_vec(), b"1".to_vec()), (CLUSTER_ID_KEY.to_vec(), b"old".to_vec())];
        let data = with_cluster_id(&crate::codec::encode(&pairs), "new").unwrap();
        let back: Vec<(kv::Key, kv::Value)> = crate::codec::decode(&data).unwrap();
        let kv = MemKv(back.iter().cloned().collect());
        assert_eq!(cluster_id(&kv), Some("new".to_string()));
        assert_eq!(back.len(), 2, "the old id is replaced, the rest kept: {back:?}");
    }

    #[test]
    fn clock_never_steps_back() {
        let mut base = MemKv::default();
        for (t, want) in [(100, 100), (50, 100), (150, 150)] {
            let mut o = Overlay::new(&base);
            let now = advance_clock(&mut o, t);
            assert_eq!(now, want);
            let w = o.into_writes();
            base.commit(w);
            assert_eq!(read_clock(&base), want);
        }
    }
}
