//! Checkers: pure functions from a history (and the final state) to a report.

pub mod linearizable;
pub mod queue;
pub mod status;
