//! Automatic membership (`spec.cluster.discovery`): a node finds its peers by seed
//! addresses or a DNS name, the first voters form the cluster exactly once, later
//! nodes join by themselves and are promoted to voter up to `max_voters`.
//!
//! **Candidates.** `seeds` are peer addresses (`host:port`); `dns: "name:port"` adds
//! every address the name resolves to (a headless Service lists its pods) and, when
//! this node's host name is a StatefulSet pod's (`aof-2`), the pod names of ordinals
//! `0..=max(2, own)` under that name (`aof-0.name:port`, ...). A candidate is probed
//! with `ClusterService.NodeInfo` over the peer listener's mutual TLS, accepting any
//! node of the cluster CA (its id comes from its certificate and must match the
//! answer), so a rescheduled pod with a new IP is found again by name.
//!
//! **Forming the cluster, exactly once.** The first voters are node ids `1..=3`
//! (StatefulSet ordinals 0–2; fewer if `max_voters` is smaller). A pristine node among
//! them initializes a cluster only when it knows the advertised addresses of all of
//! them, a majority of them answers, and none of the nodes it reached belongs to a
//! cluster. Every such node initializes with the same members (each member's own
//! advertised addresses), which openraft allows; whatever the start order, at most
//! one cluster forms, and a node that finds an initialized peer never initializes.
//!
//! **Joining.** A node that is not a member asks any reachable member to add it
//! (`ClusterService.Join`, forwarded to the leader): the leader checks it over
//! mutual TLS and adds it as a learner; the node keeps asking, and once it is within
//! [`crate::node::CAUGHT_UP_ENTRIES`] of the leader's log it is promoted to voter while
//! the cluster has fewer than `max_voters` voters. Beyond that it stays a learner (a
//! gateway and worker host), and asks again now and then, so it is promoted when a
//! voter leaves. A member whose advertised addresses changed gets them updated the
//! same way.
//!
//! **Leaving** is never automatic on failure: a killed node stays a member. A node
//! started with `spec.cluster.leave_on_shutdown` removes itself on a graceful stop
//! (see `server.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aof_proto::v1::cluster_service_client::ClusterServiceClient;
use aof_proto::v1::{JoinRequest, NodeInfoReply, NodeInfoRequest};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::config::DiscoveryConfig;
use crate::node::{JoinRole, Node};
use crate::tls::PeerTls;
use crate::types::{Member, NodeId};

/// How many of the first node ids form a new cluster.
pub const INITIAL_VOTERS: u64 = 3;
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause between rounds while this node is not yet a voter.
const ROUND: Duration = Duration::from_secs(1);
/// Pause between checks once this node is a voter, or a learner kept as one.
const SETTLED: Duration = Duration::from_secs(15);

/// What a probe learned about one peer.
#[derive(Clone, Debug)]
struct Peer {
    addr: String,
    info: NodeInfoReply,
}

impl Peer {
    fn member(&self) -> Member {
        let i = &self.info;
        Member { peer_addr: i.peer_addr.clone(), grpc_addr: i.grpc_addr.clone(), api_addr: i.api_addr.clone(), http_addr: i.http_addr.clone() }
    }
}

/// The discovery settings and this node's view of its own name.
pub struct Discovery {
    pub config: DiscoveryConfig,
    /// This machine's host name (for the StatefulSet pod names).
    pub hostname: Option<String>,
    /// Peer TLS; `None` with `spec.auth.insecure`.
    pub tls: Option<Arc<PeerTls>>,
}

/// `prefix-<ordinal>` of the first label of a host name.
fn pod_name(hostname: &str) -> Option<(&str, u64)> {
    let first = hostname.split('.').next()?;
    let (prefix, ordinal) = first.rsplit_once('-')?;
    if prefix.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, ordinal.parse().ok()?))
}

