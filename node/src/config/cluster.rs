//! `spec.cluster`: this node's identity, listeners and peers in the Raft cluster
//! (aof-cluster's addition to AOF's `DaemonConfig`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::types::{Member, NodeId};

/// `spec.cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's Raft id, unique in the cluster, >= 1. Never reuse the id of a
    /// removed node. When unset, it is derived from the host name's StatefulSet
    /// ordinal (`aof-2` → 3).
    #[serde(default, deserialize_with = "node_id_field", skip_serializing_if = "is_zero")]
    pub node_id: NodeId,
    /// Bind address of the API listener (`/v1/*`, `/metrics`; bearer tokens).
    /// Default `0.0.0.0:5000`.
    #[serde(default = "default_api_addr")]
    pub api_addr: String,
    /// Bind address of the workers' gRPC listener (`aof.v1.WorkQueue`).
    /// Default `0.0.0.0:4000`.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: String,
    /// Bind address of the peer listener (Raft, forwarding to the leader, snapshot
    /// install; mutual TLS). Default `0.0.0.0:6000`.
    #[serde(default = "default_peer_addr")]
    pub peer_addr: String,
    /// What other nodes and clients dial, where it differs from the bind address
    /// (see [`crate::config::DaemonConfig::self_member`]).
    #[serde(default, skip_serializing_if = "AdvertiseConfig::is_empty")]
    pub advertise: AdvertiseConfig,
    /// Mutual TLS between peers. Required unless `spec.auth.insecure: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<PeerTlsConfig>,
    /// Optional server certificate of the API listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls: Option<TlsConfig>,
    /// Optional server certificate of the workers' gRPC listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls: Option<TlsConfig>,
    /// Directory of the node's data (Raft log, vote, state machine).
    /// Relative paths resolve against the working directory; `--data-dir` replaces it.
    #[serde(default)]
    pub data_dir: PathBuf,
    /// The voters of a brand-new cluster. Set identically on the bootstrapping nodes,
    /// and include this node; leave empty on a node that will be added to a running
    /// cluster later. Only meaningful on first start (a data dir without Raft state).
    #[serde(default)]
    pub initial_members: Vec<InitialMember>,
    /// Automatic membership from seed addresses or a DNS name (instead of
    /// `initial_members`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    /// On a graceful stop (SIGTERM/SIGINT), after draining, remove this node from the
    /// cluster's membership before exiting — for scaling in. A killed node (SIGKILL,
    /// crash, no preStop hook) never leaves. `aofctl serve --leave-on-shutdown` sets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leave_on_shutdown: bool,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub storage: StorageTuning,
}

fn default_api_addr() -> String {
    "0.0.0.0:5000".into()
}

fn default_grpc_addr() -> String {
    "0.0.0.0:4000".into()
}

fn default_peer_addr() -> String {
    "0.0.0.0:6000".into()
}

fn is_zero(id: &NodeId) -> bool {
    *id == 0
}

/// `node_id` as written: 0 is refused here, since an unset id (0 in the struct until
/// it is derived) must not be confused with an explicit one.
fn node_id_field<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
    let id = NodeId::deserialize(d)?;
    if id == 0 {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Unsigned(0),
            &"a node id >= 1 (0 is reserved); leave node_id unset to derive it from the host name",
        ));
    }
    Ok(id)
}

/// One entry of `spec.cluster.initial_members`: the addresses the member advertises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    pub id: NodeId,
    /// The member's peer address (Raft, forwarding).
    pub peer_addr: String,
    /// The member's workers' gRPC address.
    pub grpc_addr: String,
    /// The member's API address.
    pub api_addr: String,
    /// The member's public address (webhooks, health).
    pub http_addr: String,
}

impl InitialMember {
    /// The member's addresses as stored in the Raft membership.
    pub fn member(&self) -> Member {
        Member {
            peer_addr: self.peer_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
            api_addr: self.api_addr.clone(),
            http_addr: self.http_addr.clone(),
        }
    }
}

impl From<NodeAddrs> for Member {
    fn from(a: NodeAddrs) -> Member {
        Member { peer_addr: a.peer_addr, grpc_addr: a.grpc_addr, api_addr: a.api_addr, http_addr: a.http_addr }
    }
}

/// The four addresses of a node, one per listener: bind addresses
/// ([`crate::config::DaemonConfig::bind_addrs`]) or advertised ones
/// ([`crate::config::DaemonConfig::self_member`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs<T = String> {
    /// Public listener: `POST /webhook/github`, `/health`, `/ready`.
    pub http_addr: T,
    /// API listener: `/v1/*`, `/metrics`.
    pub api_addr: T,
    /// Workers' gRPC listener.
    pub grpc_addr: T,
    /// Peer listener.
    pub peer_addr: T,
}

