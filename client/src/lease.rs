//! [`Lease`]: one job granted to this worker, with its data, the calls that finish
//! it ([`Lease::complete`], [`Lease::fail`]) and a background heartbeat.
//!
//! **Heartbeat.** While a `Lease` is alive, a task extends it (gRPC `Extend`) each
//! time a third of its remaining time has passed, so a lease of 30 s is extended
//! about every 10 s and a slow call or a leader election has the remaining two
//! thirds to succeed. The heartbeat stops when `complete`/`fail` is called or the
//! `Lease` is dropped; a dropped, unfinished lease then expires at its deadline
//! and the job is retried (another attempt). The remaining time is computed from
//! the lease deadline (leader clock) and this machine's clock: keep clocks in sync
//! (NTP) or heartbeats come early (harmless) or late (the lease may expire).
//!
//! If an extension is refused because the lease is gone
//! ([`WorkerError::StaleLease`]), the heartbeat stops and [`Lease::lost`]
//! resolves: the job may already run elsewhere, so stop working on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aof_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::error::WorkerError;
use crate::pool::Pool;

/// Shortest pause between two heartbeats.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest pause between two heartbeats (very long leases still get extended).
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
/// Retry window of one heartbeat when the lease has (almost) no time left.
const MIN_EXTEND_WINDOW: Duration = Duration::from_millis(500);

