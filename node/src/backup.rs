//! Backup and restore of the whole replicated state (`aofctl snapshot save|restore`),
//! like `etcdctl snapshot save` / `etcdutl snapshot restore`.
//!
//! **Save** (`GET /v1/snapshot`, admin token): the serving node first does a read-index
//! (so every write acknowledged before the request is in its state), asks openraft for
//! a snapshot at or past that index, and returns the snapshot's data in a backup file:
//!
//! ```text
//! "AOFSNAP\n" | u32 BE header length | header (JSON, BackupHeader) | data | SHA-256 of all before
//! ```
//!
//! **Restore** seeds the data dir of one member of a *new* cluster: the snapshot is
//! installed as the node's applied state, its log starts right after the snapshot, and
//! the membership is the new cluster's (`spec.cluster.initial_members`), never the old
//! one's. The restored state gets a fresh `cluster_id`, and nodes refuse Raft traffic
//! from a node of another cluster id (see [`crate::network::CLUSTER_ID_HEADER`]), so a
//! restored member cannot rejoin the old cluster by mistake.
//!
//! **Architecture Invariant**: restore writes only into an empty data dir; it never
//! changes a node that already holds Raft state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::node::{Node, NodeError};
use crate::store::{Store, StoreError};
use crate::types::{LogId, Member, NodeId, SnapshotMeta, StoredMembership, Vote};

const MAGIC: &[u8; 8] = b"AOFSNAP\n";
/// The backup file layout written by this release.
pub const FORMAT: u32 = 1;
/// A header larger than this is not one of ours.
const MAX_HEADER: u32 = 1 << 20;

/// What a backup file says about itself (`aofctl snapshot status FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    pub format: u32,
    /// The saving node's clock when the file was made (informational).
    pub created_at_ms: u64,
    pub source_node: NodeId,
    /// The cluster the state was saved from.
    pub cluster_id: Option<String>,
    /// The last log entry the state includes.
    pub last_log_id: LogId,
    /// The members of the cluster it was saved from (a restore replaces them).
    pub members: BTreeMap<NodeId, Member>,
    pub data_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not an aof-cluster snapshot file (it does not start with the AOFSNAP header)")]
    NotABackup,
    #[error("the snapshot file is truncated: {0}")]
    Truncated(&'static str),
    #[error("the snapshot file is corrupt: its SHA-256 is {found}, the file says {expected}; make a new one with `aofctl snapshot save`")]
    Checksum { expected: String, found: String },
    #[error("the snapshot file's header cannot be read: {0}")]
    Header(String),
    #[error("snapshot file format {0} is newer than this release reads ({FORMAT}); restore it with a newer aofctl")]
    Format(u32),
    #[error("{dir} already holds a node's Raft state; restore seeds an empty data dir (move it away or choose another --data-dir)")]
    NotEmpty { dir: String },
    #[error("node {node} is not in the new cluster's members ({members}); list it in spec.cluster.initial_members")]
    NotAMember { node: NodeId, members: String },
    #[error("the new cluster needs at least one member: set spec.cluster.initial_members")]
    NoMembers,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn storage(e: impl std::fmt::Display) -> BackupError {
    BackupError::Storage(e.to_string())
}

/// The backup file of `header` and the snapshot `data`.
pub fn encode(header: &BackupHeader, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("a backup header serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + h.len() + data.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The SHA-256 a backup file ends with, as hex (what `aofctl snapshot save` prints).
pub fn checksum(file: &[u8]) -> Option<String> {
    (file.len() >= 32).then(|| hex::encode(&file[file.len() - 32..]))
}

/// Check a backup file's checksum and split it into its header and snapshot data.
pub fn decode(file: &[u8]) -> Result<(BackupHeader, &[u8]), BackupError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    if file.len() < MAGIC.len() + 4 + 32 {
        return Err(BackupError::Truncated("shorter than its fixed parts"));
    }
    let (body, sum) = file.split_at(file.len() - 32);
    let found = Sha256::digest(body);
    if found.as_slice() != sum {
        return Err(BackupError::Checksum {
            expected: hex::encode(sum),
            found: hex::encode(found),
        });
    }
    let len = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
    if len > MAX_HEADER || body.len() < 12 + len as usize {
        return Err(BackupError::Truncated("header length beyond the file"));
    }
    let header_bytes = &body[12..12 + len as usize];
    // The format first, so a newer file gets "use a newer aofctl", not a field error.
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let v: Version =
        serde_json::from_slice(header_bytes).map_err(|e| BackupError::Header(e.to_string()))?;
    if v.format > FORMAT {
        return Err(BackupError::Format(v.format));
    }
    let header: BackupHeader =
        serde_json::from_slice(header_bytes).map_err(|e| BackupError::Header(e.to_string()))?;
    let data = &body[12 + len as usize..];
    if data.len() as u64 != header.data_bytes {
        return Err(BackupError::Truncated(
            "snapshot data shorter or longer than the header says",
        ));
    }
    Ok((header, data))
}

/// How long [`save`] waits for a snapshot at the read index before asking again.
const SNAPSHOT_ROUND: Duration = Duration::from_secs(5);
const SNAPSHOT_ROUNDS: u32 = 12;

/// A backup of the whole replicated state, consistent and including every write
/// acknowledged before the call (read-index first). Runs on any node.
pub async fn save(node: &Node, now_ms: u64) -> Result<Vec<u8>, BackupError> {
    let read_index = node.linearize().await?;
    let mut sm = node.state_machine().clone();
    for _ in 0..SNAPSHOT_ROUNDS {
        if let Some(snap) = sm.get_current_snapshot().await.map_err(storage)? {
            if snap.meta.last_log_id.is_some_and(|l| l.index >= read_index) {
                let mut file = snap.snapshot;
                let data = crate::store::read_snapshot_data(&mut file).await?;
                let last_log_id = snap.meta.last_log_id.expect("checked above");
                let members = snap
                    .meta
                    .last_membership
                    .membership()
                    .nodes()
                    .map(|(id, m)| (*id, m.clone()))
                    .collect();
                let header = BackupHeader {
                    format: FORMAT,
                    created_at_ms: now_ms,
                    source_node: node.id(),
                    cluster_id: node.read_local(|kv| aof_core::sm::cluster_id(kv)),
                    last_log_id,
                    members,
                    data_bytes: data.len() as u64,
                };
                return Ok(encode(&header, &data));
            }
        }
        // A snapshot already being built may end below the read index: ask again
        // after it.
        node.raft().trigger().snapshot().await.map_err(storage)?;
        let _ = node
            .raft()
            .wait(Some(SNAPSHOT_ROUND))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= read_index),
                "a snapshot at the read index",
            )
            .await;
    }
    Err(NodeError::Unavailable(format!(
        "no snapshot at or past the read index {read_index} after {} s; check the node's log for snapshot errors and retry",
        SNAPSHOT_ROUND.as_secs() * SNAPSHOT_ROUNDS as u64
    ))
    .into())
}

