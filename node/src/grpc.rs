//! Incoming node-to-node gRPC: `RaftService` (openraft RPCs) and `ClusterService`
//! (forwarded leader operations, node info).

use std::sync::Arc;

use aof_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use aof_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use aof_proto::v1::{JoinReply, JoinRequest, NodeInfoReply, NodeInfoRequest, RaftPayload};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::{LeaderOp, Node};
use crate::types::NodeId;

/// Who may call the peer listener. With peer TLS every caller presents a
/// certificate of the cluster CA naming a node (the TLS handshake checks that); a
/// `members_only` gate (Raft) further requires that node to be a member of this
/// node's cluster — or, on a node that belongs to no cluster yet, any node of the CA
/// and its `initial_members`. The cluster service is behind an open gate (node info
/// and join are for non-members too), and its `Forward` checks membership itself.
/// Without peer TLS (`spec.auth.insecure`) everyone may call.
#[derive(Clone)]
pub struct PeerGate {
    pub node: Arc<Node>,
    pub initial: Vec<NodeId>,
    pub tls: bool,
    pub members_only: bool,
}

/// Whether `caller` may use this node's Raft and forwarding.
fn is_member_or_pending(node: &Node, initial: &[NodeId], caller: NodeId) -> bool {
    let m = node.raft().metrics().borrow().membership_config.clone();
    let membership = m.membership();
    membership.get_node(&caller).is_some() || membership.nodes().next().is_none() || initial.contains(&caller)
}

/// Set by the Raft gate on a request from a node of the cluster CA that this node's
/// applied membership does not list (yet). Only [`may_replicate`] lets such a request
/// through; votes from it are refused.
#[derive(Clone, Copy, Debug)]
struct NotAMember(NodeId);

/// Whether AppendEntries / InstallSnapshot from `caller` may reach Raft when this
/// node's applied membership does not list it.
///
/// A member that joined as a learner, or was rebuilt from a snapshot, can hold a
/// membership older than its leader's own joining (the snapshot it installed predates
/// it): refusing the leader then leaves the member unable ever to catch up to the
/// entry that names the leader. So the membership check yields to Raft's own: a
/// caller that sends, as itself, a committed vote (a leader a quorum elected) no older
/// than this node's vote is the leader this node must follow. Anything else from a
/// non-member (a removed node with a stale vote, a candidate's campaign) is refused
/// before Raft sees it.
fn may_replicate(caller: NodeId, rpc_vote: &crate::types::Vote, mine: &crate::types::Vote) -> bool {
    rpc_vote.is_committed()
        && rpc_vote.leader_id().voted_for() == Some(caller)
        && matches!(rpc_vote.partial_cmp(mine), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal))
}

impl tonic::service::Interceptor for PeerGate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.tls {
            let id = crate::tls::require_peer(&req)?;
            if self.members_only && !is_member_or_pending(&self.node, &self.initial, id) {
                req.extensions_mut().insert(NotAMember(id));
            }
        }
        if self.members_only {
            let theirs = req.metadata().get(crate::network::CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok());
            let (ours, applied) = (self.node.read_local(|kv| aof_core::sm::cluster_id(kv)), self.node.state_machine().last_applied());
            same_cluster(ours.as_deref(), theirs, applied.is_some()).map_err(Status::failed_precondition)?;
        }
        Ok(req)
    }
}

