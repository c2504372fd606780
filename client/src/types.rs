//! Request and response bodies of the node HTTP API (`/health`, `/ready`,
//! `/v1/cluster...`, `/v1/triggers...`), as serde types.
//!
//! Unknown fields are ignored, so a newer node can add fields without breaking
//! older clients. All types also implement `Serialize`, so tools can print them
//! back as JSON or YAML.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Node identifier (`spec.cluster.node_id`).
pub type NodeId = u64;

/// How a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Linearizable read (the default): the answering node confirms with the
    /// leader that its copy is current; 503 `unavailable` if it cannot in time.
    #[default]
    Linearizable,
    /// Read the answering node's local copy (`?consistency=stale`): always
    /// answers, possibly with old data.
    Stale,
}

impl Consistency {
    /// The query-string value, `None` for the default.
    pub(crate) fn query(self) -> Option<&'static str> {
        match self {
            Consistency::Linearizable => None,
            Consistency::Stale => Some("stale"),
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        })
    }
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub node_id: NodeId,
}

/// `GET /ready` (200 only; a 503 is returned as [`crate::ClientError::Api`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
    pub node_id: NodeId,
    #[serde(default)]
    pub leader_id: Option<NodeId>,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    /// The current leader, if one is known.
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    /// Sorted by id.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
}

impl ClusterStatus {
    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The leader's entry, if the leader is known and a member.
    pub fn leader(&self) -> Option<&MemberStatus> {
        self.leader_id.and_then(|id| self.member(id))
    }
}

/// One member of [`ClusterStatus::members`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// The peer listener (Raft, forwarding; mutual TLS between nodes).
    #[serde(default)]
    pub peer_addr: String,
    /// The workers' gRPC listener (`aof.v1.WorkQueue`).
    pub grpc_addr: String,
    /// The API listener (`/v1/*`, `/metrics`).
    #[serde(default)]
    pub api_addr: String,
    /// The public listener (webhooks, `/health`, `/ready`).
    pub http_addr: String,
    pub role: Role,
    #[serde(default)]
    pub is_leader: bool,
    /// Last log index known to be replicated on this member (known via the leader).
    #[serde(default)]
    pub matched_index: Option<u64>,
}

impl MemberStatus {
    /// How many committed entries this member is behind, if its matched index is known.
    pub fn lag(&self, commit_index: u64) -> Option<u64> {
        self.matched_index.map(|m| commit_index.saturating_sub(m))
    }
}

/// Membership role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Learner,
    /// A role this client does not know (newer server).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Unknown => "unknown",
        })
    }
}

/// Body of `POST /v1/cluster/learners`: the new member's id and the four
/// addresses it advertises (`host:port`, an IP or a DNS name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub node_id: NodeId,
    /// Its peer listener (`spec.cluster.peer_addr`): the leader replicates to it
    /// there, over mutual TLS.
    pub peer_addr: String,
    /// Its workers' gRPC listener (`spec.cluster.grpc_addr`).
    pub grpc_addr: String,
    /// Its API listener (`spec.cluster.api_addr`).
    pub api_addr: String,
    /// Its public listener (`spec.server.host:port`).
    pub http_addr: String,
}

/// The four addresses of a member, for [`crate::Client::add_learner`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddrs {
    pub peer_addr: String,
    pub grpc_addr: String,
    pub api_addr: String,
    pub http_addr: String,
}

/// Answer to a committed membership change (add learner, promote, remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResult {
    pub node_id: NodeId,
    /// Log index of the committed membership entry.
    pub log_index: u64,
}

/// What a `PUT /v1/triggers/{name}` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PutOutcome {
    Created,
    Configured,
    Unchanged,
}

impl fmt::Display for PutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PutOutcome::Created => "created",
            PutOutcome::Configured => "configured",
            PutOutcome::Unchanged => "unchanged",
        })
    }
}

/// Answer to `PUT /v1/triggers/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub name: String,
    /// The trigger's revision after the write (unchanged: its current one).
    pub revision: u64,
    pub result: PutOutcome,
}

/// Answer to `PUT /v1/triggers/{name}?dry_run=true`: what the PUT would do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DryRunResult {
    pub name: String,
    /// The trigger's current revision (0 if it does not exist); a real PUT that
    /// changes it gets a new revision, the log index of its commit.
    pub revision: u64,
    pub result: PutOutcome,
    /// The stored document (secrets redacted as GET shows them); `None` if none.
    #[serde(default)]
    pub current: Option<serde_json::Value>,
    /// The document as the node would store it (canonical, secrets redacted).
    #[serde(default)]
    pub proposed: serde_json::Value,
}

/// A stored trigger: `GET /v1/triggers/{name}` and the items of `GET /v1/triggers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerItem {
    pub name: String,
    /// Log index of the last change (use as `If-Match`).
    pub revision: u64,
    /// Log index of the creation.
    #[serde(default)]
    pub created_revision: u64,
    /// Leader-stamped time of the last change, ms since the Unix epoch.
    #[serde(default)]
    pub updated_ms: u64,
    /// The AOF `Trigger` document, as JSON.
    pub trigger: serde_json::Value,
}

/// `GET /v1/triggers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerList {
    #[serde(default)]
    pub items: Vec<TriggerItem>,
}

/// Answer to `DELETE /v1/triggers/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub name: String,
    /// Log index of the delete.
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_decodes_the_contract_example() {
        let json = r#"{"node_id":1,"leader_id":2,"term":3,"commit_index":42,"last_applied":42,
            "members":[{"id":1,"grpc_addr":"127.0.0.1:4001","http_addr":"127.0.0.1:3001","role":"voter","is_leader":false,"matched_index":40},
                       {"id":2,"grpc_addr":"127.0.0.1:4002","http_addr":"127.0.0.1:3002","role":"voter","is_leader":true,"matched_index":42},
                       {"id":4,"grpc_addr":"127.0.0.1:4004","http_addr":"127.0.0.1:3004","role":"learner","is_leader":false,"matched_index":null}]}"#;
        let s: ClusterStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.leader().unwrap().id, 2);
        assert_eq!(s.member(1).unwrap().lag(s.commit_index), Some(2));
        assert_eq!(s.member(4).unwrap().role, Role::Learner);
        assert_eq!(s.member(4).unwrap().lag(s.commit_index), None);
    }

    #[test]
    fn unknown_role_and_extra_fields_are_tolerated() {
        let json = r#"{"id":9,"grpc_addr":"a","http_addr":"b","role":"witness","is_leader":false,"zone":"x"}"#;
        let m: MemberStatus = serde_json::from_str(json).unwrap();
        assert_eq!(m.role, Role::Unknown);
        assert_eq!(m.matched_index, None);
    }

    #[test]
    fn no_leader_is_null() {
        let json = r#"{"node_id":1,"leader_id":null,"term":0,"commit_index":0,"last_applied":0,"members":[]}"#;
        let s: ClusterStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.leader_id, None);
        assert!(s.leader().is_none());
    }

    #[test]
    fn put_outcome_is_lowercase() {
        let r: PutResult =
            serde_json::from_str(r#"{"name":"x","revision":17,"result":"configured"}"#).unwrap();
        assert_eq!(r.result, PutOutcome::Configured);
        assert_eq!(r.result.to_string(), "configured");
    }
}
