//! The application data replicated through the Raft log: commands, their answers,
//! and the records they carry.
//!
//! **API Boundary**: [`Request`] and [`Response`] are persisted in the Raft log and
//! in snapshots (through [`crate::codec`]), so changing them is a storage-format
//! change: add new variants at the end, never reorder or remove one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member (`spec.cluster.node_id`).
pub type NodeId = u64;

/// The advertised addresses of a cluster member (`host:port`, a DNS name or an IP),
/// as stored in the Raft membership config. Names are resolved when dialled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The peer listener: Raft RPCs, forwarding to the leader (mutual TLS).
    pub peer_addr: String,
    /// The workers' gRPC listener (`aof.v1.WorkQueue`).
    pub grpc_addr: String,
    /// The API listener (`/v1/*`, `/metrics`).
    pub api_addr: String,
    /// The public listener (GitHub's webhooks, health).
    pub http_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} grpc={} api={} http={}", self.peer_addr, self.grpc_addr, self.api_addr, self.http_addr)
    }
}

/// One replicated command, as proposed by the leader.
///
/// **Architecture Invariant**: `time_ms` is stamped by the leader when it proposes
/// the command (wall clock, milliseconds since the Unix epoch). The state machine
/// uses only this field as "now"; it never reads a clock itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub time_ms: u64,
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.cmd.kind(), self.time_ms)
    }
}

/// The commands of the replicated state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a trigger. `doc_json` is the validated Trigger document as
    /// canonical JSON. With `if_match`, the write happens only if the trigger's current
    /// revision equals it (`0` = "must not exist").
    PutTrigger { name: String, doc_json: String, if_match: Option<u64> },
    /// Delete a trigger, optionally compare-and-set on its revision.
    DeleteTrigger { name: String, if_match: Option<u64> },
    /// A verified GitHub webhook delivery with its payload as received: the layout
    /// of builds before the payload was compressed at the gateway. Still applied (the
    /// state machine compresses the payload then, as those builds did: the migration
    /// to [`Command::IngestPacked`], [`PackedDelivery::from`]); this build proposes
    /// `IngestPacked` only.
    IngestWebhook(Box<Delivery>),
    /// Housekeeping proposed by the leader: expire leases past their deadline (retry
    /// or dead-letter), release delayed jobs whose time came, expire records past
    /// their retention.
    Tick { policy: QueuePolicy },
    /// Lease up to `count` ready jobs to a worker.
    Grant(GrantRequest),
    /// Push a lease's deadline out (heartbeat).
    Extend { job_id: String, token: u64, extend_ms: u64 },
    /// Finish a leased job successfully.
    Complete { job_id: String, token: u64, result: String },
    /// Report a failed attempt.
    Fail { job_id: String, token: u64, error: String, retryable: bool, delay_ms: u64, policy: QueuePolicy },
    /// Move dead-lettered jobs back to the ready queue (`None` = all).
    Redrive { job_id: Option<String> },
    /// Drop dead-lettered jobs (`None` = all).
    Purge { job_id: Option<String> },
    /// Several [batchable](Command::is_batchable) commands proposed as one log entry
    /// (group commit: one append, one fsync, one replication round for all of them).
    /// They are applied in order; command `pos` gets the sequence number
    /// [`seq(index, pos)`](seq). At most [`MAX_BATCH`] commands.
    Batch(Vec<Command>),
    /// Delivery recovery: the leader swept a GitHub hook's delivery list up to
    /// `checkpoint`; a later sweep stops there. Never moves backwards.
    RecoveryCheckpoint(RecoveryCheckpoint),
    // --- Queue controls (cancel, re-run, per-target limits). Operator commands from
    // the API: never batched, validated and bounded at the HTTP edge. ---
    /// Cancel a ready, delayed or leased job: it ends `Cancelled` (terminal) and its
    /// lease, if any, is gone (its fencing token stops working). `by` is the
    /// requesting principal, `reason` free text; both end up in the job's history.
    CancelJob { job_id: String, by: String, reason: String },
    /// Run an event again: one new job per route its jobs took, from its stored payload.
    RerunEvent { event_id: u64, by: String },
    /// Set a target's queue limits (all zero = remove them).
    SetTargetLimits { target: String, limits: TargetLimits },
    /// Completion callbacks: the leader's sender reports one attempt to deliver an
    /// outbox notice (`sm::outbox`). Delivered removes the notice; a failure is
    /// counted and, at `max_attempts`, the notice is dead. A report for another
    /// attempt than the notice's next one, or for a notice no longer pending,
    /// changes nothing.
    CallbackAttempt(CallbackAttempt),
    /// A verified GitHub webhook delivery, its payload compressed once by the node
    /// that received it: dedup by delivery id, match against the registry as of this
    /// log index, record the event and create its jobs. The payload travels (forward
    /// hop, log, AppendEntries) and is stored as it is; a payload whose record is
    /// damaged or whose raw size is past [`crate::sm::payload::MAX_RAW_BYTES`] is
    /// refused in apply, on every replica alike.
    IngestPacked(Box<PackedDelivery>),
}