impl Discovery {
    /// The addresses to probe this round.
    async fn candidates(&self, own_id: NodeId) -> Vec<String> {
        let mut out: Vec<String> = self.config.seeds.clone();
        if let Some(dns) = &self.config.dns {
            if let Ok(addrs) = tokio::net::lookup_host(dns.as_str()).await {
                out.extend(addrs.map(|a| a.to_string()));
            }
            if let (Some((name, port)), Some((prefix, own))) = (dns.rsplit_once(':'), self.hostname.as_deref().and_then(pod_name)) {
                let last = own.max(INITIAL_VOTERS - 1).max(own_id.saturating_sub(1));
                out.extend((0..=last).map(|k| format!("{prefix}-{k}.{name}:{port}")));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn channel(&self, addr: &str) -> Option<(Channel, Option<Arc<std::sync::Mutex<Option<u64>>>>)> {
        match &self.tls {
            Some(tls) => tls.any_node_channel(addr, PROBE_TIMEOUT).ok().map(|(c, seen)| (c, Some(seen))),
            None => Endpoint::from_shared(format!("http://{addr}")).ok().map(|e| (e.connect_timeout(PROBE_TIMEOUT).connect_lazy(), None)),
        }
    }

    /// Probe `addr`; the answer counts only if it comes from the node its certificate names.
    async fn probe(&self, addr: &str) -> Option<(Peer, Channel)> {
        let (channel, seen) = self.channel(addr)?;
        let mut client = ClusterServiceClient::new(channel.clone());
        let info = tokio::time::timeout(PROBE_TIMEOUT, client.node_info(NodeInfoRequest {})).await.ok()?.ok()?.into_inner();
        if let Some(seen) = seen {
            let cert_id = *seen.lock().unwrap_or_else(|p| p.into_inner());
            if cert_id != Some(info.node_id) {
                tracing::warn!(addr, answered = info.node_id, certificate = ?cert_id, "a peer's answer does not match its certificate; ignored");
                return None;
            }
        }
        Some((Peer { addr: addr.to_string(), info }, channel))
    }
}

/// Run automatic membership until `shutdown`.
pub async fn run(node: Arc<Node>, d: Discovery, mut shutdown: watch::Receiver<bool>) {
    let max_voters = d.config.max_voters.max(1);
    let initial: Vec<NodeId> = (1..=INITIAL_VOTERS.min(u64::from(max_voters))).collect();
    let mut round = 0u64;
    loop {
        let pause = match step(&node, &d, &initial, max_voters, round).await {
            Step::Settled => SETTLED,
            Step::Again => ROUND,
        };
        round += 1;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

enum Step {
    Again,
    Settled,
}

async fn step(node: &Arc<Node>, d: &Discovery, initial: &[NodeId], max_voters: u32, round: u64) -> Step {
    let id = node.id();
    let m = node.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let is_voter = membership.voter_ids().any(|v| v == id);
    let recorded = membership.get_node(&id).cloned();
    if is_voter && recorded.as_ref() == Some(node.advertised()) {
        return Step::Settled;
    }
    // A member (voter with changed addresses, or learner): ask the leader through
    // this node itself, which forwards.
    if recorded.is_some() {
        return match node.join(id, node.advertised().clone(), max_voters).await {
            Ok(JoinRole::Voter) | Ok(JoinRole::Learner) => Step::Settled,
            Ok(JoinRole::CatchingUp) => Step::Again,
            Err(e) => {
                tracing::debug!("automatic membership: {e}");
                Step::Again
            }
        };
    }
    let initialized = node.raft().is_initialized().await.unwrap_or(false);
    let candidates = d.candidates(id).await;
    let probes = futures::future::join_all(candidates.iter().map(|a| d.probe(a))).await;
    let mut peers: BTreeMap<NodeId, (Peer, Channel)> = BTreeMap::new();
    for (p, ch) in probes.into_iter().flatten() {
        if p.info.node_id != id {
            peers.entry(p.info.node_id).or_insert((p, ch));
        }
    }
    // A cluster exists: ask one of its members to add this node.
    if let Some((peer, channel)) = peers.values().find(|(p, _)| p.info.initialized && (p.info.voters.contains(&p.info.node_id) || p.info.learners.contains(&p.info.node_id))) {
        if peer.info.voters.contains(&id) || peer.info.learners.contains(&id) {
            // Already in its membership: the leader replicates to this node soon.
            return Step::Again;
        }
        let a = node.advertised();
        let req = JoinRequest {
            node_id: id,
            peer_addr: a.peer_addr.clone(),
            grpc_addr: a.grpc_addr.clone(),
            api_addr: a.api_addr.clone(),
            http_addr: a.http_addr.clone(),
            max_voters,
        };
        match tokio::time::timeout(node.request_timeout() * 2, ClusterServiceClient::new(channel.clone()).join(req)).await {
            Ok(Ok(r)) => tracing::info!(node = id, via = %peer.addr, role = %r.into_inner().role, "asked to join the cluster"),
            Ok(Err(s)) => tracing::warn!(node = id, via = %peer.addr, "join refused: {}", s.message()),
            Err(_) => tracing::debug!(node = id, via = %peer.addr, "join did not answer in time"),
        }
        return Step::Again;
    }
    if initialized || !initial.contains(&id) {
        if round % 30 == 0 {
            tracing::info!(node = id, reachable = peers.len(), "waiting for the cluster to form (this node does not form it: ids {initial:?} do)");
        }
        return Step::Again;
    }
    // No cluster yet, and this node is one of the first voters.
    let mut members: BTreeMap<NodeId, Member> = BTreeMap::from([(id, node.advertised().clone())]);
    for want in initial.iter().filter(|w| **w != id) {
        if let Some((p, _)) = peers.get(want) {
            members.insert(*want, p.member());
        }
    }
    let majority = initial.len() / 2 + 1;
    if members.len() < initial.len() || members.len() < majority {
        if round % 10 == 0 {
            let missing: Vec<&NodeId> = initial.iter().filter(|w| !members.contains_key(w)).collect();
            tracing::info!(node = id, ?missing, "waiting for the first voters to answer before forming the cluster");
        }
        return Step::Again;
    }
    match node.raft().initialize(members.clone()).await {
        Ok(()) => tracing::info!(node = id, members = ?members.keys().collect::<Vec<_>>(), "formed a new cluster (automatic membership)"),
        Err(e) => tracing::info!(node = id, "initialize not needed ({e})"),
    }
    Step::Again
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert_eq!(pod_name("aof-2"), Some(("aof", 2)));
        assert_eq!(pod_name("aof-cluster-10.aof.prod.svc"), Some(("aof-cluster", 10)));
        assert_eq!(pod_name("aof"), None);
        assert_eq!(pod_name("aof-x"), None);
        assert_eq!(pod_name("-3"), None);
    }

    #[tokio::test]
    async fn candidates_from_seeds_and_pod_names() {
        let d = Discovery {
            config: DiscoveryConfig { seeds: vec!["b:6000".into(), "a:6000".into()], dns: Some("aof.ns.svc:6000".into()), max_voters: 5 },
            hostname: Some("aof-4.aof.ns.svc".into()),
            tls: None,
        };
        let c = d.candidates(5).await;
        for want in ["a:6000", "b:6000", "aof-0.aof.ns.svc:6000", "aof-3.aof.ns.svc:6000", "aof-4.aof.ns.svc:6000"] {
            assert!(c.contains(&want.to_string()), "{want} missing from {c:?}");
        }
        assert!(!c.iter().any(|a| a.starts_with("aof-5.")), "{c:?}");
    }
}
