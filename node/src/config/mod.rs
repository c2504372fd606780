//! A node's configuration: AOF's `DaemonConfig` with a `spec.cluster` section, from a
//! YAML file and/or `AOF__*` environment variables.
//!
//! `aofctl serve --config FILE [--data-dir DIR]` takes the same `DaemonConfig` YAML
//! that AOF's single-process daemon reads, plus `spec.cluster` (who this node is in
//! the Raft cluster) and `spec.auth` (who may call it):
//!
//! ```yaml
//! apiVersion: aof.dev/v1
//! kind: DaemonConfig
//! metadata:
//!   name: aof-node1
//! spec:
//!   server:                      # the public listener: /webhook/github, /health, /ready
//!     host: 127.0.0.1
//!     port: 3001
//!   platforms:
//!     github:
//!       enabled: true
//!       token_env: GITHUB_TOKEN
//!       webhook_secret_env: GITHUB_WEBHOOK_SECRET
//!   auth:                        # bearer tokens of the API and worker listeners
//!     tokens:
//!       - { name: admin, role: admin, env: AOF_ADMIN_TOKEN }
//!       - { name: worker, role: worker, env: AOF_WORKER_TOKEN }
//!   cluster:
//!     node_id: 1
//!     api_addr: 127.0.0.1:5001   # /v1/*, /metrics
//!     grpc_addr: 127.0.0.1:4001  # workers
//!     peer_addr: 127.0.0.1:6001  # Raft and forwarding, mutual TLS
//!     peer_tls: { ca_file: ./data/certs/ca.crt, cert_file: "./data/certs/node{node_id}.crt", key_file: "./data/certs/node{node_id}.key" }
//!     data_dir: ./data/node1
//!     initial_members:           # only on the nodes that bootstrap the cluster
//!       - { id: 1, peer_addr: 127.0.0.1:6001, grpc_addr: 127.0.0.1:4001, api_addr: 127.0.0.1:5001, http_addr: 127.0.0.1:3001 }
//!       - ...
//! ```
//!
//! The shipped examples are in `cluster-configs/local/`.
//!
//! # Sources
//!
//! The file is optional. Every key under `spec` can be set or overridden by an
//! environment variable named `AOF__` + its path, upper-case, with `__` between
//! levels: `AOF__CLUSTER__NODE_ID=3`, `AOF__SERVER__PORT=3001`,
//! `AOF__CLUSTER__PEER_ADDR=aof-2.aof:6000`. Values are read as numbers, booleans,
//! lists and maps where they look like one (figment's syntax):
//! `AOF__CLUSTER__DISCOVERY__SEEDS='["aof-0.aof:6000","aof-1.aof:6000"]'`,
//! `AOF__CLUSTER__PEER_TLS='{ca_file="/certs/ca.crt",cert_file="/certs/tls.crt",key_file="/certs/tls.key"}'`;
//! quote a value to keep it text (`'"0042"'`). Without a file, `apiVersion` and
//! `kind` are implied and `metadata.name` defaults to `aof-node<ID>`.
//!
//! # What is accepted
//!
//! Every section of AOF's `DaemonConfig` is modelled and typed, so an existing AOF
//! `daemon.yaml` plus a `spec.cluster` section loads unchanged (its keys are
//! snake_case except `apiVersion`): `server`, `platforms` (`github` typed; `slack`,
//! `discord`, `telegram`, `whatsapp`, `jira`, `gitlab`, `bitbucket`, `teams` accepted
//! and kept but not served), `triggers`, `agents`, `fleets`, `flows`, `runtime`,
//! `decision_log`, and the keys of AOF's horizontal-scaling proposal: `mode`, `queue`,
//! `gateway`, `worker`. AOF's defaults apply where AOF has them (`server`: host
//! `0.0.0.0`, port 8080, timeout 30 s). What is accepted but not used, and risky
//! values, are reported by [`DaemonConfig::notices`], which `aofctl serve` logs at
//! start.
//!
//! Unknown keys are errors everywhere (a typo must not silently fall back to a
//! default). Errors name the source (file, or environment variable), the key path,
//! and say what to do, e.g.
//!
//! ```text
//! cluster-configs/local/node1.yaml: spec.cluster.raft.heartbeat_intervl_ms: unknown field; did you mean `heartbeat_interval_ms`? (allowed keys: heartbeat_interval_ms, election_timeout_min_ms, ...) [line 84, column 7]
//! environment variable AOF__CLUSTER__NODE_ID: spec.cluster.node_id: wrong type: expected u64, found string "three" (...)
//! ```
//!
//! Parsing is done by the serde derives (`deny_unknown_fields`, defaults); the rules
//! that span several keys (unique member ids and addresses, this node in its member
//! list, TLS unless insecure, ...) are checked afterwards and reported together.
//!
//! # Listeners and addresses
//!
//! | listener | bind address | serves |
//! |---|---|---|
//! | public | `spec.server.host/port` | `POST /webhook/github`, `/health`, `/ready` |
//! | API | `spec.cluster.api_addr` | `/v1/*`, `/metrics` (bearer tokens) |
//! | workers | `spec.cluster.grpc_addr` | `aof.v1.WorkQueue` (worker tokens) |
//! | peers | `spec.cluster.peer_addr` | Raft, forwarding (mutual TLS) |
//!
//! Addresses are `host:port` with an IP address or a DNS name (IPv6 in brackets,
//! quoted: `"[::1]:6001"`); bind addresses may use `0.0.0.0` / `::`. What other
//! nodes and clients dial is the *advertised* address ([`DaemonConfig::self_member`]):
//! `spec.cluster.advertise.<listener>` if set, else the bind address when its host is
//! concrete, else the machine's host name (FQDN when known) with the bind port.
//!
//! # Identity
//!
//! `spec.cluster.node_id` may be left unset on a StatefulSet pod: it is derived from
//! the host name's ordinal (`aof-2` → 3).
//!
//! # Paths
//!
//! Relative paths (`spec.cluster.data_dir`, `--data-dir`, certificate and token
//! files, the `directory` of `triggers`/`agents`/`fleets`/`flows`,
//! `decision_log.path`) are resolved against the process working directory — not
//! the directory of the config file — and stored absolute. Certificate paths may
//! contain `{node_id}`.
//!
//! Environment variables named by `*_env` keys (webhook secrets, tokens) are not read
//! while loading: [`AuthConfig::resolve`] reads the tokens at start.