/// `spec.cluster.advertise`: the addresses other nodes and clients dial, when they
/// differ from the bind addresses (NAT, containers, a bind on `0.0.0.0` with a name
/// other than the host name). Each is `host:port`, IP or DNS name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertiseConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
}

impl AdvertiseConfig {
    pub fn is_empty(&self) -> bool {
        self == &AdvertiseConfig::default()
    }
}

/// `spec.cluster.discovery`: find the other members without a fixed member list.
/// Exactly one of `seeds` and `dns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Peer addresses (`host:port`) to ask for the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// `name:port` of a headless service whose records are the members' peer
    /// listeners (e.g. `aof.prod.svc.cluster.local:6000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Members beyond this many stay non-voting (default 5).
    #[serde(default = "default_max_voters")]
    pub max_voters: u32,
}

fn default_max_voters() -> u32 {
    5
}

/// `spec.cluster.peer_tls`: the peer listener's certificate and the CA that signs
/// every member's certificate. Paths may contain `{node_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// PEM file of the cluster CA: peers must present a certificate it signed.
    pub ca_file: PathBuf,
    /// PEM certificate of this node (signed by the CA).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
}

/// A listener's server certificate (`spec.server.tls`, `spec.cluster.api_tls`,
/// `spec.cluster.grpc_tls`). Paths may contain `{node_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ClusterConfig {
    /// `initial_members` as an openraft membership (`Raft::initialize` argument).
    pub fn initial_membership(&self) -> BTreeMap<NodeId, Member> {
        self.initial_members.iter().map(|m| (m.id, m.member())).collect()
    }

    /// The gRPC bind address as a socket address (IP literals only).
    pub fn grpc_socket_addr(&self) -> Result<std::net::SocketAddr, std::net::AddrParseError> {
        self.grpc_addr.parse()
    }
}

/// `spec.cluster.raft`: timing and log compaction. Defaults suit loopback and LAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    /// Leader heartbeat period, ms (default 250). Must be < `election_timeout_min_ms`.
    /// openraft 0.9 also uses it as the AppendEntries timeout, after which the leader
    /// backs off from that follower for 500 ms: at 100 – 150 ms, a follower's `fdatasync`
    /// slowed by a snapshot being written or by a busy CPU timed out and stalled
    /// commits (benchmark, 1 000 events/s with snapshots: 202 p99 0.5 s at 100 ms,
    /// 0.3 s at 250 ms, which also had no AppendEntries timeouts).
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in `[min, max)` ms starts an
    /// election (defaults 1000 and 2000). Failover takes about this long.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many log entries were applied since the last one
    /// (default 10000, >= 1) and the log has grown to `snapshot_log_percent` % of the
    /// last snapshot's size (see `snapshot_trigger`).
    pub snapshot_every: u64,
    /// Log on disk, as a percentage of the last snapshot's size, that must have
    /// accumulated before the next snapshot (default 50; 0 = count entries only).
    /// Keeps snapshot work proportional to what is written as retained state grows.
    pub snapshot_log_percent: u64,
    /// Log entries kept behind a snapshot so slow followers can catch up without a
    /// snapshot transfer (default 1000).
    pub logs_to_keep_after_snapshot: u64,
    /// Bound of one client-facing cluster operation: a write's commit, a linearizable
    /// read, a call forwarded to the leader (default 2000 ms).
    pub request_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every: 10_000,
            snapshot_log_percent: 50,
            logs_to_keep_after_snapshot: 1000,
            request_timeout_ms: 2000,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration for these settings (other openraft knobs keep their
    /// defaults).
    pub fn openraft_config(&self, cluster_name: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // Snapshots are asked for by `snapshot_trigger` (entries and log size).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.logs_to_keep_after_snapshot,
            // The wait for a member to install a whole snapshot once it has every
            // chunk (a state of 1 GiB takes tens of seconds); each other chunk (up to
            // 3 MiB) gets `network::SNAPSHOT_CHUNK_TIMEOUT`.
            install_snapshot_timeout: 600_000,
            // An AppendEntries must finish within one heartbeat interval; entries are
            // batches of up to `proposer::MAX_BATCH_BYTES`, so send few at a time.
            max_payload_entries: 16,
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)
    }

    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

/// `spec.cluster.storage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTuning {
    /// sled page cache, MiB (default 64, >= 1).
    pub cache_capacity_mb: u64,
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning { cache_capacity_mb: 64 }
    }
}

impl StorageTuning {
    pub fn cache_capacity_bytes(&self) -> u64 {
        self.cache_capacity_mb.saturating_mul(1024 * 1024)
    }
}

