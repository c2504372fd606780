//! Loading and validating a node's configuration: an AOF `DaemonConfig` with a
//! `spec.cluster` section.
//!
//! `aofctl serve --config FILE [--data-dir DIR]` takes the same `DaemonConfig` YAML
//! that AOF's single-process daemon (`aofctl serve --config daemon.yaml`) reads, plus
//! one new section, `spec.cluster`, that tells the node who it is in the Raft cluster:
//!
//! ```yaml
//! apiVersion: aof.dev/v1
//! kind: DaemonConfig
//! metadata:
//!   name: aof-node1
//! spec:
//!   server:                      # HTTP: /webhook/github and the REST API
//!     host: 127.0.0.1
//!     port: 3001
//!   platforms:
//!     github:
//!       enabled: true
//!       token_env: GITHUB_TOKEN
//!       webhook_secret_env: GITHUB_WEBHOOK_SECRET
//!   triggers:
//!     directory: ./cluster-configs/local/triggers
//!   cluster:                     # new in aof-cluster
//!     node_id: 1
//!     grpc_addr: 127.0.0.1:4001  # Raft traffic, forwarding, workers
//!     data_dir: ./data/node1
//!     initial_members:           # only on the nodes that bootstrap the cluster
//!       - { id: 1, grpc_addr: 127.0.0.1:4001, http_addr: 127.0.0.1:3001 }
//!       - { id: 2, grpc_addr: 127.0.0.1:4002, http_addr: 127.0.0.1:3002 }
//!       - { id: 3, grpc_addr: 127.0.0.1:4003, http_addr: 127.0.0.1:3003 }
//! ```
//!
//! The shipped examples are in `cluster-configs/local/`.
//!
//! # What is accepted
//!
//! Every section of AOF's `DaemonConfig` is modelled and typed, so an existing AOF
//! `daemon.yaml` plus a `spec.cluster` section loads unchanged:
//! `server`, `platforms` (`github` typed; `slack`, `discord`, `telegram`, `whatsapp`,
//! `jira`, `gitlab`, `bitbucket`, `teams` accepted and kept but not served — see
//! [`DaemonConfig::notices`]), `triggers`, `agents`, `fleets`, `flows`, `runtime`,
//! `decision_log`, and the keys of AOF's horizontal-scaling proposal: `mode`, `queue`,
//! `gateway`, `worker`. aof-cluster additions on top of AOF: `spec.cluster`,
//! `platforms.github.orgs` (per-organisation credentials),
//! `platforms.github.webhook_secret_envs` (secret rotation), and the `queue`/`gateway`
//! limits. Semantic rules (addresses, member list, Raft timing, ...) are checked after
//! parsing and all violations are reported at once.
//!
//! Not served but accepted sections and risky values are reported by
//! [`DaemonConfig::notices`]; `aofctl serve` should log them at startup.
//!
//! Unknown keys are errors everywhere (a typo must not silently fall back to a
//! default). Errors name the file and the key path and say what to do, e.g.
//!
//! ```text
//! cluster-configs/local/node1.yaml: spec.cluster.raft.heartbeat_intervl_ms: unknown field; did you mean `heartbeat_interval_ms`? (allowed keys: heartbeat_interval_ms, election_timeout_min_ms, ...) [line 84, column 7]
//! ```
//!
//! # Addresses
//!
//! `spec.server` `host:port`, `spec.cluster.grpc_addr` and the member addresses must be
//! literal `IP:port` (host names, including `localhost`, are not resolved; IPv6 is
//! written `"[::1]:4001"`, quoted). They are both the address this node listens on and
//! the address it advertises to peers and clients, so they cannot be the unspecified
//! address `0.0.0.0` / `::` (AOF's default `host`): set the node's own IP.
//!
//! # Paths
//!
//! Relative paths (`spec.cluster.data_dir`, `--data-dir`, and the `directory` of
//! `triggers`/`agents`/`fleets`/`flows`) are resolved against the process working
//! directory — not the directory of the config file — and stored absolute.
//!
//! (`decision_log.path` too.)
//!
//! Loading is pure: environment variables named by `*_env` keys are not read here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{AddrParseError, IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::{Member, NodeId};

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
    pub metadata: Metadata,
    pub spec: Spec,
}

/// `metadata`: as in every AOF resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Name of this daemon (free text, shown in logs).
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
    /// HTTP server: `/webhook/github`, the REST API, health.
    #[serde(default)]
    pub server: ServerConfig,
    /// Raft membership and tuning of this node (aof-cluster's addition).
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

/// `spec.server`: the HTTP listener (AOF's keys and meanings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// IP to listen on, also advertised to peers. Default `0.0.0.0` as in AOF, which
    /// aof-cluster rejects: set this node's IP.
    pub host: String,
    /// Default 3000. `0` picks a free port (tests only: peers cannot know it).
    pub port: u16,
    /// Send permissive CORS headers (default false; webhooks do not need CORS).
    pub cors: bool,
    /// Per-request timeout, seconds (default 60).
    pub timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "0.0.0.0".into(), port: 3000, cors: false, timeout_secs: 60 }
    }
}

// ---------------------------------------------------------------------------
// spec.cluster
// ---------------------------------------------------------------------------

/// `spec.cluster`: this node's identity in the Raft cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's Raft id, unique in the cluster, >= 1. Never reuse the id of a
    /// removed node.
    pub node_id: u64,
    /// `IP:port` of this node's gRPC server (Raft RPCs, forwarding to the leader,
    /// worker leases); also the address peers dial.
    pub grpc_addr: String,
    /// Directory of the node's sled database (Raft log, vote, state machine).
    /// Relative paths resolve against the working directory; `--data-dir` replaces it.
    #[serde(default)]
    pub data_dir: PathBuf,
    /// The voters of a brand-new cluster. Set identically on the bootstrapping nodes,
    /// and include this node; leave empty on a node that will be added to a running
    /// cluster later. Only meaningful on first start (a data dir without Raft state).
    #[serde(default)]
    pub initial_members: Vec<InitialMember>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub storage: StorageTuning,
}

/// One entry of `spec.cluster.initial_members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    pub id: u64,
    /// The member's `spec.cluster.grpc_addr`.
    pub grpc_addr: String,
    /// The member's `spec.server` `host:port`.
    pub http_addr: String,
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
            // Per snapshot chunk; a chunk is up to 3 MiB, so allow slow disks.
            install_snapshot_timeout: 10_000,
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

// ---------------------------------------------------------------------------
// spec.platforms
// ---------------------------------------------------------------------------

/// `spec.platforms`. Only `github` is served by aof-cluster; the other AOF platforms
/// are accepted (so an AOF config loads) and kept verbatim, and produce a notice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jira: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitbucket: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<UnusedSection>,
}

impl PlatformsConfig {
    /// The platforms present in the file that aof-cluster does not serve.
    pub fn unused(&self) -> Vec<&'static str> {
        [
            ("slack", &self.slack),
            ("discord", &self.discord),
            ("telegram", &self.telegram),
            ("whatsapp", &self.whatsapp),
            ("jira", &self.jira),
            ("gitlab", &self.gitlab),
            ("bitbucket", &self.bitbucket),
            ("teams", &self.teams),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect()
    }
}

/// `spec.platforms.github`: the `/webhook/github` endpoint (AOF's keys, plus `orgs`
/// and `webhook_secret_envs`).
///
/// A delivery is accepted when its `X-Hub-Signature-256` verifies with one of the
/// secrets named by [`GithubConfig::secret_env_names`] — or, when the payload's
/// organisation has an `orgs` entry with a `webhook_secret_env`, with that one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// Serve `/webhook/github` (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Name of the environment variable holding the GitHub token (e.g. `GITHUB_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Name of the environment variable holding the webhook HMAC secret
    /// (e.g. `GITHUB_WEBHOOK_SECRET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    /// Extra secret variables that are also accepted, for rotation: add the new
    /// secret here, switch GitHub to it, then make it the `webhook_secret_env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_secret_envs: Vec<String>,
    /// Inline token (AOF accepts it; prefer `token_env`). Redacted when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Inline webhook secret (AOF accepts it; prefer `webhook_secret_env`). Redacted
    /// when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// Bot login used to recognise @mentions (default `aofbot`).
    #[serde(default = "default_bot_name")]
    pub bot_name: String,
    /// AOF's optional repository allow-list (`owner/repo`, `owner/*`, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_repos: Option<Vec<String>>,
    /// AOF's optional organisation allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_orgs: Option<Vec<String>>,
    /// Per-organisation credentials, keyed by organisation login (case-insensitive).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orgs: BTreeMap<String, GithubOrgConfig>,
    /// GitHub API base URL (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_github_api_url")]
    pub api_url: String,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            enabled: true,
            token_env: None,
            webhook_secret_env: None,
            webhook_secret_envs: Vec::new(),
            token: None,
            webhook_secret: None,
            bot_name: default_bot_name(),
            allowed_repos: None,
            allowed_orgs: None,
            orgs: BTreeMap::new(),
            api_url: default_github_api_url(),
        }
    }
}