mod addr;
mod auth;
mod cluster;
mod error;
mod load;
mod platforms;
mod rules;
mod sections;
mod suggest;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{AddrParseError, IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use addr::{statefulset_node_id, system_hostname, Host, HostPort};
pub use auth::{default_tokens, AuthConfig, ResolvedAuth, Role, TokenConfig, TokenMatch};
pub use cluster::{
    AdvertiseConfig, ClusterConfig, DiscoveryConfig, InitialMember, NodeAddrs, PeerTlsConfig, RaftTuning,
    StorageTuning, TlsConfig,
};
pub use error::{ConfigError, Notice, Problem, Severity};
pub use load::{load, load_env, parse_str, parse_str_in, Loader, ENV_PREFIX};
pub use platforms::{
    parse_duration, GithubConfig, GithubOrgConfig, PlatformsConfig, RecoveryConfig, RecoveryHook, Secret, UnusedSection,
};
pub use sections::{
    CallbacksConfig, CheckRunConfig, DecisionLogConfig, ExecutorConfig, GatewayConfig, QueueConfig, ResourceDirConfig, RuntimeConfig,
    TriggersConfig, WorkerConfig, DEFAULT_MAX_READY, MAX_READY_LIMIT,
};
pub use suggest::did_you_mean;

use crate::types::NodeId;

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "aof.dev/v1";
/// The only `kind` accepted.
pub const KIND: &str = "DaemonConfig";

// ---------------------------------------------------------------------------
// Document
// ---------------------------------------------------------------------------

/// A node's configuration: AOF's `DaemonConfig` resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Must be `aof.dev/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Must be `DaemonConfig`.
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spec,
    /// The machine's host name when loaded (for advertised addresses).
    #[serde(skip)]
    hostname: Option<String>,
}

