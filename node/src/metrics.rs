//! Prometheus metrics of one node (`GET /metrics`, OpenMetrics text).
//!
//! Counters and histograms are updated where things happen (gateway, claim loop,
//! workers, the leader's tick). Gauges that describe state — Raft indexes, replication
//! lag, queue depth — are refreshed from the node's own view when scraped
//! ([`Metrics::refresh`]), so they cost nothing between scrapes.
//!
//! **Architecture Invariant**: every rejected webhook is counted here under its
//! outcome, so bad input is visible even though it stores nothing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What happened to a webhook request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookOutcome {
    accepted,
    duplicate,
    unmatched,
    no_route,
    ping,
    bad_signature,
    invalid,
    too_large,
    unavailable,
    /// Refused because the queue's backlog reached `spec.queue.max_ready` (503).
    queue_full,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: WebhookOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    pub member: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub target: String,
    pub priority: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
    pub priority: String,
}

/// Why a delivery recovery step failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The target (route name) of a job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobTargetLabels {
    pub target: String,
}

/// A refused request: which listener (`api`, `grpc`) and why (see `crate::refusals`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: String,
    pub reason: String,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    pub webhook_requests: Family<OutcomeLabels, Counter>,
    /// Webhook bodies parsed as JSON: only ever after the signature checked out.
    pub webhook_json_parses: Counter,
    /// Seconds from receiving a webhook to answering 202/200.
    pub webhook_ack_seconds: Histogram,
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_changes: Counter,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_replication_lag: Family<MemberLabels, Gauge>,
    pub log_flushes: Counter,
    pub log_entries_flushed: Counter,
    pub proposal_batch_commands: Histogram,
    pub queue_jobs: Family<QueueLabels, Gauge>,
    pub queue_oldest_ready_seconds: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// `spec.queue.max_ready` of this node (0 = no limit): webhook intake answers 503
    /// `queue_full` while ready + delayed jobs reach it.
    pub queue_max_ready: Gauge,
    pub lease_grants: Counter,
    pub lease_expiries: Counter,
    /// Failed attempts scheduled for retry, by target.
    pub job_retries: Family<JobTargetLabels, Counter>,
    /// Jobs dead-lettered after a failed attempt, by target.
    pub job_dead_letters: Family<JobTargetLabels, Counter>,
    pub event_to_claim_seconds: Histogram,
    pub job_duration_seconds: Histogram,
    pub disk_bytes: Gauge,
    /// Size of the data dir's file system.
    pub disk_size_bytes: Gauge,
    /// Free space on the data dir's file system.
    pub disk_free_bytes: Gauge,
    /// 1 while the storage alarm is raised (full disk; see `store::disk`).
    pub storage_alarm: Gauge,
    /// Seconds since the Unix epoch of the last accepted webhook on this node (0 = none yet).
    pub last_webhook_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Seconds of each Raft log append on this node: write and `fdatasync` of the WAL
    /// (shared with the store, which observes it).
    pub log_flush_seconds: Histogram,
    /// Live feeds of the status page (`GET /v1/watch`) open on this node.
    pub ui_streams: Gauge,
    /// Live feeds refused because [`crate::http::ui::MAX_STREAMS`] were open.
    pub ui_stream_refusals: Counter,
    /// Delivery recovery sweeps run by this node (see `github::recovery`).
    pub recovery_sweeps: Counter,
    /// Deliveries ingested by recovery sweeps of this node.
    pub recovery_recovered: Counter,
    /// Recovery failures by reason.
    pub recovery_errors: Family<ReasonLabels, Counter>,
    /// When this node last finished a recovery sweep (seconds since the Unix epoch).
    pub recovery_last_sweep_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Waits for a GitHub rate-limit reset during recovery.
    pub recovery_rate_limit_waits: Counter,
    /// Completion notices delivered (2xx) by this node (see `crate::callbacks`).
    pub callbacks_sent: Counter,
    /// Completion notice attempts of this node that failed (retried or dead).
    pub callbacks_failed: Counter,
    /// Completion notices that went dead after this node's last attempt.
    pub callbacks_dead: Counter,
    /// Notices in the replicated outbox waiting to be delivered (this node's copy).
    pub callbacks_pending: Gauge,
    /// Requests refused by the API (4xx) and workers' gRPC listeners (`crate::refusals`).
    pub requests_refused: Family<RefusalLabels, Counter>,
    // Totals last copied from the store's append counters.
    flushes_seen: AtomicU64,
    entries_seen: AtomicU64,
    last_leader: AtomicI64,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

