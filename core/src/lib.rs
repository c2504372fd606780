//! The pure core of aof-cluster.
//!
//! Everything the replicated state machine needs to decide an outcome lives here:
//! the commands and their answers ([`types`]), their versioned encoding ([`codec`]),
//! the state machine itself ([`sm`]), AOF's Trigger model, event facts and matcher
//! ([`github`]) the validation of Trigger documents ([`registry`]) and the one "did you mean"
//! ([`suggest`]).
//!
//! **Architecture Invariant**: this crate does no IO, reads no clock, environment or
//! random source, and depends on no async runtime, Raft library, storage engine or
//! network stack. The node (`aof-node`) is a runtime around it: it stamps time into
//! each command, persists what `sm::apply` writes and sends what it answers.

pub mod answers;
pub mod codec;
pub mod github;
pub mod registry;
pub mod sm;
pub mod suggest;
pub mod types;
