//! Known bugs, planted on purpose so the fault-injection checkers can prove they
//! catch them (`jepsen-tests`). Compiled only with the `planted-bugs` cargo feature,
//! which release builds never enable; without it every check here is `false` and
//! optimized away.
//!
//! The bug is chosen at start by the environment variable `AOF_PLANTED_BUG`:
//! - `ack-before-commit`: the gateway answers 202 as soon as the event is handed to
//!   Raft, before it is committed (may lose acknowledged deliveries);
//! - `stale-reads`: linearizable reads are served from the local state without
//!   read-index;
//! - `skip-fencing`: Extend / Complete / Fail accept any token for a leased job;
//! - `ack-before-fsync`: a log append returns (and so is acknowledged) without
//!   `fdatasync` unless the last sync of the log was a second ago or more — an
//!   "fsync every second" log, which a power loss cuts back by up to a second of
//!   acknowledged entries on every node; and sled no longer flushes by itself
//!   every 500 ms (only when the store asks), so its applied state does not run
//!   ahead of what the log kept and the nodes start again, without those entries.

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    AckBeforeCommit,
    StaleReads,
    SkipFencing,
    AckBeforeFsync,
}

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();

/// Whether `bug` is planted in this process.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        let b = *ACTIVE.get_or_init(|| match std::env::var("AOF_PLANTED_BUG").as_deref() {
            Ok("ack-before-commit") => Some(Bug::AckBeforeCommit),
            Ok("stale-reads") => Some(Bug::StaleReads),
            Ok("skip-fencing") => Some(Bug::SkipFencing),
            Ok("ack-before-fsync") => Some(Bug::AckBeforeFsync),
            _ => None,
        });
        if b.is_some() && b == Some(bug) {
            return true;
        }
    }
    let _ = bug;
    false
}

/// The planted bugs the state machine core takes as a parameter (it reads no
/// environment itself).
#[inline]
pub fn in_state_machine() -> aof_core::sm::Planted {
    aof_core::sm::Planted { skip_fencing: active(Bug::SkipFencing) }
}