/// Buckets of [`Metrics::log_flush_seconds`] (100 µs to ~3 s).
pub fn log_flush_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_log_flush(log_flush_histogram())
    }
}

impl Metrics {
    /// The node's metrics, with the store's log append histogram
    /// ([`crate::store::AppendStats::flush_seconds`]).
    pub fn for_store(store: &crate::store::Store) -> Self {
        Metrics::with_log_flush(store.append_stats().flush_seconds.clone())
    }

    fn with_log_flush(log_flush_seconds: Histogram) -> Self {
        let mut r = Registry::with_prefix("aof");
        let webhook_requests = Family::<OutcomeLabels, Counter>::default();
        r.register("webhook_requests", "GitHub webhook requests by outcome", webhook_requests.clone());
        let webhook_json_parses = Counter::default();
        r.register("webhook_json_parses", "Webhook bodies parsed as JSON (only after their signature verified)", webhook_json_parses.clone());
        let webhook_ack_seconds = Histogram::new(latency_buckets());
        r.register("webhook_ack_seconds", "Time from receiving a webhook to acknowledging it (after quorum commit)", webhook_ack_seconds.clone());
        let raft_term = Gauge::default();
        r.register("raft_term", "Current Raft term", raft_term.clone());
        let raft_is_leader = Gauge::default();
        r.register("raft_is_leader", "1 if this node is the leader", raft_is_leader.clone());
        let raft_leader_changes = Counter::default();
        r.register("raft_leader_changes", "Leader changes seen by this node", raft_leader_changes.clone());
        let raft_commit_index = Gauge::default();
        r.register("raft_commit_index", "Highest committed log index known to this node", raft_commit_index.clone());
        let raft_applied_index = Gauge::default();
        r.register("raft_applied_index", "Highest log index applied to this node's state machine", raft_applied_index.clone());
        let raft_replication_lag = Family::<MemberLabels, Gauge>::default();
        r.register("raft_replication_lag_entries", "Leader only: log entries each member is behind", raft_replication_lag.clone());
        let log_flushes = Counter::default();
        r.register("log_flushes", "Log appends flushed to disk (group commits)", log_flushes.clone());
        let log_entries_flushed = Counter::default();
        r.register("log_entries_flushed", "Log entries flushed; divided by aof_log_flushes_total it is the batch size", log_entries_flushed.clone());
        let proposal_batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        r.register(
            "proposal_batch_commands",
            "Leader only: commands per proposed log entry (group commit of webhooks and queue operations)",
            proposal_batch_commands.clone(),
        );
        let queue_jobs = Family::<QueueLabels, Gauge>::default();
        r.register("queue_jobs", "Jobs by target, priority and state (ready, delayed, leased, dead)", queue_jobs.clone());
        let queue_oldest_ready_seconds = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        r.register("queue_oldest_ready_seconds", "Age of the oldest ready job", queue_oldest_ready_seconds.clone());
        let queue_max_ready = Gauge::default();
        r.register(
            "queue_max_ready",
            "spec.queue.max_ready of this node: webhook intake answers 503 queue_full while ready + delayed jobs reach it (0 = no limit)",
            queue_max_ready.clone(),
        );
        let lease_grants = Counter::default();
        r.register("lease_grants", "Leases granted to workers through this node", lease_grants.clone());
        let lease_expiries = Counter::default();
        r.register("lease_expiries", "Leases expired (proposed by this node as leader)", lease_expiries.clone());
        let job_retries = Family::<JobTargetLabels, Counter>::default();
        r.register("job_retries", "Failed attempts scheduled for retry through this node, by target", job_retries.clone());
        let job_dead_letters = Family::<JobTargetLabels, Counter>::default();
        r.register("job_dead_letters", "Jobs dead-lettered after a failed attempt reported through this node, by target", job_dead_letters.clone());
        let event_to_claim_seconds = Histogram::new(latency_buckets());
        r.register("event_to_claim_seconds", "Time from an event's acceptance to its job's lease", event_to_claim_seconds.clone());
        let job_duration_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        r.register("job_duration_seconds", "Run time of jobs executed by this node's built-in workers", job_duration_seconds.clone());
        let disk_bytes = Gauge::default();
        r.register("disk_bytes", "Size of this node's data dir", disk_bytes.clone());
        let disk_size_bytes = Gauge::default();
        r.register("disk_size_bytes", "Size of the file system of this node's data dir", disk_size_bytes.clone());
        let disk_free_bytes = Gauge::default();
        r.register("disk_free_bytes", "Free space on the file system of this node's data dir", disk_free_bytes.clone());
        let storage_alarm = Gauge::default();
        r.register(
            "storage_alarm",
            "1 while this node's storage alarm is raised (disk full: it stores and acknowledges nothing until space is freed; /ready says why)",
            storage_alarm.clone(),
        );
        let last_webhook_timestamp_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "last_webhook_timestamp_seconds",
            "When this node last accepted a webhook (seconds since the Unix epoch; 0 = none since it started)",
            last_webhook_timestamp_seconds.clone(),
        );
        r.register("log_flush_seconds", "Time of one Raft log append on this node: WAL write and fdatasync", log_flush_seconds.clone());
        let ui_streams = Gauge::default();
        r.register("ui_streams", "Live feeds of the status page (GET /v1/watch) open on this node", ui_streams.clone());
        let ui_stream_refusals = Counter::default();
        r.register("ui_stream_refusals", "Live feeds of the status page refused because the per-node cap was reached", ui_stream_refusals.clone());
        let recovery_sweeps = Counter::default();
        r.register("recovery_sweeps", "Delivery recovery sweeps run by this node (the leader, or aofctl github recover)", recovery_sweeps.clone());
        let recovery_recovered = Counter::default();
        r.register("recovery_recovered", "Deliveries the cluster had missed, ingested by this node's recovery sweeps", recovery_recovered.clone());
        let recovery_errors = Family::<ReasonLabels, Counter>::default();
        r.register("recovery_errors", "Delivery recovery failures by reason", recovery_errors.clone());
        let recovery_last_sweep_timestamp_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "recovery_last_sweep_timestamp_seconds",
            "When this node last finished a delivery recovery sweep (seconds since the Unix epoch; 0 = none since it started)",
            recovery_last_sweep_timestamp_seconds.clone(),
        );
        let recovery_rate_limit_waits = Counter::default();
        r.register("recovery_rate_limit_waits", "Waits for a GitHub API rate-limit reset during delivery recovery", recovery_rate_limit_waits.clone());
        let callbacks_sent = Counter::default();
        r.register("callbacks_sent", "Completion notices delivered (2xx) by this node as leader", callbacks_sent.clone());
        let callbacks_failed = Counter::default();
        r.register("callbacks_failed", "Completion notice attempts of this node that failed (retried later, or dead)", callbacks_failed.clone());
        let callbacks_dead = Counter::default();
        r.register("callbacks_dead", "Completion notices that went dead (max_attempts failed attempts) after this node's last attempt", callbacks_dead.clone());
        let callbacks_pending = Gauge::default();
        r.register("callbacks_pending", "Completion notices in the replicated outbox waiting to be delivered", callbacks_pending.clone());
        let requests_refused = Family::<RefusalLabels, Counter>::default();
        r.register(
            "requests_refused",
            "Requests refused by the API listener (4xx) and the workers' gRPC listener (client-fault status), by listener and reason",
            requests_refused.clone(),
        );
        Metrics {
            registry: r,
            requests_refused,
            recovery_sweeps,
            recovery_recovered,
            recovery_errors,
            recovery_last_sweep_timestamp_seconds,
            recovery_rate_limit_waits,
            callbacks_sent,
            callbacks_failed,
            callbacks_dead,
            callbacks_pending,
            webhook_requests,
            webhook_json_parses,
            webhook_ack_seconds,
            raft_term,
            raft_is_leader,
            raft_leader_changes,
            raft_commit_index,
            raft_applied_index,
            raft_replication_lag,
            log_flushes,
            log_entries_flushed,
            proposal_batch_commands,
            queue_jobs,
            queue_oldest_ready_seconds,
            queue_max_ready,
            lease_grants,
            lease_expiries,
            job_retries,
            job_dead_letters,
            event_to_claim_seconds,
            job_duration_seconds,
            disk_bytes,
            disk_size_bytes,
            disk_free_bytes,
            storage_alarm,
            last_webhook_timestamp_seconds,
            log_flush_seconds,
            ui_streams,
            ui_stream_refusals,
            flushes_seen: AtomicU64::new(0),
            entries_seen: AtomicU64::new(0),
            last_leader: AtomicI64::new(-1),
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: WebhookOutcome) {
        self.webhook_requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Count a delivery recovery failure.
    pub fn recovery_error(&self, reason: &str) {
        self.recovery_errors.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    /// Count a failed attempt of a job of `target`: retried, or dead-lettered.
    pub fn count_failure(&self, target: &str, dead: bool) {
        let family = if dead { &self.job_dead_letters } else { &self.job_retries };
        family.get_or_create(&JobTargetLabels { target: target.to_string() }).inc();
    }

    pub fn webhook_count(&self, outcome: WebhookOutcome) -> u64 {
        self.webhook_requests.get_or_create(&OutcomeLabels { outcome }).get()
    }

    /// Note the leader this node currently sees; counts changes.
    pub fn observe_leader(&self, leader: Option<u64>) {
        let l = leader.map_or(-1, |l| l as i64);
        let prev = self.last_leader.swap(l, Ordering::Relaxed);
        if prev != l && l >= 0 {
            self.raft_leader_changes.inc();
        }
    }

    /// Refresh the state gauges from the node's own view (read by `Node::refresh_metrics`:
    /// this module knows no `Node`).
    pub fn refresh(&self, raft: &RaftView, depths: Vec<crate::sm::queue::Depth>, store: &crate::store::Store) {
        let store_stats = store.append_stats();
        self.disk_bytes.set(store.size_on_disk() as i64);
        if let Some(fs) = file_system(store.dir()) {
            self.disk_free_bytes.set(fs.free as i64);
            self.disk_size_bytes.set(fs.size as i64);
        }
        self.storage_alarm.set(i64::from(store.disk_alarm().is_some()));
        self.observe_leader(raft.leader_id);
        self.raft_term.set(raft.term as i64);
        self.raft_is_leader.set(i64::from(raft.leader_id == Some(raft.node_id)));
        self.raft_commit_index.set(raft.commit_index as i64);
        self.raft_applied_index.set(raft.last_applied as i64);
        self.raft_replication_lag.clear();
        if raft.leader_id == Some(raft.node_id) {
            for &(member, matched) in &raft.matched {
                let lag = raft.commit_index.saturating_sub(matched.unwrap_or(0));
                self.raft_replication_lag.get_or_create(&MemberLabels { member }).set(lag as i64);
            }
        }
        let flushes = store_stats.flushes.load(Ordering::Relaxed);
        let entries = store_stats.entries.load(Ordering::Relaxed);
        self.log_flushes.inc_by(flushes.saturating_sub(self.flushes_seen.swap(flushes, Ordering::Relaxed)));
        self.log_entries_flushed.inc_by(entries.saturating_sub(self.entries_seen.swap(entries, Ordering::Relaxed)));
        let now = crate::clock::leader_clock_ms();
        self.queue_jobs.clear();
        self.queue_oldest_ready_seconds.clear();
        for d in depths {
            for (state, n) in [("ready", d.ready), ("delayed", d.delayed), ("leased", d.leased), ("dead", d.dead)] {
                let labels = QueueLabels { target: d.target.clone(), priority: d.priority.clone(), state: state.into() };
                self.queue_jobs.get_or_create(&labels).set(n as i64);
            }
            if let Some(t) = d.oldest_ready_ms {
                let labels = TargetLabels { target: d.target.clone(), priority: d.priority.clone() };
                self.queue_oldest_ready_seconds.get_or_create(&labels).set(now.saturating_sub(t) as f64 / 1000.0);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The node's own view of Raft, for the state gauges.
pub struct RaftView {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    /// Each member and the highest log index known to be replicated to it.
    pub matched: Vec<(u64, Option<u64>)>,
}

/// Space of a file system, in bytes.
struct FileSystem {
    /// Free for unprivileged users.
    free: u64,
    size: u64,
}

/// Space of the file system holding `path` (`statvfs`, at scrape time).
fn file_system(path: &std::path::Path) -> Option<FileSystem> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-param.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    let frsize = st.f_frsize as u64;
    (rc == 0).then(|| FileSystem { free: st.f_bavail as u64 * frsize, size: st.f_blocks as u64 * frsize })
}
