//! The leader's clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by this node's wall clock.
///
/// Only the leader calls this to stamp a command it proposes (see
/// [`crate::types::Request::time_ms`]); the state machine never does. Edges also use
/// it for ages they display.
pub fn leader_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