/// One delivery attempt of an outbox notice, as reported by the leader's sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAttempt {
    /// The notice (`<seq>-<job id>`, see `sm::outbox`).
    pub id: String,
    /// Which attempt this was (1-based): the notice's attempts so far + 1.
    pub attempt: u32,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// Why the attempt failed ("" when delivered).
    pub error: String,
    /// Attempts after which the notice is dead (the sender's `spec.callbacks`).
    pub max_attempts: u32,
}

/// Where delivery recovery of one GitHub hook got to (see `sm::recovery`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCheckpoint {
    /// The hook: `repo:<owner>/<name>/<hook_id>` or `org:<org>/<hook_id>`.
    pub source: String,
    /// GitHub's id of the newest delivery the sweep covered (ids grow over time).
    pub last_delivery_id: u64,
    /// Its `delivered_at`, milliseconds since the Unix epoch.
    pub last_delivered_at_ms: u64,
    /// Deliveries the sweep ingested.
    pub recovered: u64,
}

/// Per-target queue limits, kept in the replicated state (`q/<target>`).
///
/// **API Boundary**: persisted (bincode); add fields only together with a new key
/// or a versioned wrapper, never in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLimits {
    /// Most jobs of the target leased at once, cluster-wide (0 = no limit).
    pub max_in_flight: u32,
    /// A ready or delayed job pending longer than this goes to the dead-letter queue
    /// (0 = never). Measured with leader-stamped time from when it entered the queue.
    pub pending_ttl_ms: u64,
}

impl TargetLimits {
    pub fn is_empty(&self) -> bool {
        self.max_in_flight == 0 && self.pending_ttl_ms == 0
    }
}

/// Most commands in one [`Command::Batch`] (the position must fit in 8 bits).
pub const MAX_BATCH: usize = 256;

/// The sequence number of the `pos`-th command of the log entry at `index`:
/// `index << 8 | pos` (`pos` = 0 for an entry that is not a batch).
///
/// Event ids, job history positions and lease fencing tokens are sequence numbers.
/// They are unique, strictly increasing in log order, the same on every replica, and
/// `seq >> 8` is the commit index of the entry that carried the command.
pub fn seq(index: u64, pos: usize) -> u64 {
    debug_assert!(pos < MAX_BATCH);
    (index << 8) | pos as u64
}

/// Queue settings (`spec.queue`), carried in the commands that need them so that
/// applying a command never depends on a node's local configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePolicy {
    pub lease_timeout_ms: u64,
    pub max_retries: u32,
    pub retry_delay_ms: u64,
    pub max_retry_delay_ms: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy { lease_timeout_ms: 30_000, max_retries: 3, retry_delay_ms: 1000, max_retry_delay_ms: 60_000 }
    }
}

/// A worker's request for leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub worker_id: String,
    /// Target names served; empty = all.
    pub targets: Vec<String>,
    pub count: u32,
    pub policy: QueuePolicy,
}