/// `metadata`: as in every AOF resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Name of this daemon (free text, shown in logs). Default `aof-node<ID>`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// AOF's scaling-proposal mode. Accepted for compatibility; an aof-cluster node
    /// always plays every role (see [`Mode`]).
    #[serde(default)]
    pub mode: Mode,
    /// The public listener: `/webhook/github`, health.
    #[serde(default)]
    pub server: ServerConfig,
    /// Tokens of the API and worker listeners (aof-cluster's addition).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Raft membership, listeners and tuning of this node (aof-cluster's addition).
    pub cluster: ClusterConfig,
    /// Webhook sources. aof-cluster serves GitHub only.
    #[serde(default)]
    pub platforms: PlatformsConfig,
    /// AOF Trigger files (`kind: Trigger`).
    #[serde(default)]
    pub triggers: TriggersConfig,
    /// AOF Agent files.
    #[serde(default)]
    pub agents: ResourceDirConfig,
    /// AOF Fleet files.
    #[serde(default)]
    pub fleets: ResourceDirConfig,
    /// AOF AgentFlow files.
    #[serde(default)]
    pub flows: ResourceDirConfig,
    /// Task execution limits, as in AOF.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Webhook intake limits.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The replicated event queue between intake and execution.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Event execution on this node.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// AOF's decision log (kept for compatibility).
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
    /// Signed completion callbacks (triggers' `spec.callback`): how the leader sends them.
    #[serde(default)]
    pub callbacks: CallbacksConfig,
}

/// `spec.mode` (AOF scaling proposal: `standalone` | `gateway` | `worker`).
///
/// In aof-cluster every node is gateway *and* worker *and* a Raft member, so the
/// value does not change behaviour; anything but `cluster` produces a notice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Standalone,
    Gateway,
    Worker,
    #[default]
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Gateway => "gateway",
            Mode::Worker => "worker",
            Mode::Cluster => "cluster",
        }
    }
}

/// `spec.server`: the public listener (AOF's keys and defaults, plus `tls`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Host to bind: an IP, `0.0.0.0` (default, as in AOF) or a DNS name.
    pub host: String,
    /// Default 8080 (AOF's). `0` picks a free port (tests only: peers cannot know it).
    pub port: u16,
    /// Send permissive CORS headers (default false; webhooks do not need CORS).
    pub cors: bool,
    /// Header and body read timeout of the public listener, seconds (default 30, AOF's).
    pub timeout_secs: u64,
    /// Serve HTTPS with this certificate (default: plain HTTP, e.g. behind a TLS
    /// terminating proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "0.0.0.0".into(), port: 8080, cors: false, timeout_secs: 30, tls: None }
    }
}

// ---------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------

impl DaemonConfig {
    /// A valid configuration with every default, for tests and embedding: the public
    /// listener on `http_addr`, the workers' gRPC listener on `grpc_addr`, the API and
    /// peer listeners on port 0 of the same hosts; no `initial_members`, no platforms,
    /// `spec.auth.insecure: true` (no tokens, no TLS).
    pub fn new(node_id: NodeId, http_addr: SocketAddr, grpc_addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        let addrs = NodeAddrs {
            http_addr,
            api_addr: SocketAddr::new(http_addr.ip(), 0),
            grpc_addr,
            peer_addr: SocketAddr::new(grpc_addr.ip(), 0),
        };
        Self::with_addrs(node_id, &addrs, data_dir)
    }