impl GithubConfig {
    /// The webhook secret variables to try, in order: `webhook_secret_env`, then
    /// `webhook_secret_envs`, without duplicates.
    pub fn secret_env_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in self.webhook_secret_env.iter().chain(self.webhook_secret_envs.iter()) {
            if !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
        out
    }

    /// The `orgs` entry of an organisation (GitHub logins are case-insensitive).
    pub fn org(&self, login: &str) -> Option<&GithubOrgConfig> {
        self.orgs.iter().find(|(k, _)| k.eq_ignore_ascii_case(login)).map(|(_, v)| v)
    }
}

/// One entry of `spec.platforms.github.orgs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubOrgConfig {
    /// Secret variable for this organisation's webhooks (replaces the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    /// Token variable for API calls on this organisation's repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A secret written inline in the config. `Debug` and `Serialize` print
/// `<redacted>`; [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A section aof-cluster accepts for AOF compatibility but does not use, kept as
/// YAML. `Debug` and `Serialize` redact values of keys that look like credentials
/// (`*token*`, `*secret*`, `*password*`, `*key*`, except `*_env`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct UnusedSection(pub serde_yaml::Value);

impl UnusedSection {
    fn redacted(&self) -> serde_yaml::Value {
        fn walk(v: &serde_yaml::Value) -> serde_yaml::Value {
            use serde_yaml::Value;
            match v {
                Value::Mapping(m) => Value::Mapping(
                    m.iter()
                        .map(|(k, v)| {
                            let sensitive = k.as_str().is_some_and(|k| {
                                let k = k.to_ascii_lowercase();
                                !k.ends_with("_env")
                                    && ["token", "secret", "password", "key"].iter().any(|w| k.contains(w))
                            });
                            let v = if sensitive && !v.is_null() { Value::from("<redacted>") } else { walk(v) };
                            (k.clone(), v)
                        })
                        .collect(),
                ),
                Value::Sequence(s) => Value::Sequence(s.iter().map(walk).collect()),
                Value::Tagged(t) => walk(&t.value),
                other => other.clone(),
            }
        }
        walk(&self.0)
    }
}

impl fmt::Debug for UnusedSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UnusedSection").field(&self.redacted()).finish()
    }
}

impl Serialize for UnusedSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

// ---------------------------------------------------------------------------
// Resource directories, runtime
// ---------------------------------------------------------------------------

/// `spec.triggers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggersConfig {
    /// Directory of AOF Trigger YAML files. Relative to the working directory.
    /// (aof-cluster keeps Triggers in its replicated registry; `aofctl apply -f DIR`
    /// loads a directory into it.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// Reload when files change (default false).
    pub watch: bool,
}

/// `spec.agents`, `spec.fleets`, `spec.flows`: where AOF resources are found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceDirConfig {
    /// Relative to the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// Reload when files change (default false).
    pub watch: bool,
    /// Use these resources (default true; AOF uses it for `flows`).
    pub enabled: bool,
}

impl Default for ResourceDirConfig {
    fn default() -> Self {
        ResourceDirConfig { directory: None, watch: false, enabled: true }
    }
}

/// `spec.runtime`: AOF's execution limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Agent/fleet/flow executions running at once on this node (default 10).
    pub max_concurrent_tasks: usize,
    /// Time limit of one execution, seconds (default 300).
    pub task_timeout_secs: u64,
    /// On shutdown, how long running jobs may take to finish (default 30).
    pub drain_timeout_secs: u64,
    /// AOF's per-user limit (default 3).
    pub max_tasks_per_user: usize,
    /// AOF's fallback agent for messages no command matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_agent: Option<String>,
    /// AOF's default model for agents that name none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// Variables of the node's environment that `command` jobs may see, beyond
    /// the shared allow-list (`PATH`, `HOME`, `LANG`, `LC_*`, `TZ`, `TMPDIR`, …):
    /// names, or prefixes ending in `*`. Credentials (GitHub tokens, webhook
    /// secrets, `AOF_*`) are refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// Built-in executors, by target name (agent / fleet / flow). This node runs
    /// `max_concurrent_tasks` local workers that claim jobs for these targets only;
    /// other targets are left to external workers (`aofctl worker`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub executors: BTreeMap<String, ExecutorConfig>,
}

/// How a built-in worker runs a job for one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ExecutorConfig {
    /// Run a program: the webhook payload on stdin, `AOF_*` variables in the
    /// environment; exit 0 completes the job, anything else fails it (retryable).
    Command {
        /// Program and arguments (no shell).
        command: Vec<String>,
        /// Overrides `runtime.task_timeout_secs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Act on GitHub through its API (token from `platforms.github.token_env`).
    /// Text fields are templates: `{{ metadata.pr_number }}` (AOF's syntax) or
    /// `{{ pr_number }}` is replaced by the context variable.
    Github {
        /// Post this comment on the issue / pull request of the event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// Add these labels to the issue / pull request.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        /// Create a completed check run on the event's head commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check_run: Option<CheckRunConfig>,
    },
}

/// A check run created by the `github` executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRunConfig {
    pub name: String,
    /// success, failure, neutral, … (default success).
    #[serde(default = "default_conclusion")]
    pub conclusion: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

fn default_github_api_url() -> String {
    "https://api.github.com".into()
}

fn default_conclusion() -> String {
    "success".into()
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_tasks: 10,
            task_timeout_secs: 300,
            drain_timeout_secs: 30,
            max_tasks_per_user: 3,
            default_agent: None,
            default_model: None,
            pass_env: Vec::new(),
            executors: BTreeMap::new(),
        }
    }
}

/// `spec.decision_log`: AOF's decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionLogConfig {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig { enabled: true, path: None }
    }
}

// ---------------------------------------------------------------------------
// Scaling-proposal sections: gateway, queue, worker
// ---------------------------------------------------------------------------

/// `spec.gateway`: webhook intake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Answer a delivery within this time, ms (default 5000). The answer is 202 once
    /// the event is committed to the replicated queue. GitHub gives up after 10 s.
    pub ack_timeout_ms: u64,
    /// Largest accepted webhook body (default 25 MiB, GitHub's payload cap).
    pub max_body_bytes: usize,
    /// Deliveries being accepted at once on this node; more get 503 (default 1024).
    pub max_in_flight: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { ack_timeout_ms: 5000, max_body_bytes: 25 * 1024 * 1024, max_in_flight: 1024 }
    }
}

/// `spec.queue`: the event queue.
///
/// The queue is built into the cluster (replicated through Raft), so the backend keys
/// of AOF's proposal — `type`, `url`, `stream`, `consumer_group`, `dead_letter_queue`
/// — are accepted and kept but ignored (with a notice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A worker holds a leased event this long, ms, before it may be handed to
    /// another worker (default 30000).
    pub lease_timeout_ms: u64,
    /// Retries after the first failed attempt, before the event is dead-lettered
    /// (default 3; 0 = no retry).
    pub max_retries: u32,
    /// Delay before the first retry, ms, doubled on each further retry
    /// (default 1000) ...
    pub retry_delay_ms: u64,
    /// ... up to this, ms (default 60000).
    pub max_retry_delay_ms: u64,
    /// Finished and dead-lettered events are kept this long, seconds (default 7 days).
    pub retention_secs: u64,
    /// Ignored (AOF proposal: `redis` | `nats`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Ignored (AOF proposal: broker URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Ignored (AOF proposal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Ignored (AOF proposal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// Ignored (AOF proposal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_timeout_ms: 30_000,
            max_retries: 3,
            retry_delay_ms: 1000,
            max_retry_delay_ms: 60_000,
            retention_secs: 7 * 24 * 3600,
            backend: None,
            url: None,
            stream: None,
            consumer_group: None,
            dead_letter_queue: None,
        }
    }
}