/// A granted lease with everything a worker needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub job_id: String,
    /// Fencing token: the [sequence number](seq) of the grant (its commit index `<< 8`
    /// plus its position in the entry).
    pub token: u64,
    pub deadline_ms: u64,
    pub attempt: u32,
    pub event_id: u64,
    pub delivery_id: String,
    pub event: String,
    /// When the event was accepted (leader-stamped), for event→claim latency.
    pub received_ms: u64,
    pub trigger: String,
    pub route: crate::github::trigger::Route,
    pub context: std::collections::BTreeMap<String, crate::github::facts::CtxValue>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub traceparent: String,
}

/// A webhook delivery: the facts the matcher needs (extracted at the edge) plus the
/// raw payload handed to workers. What the gateway builds; it is proposed packed
/// ([`PackedDelivery`], through `answers::Proposal::ingest`). As the content of
/// [`Command::IngestWebhook`] this is layout 2 of the ingest command, kept so that log
/// entries of earlier builds still decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    pub facts: crate::github::facts::EventFacts,
    /// The request body as received (what the signature covered). Encoded as one byte
    /// string (`serde_bytes`), not as a sequence of numbers: the same bincode bytes,
    /// far less CPU.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The node whose gateway accepted the request.
    pub received_by: NodeId,
    /// How long a finished event, its payload and its dedup entry are kept.
    pub retention_ms: u64,
    /// W3C trace context of the gateway's span ("" when not traced).
    pub traceparent: String,
    /// Which secret authenticated the delivery at the gateway.
    pub signed_by: SignedBy,
}

/// A webhook delivery as proposed (layout 3 of the ingest command, see
/// [`Command::IngestPacked`]): [`Delivery`] with its payload already in the stored
/// form of `crate::sm::payload` (LZ4- or zstd-compressed when that pays, else plain), packed
/// once by the gateway that accepted it. Every other field is [`Delivery`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedDelivery {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    pub facts: crate::github::facts::EventFacts,
    /// The request body as a payload record (`crate::sm::payload::pack`): what the
    /// state machine stores under `p/<event_id>` as it is.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The node whose gateway accepted the request.
    pub received_by: NodeId,
    /// How long a finished event, its payload and its dedup entry are kept.
    pub retention_ms: u64,
    /// W3C trace context of the gateway's span ("" when not traced).
    pub traceparent: String,
    /// Which secret authenticated the delivery at the gateway.
    pub signed_by: SignedBy,
}

/// Which secret authenticated a delivery, and so what it may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignedBy {
    /// A daemon-wide secret (`spec.platforms.github`): every trigger may match.
    #[default]
    Daemon,
    /// An organisation's secret (lower-case login). The gateway accepted it only for
    /// that organisation's repositories; every trigger may match.
    Org(String),
    /// A trigger's own `webhook_secret`: only that trigger may match, so one tenant's
    /// secret cannot route a delivery to another tenant's trigger.
    Trigger(String),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutTrigger { .. } => "put_trigger",
            Command::DeleteTrigger { .. } => "delete_trigger",
            Command::IngestWebhook(_) | Command::IngestPacked(_) => "ingest_webhook",
            Command::Tick { .. } => "tick",
            Command::Grant(_) => "grant",
            Command::Extend { .. } => "extend",
            Command::Complete { .. } => "complete",
            Command::Fail { .. } => "fail",
            Command::Redrive { .. } => "redrive",
            Command::Purge { .. } => "purge",
            Command::Batch(_) => "batch",
            Command::RecoveryCheckpoint(_) => "recovery_checkpoint",
            Command::CancelJob { .. } => "cancel_job",
            Command::RerunEvent { .. } => "rerun_event",
            Command::SetTargetLimits { .. } => "set_target_limits",
            Command::CallbackAttempt(_) => "callback_attempt",
        }
    }

    /// Commands the leader may group into a [`Command::Batch`]: the hot path of
    /// webhooks and workers. Trigger writes (whose revision is the log index), `Tick`
    /// and DLQ operations are always proposed alone.
    pub fn is_batchable(&self) -> bool {
        matches!(
            self,
            Command::IngestWebhook(_) | Command::IngestPacked(_) | Command::Grant(_) | Command::Extend { .. } | Command::Complete { .. } | Command::Fail { .. }
        )
    }
}

