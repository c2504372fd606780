//! Raft type configuration and the application data replicated through the log.
//!
//! **API Boundary**: [`Request`] and [`Response`] are persisted in the Raft log and
//! in snapshots (through [`crate::codec`]), so changing them is a storage-format
//! change: add new variants at the end, never reorder or remove one.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member (`spec.cluster.node_id`).
pub type NodeId = u64;

/// Addresses of a cluster member, as stored in the Raft membership config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of the member's gRPC server (Raft traffic, forwarding, workers).
    pub grpc_addr: String,
    /// `host:port` of the member's HTTP server (webhooks, REST API).
    pub http_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of aof-cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// One replicated command, as proposed by the leader.
///
/// **Architecture Invariant**: `time_ms` is stamped by the leader when it proposes
/// the command (wall clock, milliseconds since the Unix epoch). The state machine
/// uses only this field as "now"; it never reads a clock itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub time_ms: u64,
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.cmd.kind(), self.time_ms)
    }
}

/// The commands of the replicated state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a trigger. `doc_json` is the validated Trigger document as
    /// canonical JSON. With `if_match`, the write happens only if the trigger's current
    /// revision equals it (`0` = "must not exist").
    PutTrigger { name: String, doc_json: String, if_match: Option<u64> },
    /// Delete a trigger, optionally compare-and-set on its revision.
    DeleteTrigger { name: String, if_match: Option<u64> },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutTrigger { .. } => "put_trigger",
            Command::DeleteTrigger { .. } => "delete_trigger",
        }
    }
}

/// A trigger as kept in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    pub name: String,
    /// Log index of the write that last changed it (like etcd's `mod_revision`).
    pub revision: u64,
    /// Log index of the write that created it.
    pub created_revision: u64,
    /// Leader-stamped time of the last change.
    pub updated_ms: u64,
    /// The Trigger document, canonical JSON.
    pub doc_json: String,
}

/// The result of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Entries that carry no application command (blank, membership).
    None,
    TriggerPut { name: String, revision: u64, created: bool, unchanged: bool },
    TriggerDeleted { name: String, revision: u64 },
    /// Compare-and-set failed; nothing changed.
    RevisionMismatch { name: String, expected: u64, actual: u64 },
    NotFound { name: String },
}