impl QueueConfig {
    /// The keys of AOF's external-broker design present in the file (all ignored).
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        [
            ("type", self.backend.is_some()),
            ("url", self.url.is_some()),
            ("stream", self.stream.is_some()),
            ("consumer_group", self.consumer_group.is_some()),
            ("dead_letter_queue", self.dead_letter_queue.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
    }

    /// Delay before retry number `retry` (1-based): exponential, capped.
    pub fn retry_delay_ms_for(&self, retry: u32) -> u64 {
        let shift = retry.saturating_sub(1).min(63);
        self.retry_delay_ms.saturating_mul(1u64 << shift).min(self.max_retry_delay_ms)
    }
}

/// `spec.worker`: execution of queued events on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Events processed at once (default 10, >= 1).
    pub concurrency: usize,
    /// Events leased ahead of free capacity (default 5; 0 = none).
    pub prefetch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig { concurrency: 10, prefetch: 5 }
    }
}

fn default_true() -> bool {
    true
}

fn default_bot_name() -> String {
    "aofbot".into()
}

// ---------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------

impl DaemonConfig {
    /// A valid configuration with every default, for tests and embedding: no
    /// `initial_members`, no platforms.
    pub fn new(node_id: NodeId, http_addr: SocketAddr, grpc_addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata { name: format!("aof-node{node_id}"), ..Default::default() },
            spec: Spec {
                mode: Mode::Cluster,
                server: ServerConfig { host: http_addr.ip().to_string(), port: http_addr.port(), ..Default::default() },
                cluster: ClusterConfig {
                    node_id,
                    grpc_addr: grpc_addr.to_string(),
                    data_dir: data_dir.into(),
                    initial_members: Vec::new(),
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
            },
        }
    }

    /// `host:port` of the HTTP server (IPv6 hosts in brackets).
    pub fn http_addr(&self) -> String {
        match self.http_socket_addr() {
            Ok(sa) => sa.to_string(),
            Err(_) => format!("{}:{}", self.spec.server.host, self.spec.server.port),
        }
    }

    /// The HTTP server's socket address.
    pub fn http_socket_addr(&self) -> Result<SocketAddr, AddrParseError> {
        let ip: IpAddr = strip_brackets(&self.spec.server.host).parse()?;
        Ok(SocketAddr::new(ip, self.spec.server.port))
    }

    /// This node as a Raft membership entry.
    pub fn self_member(&self) -> Member {
        Member { grpc_addr: self.spec.cluster.grpc_addr.clone(), http_addr: self.http_addr() }
    }

    /// The GitHub platform, if configured and enabled.
    pub fn github(&self) -> Option<&GithubConfig> {
        self.spec.platforms.github.as_ref().filter(|g| g.enabled)
    }

    /// The environment variables this node reads credentials from: GitHub token
    /// and webhook secret variables, globally and per organisation. Jobs never
    /// see them.
    pub fn secret_env_names(&self) -> Vec<String> {
        let Some(g) = &self.spec.platforms.github else { return Vec::new() };
        let orgs = g.orgs.values().flat_map(|o| o.webhook_secret_env.iter().chain(o.token_env.iter()));
        g.token_env.iter().chain(g.webhook_secret_env.iter()).chain(g.webhook_secret_envs.iter()).chain(orgs).cloned().collect()
    }

    /// Check the semantic rules (the ones [`load`] applies after parsing). `origin`
    /// names the configuration in messages.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let problems = validate(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { origin: origin.to_string(), problems })
        }
    }

    /// Things that are accepted but deserve the operator's attention (ignored
    /// sections, risky values). Log them at startup.
    pub fn notices(&self) -> Vec<Problem> {
        let s = &self.spec;
        let mut out = Vec::new();
        let mut note = |key: &str, message: String| out.push(Problem { key: key.into(), message });
        if s.mode != Mode::Cluster {
            note(
                "spec.mode",
                format!(
                    "`{}` is ignored: every aof-cluster node is gateway, worker and Raft member at once",
                    s.mode.as_str()
                ),
            );
        }
        let ignored = s.queue.ignored_keys();
        if !ignored.is_empty() {
            note(
                "spec.queue",
                format!(
                    "{} ignored: the queue is built into the cluster (replicated through Raft), no external broker is used",
                    ignored.join(", ")
                ),
            );
        }
        for p in s.platforms.unused() {
            note(
                &format!("spec.platforms.{p}"),
                "accepted but not served: aof-cluster only serves GitHub webhooks (/webhook/github)".into(),
            );
        }
        match &s.platforms.github {
            None => note(
                "spec.platforms.github",
                "not configured: no webhook endpoint is served (the REST API still is)".into(),
            ),
            Some(g) if !g.enabled => note(
                "spec.platforms.github.enabled",
                "false: no webhook endpoint is served (the REST API still is)".into(),
            ),
            Some(g) => {
                if g.webhook_secret.is_some() {
                    note(
                        "spec.platforms.github.webhook_secret",
                        "secret written in the config file; prefer webhook_secret_env".into(),
                    );
                }
                if g.token.is_some() {
                    note("spec.platforms.github.token", "token written in the config file; prefer token_env".into());
                }
            }
        }
        if s.gateway.ack_timeout_ms > 10_000 {
            note(
                "spec.gateway.ack_timeout_ms",
                format!(
                    "{} ms is more than GitHub waits (10 s); GitHub will report such deliveries as timed out",
                    s.gateway.ack_timeout_ms
                ),
            );
        }
        let r = &s.cluster.raft;
        if r.heartbeat_interval_ms < r.election_timeout_min_ms
            && r.heartbeat_interval_ms.saturating_mul(3) > r.election_timeout_min_ms
        {
            note(
                "spec.cluster.raft.election_timeout_min_ms",
                format!(
                    "less than 3 heartbeats ({} ms each): a few late heartbeats will cause needless elections",
                    r.heartbeat_interval_ms
                ),
            );
        }
        out
    }
}

impl ClusterConfig {
    /// The gRPC server's socket address.
    pub fn grpc_socket_addr(&self) -> Result<SocketAddr, AddrParseError> {
        self.grpc_addr.parse()
    }

    /// `initial_members` as an openraft membership (`Raft::initialize` argument).
    pub fn initial_membership(&self) -> BTreeMap<NodeId, Member> {
        self.initial_members
            .iter()
            .map(|m| (m.id, Member { grpc_addr: m.grpc_addr.clone(), http_addr: m.http_addr.clone() }))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `spec.cluster.initial_members[1].grpc_addr`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded. Every message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("cannot determine the working directory (relative paths resolve against it): {0}")]
    WorkingDir(std::io::Error),

    /// The file is not well-formed YAML.
    #[error("{origin}:{line}:{column}: invalid YAML: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },

    /// The YAML does not fit the `DaemonConfig` schema: unknown key, wrong type,
    /// missing required key.
    #[error("{origin}: {}{message}{}", fmt_key(key), fmt_location(*.line, *.column))]
    Schema { origin: String, key: String, message: String, line: Option<usize>, column: Option<usize> },

    /// The document parsed but breaks one or more rules.
    #[error("{origin}: {}", fmt_problems(.problems))]
    Invalid { origin: String, problems: Vec<Problem> },
}

impl ConfigError {
    /// The key paths this error is about (empty for IO and syntax errors).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::Schema { key, .. } => vec![key.as_str()],
            ConfigError::Invalid { problems, .. } => problems.iter().map(|p| p.key.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

fn fmt_key(key: &str) -> String {
    if key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn fmt_location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" [line {l}, column {c}]"),
        (Some(l), None) => format!(" [line {l}]"),
        _ => String::new(),
    }
}

fn fmt_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Load, resolve and validate the configuration of `aofctl serve --config FILE
/// [--data-dir DIR]`. Relative paths resolve against the working directory;
/// `data_dir_override` replaces `spec.cluster.data_dir`.
pub fn load(path: &Path, data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_str(&text, &path.display().to_string(), data_dir_override)
}

/// [`load`] from a string; `origin` names it in messages (usually the file name).
pub fn parse_str(yaml: &str, origin: &str, data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    let cwd = std::env::current_dir().map_err(ConfigError::WorkingDir)?;
    parse_str_in(yaml, origin, data_dir_override, &cwd)
}

