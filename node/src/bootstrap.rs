//! Forming the cluster the first time, without any extra command.
//!
//! A node whose store is pristine (no vote, log or snapshot) and whose config lists
//! `initial_members` probes its peers (`ClusterService.NodeInfo`):
//! - if any peer is already initialized, a cluster exists: this node must not start a
//!   second one. It stays passive: if it is in the membership the leader replicates to
//!   it; otherwise it waits for `aofctl cluster join`.
//! - if a majority of the initial members (itself included) answers and none is
//!   initialized, it calls `Raft::initialize` with the full initial membership.
//!   Several nodes may do so concurrently: openraft documents that initializing more
//!   than one node with the *same* membership is safe.
//!
//! **Architecture Invariant**: a node with existing Raft state never initializes;
//! restarting keeps its identity, log and state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aof_proto::v1::cluster_service_client::ClusterServiceClient;
use aof_proto::v1::{NodeInfoReply, NodeInfoRequest};
use tokio::sync::watch;

use crate::config::InitialMember;
use crate::node::Node;

/// Pause between probe rounds.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Run the bootstrap protocol for a pristine node until it is initialized, sees an
/// existing cluster, or `shutdown` fires.
pub async fn run(node: Arc<Node>, members: Vec<InitialMember>, mut shutdown: watch::Receiver<bool>) {
    let id = node.id();
    if members.is_empty() {
        tracing::info!(
            "node {id} has no spec.cluster.initial_members, so it will not form a cluster; it waits to be added. \
             From any member run: aofctl cluster join --node-id {id} --grpc-addr <this node's gRPC addr> --http-addr <this node's HTTP addr>"
        );
        return;
    }
    let peers: Vec<&InitialMember> = members.iter().filter(|m| m.id != id).collect();
    let majority = members.len() / 2 + 1;
    for round in 0u64.. {
        if *shutdown.borrow() {
            return;
        }
        if node.raft().is_initialized().await.unwrap_or(false) {
            tracing::info!("node {id} received cluster state from a leader; bootstrap done");
            return;
        }
        let probes = futures::future::join_all(peers.iter().map(|p| probe(&node, p))).await;
        if let Some(info) = probes.iter().flatten().find(|i| i.initialized) {
            let member = info.voters.contains(&id) || info.learners.contains(&id);
            if member {
                tracing::info!(
                    "peers already form a cluster (node {} reports leader {}, term {}) and this node {id} is in its membership; \
                     not initializing — waiting for the leader to replicate to it",
                    info.node_id, info.leader_id, info.term
                );
            } else {
                tracing::warn!(
                    "peers already form a cluster (node {} reports leader {}, term {}) and node {id} is NOT a member. \
                     Not starting a second cluster. Add this node with: aofctl cluster join --node-id {id} --grpc-addr {} --http-addr {}",
                    info.node_id,
                    info.leader_id,
                    info.term,
                    members.iter().find(|m| m.id == id).map_or("?", |m| m.peer_addr.as_str()),
                    members.iter().find(|m| m.id == id).map_or("?", |m| m.http_addr.as_str()),
                );
            }
            return;
        }
        let reachable = 1 + probes.iter().filter(|p| p.is_some()).count();
        if reachable >= majority {
            let nodes: BTreeMap<_, _> = members
                .iter()
                .map(|m| (m.id, m.member()))
                .collect();
            match node.raft().initialize(nodes).await {
                Ok(()) => tracing::info!("node {id} initialized a new cluster with members {:?}", members.iter().map(|m| m.id).collect::<Vec<_>>()),
                Err(e) => tracing::info!("node {id}: initialize not needed ({e})"),
            }
            return;
        }
        if round % 10 == 0 {
            let down: Vec<String> = peers
                .iter()
                .zip(&probes)
                .filter(|(_, p)| p.is_none())
                .map(|(m, _)| format!("node {} at {}", m.id, m.peer_addr))
                .collect();
            tracing::info!(
                "waiting for initial members to form the cluster: {reachable} of {} reachable, {majority} needed; not reachable yet: {}",
                members.len(),
                down.join(", ")
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn probe(node: &Node, peer: &InitialMember) -> Option<NodeInfoReply> {
    let channel = node.peer_channel(peer.id, &peer.peer_addr).ok()?;
    let mut client = ClusterServiceClient::new(channel);
    match tokio::time::timeout(PROBE_TIMEOUT, client.node_info(NodeInfoRequest {})).await {
        Ok(Ok(r)) => {
            let info = r.into_inner();
            if info.node_id != peer.id {
                tracing::error!(
                    "{} answers as node {}, but initial_members says node {} is there; fix the config",
                    peer.peer_addr, info.node_id, peer.id
                );
                return None;
            }
            Some(info)
        }
        _ => None,
    }
}