    /// Like [`DaemonConfig::new`], with the bind address of every listener.
    pub fn with_addrs(node_id: NodeId, addrs: &NodeAddrs<SocketAddr>, data_dir: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata { name: format!("aof-node{node_id}"), ..Default::default() },
            spec: Spec {
                mode: Mode::Cluster,
                server: ServerConfig {
                    host: addrs.http_addr.ip().to_string(),
                    port: addrs.http_addr.port(),
                    ..Default::default()
                },
                auth: AuthConfig { tokens: Vec::new(), metrics_public: false, insecure: true },
                cluster: ClusterConfig {
                    node_id,
                    api_addr: addrs.api_addr.to_string(),
                    grpc_addr: addrs.grpc_addr.to_string(),
                    peer_addr: addrs.peer_addr.to_string(),
                    advertise: AdvertiseConfig::default(),
                    peer_tls: None,
                    api_tls: None,
                    grpc_tls: None,
                    data_dir: data_dir.into(),
                    initial_members: Vec::new(),
                    discovery: None,
                    leave_on_shutdown: false,
                    raft: RaftTuning::default(),
                    storage: StorageTuning::default(),
                },
                platforms: PlatformsConfig::default(),
                triggers: TriggersConfig::default(),
                agents: ResourceDirConfig::default(),
                fleets: ResourceDirConfig::default(),
                flows: ResourceDirConfig::default(),
                runtime: RuntimeConfig::default(),
                gateway: GatewayConfig::default(),
                queue: QueueConfig::default(),
                worker: WorkerConfig::default(),
                decision_log: DecisionLogConfig::default(),
                callbacks: CallbacksConfig::default(),
            },
            hostname: None,
        }
    }

    /// `host:port` the public listener binds (IPv6 hosts in brackets).
    pub fn http_addr(&self) -> String {
        match Host::parse(&self.spec.server.host) {
            Ok(host) => HostPort { host, port: self.spec.server.port }.to_string(),
            Err(_) => format!("{}:{}", self.spec.server.host, self.spec.server.port),
        }
    }

    /// The public listener's bind address as a socket address (IP hosts only).
    pub fn http_socket_addr(&self) -> Result<SocketAddr, AddrParseError> {
        let host = &self.spec.server.host;
        let ip: IpAddr = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse()?;
        Ok(SocketAddr::new(ip, self.spec.server.port))
    }

    /// The bind address of every listener, as configured (`host:port`; the host may
    /// be a DNS name or `0.0.0.0`, the port 0).
    pub fn bind_addrs(&self) -> NodeAddrs {
        let c = &self.spec.cluster;
        NodeAddrs {
            http_addr: self.http_addr(),
            api_addr: c.api_addr.clone(),
            grpc_addr: c.grpc_addr.clone(),
            peer_addr: c.peer_addr.clone(),
        }
    }

    /// The host name used for advertised addresses: the one seen when loading, else
    /// [`system_hostname`].
    pub fn hostname(&self) -> Option<String> {
        self.hostname.clone().or_else(system_hostname)
    }

    /// What other nodes and clients dial to reach this node's four listeners: per
    /// listener, `spec.cluster.advertise.<listener>` if set, else the bind address if
    /// its host is concrete, else the host name (FQDN when known) with the bind port.
    /// Validation at load guarantees each can be formed.
    pub fn self_member(&self) -> NodeAddrs {
        self.advertised(&self.bind_addrs())
    }

    /// [`DaemonConfig::self_member`] for listeners already bound, so a bind on port 0
    /// advertises the port actually chosen.
    pub fn self_member_bound(&self, bound: &NodeAddrs<SocketAddr>) -> NodeAddrs {
        let b = self.bind_addrs();
        let with_port = |bind: &str, actual: &SocketAddr| match HostPort::parse(bind) {
            Ok(hp) if hp.port == 0 => HostPort { port: actual.port(), ..hp }.to_string(),
            _ => bind.to_string(),
        };
        self.advertised(&NodeAddrs {
            http_addr: with_port(&b.http_addr, &bound.http_addr),
            api_addr: with_port(&b.api_addr, &bound.api_addr),
            grpc_addr: with_port(&b.grpc_addr, &bound.grpc_addr),
            peer_addr: with_port(&b.peer_addr, &bound.peer_addr),
        })
    }

    fn advertised(&self, binds: &NodeAddrs) -> NodeAddrs {
        let a = &self.spec.cluster.advertise;
        let hostname = self.hostname();
        let one = |configured: &Option<String>, bind: &str| match addr::advertise(configured.as_deref(), bind, hostname.as_deref())
        {
            Ok(adv) => adv.addr.to_string(),
            Err(_) => configured.clone().unwrap_or_else(|| bind.to_string()),
        };
        NodeAddrs {
            http_addr: one(&a.http_addr, &binds.http_addr),
            api_addr: one(&a.api_addr, &binds.api_addr),
            grpc_addr: one(&a.grpc_addr, &binds.grpc_addr),
            peer_addr: one(&a.peer_addr, &binds.peer_addr),
        }
    }

    /// The environment variables this node reads credentials from: GitHub token
    /// and webhook secret variables, globally and per organisation. Jobs never
    /// see them.
    pub fn secret_env_names(&self) -> Vec<String> {
        let Some(g) = &self.spec.platforms.github else { return Vec::new() };
        let orgs = g.orgs.values().flat_map(|o| o.webhook_secret_env.iter().chain(o.token_env.iter()));
        g.token_env.iter().chain(g.webhook_secret_env.iter()).chain(g.webhook_secret_envs.iter()).chain(orgs).cloned().collect()
    }

    /// The GitHub platform, if configured and enabled.
    pub fn github(&self) -> Option<&GithubConfig> {
        self.spec.platforms.github.as_ref().filter(|g| g.enabled)
    }

    /// Check the rules (the ones [`load`] applies after parsing). `origin` names the
    /// configuration in messages.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let problems = rules::validate(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { origin: origin.to_string(), problems })
        }
    }

    /// Things that are accepted but deserve the operator's attention (ignored AOF
    /// sections, risky values). `aofctl serve` logs them at start.
    pub fn notices(&self) -> Vec<Notice> {
        rules::notices(self)
    }
}
