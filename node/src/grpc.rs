//! Incoming node-to-node gRPC: `RaftService` (openraft RPCs) and `ClusterService`
//! (forwarded leader operations, node info).

use std::sync::Arc;

use aof_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use aof_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use aof_proto::v1::{NodeInfoReply, NodeInfoRequest, RaftPayload};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::{LeaderOp, Node};
use crate::types::NodeId;

/// Who may call the peer listener: with peer TLS, a caller whose certificate (signed
/// by the cluster CA — the TLS handshake checked that) names a node that is a member
/// of this node's cluster. A node that belongs to no cluster yet (waiting to be
/// bootstrapped or joined) accepts any node of the cluster CA, and its
/// `initial_members`. Without peer TLS (`spec.auth.insecure`) everyone may call.
#[derive(Clone)]
pub struct PeerGate {
    pub node: Arc<Node>,
    pub initial: Vec<NodeId>,
    pub tls: bool,
}

impl PeerGate {
    fn allows(&self, caller: NodeId) -> bool {
        let m = self.node.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        membership.get_node(&caller).is_some() || membership.nodes().next().is_none() || self.initial.contains(&caller)
    }
}

impl tonic::service::Interceptor for PeerGate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.tls {
            crate::tls::require_peer(&req, |id| self.allows(id))?;
        }
        Ok(req)
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

#[tonic::async_trait]
impl RaftService for Services {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref())?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }
}

#[tonic::async_trait]
impl ClusterService for Services {
    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let op: LeaderOp = decode(req.get_ref())?;
        let op = op.revalidate().map_err(|e| Status::invalid_argument(format!("forwarded operation refused: {e}")))?;
        reply(&self.node.run_on_leader(op).await)
    }

    async fn node_info(&self, _req: Request<NodeInfoRequest>) -> Result<Response<NodeInfoReply>, Status> {
        let raft = &self.node.raft;
        let initialized = raft.is_initialized().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        Ok(Response::new(NodeInfoReply {
            node_id: self.node.id,
            initialized,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }))
    }
}