/// Whether a Raft RPC from a node of cluster `theirs` may reach this node of cluster
/// `ours` (ids exist only on restored clusters, see [`crate::backup`]). A node with
/// state but no id belongs to a cluster that was never restored: it refuses a
/// restored cluster's traffic, as a restored node refuses the old cluster's. A node
/// that has applied nothing yet is joining and takes the id from its first snapshot.
fn same_cluster(ours: Option<&str>, theirs: Option<&str>, has_state: bool) -> Result<(), String> {
    match (ours, theirs) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (None, None) => Ok(()),
        (None, Some(_)) if !has_state => Ok(()),
        (a, b) => Err(format!(
            "the caller belongs to cluster {} and this node to cluster {}: a restored cluster and the cluster it was saved from never exchange Raft traffic; \
             check the member addresses (aofctl cluster status)",
            b.unwrap_or("(not restored)"),
            a.unwrap_or("(not restored)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{may_replicate, same_cluster};
    use crate::types::Vote;

    #[test]
    fn a_non_member_is_followed_only_as_the_committed_leader_of_a_current_term() {
        let leader_23 = Vote::new_committed(18, 23);
        // The F5 case: a learner whose installed snapshot's membership predates node 23
        // joining; its own vote is 23's (taken from that snapshot's install).
        assert!(may_replicate(23, &leader_23, &Vote::new_committed(18, 23)));
        assert!(may_replicate(23, &leader_23, &Vote::new_committed(17, 21)), "a newer term's leader");
        assert!(may_replicate(23, &leader_23, &Vote::default()), "a node that voted for no one yet");
        assert!(!may_replicate(23, &Vote::new(18, 23), &Vote::default()), "a candidate is not a leader");
        assert!(!may_replicate(23, &leader_23, &Vote::new_committed(19, 21)), "a removed node's stale term");
        assert!(!may_replicate(22, &leader_23, &Vote::default()), "a vote relayed by another node");
    }

    #[test]
    fn restored_and_old_clusters_refuse_each_other() {
        assert!(same_cluster(None, None, true).is_ok());
        assert!(same_cluster(Some("a"), Some("a"), true).is_ok());
        assert!(same_cluster(None, Some("a"), false).is_ok(), "a joining node takes the id it is sent");
        assert!(same_cluster(Some("a"), Some("b"), true).is_err());
        assert!(same_cluster(Some("a"), None, true).is_err(), "the old cluster cannot reach a restored node");
        assert!(same_cluster(None, Some("a"), true).is_err(), "a restored node cannot reach an old one");
    }
}

/// The gRPC services of one node.
#[derive(Clone)]
pub struct Services {
    node: Arc<Node>,
}

impl Services {
    pub fn new(node: Arc<Node>) -> Self {
        Services { node }
    }

    pub fn raft(&self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn cluster(&self) -> ClusterServiceServer<Self> {
        ClusterServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload { data: codec::encode(v) }))
}

impl Services {
    /// The membership half of the Raft gate (see [`PeerGate`]), for a request whose
    /// caller this node's membership does not list: let it through only as
    /// [`may_replicate`] says.
    fn check_non_member<T>(&self, req: &Request<T>, rpc_vote: Option<&crate::types::Vote>) -> Result<(), Status> {
        let Some(NotAMember(caller)) = req.extensions().get::<NotAMember>().copied() else { return Ok(()) };
        let mine = self.node.raft().metrics().borrow().vote;
        match rpc_vote {
            Some(v) if may_replicate(caller, v, &mine) => Ok(()),
            _ => Err(Status::permission_denied(format!("node {caller} is not a member of this cluster"))),
        }
    }
}

#[tonic::async_trait]
impl RaftService for Services {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = decode(req.get_ref())?;
        self.check_non_member(&req, Some(&rpc.vote))?;
        reply(&self.node.raft().append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_non_member(&req, None)?;
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = decode(req.get_ref())?;
        self.check_non_member(&req, Some(&rpc.vote))?;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }
}

#[tonic::async_trait]
impl ClusterService for Services {
    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        if let Some(caller) = crate::tls::peer_node_id(&req) {
            if !is_member_or_pending(&self.node, &[], caller) {
                return Err(Status::permission_denied(format!("node {caller} is not a member of this cluster")));
            }
        }
        let op: LeaderOp = decode(req.get_ref())?;
        let op = op.revalidate().map_err(|e| Status::invalid_argument(format!("forwarded operation refused: {e}")))?;
        reply(&self.node.run_on_leader(op).await)
    }

    async fn node_info(&self, _req: Request<NodeInfoRequest>) -> Result<Response<NodeInfoReply>, Status> {
        let raft = &self.node.raft();
        let initialized = raft.is_initialized().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        Ok(Response::new(NodeInfoReply {
            node_id: self.node.id(),
            initialized,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            peer_addr: self.node.advertised().peer_addr.clone(),
            grpc_addr: self.node.advertised().grpc_addr.clone(),
            api_addr: self.node.advertised().api_addr.clone(),
            http_addr: self.node.advertised().http_addr.clone(),
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        // With peer TLS, a node may only ask for itself.
        if let Some(caller) = crate::tls::peer_node_id(&req) {
            if caller != req.get_ref().node_id {
                return Err(Status::permission_denied(format!(
                    "node {caller} may not ask to join as node {}",
                    req.get_ref().node_id
                )));
            }
        }
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be 1 or more"));
        }
        let member = crate::types::Member { peer_addr: r.peer_addr, grpc_addr: r.grpc_addr, api_addr: r.api_addr, http_addr: r.http_addr };
        let role = self.node.join(r.node_id, member, r.max_voters.max(1)).await.map_err(|e| match e {
            crate::node::NodeError::Invalid(m) | crate::node::NodeError::NotFound(m) => Status::failed_precondition(m),
            other => Status::unavailable(other.to_string()),
        })?;
        Ok(Response::new(JoinReply {
            role: role.as_str().into(),
            leader_id: self.node.current_leader().unwrap_or(0),
            message: String::new(),
        }))
    }
}
