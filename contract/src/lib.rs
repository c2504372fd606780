//! One home for each rule that several parts of aof-cluster must apply alike:
//!
//! - [`signature`]: GitHub's webhook signature (`X-Hub-Signature-256`), signed by
//!   `aofctl dev`, the benchmark, the fault-injection harness and the tests, and
//!   verified by the node's webhook listener;
//! - [`jobenv`]: the `AOF_*` environment a job's command gets, and which of the
//!   runner's own variables it may see (the node's built-in `command` executor and
//!   `aofctl worker`);
//! - [`process`]: how a job's command runs: its own process group, a cleared
//!   environment, bounded output, the whole group killed on timeout;
//! - [`ports`]: free loopback ports for the processes that harnesses start, never
//!   the same one twice;
//! - [`yamldir`]: reading `*.yaml` / `*.yml` files of a directory, multi-document
//!   aware (`aofctl apply -f` and the node's `spec.triggers.directory`).
//!
//! **Architecture Invariant**: this crate stays light — no async runtime, no gRPC,
//! no Raft, no other crate of the workspace — so that every crate can use it.

pub mod jobenv;
pub mod ports;
#[cfg(unix)]
pub mod process;
pub mod signature;
pub mod yamldir;
