//! The deterministic core of the replicated state machine.
//!
//! [`apply`] takes the current state (a [`KvRead`] view), the log index and one
//! [`Request`], records its writes in an [`Overlay`] and returns the [`Response`].
//!
//! **Architecture Invariant**: `apply` is a pure function of (state, index, request).
//! It does no IO, reads no clock and no random source; "now" is `Request::time_ms`,
//! stamped by the leader. Every replica therefore computes the same state and the same
//! answer. Input validation happens before a command is proposed (at the HTTP / gRPC
//! edge); `apply` only decides outcomes that depend on the replicated state (CAS,
//! dedup, leases).

pub mod events;
pub mod kv;
pub mod queue;
#[cfg(test)]
mod queue_tests;
pub mod triggers;

pub use kv::{KvRead, MemKv, Overlay};

use crate::types::{Command, Request, Response};

/// Key of the state machine's own clock: the largest leader-stamped time applied so
/// far. Leader clocks may step backwards across a failover; `now` never does.
const CLOCK_KEY: &[u8] = b"m/clock";

/// Apply one command at log index `index`.
pub fn apply(state: &mut Overlay<'_>, index: u64, req: &Request) -> Response {
    let now = advance_clock(state, req.time_ms);
    // Retention is enforced a little on every command (first, so a command never sees
    // a record whose time is up), and in bulk by `Tick`.
    let expired = events::expire(state, now, events::GC_BUDGET_PER_COMMAND);
    match &req.cmd {
        Command::PutTrigger { name, doc_json, if_match } => {
            triggers::put(state, index, now, name, doc_json, *if_match)
        }
        Command::DeleteTrigger { name, if_match } => triggers::delete(state, index, name, *if_match),
        Command::IngestWebhook(d) => events::ingest(state, index, now, d),
        Command::Tick { policy } => {
            let (expired_leases, released) = queue::tick(state, index, now, policy);
            let expired_events = expired + events::expire(state, now, events::GC_BUDGET_PER_TICK);
            Response::Ticked { expired_events, expired_leases, released }
        }
        Command::Grant(g) => queue::grant(state, index, now, g),
        Command::Extend { job_id, token, extend_ms } => queue::extend(state, index, now, job_id, *token, *extend_ms),
        Command::Complete { job_id, token, result } => queue::complete(state, index, now, job_id, *token, result),
        Command::Fail { job_id, token, error, retryable, delay_ms, policy } => {
            queue::fail(state, index, now, job_id, *token, error, *retryable, *delay_ms, policy)
        }
        Command::Redrive { job_id } => queue::redrive(state, index, now, job_id.as_deref()),
        Command::Purge { job_id } => queue::purge(state, index, now, job_id.as_deref()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