/// What a job is for: an AOF agent, fleet or flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// `agent`, `fleet` or `flow`.
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The answer to [`Lease::fail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// The job will be offered again at `ready_at_ms` (ms since the Unix epoch).
    Retrying { ready_at_ms: u64 },
    /// Retries are used up (or the failure was not retryable): the job is in the
    /// dead-letter queue (`aofctl dlq list`).
    Dead,
}

/// Settings the heartbeat and the finishing calls share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseOptions {
    /// `extend_ms` of each heartbeat; 0 = the cluster's lease timeout.
    pub extend_ms: u64,
    /// How long Complete / Fail are retried on transient errors.
    pub finish_retry_for: Duration,
}

/// Counts the leases a worker holds; see [`crate::Worker`].
#[derive(Default, Debug)]
pub(crate) struct Held {
    count: AtomicUsize,
    pub(crate) freed: Notify,
}

impl Held {
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Holds one unit of [`Held`] until dropped.
#[derive(Debug)]
struct Slot(Arc<Held>);

impl Slot {
    fn new(held: Arc<Held>) -> Slot {
        held.count.fetch_add(1, Ordering::SeqCst);
        Slot(held)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_waiters();
    }
}

/// A job leased to this worker. Read its data, do the work, then call
/// [`Lease::complete`] or [`Lease::fail`]. It is extended in the background
/// until then (see the module docs).
#[derive(Debug)]
pub struct Lease {
    job_id: String,
    event_id: u64,
    delivery_id: String,
    event: String,
    trigger: String,
    target: Target,
    params_json: String,
    params: serde_json::Value,
    context: BTreeMap<String, String>,
    payload: Vec<u8>,
    attempt: u32,
    fencing_token: u64,
    traceparent: String,
    deadline_ms: Arc<AtomicU64>,
    pool: Arc<Pool>,
    opts: LeaseOptions,
    heartbeat: Option<JoinHandle<()>>,
    lost: watch::Receiver<Option<String>>,
    _slot: Option<Slot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

/// Now, ms since the Unix epoch (this machine's clock).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The pause before the next heartbeat: a third of the remaining lease time.
pub(crate) fn heartbeat_delay(deadline_ms: u64, now_ms: u64) -> Duration {
    let remaining = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    (remaining / 3).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
}

impl Lease {
    /// Wraps a granted lease and starts its heartbeat.
    pub(crate) fn start(
        l: pb::Lease,
        pool: Arc<Pool>,
        opts: LeaseOptions,
        held: Option<Arc<Held>>,
    ) -> Lease {
        let params = if l.params_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&l.params_json)
                .unwrap_or_else(|_| serde_json::Value::String(l.params_json.clone()))
        };
        let target = l
            .target
            .map(|t| Target {
                kind: t.kind,
                name: t.name,
            })
            .unwrap_or_default();
        let deadline_ms = Arc::new(AtomicU64::new(l.deadline_ms));
        let (lost_tx, lost) = watch::channel(None);
        let heartbeat = tokio::spawn(heartbeat(
            pool.clone(),
            l.job_id.clone(),
            l.fencing_token,
            opts.extend_ms,
            deadline_ms.clone(),
            lost_tx,
        ));
        Lease {
            job_id: l.job_id,
            event_id: l.event_id,
            delivery_id: l.delivery_id,
            event: l.event,
            trigger: l.trigger,
            target,
            params_json: l.params_json,
            params,
            context: l.context.into_iter().collect(),
            payload: l.payload,
            attempt: l.attempt,
            fencing_token: l.fencing_token,
            traceparent: l.traceparent,
            deadline_ms,
            pool,
            opts,
            heartbeat: Some(heartbeat),
            lost,
            _slot: held.map(Slot::new),
        }
    }

    /// The job's id, e.g. `42-0` (event 42, first job).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }
    /// The event the job belongs to (`GET /v1/events/{id}`).
    pub fn event_id(&self) -> u64 {
        self.event_id
    }
    /// GitHub's `X-GitHub-Delivery` of the webhook.
    pub fn delivery_id(&self) -> &str {
        &self.delivery_id
    }
    /// GitHub's `X-GitHub-Event`, e.g. `pull_request`.
    pub fn event(&self) -> &str {
        &self.event
    }
    /// The trigger that routed the event.
    pub fn trigger(&self) -> &str {
        &self.trigger
    }
    /// The agent, fleet or flow to run.
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// The route's params (`null` if none).
    pub fn params(&self) -> &serde_json::Value {
        &self.params
    }
    /// The route's params as sent, JSON text.
    pub fn params_json(&self) -> &str {
        &self.params_json
    }
    /// AOF context variables (`event_type`, `action`, `repo_full_name`,
    /// `pr_number`, ...), as strings; lists are JSON arrays.
    pub fn context(&self) -> &BTreeMap<String, String> {
        &self.context
    }
    /// The webhook body exactly as GitHub sent it.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// 1 for the first try.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The lease's deadline, ms since the Unix epoch (leader clock); moves forward
    /// with each heartbeat.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::SeqCst)
    }
    /// The fencing token (Raft log index of the grant) every call presents.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }
    /// W3C traceparent of the delivery (empty if none).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Whether the heartbeat found the lease gone (see [`Lease::lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves, with the cluster's reason, once a heartbeat finds that the lease
    /// is gone (expired and re-leased, or finished elsewhere). Never resolves
    /// while the lease is valid. Use it to abandon the work early.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match reason {
            Ok(reason) => reason.unwrap_or_default(),
            // The heartbeat ended without losing the lease: never resolve.
            Err(_) => std::future::pending().await,
        }
    }

    /// Extends the lease now (the heartbeat does this by itself); returns the new
    /// deadline, ms since the Unix epoch.
    pub async fn extend(&self) -> Result<u64, WorkerError> {
        let d = extend_once(
            &self.pool,
            &self.job_id,
            self.fencing_token,
            self.opts.extend_ms,
            self.opts.finish_retry_for,
        )
        .await?;
        Ok(self.deadline_ms.fetch_max(d, Ordering::SeqCst).max(d))
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// The job succeeded. `result` is kept (truncated) in the job's history.
    /// [`WorkerError::StaleLease`] means the lease had already expired (the job was
    /// or will be run again elsewhere) — or, after a retried call whose first try
    /// was committed but not answered, that this completion already counted.
    pub async fn complete(mut self, result: impl Into<String>) -> Result<(), WorkerError> {
        self.stop_heartbeat();
        let req = pb::CompleteRequest {
            job_id: self.job_id.clone(),
            fencing_token: self.fencing_token,
            result: result.into(),
        };
        self.pool
            .call("Complete", self.opts.finish_retry_for, |mut c| {
                let req = req.clone();
                async move { c.complete(req).await }
            })
            .await
            .map(|_| ())
    }

    /// The job failed. `retryable = false` dead-letters it at once; otherwise it
    /// is retried after `delay` (`None`: the cluster's backoff schedule) until
    /// the retries are used up.
    pub async fn fail(
        mut self,
        error: impl Into<String>,
        retryable: bool,
        delay: Option<Duration>,
    ) -> Result<FailOutcome, WorkerError> {
        self.stop_heartbeat();
        let req = pb::FailRequest {
            job_id: self.job_id.clone(),
            fencing_token: self.fencing_token,
            error: error.into(),
            retryable,
            delay_ms: delay.map_or(0, |d| (d.as_millis() as u64).max(1)),
        };
        let reply = self
            .pool
            .call("Fail", self.opts.finish_retry_for, |mut c| {
                let req = req.clone();
                async move { c.fail(req).await }
            })
            .await?;
        Ok(if reply.outcome == "dead" {
            FailOutcome::Dead
        } else {
            FailOutcome::Retrying {
                ready_at_ms: reply.ready_at_ms,
            }
        })
    }
}

