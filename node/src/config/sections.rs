//! AOF's resource and runtime sections (`triggers`, `agents`, `fleets`, `flows`,
//! `runtime`, `decision_log`) and the sections of AOF's horizontal-scaling proposal
//! (`gateway`, `queue`, `worker`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};


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
    /// Run the agent / fleet / flow with AOF's own CLI: `<aof_cli> run agent
    /// <FILE> --input <PROMPT>` (the file found in `spec.agents.directory`,
    /// `spec.fleets.directory` or `spec.flows.directory`), the prompt and context
    /// as AOF's daemon gives them, the payload on stdin, the `AOF_*` environment;
    /// stdout is the job's result, a non-zero exit fails the job (retryable).
    Aof {
        /// AOF's CLI (default `aofctl` from `PATH`). aof-cluster's CLI is also
        /// named `aofctl`: point this at AOF's binary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aof_cli: Option<String>,
        /// `--output` format passed to AOF (`text`, `json`, `yaml`); AOF's default
        /// when not set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// Overrides `runtime.task_timeout_secs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
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
    /// How this node compresses the payloads it accepts, once, before they are
    /// replicated: `lz4` (default) or `zstd` (about a third fewer bytes in the log,
    /// the state, snapshots and replication). Set `zstd` only when every member
    /// runs a release that reads it (this one or later): a member of an earlier
    /// release refuses such a payload where the others store it.
    pub payload_compression: crate::sm::payload::Compression,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            ack_timeout_ms: 5000,
            max_body_bytes: 25 * 1024 * 1024,
            max_in_flight: 1024,
            payload_compression: Default::default(),
        }
    }
}

/// Default of `spec.queue.max_ready`: on, since the check reads the counter apply
/// keeps (one key per webhook; docs/BENCHMARKS.md row 20). 100000 waiting jobs hold
/// about 1 GiB per node at the payload sizes measured there (OPERATIONS.md § Disk
/// sizing).
pub const DEFAULT_MAX_READY: usize = 100_000;
/// Largest `spec.queue.max_ready` (0 is the way to say "no limit").
pub const MAX_READY_LIMIT: usize = 100_000_000;

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
    /// Back-pressure: while this many jobs wait for a worker (ready, or delayed
    /// until a retry; leased jobs do not count), webhook intake answers 503 +
    /// `Retry-After` (`queue_full`) and stores nothing (default
    /// [`DEFAULT_MAX_READY`]; 0 = no limit; at most [`MAX_READY_LIMIT`]). A soft limit, checked against the
    /// receiving node's applied state (RabbitMQ's `max-length` with
    /// `overflow: reject-publish`, JetStream's `max_msgs` with `discard: new`).
    pub max_ready: usize,
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
            max_ready: DEFAULT_MAX_READY,
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


/// `spec.callbacks`: how the leader sends the completion notices of triggers with a
/// `spec.callback` (see `crate::callbacks` and docs/WEBHOOKS.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// Send notices at all (default true). A node with `false` never sends, even as
    /// leader; notices wait in the outbox for a leader that does.
    pub enabled: bool,
    /// Attempts before a notice is dead (default 10).
    pub max_attempts: u32,
    /// Delay before the first retry, ms, doubled per attempt with jitter (default 1000) ...
    pub initial_backoff_ms: u64,
    /// ... up to this, ms (default 300000).
    pub max_backoff_ms: u64,
    /// Time limit of one POST, ms (default 10000).
    pub timeout_ms: u64,
    /// Notices being sent at once (default 16).
    pub concurrency: usize,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        CallbacksConfig { enabled: true, max_attempts: 10, initial_backoff_ms: 1000, max_backoff_ms: 300_000, timeout_ms: 10_000, concurrency: 16 }
    }
}
