//! openraft's type configuration for aof-cluster. The replicated data itself (commands,
//! answers, records) is defined in `aof-core` and re-exported here.

pub use aof_core::types::*;

openraft::declare_raft_types!(
    /// The openraft type configuration of aof-cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        // Snapshot data is a file on disk (`<data>/snapshots/<id>.snap`), handed to
        // openraft as an open handle: a snapshot is as large as the state and is
        // never read into memory to be sent.
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
