//! GitHub at the node's edge: signature verification and `${ENV}` secrets. The pure
//! parts (Trigger model, facts, matcher) live in `aof-core` and are re-exported here.
//!
//! * [`signature`] — [`sign`] / [`verify`] `X-Hub-Signature-256`.
//! * [`recovery`] — delivery recovery: the leader re-reads hooks' delivery logs and
//!   ingests what the cluster never accepted.
//! * [`secrets`] — [`expand_env`] for `${VAR}` secrets (reads the environment, so it
//!   runs only at the edge, never in `apply`).

pub use aof_core::github::*;
pub use aof_core::github::{facts, matcher, trigger};

pub mod recovery;
pub mod secrets;
pub mod signature;

pub use secrets::{expand_env, expand_with};
pub use signature::{sign, verify, SignatureError, SIGNATURE_HEADER};