async fn extend_once(
    pool: &Pool,
    job_id: &str,
    token: u64,
    extend_ms: u64,
    retry_for: Duration,
) -> Result<u64, WorkerError> {
    let req = pb::ExtendRequest {
        job_id: job_id.to_string(),
        fencing_token: token,
        extend_ms,
    };
    let reply = pool
        .call("Extend", retry_for, |mut c| {
            let req = req.clone();
            async move { c.extend(req).await }
        })
        .await?;
    Ok(reply.deadline_ms)
}

/// Extends the lease at a third of its remaining time until aborted or lost.
async fn heartbeat(
    pool: Arc<Pool>,
    job_id: String,
    token: u64,
    extend_ms: u64,
    deadline_ms: Arc<AtomicU64>,
    lost: watch::Sender<Option<String>>,
) {
    loop {
        tokio::time::sleep(heartbeat_delay(
            deadline_ms.load(Ordering::SeqCst),
            now_ms(),
        ))
        .await;
        // Retry transient failures for (at most) the time the lease has left.
        let left =
            Duration::from_millis(deadline_ms.load(Ordering::SeqCst).saturating_sub(now_ms()));
        match extend_once(
            &pool,
            &job_id,
            token,
            extend_ms,
            left.max(MIN_EXTEND_WINDOW),
        )
        .await
        {
            Ok(d) => {
                deadline_ms.fetch_max(d, Ordering::SeqCst);
                tracing::trace!(job_id = %job_id, deadline_ms = d, "lease extended");
            }
            Err(e) if e.is_lease_lost() => {
                tracing::warn!(job_id = %job_id, "lease lost: {e}");
                let _ = lost.send(Some(e.to_string()));
                return;
            }
            Err(e) => {
                tracing::warn!(job_id = %job_id, "cannot extend the lease (will retry): {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_at_a_third_of_the_remaining_time() {
        assert_eq!(heartbeat_delay(31_000, 1_000), Duration::from_secs(10));
        assert_eq!(
            heartbeat_delay(3_000, 1_000),
            Duration::from_nanos(666_666_666)
        );
        // Expired or skewed: the shortest pause, never zero.
        assert_eq!(heartbeat_delay(1_000, 5_000), MIN_HEARTBEAT);
        // Very long leases are still extended at least every minute.
        assert_eq!(heartbeat_delay(u64::MAX, 0), MAX_HEARTBEAT);
    }

    #[test]
    fn targets_display_as_kind_slash_name() {
        let t = Target {
            kind: "agent".into(),
            name: "reviewer".into(),
        };
        assert_eq!(t.to_string(), "agent/reviewer");
    }
}