/// A trigger as kept in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    pub name: String,
    /// Log index of the write that last changed it (like etcd's `mod_revision`).
    pub revision: u64,
    /// Log index of the write that created it.
    pub created_revision: u64,
    /// Leader-stamped time of the last change.
    pub updated_ms: u64,
    /// The Trigger document, canonical JSON.
    pub doc_json: String,
}

/// The result of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Entries that carry no application command (blank, membership).
    None,
    TriggerPut { name: String, revision: u64, created: bool, unchanged: bool },
    TriggerDeleted { name: String, revision: u64 },
    /// Compare-and-set failed; nothing changed.
    RevisionMismatch { name: String, expected: u64, actual: u64 },
    NotFound { name: String },
    /// The outcome of `IngestWebhook`; `duplicate` when the delivery id was seen before
    /// (then every other field is the original answer).
    Ingested(IngestResult),
    /// `Tick`: what housekeeping did.
    Ticked { expired_events: u64, expired_leases: u64, released: u64 },
    Granted(Vec<LeaseGrant>),
    Extended { deadline_ms: u64 },
    Completed,
    /// `Fail` accepted: retried at `ready_at_ms`, or dead-lettered.
    Failed { dead: bool, ready_at_ms: u64 },
    /// The fencing token does not name the job's current lease; nothing changed.
    StaleToken { job_id: String, reason: String },
    JobNotFound { job_id: String },
    Redriven { jobs: Vec<String> },
    Purged { jobs: Vec<String> },
    /// `Batch`: one response per command, in order.
    Batch(Vec<Response>),
    /// A command that may not be part of a batch was found in one; nothing changed.
    NotBatchable { kind: String },
    /// `RecoveryCheckpoint`: `advanced` is false when the stored checkpoint was
    /// already at or past the proposed one (nothing changed).
    RecoveryCheckpointed { source: String, advanced: bool },
    /// `CancelJob`: the job is now cancelled; `was` is the state it left.
    JobCancelled { job_id: String, was: String },
    /// `CancelJob` on a finished job (completed, dead, purged, cancelled); nothing changed.
    NotCancellable { job_id: String, state: String },
    /// `RerunEvent`: the new jobs.
    Rerun { event_id: u64, jobs: Vec<String> },
    /// `RerunEvent` refused (no payload kept, nothing to re-run, too many runs);
    /// nothing changed.
    RerunRefused { event_id: u64, reason: String },
    /// No such event (never received, or removed after its retention).
    EventNotFound { event_id: u64 },
    /// `SetTargetLimits` applied.
    TargetLimitsSet { target: String, limits: TargetLimits },
    /// A queue-control command refused by the replicated state; nothing changed.
    Refused { reason: String },
    /// `CallbackAttempt`: the notice's state after it (`pending`, `delivered`,
    /// `dead`, or `gone` when no such notice is kept); `changed` is false for a
    /// stale report (nothing changed).
    CallbackRecorded { id: String, state: String, attempts: u32, changed: bool },
}

/// What the gateway answers for a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    pub event_id: u64,
    pub delivery_id: String,
    pub status: EventStatus,
    pub trigger: Option<String>,
    pub jobs: Vec<String>,
    pub duplicate: bool,
}

/// The lifecycle of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventStatus {
    /// Matched a trigger; its job waits for a worker.
    Queued,
    /// No enabled trigger matched; recorded, no job.
    Unmatched,
    /// A trigger's filters matched but no command or default target routes it.
    NoRoute,
    /// Every job finished successfully.
    Completed,
    /// A job ended in the dead-letter queue.
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Unmatched => "unmatched",
            EventStatus::NoRoute => "no_route",
            EventStatus::Completed => "completed",
            EventStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Unmatched, Self::NoRoute, Self::Completed, Self::Failed].into_iter().find(|v| v.as_str() == s)
    }
    /// Finished events start their retention clock.
    pub fn is_finished(self) -> bool {
        !matches!(self, EventStatus::Queued)
    }
}

// Persisted records of the state machine, each versioned on its own (see
// `crate::codec::Record`): `t/<name>` and `q/<target>`.
crate::first_record_layout!(TriggerRecord => "trigger", TargetLimits => "target limits");