/// What [`restore`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub header: BackupHeader,
    pub cluster_id: String,
}

/// Seed the empty data dir `dir` of member `node_id` of a new cluster of `members`
/// with the state of a backup file. `new_cluster_id` names the new cluster (every
/// member restored from the same file must get the same one; derive it from the file
/// with [`new_cluster_id`]).
pub async fn restore(
    file: &[u8],
    dir: &Path,
    node_id: NodeId,
    members: &BTreeMap<NodeId, Member>,
    new_cluster_id: &str,
) -> Result<Restored, BackupError> {
    let (header, data) = decode(file)?;
    if members.is_empty() {
        return Err(BackupError::NoMembers);
    }
    if !members.contains_key(&node_id) {
        let list: Vec<String> = members.keys().map(|k| k.to_string()).collect();
        return Err(BackupError::NotAMember {
            node: node_id,
            members: list.join(", "),
        });
    }
    // The new cluster's id goes into the state itself, so every member agrees on it.
    let data = aof_core::sm::with_cluster_id(data, new_cluster_id)
        .map_err(|e| BackupError::Header(e.to_string()))?;
    std::fs::create_dir_all(dir)?;
    let store = Store::open(dir, 8 << 20)?;
    if !store.is_pristine()? {
        return Err(BackupError::NotEmpty {
            dir: dir.display().to_string(),
        });
    }
    store.check_identity(node_id)?;

    let last = header.last_log_id;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = openraft::Membership::new(vec![voters], members.clone());
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
        snapshot_id: format!(
            "restored-{}-{}",
            last.index,
            &new_cluster_id[..new_cluster_id.len().min(8)]
        ),
    };
    let mut sm = store.state_machine();
    let mut f = sm.begin_receiving_snapshot().await.map_err(storage)?;
    f.write_all(&data).await?;
    f.flush().await?;
    f.seek(std::io::SeekFrom::Start(0)).await?;
    sm.install_snapshot(&meta, f).await.map_err(storage)?;

    // The log starts after the snapshot; the term moves past the old cluster's so the
    // first election of the new one is never below a term of its entries.
    let mut log = store.log_store();
    log.save_vote(&Vote::new(last.leader_id.get_term() + 1, node_id))
        .await
        .map_err(storage)?;
    log.purge(last).await.map_err(storage)?;
    log.save_committed(Some(last)).await.map_err(storage)?;
    drop((sm, log));
    store.flush()?;
    Ok(Restored {
        header,
        cluster_id: new_cluster_id.to_string(),
    })
}

/// The new cluster id of a restore from `file`: the same for every member restored
/// from one file, different from the old cluster's.
pub fn new_cluster_id(file: &[u8], members: &BTreeMap<NodeId, Member>) -> String {
    let mut h = Sha256::new();
    h.update(b"aof-cluster restore\n");
    h.update(checksum(file).unwrap_or_default().as_bytes());
    for (id, m) in members {
        h.update(format!("{id}={}\n", m.peer_addr).as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize) -> BackupHeader {
        BackupHeader {
            format: FORMAT,
            created_at_ms: 1,
            source_node: 1,
            cluster_id: Some("c".into()),
            last_log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            members: BTreeMap::new(),
            data_bytes: len as u64,
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let data = b"state bytes".to_vec();
        let file = encode(&header(data.len()), &data);
        let (h, d) = decode(&file).unwrap();
        assert_eq!((h, d), (header(data.len()), &data[..]));
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
        assert!(matches!(decode(&file[..file.len() - 1]), Err(_)));
        assert!(matches!(decode(b"{}"), Err(BackupError::NotABackup)));
    }

    #[test]
    fn a_newer_format_asks_for_a_newer_release() {
        let mut h = header(0);
        h.format = FORMAT + 1;
        let file = encode(&h, &[]);
        assert!(matches!(decode(&file), Err(BackupError::Format(f)) if f == FORMAT + 1));
    }
}