/// [`parse_str`] with an explicit working directory for relative paths.
pub fn parse_str_in(
    yaml: &str,
    origin: &str,
    data_dir_override: Option<&Path>,
    cwd: &Path,
) -> Result<DaemonConfig, ConfigError> {
    // 1. Well-formed YAML? (Also catches duplicate keys and multiple documents.)
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        ConfigError::Syntax { origin: origin.into(), line, column, message: strip_yaml_location(&e.to_string()) }
    })?;
    precheck(&value, origin)?;

    // 2. Schema, with the path of the offending key.
    let de = serde_yaml::Deserializer::from_str(yaml);
    let mut cfg: DaemonConfig = serde_path_to_error::deserialize(de).map_err(|e| schema_error(origin, e))?;

    // 3. Paths.
    if let Some(dir) = data_dir_override {
        cfg.spec.cluster.data_dir = dir.to_path_buf();
    }
    if cfg.spec.cluster.data_dir.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            origin: origin.into(),
            problems: vec![Problem {
                key: "spec.cluster.data_dir".into(),
                message: "missing: set it (e.g. `data_dir: ./data/node1`) or pass --data-dir DIR".into(),
            }],
        });
    }
    let s = &mut cfg.spec;
    s.cluster.data_dir = absolute(cwd, &s.cluster.data_dir);
    for dir in [
        &mut s.triggers.directory,
        &mut s.agents.directory,
        &mut s.fleets.directory,
        &mut s.flows.directory,
        &mut s.decision_log.path,
    ]
    .into_iter()
    .flatten()
    {
        *dir = absolute(cwd, dir);
    }

    // 4. Rules.
    cfg.validate(origin)?;
    Ok(cfg)
}

/// Checks on the raw document that make later messages useful: not empty, a mapping,
/// and the right resource (someone may pass a Trigger file to `--config`).
fn precheck(value: &serde_yaml::Value, origin: &str) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: origin.into(),
        problems: vec![Problem { key: key.into(), message }],
    };
    let map = match value {
        serde_yaml::Value::Null => {
            return Err(invalid(
                ".",
                "the file is empty; expected an AOF DaemonConfig (apiVersion: aof.dev/v1, kind: DaemonConfig, metadata, spec)".into(),
            ))
        }
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(invalid(".", "expected a mapping (an AOF DaemonConfig document)".into())),
    };
    if let Some(v) = map.get("apiVersion").and_then(|v| v.as_str()) {
        if v != API_VERSION {
            return Err(invalid("apiVersion", format!("`{v}` is not supported; use `{API_VERSION}`")));
        }
    }
    if let Some(v) = map.get("kind").and_then(|v| v.as_str()) {
        if v != KIND {
            return Err(invalid(
                "kind",
                format!("`{v}`: expected `{KIND}`; `aofctl serve --config` takes the daemon configuration, not a {v} resource"),
            ));
        }
    }
    Ok(())
}

/// Turn a path-tracked serde error into a [`ConfigError::Schema`] with a key path, a
/// plain message and advice.
fn schema_error(origin: &str, err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let loc = inner.location();
    let mut msg = strip_yaml_location(&inner.to_string());
    // serde_yaml prefixes its own idea of the path ("spec.cluster: ..."); drop it.
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`') {
            msg = rest.to_string();
        }
    }
    let join = |parent: &str, child: &str| {
        if parent == "." || parent.is_empty() {
            child.to_string()
        } else {
            format!("{parent}.{child}")
        }
    };
    let (key, message) = if let Some(field) = backticked(&msg).first().filter(|_| msg.starts_with("missing field")) {
        let key = join(&path, field);
        let message = format!("required key is missing; {}", missing_hint(&key));
        (key, message)
    } else if msg.starts_with("unknown field") || msg.starts_with("unknown variant") {
        let names = backticked(&msg);
        let (what, allowed) = if msg.starts_with("unknown field") { ("field", "keys") } else { ("value", "values") };
        let bad = names.first().cloned().unwrap_or_default();
        let candidates = &names[names.len().min(1)..];
        // The path already ends with the unknown key for fields; not for variants.
        let key = if what == "field" && !path.ends_with(&bad) { join(&path, &bad) } else { path.clone() };
        let mut message = if what == "field" { "unknown field".to_string() } else { format!("unknown value `{bad}`") };
        if let Some(best) = closest(&bad, candidates) {
            message.push_str(&format!("; did you mean `{best}`?"));
        } else if let Some(home) = misplaced(&key, &bad) {
            message.push_str(&format!("; `{bad}` belongs under `{home}`"));
        }
        if candidates.is_empty() {
            message.push_str("; this section takes no keys");
        } else {
            message.push_str(&format!(" (allowed {allowed}: {})", candidates.join(", ")));
        }
        (key, message)
    } else {
        (if path.is_empty() { ".".into() } else { path }, msg)
    };
    ConfigError::Schema {
        origin: origin.into(),
        key,
        message,
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
    }
}

fn missing_hint(key: &str) -> String {
    match key {
        "apiVersion" => format!("add `apiVersion: {API_VERSION}`"),
        "kind" => format!("add `kind: {KIND}`"),
        "metadata" => "add `metadata:` with a `name:`".into(),
        "metadata.name" => "add a `name:` for this daemon".into(),
        "spec" => "add the `spec:` section".into(),
        "spec.cluster" => "aof-cluster needs a `spec.cluster` section with this node's `node_id`, `grpc_addr` and \
                           `data_dir` (and `initial_members` on the nodes that bootstrap the cluster); see \
                           cluster-configs/local/node1.yaml"
            .into(),
        "spec.cluster.node_id" => "set this node's Raft id, unique in the cluster and >= 1 (e.g. `node_id: 1`)".into(),
        "spec.cluster.grpc_addr" => {
            "set the IP:port of this node's gRPC server, which peers dial (e.g. `grpc_addr: 127.0.0.1:4001`)".into()
        }
        k if k.starts_with("spec.cluster.initial_members[") => {
            "every member needs `id`, `grpc_addr` and `http_addr`".into()
        }
        _ => "add it".into(),
    }
}

/// Where a key found at the wrong level belongs.
fn misplaced(key: &str, bad: &str) -> Option<&'static str> {
    const CLUSTER: &[&str] = &["node_id", "grpc_addr", "data_dir", "initial_members", "raft", "storage"];
    const SPEC: &[&str] = &[
        "mode",
        "server",
        "cluster",
        "platforms",
        "triggers",
        "agents",
        "fleets",
        "flows",
        "runtime",
        "gateway",
        "queue",
        "worker",
        "decision_log",
    ];
    const RAFT: &[&str] = &[
        "heartbeat_interval_ms",
        "election_timeout_min_ms",
        "election_timeout_max_ms",
        "snapshot_every",
        "snapshot_log_percent",
        "logs_to_keep_after_snapshot",
        "request_timeout_ms",
    ];
    if CLUSTER.contains(&bad) && key != format!("spec.cluster.{bad}") {
        Some("spec.cluster")
    } else if RAFT.contains(&bad) && key != format!("spec.cluster.raft.{bad}") {
        Some("spec.cluster.raft")
    } else if SPEC.contains(&bad) && key != format!("spec.{bad}") {
        Some("spec")
    } else if bad == "github" && key != "spec.platforms.github" {
        Some("spec.platforms")
    } else {
        None
    }
}

/// Texts between backticks, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The candidate nearest to `bad`, if it is plausibly a typo of it.
fn closest(bad: &str, candidates: &[String]) -> Option<String> {
    let bad_l = bad.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&bad_l, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= 1.max(bad.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Remove serde_yaml's " at line N column M" (we report the location separately).
fn strip_yaml_location(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let tail = &after[digits..];
        if digits > 0 && tail.starts_with(" column ") {
            let t = &tail[" column ".len()..];
            let d2 = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest = &t[d2..];
        } else {
            out.push_str(" at line ");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `p` made absolute against `cwd`, without `.` components.
fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
    joined.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

/// Parse an advertised `IP:port`.
fn parse_addr(value: &str, allow_port_zero: bool) -> Result<SocketAddr, String> {
    let sa: SocketAddr = value.parse().map_err(|_| {
        if value.starts_with("localhost") || (value.chars().any(|c| c.is_ascii_alphabetic()) && !value.contains('[')) {
            format!("`{value}` is not IP:port; host names (including localhost) are not resolved, write an IP such as 127.0.0.1:4001")
        } else {
            format!("`{value}` is not IP:port (e.g. 127.0.0.1:4001, or \"[::1]:4001\" for IPv6)")
        }
    })?;
    check_ip(sa.ip(), value)?;
    if sa.port() == 0 && !allow_port_zero {
        return Err(format!("`{value}`: port 0 cannot be dialled; use the member's real port"));
    }
    Ok(sa)
}

fn check_ip(ip: IpAddr, value: &str) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!(
            "`{value}` is the unspecified address: aof-cluster advertises this address to peers and clients, \
             so it must be this node's own IP (e.g. 10.0.0.5, or 127.0.0.1 for a local cluster)"
        ));
    }
    if ip.is_multicast() {
        return Err(format!("`{value}` is a multicast address; use this node's own IP"));
    }
    Ok(())
}

fn check_env_name(value: &str) -> Result<(), String> {
    if value.starts_with("${") || value.starts_with('$') {
        let bare = value.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
        return Err(format!("write the variable's name, not a reference to it: `{bare}` instead of `{value}`"));
    }
    let mut chars = value.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not an environment variable name (letters, digits, `_`; e.g. GITHUB_WEBHOOK_SECRET). \
             Put the secret itself in that variable, not in this file"
        ))
    }
}

fn validate(cfg: &DaemonConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });

    if cfg.api_version != API_VERSION {
        bad("apiVersion".into(), format!("`{}` is not supported; use `{API_VERSION}`", cfg.api_version));
    }
    if cfg.kind != KIND {
        bad("kind".into(), format!("`{}`: expected `{KIND}`", cfg.kind));
    }
    if cfg.metadata.name.trim().is_empty() {
        bad("metadata.name".into(), "must not be empty".into());
    }

    let s = &cfg.spec;
    let c = &s.cluster;

    // --- addresses of this node
    let http = match strip_brackets(&s.server.host).parse::<IpAddr>() {
        Ok(ip) => match check_ip(ip, &s.server.host) {
            Ok(()) => Some(SocketAddr::new(ip, s.server.port)),
            Err(m) => {
                bad("spec.server.host".into(), m);
                None
            }
        },
        Err(_) => {
            bad(
                "spec.server.host".into(),
                format!(
                    "`{}` is not an IP address; host names (including localhost) are not resolved, write an IP such as 127.0.0.1",
                    s.server.host
                ),
            );
            None
        }
    };
    if c.node_id == 0 {
        bad("spec.cluster.node_id".into(), "must be >= 1 (0 is reserved)".into());
    }
    let grpc = match parse_addr(&c.grpc_addr, true) {
        Ok(a) => Some(a),
        Err(m) => {
            bad("spec.cluster.grpc_addr".into(), m);
            None
        }
    };
    if let (Some(h), Some(g)) = (http, grpc) {
        if h == g && h.port() != 0 {
            bad(
                "spec.cluster.grpc_addr".into(),
                format!("`{g}` is also the HTTP address (spec.server); use a different port"),
            );
        }
    }

    // --- initial_members
    let mut ids = BTreeSet::new();
    let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut self_seen = false;
    for (i, m) in c.initial_members.iter().enumerate() {
        let k = format!("spec.cluster.initial_members[{i}]");
        if m.id == 0 {
            bad(format!("{k}.id"), "must be >= 1".into());
        } else if !ids.insert(m.id) {
            bad(format!("{k}.id"), format!("id {} is listed twice; member ids must be unique", m.id));
        }
        let mut parsed = [None, None];
        for (slot, (field, value)) in [("grpc_addr", &m.grpc_addr), ("http_addr", &m.http_addr)].into_iter().enumerate()
        {
            match parse_addr(value, false) {
                Ok(a) => {
                    let here = format!("{k}.{field}");
                    if let Some(first) = addrs.get(&a) {
                        bad(here.clone(), format!("`{a}` is already used by {first}; every address must be unique"));
                    } else {
                        addrs.insert(a, here);
                    }
                    parsed[slot] = Some(a);
                }
                Err(msg) => bad(format!("{k}.{field}"), msg),
            }
        }
        if m.id != c.node_id {
            for (slot, field, mine) in [(0, "grpc_addr", grpc), (1, "http_addr", http)] {
                if let (Some(mine), Some(theirs)) = (mine, parsed[slot]) {
                    if mine == theirs {
                        bad(
                            format!("{k}.{field}"),
                            format!(
                                "`{theirs}` is this node's own address, but this entry is member {} and this node is {}; \
                                 fix node_id or the address",
                                m.id, c.node_id
                            ),
                        );
                    }
                }
            }
        }
        if m.id == c.node_id && c.node_id != 0 {
            self_seen = true;
            if let (Some(want), Some(got)) = (grpc, parsed[0]) {
                if want != got {
                    bad(
                        format!("{k}.grpc_addr"),
                        format!(
                            "this node (id {}) is listed with grpc_addr `{got}` but spec.cluster.grpc_addr is `{want}`; make them equal",
                            m.id
                        ),
                    );
                }
            }
            if let (Some(want), Some(got)) = (http, parsed[1]) {
                if want != got {
                    bad(
                        format!("{k}.http_addr"),
                        format!(
                            "this node (id {}) is listed with http_addr `{got}` but spec.server host:port is `{want}`; make them equal",
                            m.id
                        ),
                    );
                }
            }
        }
    }
    if !c.initial_members.is_empty() && !self_seen && c.node_id != 0 {
        bad(
            "spec.cluster.initial_members".into(),
            format!(
                "does not list this node (node_id {}); add it, or leave initial_members empty on a node that joins later",
                c.node_id
            ),
        );
    }

    // --- raft, storage
    let r = &c.raft;
    let rk = "spec.cluster.raft";
    if r.heartbeat_interval_ms == 0 {
        bad(format!("{rk}.heartbeat_interval_ms"), "must be >= 1".into());
    } else if r.heartbeat_interval_ms >= r.election_timeout_min_ms {
        bad(
            format!("{rk}.heartbeat_interval_ms"),
            format!(
                "{} must be less than election_timeout_min_ms ({}), or followers time out between heartbeats",
                r.heartbeat_interval_ms, r.election_timeout_min_ms
            ),
        );
    }
    if r.election_timeout_min_ms >= r.election_timeout_max_ms {
        bad(
            format!("{rk}.election_timeout_min_ms"),
            format!(
                "{} must be less than election_timeout_max_ms ({}); the range randomises elections",
                r.election_timeout_min_ms, r.election_timeout_max_ms
            ),
        );
    }
    if r.snapshot_every == 0 {
        bad(format!("{rk}.snapshot_every"), "must be >= 1".into());
    }
    if r.request_timeout_ms == 0 {
        bad(format!("{rk}.request_timeout_ms"), "must be >= 1".into());
    }
    if c.storage.cache_capacity_mb == 0 {
        bad("spec.cluster.storage.cache_capacity_mb".into(), "must be >= 1".into());
    }

    // --- github
    if let Some(g) = &s.platforms.github {
        let gk = "spec.platforms.github";
        let mut names = Vec::new();
        if let Some(v) = &g.token_env {
            names.push((format!("{gk}.token_env"), v));
        }
        if let Some(v) = &g.webhook_secret_env {
            names.push((format!("{gk}.webhook_secret_env"), v));
        }
        for (i, v) in g.webhook_secret_envs.iter().enumerate() {
            names.push((format!("{gk}.webhook_secret_envs[{i}]"), v));
        }
        for (org, o) in &g.orgs {
            if let Some(v) = &o.webhook_secret_env {
                names.push((format!("{gk}.orgs.{org}.webhook_secret_env"), v));
            }
            if let Some(v) = &o.token_env {
                names.push((format!("{gk}.orgs.{org}.token_env"), v));
            }
        }
        for (key, v) in names {
            if let Err(m) = check_env_name(v) {
                bad(key, m);
            }
        }
        let mut seen = BTreeSet::new();
        for (i, v) in g.webhook_secret_envs.iter().enumerate() {
            if !seen.insert(v) {
                bad(format!("{gk}.webhook_secret_envs[{i}]"), format!("`{v}` is listed twice"));
            }
        }
        let mut logins = BTreeSet::new();
        for (org, o) in &g.orgs {
            if org.trim().is_empty() {
                bad(format!("{gk}.orgs"), "organisation names must not be empty".into());
            } else if !logins.insert(org.to_ascii_lowercase()) {
                bad(format!("{gk}.orgs.{org}"), "listed twice (organisation logins are case-insensitive)".into());
            }
            if o.webhook_secret_env.is_none() && o.token_env.is_none() {
                bad(format!("{gk}.orgs.{org}"), "set webhook_secret_env and/or token_env, or remove the entry".into());
            }
        }
        if g.enabled && g.webhook_secret_env.is_none() && g.webhook_secret.is_none() && g.webhook_secret_envs.is_empty()
        {
            bad(
                gk.into(),
                "enabled but no webhook secret is configured, so deliveries could not be authenticated; set \
                 `webhook_secret_env: GITHUB_WEBHOOK_SECRET` (the variable holding the secret), or `enabled: false`"
                    .into(),
            );
        }
        if g.bot_name.trim().is_empty() {
            bad(format!("{gk}.bot_name"), "must not be empty (default `aofbot`)".into());
        }
    }

    // --- runtime, gateway, queue, worker
    if s.runtime.max_concurrent_tasks == 0 {
        bad("spec.runtime.max_concurrent_tasks".into(), "must be >= 1".into());
    }
    if s.runtime.task_timeout_secs == 0 {
        bad("spec.runtime.task_timeout_secs".into(), "must be >= 1".into());
    }
    let secret_names = cfg.secret_env_names();
    for (i, name) in s.runtime.pass_env.iter().enumerate() {
        if let Err(e) = aof_contract::jobenv::check_entry(name) {
            bad(format!("spec.runtime.pass_env[{i}]"), e.to_string());
        } else if secret_names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            bad(
                format!("spec.runtime.pass_env[{i}]"),
                format!("`{name}` holds one of this node's credentials (spec.platforms.github); jobs never get it"),
            );
        }
    }
    if s.server.timeout_secs == 0 {
        bad("spec.server.timeout_secs".into(), "must be >= 1".into());
    }
    if s.gateway.ack_timeout_ms == 0 {
        bad("spec.gateway.ack_timeout_ms".into(), "must be >= 1".into());
    }
    if s.gateway.max_body_bytes == 0 {
        bad("spec.gateway.max_body_bytes".into(), "must be >= 1".into());
    }
    if s.gateway.max_in_flight == 0 {
        bad("spec.gateway.max_in_flight".into(), "must be >= 1".into());
    }
    if s.queue.lease_timeout_ms == 0 {
        bad("spec.queue.lease_timeout_ms".into(), "must be >= 1".into());
    }
    if s.queue.retry_delay_ms > s.queue.max_retry_delay_ms {
        bad(
            "spec.queue.retry_delay_ms".into(),
            format!(
                "{} is more than max_retry_delay_ms ({}); raise max_retry_delay_ms or lower retry_delay_ms",
                s.queue.retry_delay_ms, s.queue.max_retry_delay_ms
            ),
        );
    }
    if s.queue.retention_secs == 0 {
        bad("spec.queue.retention_secs".into(), "must be >= 1".into());
    }
    if s.worker.concurrency == 0 {
        bad("spec.worker.concurrency".into(), "must be >= 1".into());
    }

    problems
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const CWD: &str = "/srv/aof";

    /// A valid node-1 config of a 3-node loopback cluster.
    const NODE1: &str = r#"
apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: node1
spec:
  server:
    host: 127.0.0.1
    port: 3001
  platforms:
    github:
      enabled: true
      token_env: GITHUB_TOKEN
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
  cluster:
    node_id: 1
    grpc_addr: 127.0.0.1:4001
    data_dir: ./data/node1
    initial_members:
      - { id: 1, grpc_addr: 127.0.0.1:4001, http_addr: 127.0.0.1:3001 }
      - { id: 2, grpc_addr: 127.0.0.1:4002, http_addr: 127.0.0.1:3002 }
      - { id: 3, grpc_addr: 127.0.0.1:4003, http_addr: 127.0.0.1:3003 }
"#;

    fn parse(yaml: &str) -> Result<DaemonConfig, ConfigError> {
        parse_str_in(yaml, "node1.yaml", None, Path::new(CWD))
    }

    fn err(yaml: &str) -> ConfigError {
        match parse(yaml) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_config_loads() {
        let cfg = parse(NODE1).unwrap();
        assert_eq!(cfg.spec.cluster.node_id, 1);
        assert_eq!(cfg.http_addr(), "127.0.0.1:3001");
        assert_eq!(cfg.spec.cluster.initial_members.len(), 3);
        assert_eq!(
            cfg.self_member(),
            Member { grpc_addr: "127.0.0.1:4001".into(), http_addr: "127.0.0.1:3001".into() }
        );
        assert_eq!(cfg.spec.cluster.initial_membership()[&2].http_addr, "127.0.0.1:3002");
        assert_eq!(cfg.github().unwrap().secret_env_names(), vec!["GITHUB_WEBHOOK_SECRET"]);
        assert!(cfg.notices().is_empty(), "{:?}", cfg.notices());
    }

    #[test]
    fn defaults_applied() {
        let cfg = parse(NODE1).unwrap();
        let s = &cfg.spec;
        assert_eq!(s.mode, Mode::Cluster);
        assert_eq!(s.cluster.raft, RaftTuning::default());
        assert_eq!(s.cluster.raft.heartbeat_interval_ms, 250);
        assert_eq!((s.cluster.raft.election_timeout_min_ms, s.cluster.raft.election_timeout_max_ms), (1000, 2000));
        assert_eq!(s.cluster.raft.snapshot_every, 10_000);
        assert_eq!(s.cluster.raft.logs_to_keep_after_snapshot, 1000);
        assert_eq!(s.cluster.raft.request_timeout_ms, 2000);
        assert_eq!(s.cluster.storage.cache_capacity_mb, 64);
        assert!(!s.server.cors);
        assert_eq!(s.server.timeout_secs, 60);
        assert_eq!(s.runtime.max_concurrent_tasks, 10);
        assert_eq!(s.runtime.task_timeout_secs, 300);
        assert_eq!(s.gateway, GatewayConfig { ack_timeout_ms: 5000, max_body_bytes: 26_214_400, max_in_flight: 1024 });
        assert_eq!(s.queue.lease_timeout_ms, 30_000);
        assert_eq!(s.queue.max_retries, 3);
        assert_eq!(s.queue.retry_delay_ms, 1000);
        assert_eq!(s.queue.max_retry_delay_ms, 60_000);
        assert_eq!(s.queue.retention_secs, 604_800);
        assert_eq!(s.worker, WorkerConfig { concurrency: 10, prefetch: 5 });
        assert_eq!(s.platforms.github.as_ref().unwrap().bot_name, "aofbot");
        assert!(s.flows.enabled && !s.flows.watch);
        // A partial section keeps the defaults of the keys it omits.
        let cfg =
            parse(&NODE1.replace("    data_dir:", "    raft: { heartbeat_interval_ms: 50 }\n    data_dir:")).unwrap();
        assert_eq!(cfg.spec.cluster.raft.heartbeat_interval_ms, 50);
        assert_eq!(cfg.spec.cluster.raft.election_timeout_min_ms, 1000);
        // Server defaults are AOF's.
        assert_eq!(ServerConfig::default().host, "0.0.0.0");
        assert_eq!(ServerConfig::default().port, 3000);
    }

    #[test]
    fn pass_env_names_are_checked_and_never_credentials() {
        let with = |list: &str| NODE1.replace("  cluster:\n", &format!("  runtime:\n    pass_env: {list}\n  cluster:\n"));
        let cfg = parse(&with("[SSL_CERT_FILE, \"NPM_*\"]")).unwrap();
        assert_eq!(cfg.spec.runtime.pass_env, ["SSL_CERT_FILE", "NPM_*"]);
        assert_eq!(cfg.secret_env_names(), ["GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET"]);
        let e = err(&with("[GITHUB_TOKEN, \"A-B\", OK_NAME]"));
        assert_eq!(e.keys(), vec!["spec.runtime.pass_env[0]", "spec.runtime.pass_env[1]"], "{e}");
        assert!(e.to_string().contains("never passed to jobs"), "{e}");
        // A variable the config names as a credential, whatever it is called.
        let e = err(&with("[MY_TOKEN_VAR]").replace("token_env: GITHUB_TOKEN", "token_env: MY_TOKEN_VAR"));
        assert_eq!(e.keys(), vec!["spec.runtime.pass_env[0]"], "{e}");
    }

    #[test]
    fn unknown_key_names_path_and_suggests() {
        let yaml = NODE1.replace("    data_dir:", "    raft:\n      heartbeat_intervl_ms: 100\n    data_dir:");
        let e = err(&yaml);
        let msg = e.to_string();
        assert_eq!(e.keys(), vec!["spec.cluster.raft.heartbeat_intervl_ms"], "{msg}");
        assert!(msg.starts_with("node1.yaml: spec.cluster.raft.heartbeat_intervl_ms: unknown field"), "{msg}");
        assert!(msg.contains("did you mean `heartbeat_interval_ms`?"), "{msg}");
        assert!(msg.contains("election_timeout_min_ms"), "{msg}");
        assert!(msg.contains("[line 19, column 7]"), "{msg}");

        // top level, inside a list, and in AOF's sections
        let e = err(&format!("{NODE1}extra: 1\n"));
        assert_eq!(e.keys(), vec!["extra"], "{e}");
        let e = err(&NODE1.replace("http_addr: 127.0.0.1:3002 }", "http_addr: 127.0.0.1:3002, grpc: x }"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[1].grpc"], "{e}");
        let e = err(&NODE1.replace("      enabled: true\n", "      enabeld: true\n"));
        assert_eq!(e.keys(), vec!["spec.platforms.github.enabeld"], "{e}");
        assert!(e.to_string().contains("did you mean `enabled`?"), "{e}");

        // a section at the wrong level says where it belongs; no far-fetched guesses
        let e = err(&format!("{NODE1}  raft: {{ snapshot_every: 5 }}\n"));
        assert_eq!(e.keys(), vec!["spec.raft"], "{e}");
        assert!(e.to_string().contains("`raft` belongs under `spec.cluster`"), "{e}");
        let e = err(&format!("{NODE1}  foo: 1\n"));
        assert!(!e.to_string().contains("did you mean"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_variant() {
        let e = err(&NODE1.replace("port: 3001", "port: 70000"));
        assert_eq!(e.keys(), vec!["spec.server.port"], "{e}");
        assert!(e.to_string().contains("u16"), "{e}");
        let e = err(&NODE1.replace("  server:", "  mode: clustr\n  server:"));
        assert_eq!(e.keys(), vec!["spec.mode"], "{e}");
        assert!(e.to_string().contains("did you mean `cluster`?"), "{e}");
    }

    #[test]
    fn missing_sections_have_hints() {
        let no_cluster = NODE1.split("  cluster:").next().unwrap();
        let e = err(no_cluster);
        assert_eq!(e.keys(), vec!["spec.cluster"], "{e}");
        assert!(e.to_string().contains("cluster-configs/local/node1.yaml"), "{e}");

        let e = err(&NODE1.replace("    node_id: 1\n", ""));
        assert_eq!(e.keys(), vec!["spec.cluster.node_id"], "{e}");

        let no_dir = NODE1.replace("    data_dir: ./data/node1\n", "");
        let e = err(&no_dir);
        assert_eq!(e.keys(), vec!["spec.cluster.data_dir"], "{e}");
        assert!(e.to_string().contains("--data-dir"), "{e}");
        // ... which --data-dir supplies
        let cfg = parse_str_in(&no_dir, "x", Some(Path::new("/var/lib/aof")), Path::new(CWD)).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/var/lib/aof"));

        let e = err("");
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_reports_line_and_column() {
        let e = err("apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  server: [\n");
        match &e {
            ConfigError::Syntax { origin, line, column, .. } => {
                assert_eq!(origin, "node1.yaml");
                assert!(*line >= 4, "{e}");
                assert!(*column >= 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("node1.yaml:"), "{e}");
        assert!(!e.to_string().contains(" at line "), "{e}");
        let e = err(&format!("{NODE1}  server: {{}}\n"));
        assert!(matches!(e, ConfigError::Syntax { .. }), "duplicate key: {e}");
    }

    #[test]
    fn wrong_api_version_or_kind() {
        let e = err(&NODE1.replace("aof.dev/v1", "aof.dev/v2"));
        assert_eq!(e.keys(), vec!["apiVersion"]);
        let e = err(&NODE1.replace("kind: DaemonConfig", "kind: Trigger"));
        assert_eq!(e.keys(), vec!["kind"]);
        assert!(e.to_string().contains("not a Trigger resource"), "{e}");
    }

    #[test]
    fn bad_addresses() {
        let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: localhost:4001\n"));
        assert_eq!(e.keys(), vec!["spec.cluster.grpc_addr"], "{e}");
        assert!(e.to_string().contains("not resolved"), "{e}");

        let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: 127.0.0.1\n"));
        assert_eq!(e.keys(), vec!["spec.cluster.grpc_addr"], "{e}");

        let e = err(&NODE1.replace("host: 127.0.0.1", "host: 0.0.0.0"));
        assert!(e.keys().contains(&"spec.server.host"), "{e}");
        assert!(e.to_string().contains("unspecified"), "{e}");

        let e = err(&NODE1.replace("host: 127.0.0.1", "host: my-host"));
        assert!(e.keys().contains(&"spec.server.host"), "{e}");

        let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: 127.0.0.1:3001\n"));
        assert!(e.keys().contains(&"spec.cluster.grpc_addr"), "{e}");

        let e = err(&NODE1.replace("http_addr: 127.0.0.1:3003", "http_addr: 127.0.0.1:99999"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].http_addr"], "{e}");

        // IPv6
        let v6 = NODE1
            .replace("host: 127.0.0.1", "host: \"::1\"")
            .replace("127.0.0.1:4001", "\"[::1]:4001\"")
            .replace("127.0.0.1:3001", "\"[::1]:3001\"");
        let cfg = parse(&v6).unwrap();
        assert_eq!(cfg.http_addr(), "[::1]:3001");
    }

    #[test]
    fn member_list_rules() {
        // this node listed with a different address
        let e = err(&NODE1.replace(
            "{ id: 1, grpc_addr: 127.0.0.1:4001, http_addr: 127.0.0.1:3001 }",
            "{ id: 1, grpc_addr: 127.0.0.1:4001, http_addr: 127.0.0.1:3009 }",
        ));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].http_addr"], "{e}");
        assert!(e.to_string().contains("127.0.0.1:3009") && e.to_string().contains("spec.server"), "{e}");

        let e = err(&NODE1.replace("{ id: 1, grpc_addr: 127.0.0.1:4001,", "{ id: 1, grpc_addr: 127.0.0.1:4009,"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].grpc_addr"], "{e}");

        // this node missing
        let e = err(&NODE1.replace("node_id: 1", "node_id: 4"));
        assert_eq!(
            e.keys(),
            vec![
                "spec.cluster.initial_members[0].grpc_addr",
                "spec.cluster.initial_members[0].http_addr",
                "spec.cluster.initial_members",
            ],
            "{e}"
        );

        // duplicate id and duplicate address
        let e = err(&NODE1.replace("{ id: 3,", "{ id: 2,"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].id"], "{e}");
        let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4003", "grpc_addr: 127.0.0.1:4002"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].grpc_addr"], "{e}");
        assert!(e.to_string().contains("initial_members[1].grpc_addr"), "{e}");
        let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4003", "grpc_addr: 127.0.0.1:3002"));
        assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].grpc_addr"], "{e}");

        // no members at all is fine (a node that waits to be added)
        let solo = NODE1.split("    initial_members:").next().unwrap();
        assert!(parse(solo).unwrap().spec.cluster.initial_members.is_empty());
    }

    #[test]
    fn raft_rules_and_multiple_problems() {
        let yaml = NODE1.replace(
            "    data_dir:",
            "    raft: { heartbeat_interval_ms: 1500, election_timeout_min_ms: 1000, election_timeout_max_ms: 900, snapshot_every: 0 }\n    storage: { cache_capacity_mb: 0 }\n    data_dir:",
        );
        let e = err(&yaml);
        assert_eq!(
            e.keys(),
            vec![
                "spec.cluster.raft.heartbeat_interval_ms",
                "spec.cluster.raft.election_timeout_min_ms",
                "spec.cluster.raft.snapshot_every",
                "spec.cluster.storage.cache_capacity_mb",
            ],
            "{e}"
        );
        assert!(e.to_string().contains("4 problems"), "{e}");
        let e = err(&NODE1.replace("node_id: 1", "node_id: 0"));
        assert!(e.keys().contains(&"spec.cluster.node_id"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_cwd() {
        let cfg = parse(&format!("{NODE1}  triggers:\n    directory: ./cluster-configs/local/triggers\n")).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/srv/aof/data/node1"));
        assert_eq!(cfg.spec.triggers.directory, Some(PathBuf::from("/srv/aof/cluster-configs/local/triggers")));
        // not against the config file's directory
        let file_dir = tempfile::tempdir().unwrap();
        let file = file_dir.path().join("node1.yaml");
        std::fs::write(&file, NODE1).unwrap();
        let cfg = load(&file, None).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, std::env::current_dir().unwrap().join("data/node1"));
        assert!(!cfg.spec.cluster.data_dir.starts_with(file_dir.path()));
        // absolute stays
        let cfg = parse(&NODE1.replace("./data/node1", "/var/lib/aof/n1")).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/var/lib/aof/n1"));
    }

    #[test]
    fn data_dir_override() {
        let cfg = parse_str_in(NODE1, "x", Some(Path::new("/tmp/n1")), Path::new(CWD)).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/tmp/n1"));
        let cfg = parse_str_in(NODE1, "x", Some(Path::new("other/dir")), Path::new(CWD)).unwrap();
        assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/srv/aof/other/dir"));
    }

    #[test]
    fn load_names_missing_file() {
        let e = load(Path::new("/nonexistent/node9.yaml"), None).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/node9.yaml: cannot read"), "{e}");
    }

    /// AOF's example daemon.yaml (GitHub integration reference), unchanged, plus a
    /// cluster section.
    const AOF_DAEMON_YAML: &str = r#"
apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: aof-daemon
spec:
  server:
    port: 3000
    host: "0.0.0.0"
    cors: true
    timeout_secs: 60

  # Enable platforms - just enables the webhook endpoint
  # Command routing is defined in Triggers
  platforms:
    github:
      enabled: true
      token_env: GITHUB_TOKEN           # Environment variable name
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
      bot_name: aofbot                  # Optional: for @mentions

  # Resource discovery
  triggers:
    directory: ./triggers/
    watch: true

  agents:
    directory: ./agents/

  fleets:
    directory: ./fleets/

  flows:
    directory: ./flows/
    enabled: true

  runtime:
    max_concurrent_tasks: 10
    task_timeout_secs: 300
"#;

    #[test]
    fn aof_example_daemon_yaml_plus_cluster_loads() {
        // AOF's host 0.0.0.0 cannot be advertised: the only change needed is the IP.
        let e = err(&format!(
            "{AOF_DAEMON_YAML}  cluster: {{ node_id: 1, grpc_addr: \"10.0.0.5:4000\", data_dir: /var/lib/aof }}\n"
        ));
        assert_eq!(e.keys(), vec!["spec.server.host"], "{e}");
        let yaml = AOF_DAEMON_YAML.replace("host: \"0.0.0.0\"", "host: \"10.0.0.5\"");
        let yaml = format!(
            "{yaml}\n  cluster:\n    node_id: 1\n    grpc_addr: 10.0.0.5:4000\n    data_dir: /var/lib/aof\n    initial_members:\n      - {{ id: 1, grpc_addr: 10.0.0.5:4000, http_addr: 10.0.0.5:3000 }}\n"
        );
        let cfg = parse(&yaml).unwrap();
        assert_eq!(cfg.metadata.name, "aof-daemon");
        assert!(cfg.spec.server.cors);
        assert!(cfg.spec.triggers.watch);
        assert_eq!(cfg.spec.triggers.directory, Some(PathBuf::from("/srv/aof/triggers/")));
        assert_eq!(cfg.spec.agents.directory, Some(PathBuf::from("/srv/aof/agents/")));
        assert_eq!(cfg.github().unwrap().bot_name, "aofbot");
        assert_eq!(cfg.http_addr(), "10.0.0.5:3000");
    }

    #[test]
    fn aof_scaling_proposal_keys_accepted_with_notices() {
        let yaml = format!(
            "{NODE1}  mode: gateway\n  queue:\n    type: redis\n    url: redis://redis-cluster:6379\n    stream: aof-events\n    consumer_group: aof-workers\n    max_retries: 5\n    retry_delay_ms: 500\n    dead_letter_queue: aof-dlq\n  gateway:\n    ack_timeout_ms: 15000\n  worker:\n    concurrency: 4\n    prefetch: 2\n"
        );
        let cfg = parse(&yaml).unwrap();
        assert_eq!(cfg.spec.mode, Mode::Gateway);
        assert_eq!(cfg.spec.queue.max_retries, 5);
        assert_eq!(cfg.spec.queue.backend.as_deref(), Some("redis"));
        assert_eq!(cfg.spec.worker, WorkerConfig { concurrency: 4, prefetch: 2 });
        let keys: Vec<String> = cfg.notices().into_iter().map(|n| n.key).collect();
        assert_eq!(keys, vec!["spec.mode", "spec.queue", "spec.gateway.ack_timeout_ms"]);
        assert_eq!(cfg.spec.queue.retry_delay_ms_for(1), 500);
        assert_eq!(cfg.spec.queue.retry_delay_ms_for(3), 2000);
        assert_eq!(cfg.spec.queue.retry_delay_ms_for(40), 60_000);
    }

    #[test]
    fn github_orgs_rotation_and_other_platforms() {
        let yaml = NODE1.replace(
            "      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n",
            "      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n      webhook_secret_envs: [GITHUB_WEBHOOK_SECRET_NEXT, GITHUB_WEBHOOK_SECRET]\n      orgs:\n        Acme: { webhook_secret_env: ACME_WEBHOOK_SECRET, token_env: ACME_GITHUB_TOKEN }\n    slack:\n      enabled: true\n      bot_token: xoxb-123\n      signing_secret_env: SLACK_SIGNING_SECRET\n",
        );
        let cfg = parse(&yaml).unwrap();
        let g = cfg.github().unwrap();
        assert_eq!(g.secret_env_names(), vec!["GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_NEXT"]);
        assert_eq!(g.org("acme").unwrap().webhook_secret_env.as_deref(), Some("ACME_WEBHOOK_SECRET"));
        assert_eq!(cfg.spec.platforms.unused(), vec!["slack"]);
        // Printing the config does not leak the inline Slack token.
        let printed = serde_yaml::to_string(&cfg).unwrap();
        assert!(!printed.contains("xoxb-123") && printed.contains("SLACK_SIGNING_SECRET"), "{printed}");
        assert!(!format!("{cfg:?}").contains("xoxb-123"));

        // `${VAR}` (Trigger syntax) instead of a variable name
        let e =
            err(&NODE1
                .replace("webhook_secret_env: GITHUB_WEBHOOK_SECRET", "webhook_secret_env: ${GITHUB_WEBHOOK_SECRET}"));
        assert_eq!(e.keys(), vec!["spec.platforms.github.webhook_secret_env"], "{e}");
        assert!(e.to_string().contains("instead of"), "{e}");
        // enabled without any secret
        let e = err(&NODE1.replace("      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n", ""));
        assert_eq!(e.keys(), vec!["spec.platforms.github"], "{e}");
        // disabled without a secret is fine
        let off = NODE1
            .replace("      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n", "")
            .replace("enabled: true", "enabled: false");
        assert!(parse(&off).unwrap().github().is_none());
    }

    #[test]
    fn queue_and_worker_rules() {
        let e = err(&format!(
            "{NODE1}  queue: {{ retry_delay_ms: 5000, max_retry_delay_ms: 1000 }}\n  worker: {{ concurrency: 0 }}\n"
        ));
        assert_eq!(e.keys(), vec!["spec.queue.retry_delay_ms", "spec.worker.concurrency"], "{e}");
    }

    #[test]
    fn serialize_round_trips() {
        let cfg = parse(NODE1).unwrap();
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        let again = parse(&yaml).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn programmatic_config_is_valid() {
        let cfg = DaemonConfig::new(7, "127.0.0.1:3007".parse().unwrap(), "127.0.0.1:4007".parse().unwrap(), "/tmp/n7");
        cfg.validate("test").unwrap();
        assert_eq!(cfg.http_addr(), "127.0.0.1:3007");
        let rc = cfg.spec.cluster.raft.openraft_config("aof").unwrap();
        assert_eq!(rc.heartbeat_interval, 250);
    }
}
