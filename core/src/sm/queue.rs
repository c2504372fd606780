//! The leased work queue: grants with fencing tokens, heartbeats, completion,
//! failure with exponential backoff, lease expiry, dead-letter queue, priorities and
//! per-organisation / per-repository rate limits. Pure functions over the key space.
//!
//! Indexes (the job record `j/…` is the source of truth; exactly one index entry
//! exists per non-terminal job, matching its state):
//!
//! | key                                      | job state |
//! |------------------------------------------|-----------|
//! | `r/<255-priority:1><event_id:8><n:1>`    | Ready (highest priority first, then FIFO) |
//! | `w/<ready_at_ms:8><event_id:8><n:1>`     | Delayed (backoff) |
//! | `l/<deadline_ms:8><event_id:8><n:1>`     | Leased |
//! | `z/<event_id:8><n:1>`                    | Dead (the DLQ) |
//! | `b/<bucket>`                             | rate-limit token bucket |
//!
//! **Architecture Invariant**: a lease carries a fencing token — the sequence number
//! of the `Grant` that created it (its commit index `<< 8` plus its position in a
//! batched entry, [`crate::types::seq`]). `Extend`, `Complete` and `Fail` must present the job's
//! current token while the job is leased; anything else is answered
//! [`Response::StaleToken`] and changes nothing. At any point of the log a job has at most one
//! live lease, because a grant only takes jobs from the ready index and every exit
//! from `Leased` (complete, fail, expiry) clears the lease.

use serde::{Deserialize, Serialize};

use super::events::{self, index_key, job_key, leased_key, unindex, JobRateLimit, JobRecord, JobState, JobTransition, LeaseInfo};
pub(super) use super::events::{DEAD, DELAYED, LEASED};
pub use super::events::bucket_for;
use super::Planted;
use super::kv::{prefix_end, KvRead, Overlay};
use crate::codec;
use crate::github::trigger::Priority;
use crate::types::{EventStatus, GrantRequest, LeaseGrant, QueuePolicy, Response};

const BUCKET: &[u8] = b"b/";

/// Ready-index entries one grant inspects at most (bounds one apply).
pub const GRANT_SCAN_LIMIT: usize = 1024;
/// Delayed jobs released / leases expired per tick at most.
pub const TICK_BUDGET: usize = 1024;
/// Longest result / error text kept in a job.
pub const MAX_NOTE_BYTES: usize = 4096;

/// Move a job to `to`, keeping its index entry and history in step, and store it.
pub(super) fn transition(state: &mut Overlay<'_>, job: &mut JobRecord, to: JobState, index: u64, now: u64, note: Option<String>) {
    unindex(state, job);
    job.state = to;
    if to != JobState::Leased {
        job.lease = None;
    }
    if to == JobState::Ready {
        job.enqueued_ms = now;
    }
    job.history.push(JobTransition { state: to, at_ms: now, index, note });
    if let Some(k) = index_key(job) {
        events::index_put(state, k);
    }
    state.put(job_key(job), codec::Record::encode_record(job));
    // A finished job's completion notice goes into the outbox in this same apply.
    if matches!(to, JobState::Completed | JobState::Dead) {
        super::outbox::on_job_finished(state, job, index, now);
    }
}

pub(super) fn truncate(s: &str) -> String {
    if s.len() <= MAX_NOTE_BYTES {
        return s.to_string();
    }
    let mut end = MAX_NOTE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes truncated)", &s[..end], s.len() - end)
}


/// A token bucket, in thousandths of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    milli_tokens: u64,
    updated_ms: u64,
}

crate::first_record_layout!(Bucket => "rate-limit bucket");

/// Take one token from the job's bucket if it has one (refilling by elapsed
/// leader-stamped time first). Jobs without a limit always pass.
fn take_token(state: &mut Overlay<'_>, rl: &JobRateLimit, now: u64) -> bool {
    let key = [BUCKET, rl.bucket.as_bytes()].concat();
    let cap = u64::from(rl.burst) * 1000;
    let mut b = state
        .get(&key)
        .map(|v| <Bucket as codec::Record>::decode_record(&v).expect("bucket written by a known layout"))
        .unwrap_or(Bucket { milli_tokens: cap, updated_ms: now });
    let elapsed = now.saturating_sub(b.updated_ms);
    // per_minute tokens per 60 000 ms = per_minute milli-tokens per 60 ms.
    let refill = elapsed.saturating_mul(u64::from(rl.per_minute)) / 60;
    b.milli_tokens = (b.milli_tokens.saturating_add(refill)).min(cap);
    b.updated_ms = now;
    let ok = b.milli_tokens >= 1000;
    if ok {
        b.milli_tokens -= 1000;
    }
    state.put(key, codec::Record::encode_record(&b));
    ok
}

/// Release delayed jobs whose time has come; returns how many.
fn release_delayed(state: &mut Overlay<'_>, index: u64, now: u64, budget: usize) -> u64 {
    let end = [DELAYED, &now.to_be_bytes()[..], &[0xff; 10]].concat();
    let due: Vec<Vec<u8>> = state.range(DELAYED, &end).take(budget).map(|(k, _)| k).collect();
    let mut n = 0;
    for k in due {
        let Some(mut job) = job_from_index_key(state, &k, DELAYED.len() + 8) else {
            events::index_delete(state, k);
            continue;
        };
        transition(state, &mut job, JobState::Ready, index, now, None);
        n += 1;
    }
    n
}

pub(super) fn job_from_index_key(state: &dyn KvRead, k: &[u8], at: usize) -> Option<JobRecord> {
    let e = u64::from_be_bytes(k.get(at..at + 8)?.try_into().ok()?);
    let n = *k.get(at + 8)?;
    events::get_job(state, &events::job_id(e, n))
}

/// Exponential backoff for the retry after failed attempt `attempt` (1-based), with a
/// deterministic jitter of up to 10 % derived from the job id.
pub fn backoff_ms(policy: &QueuePolicy, job_id: &str, attempt: u32) -> u64 {
    let exp = attempt.saturating_sub(1).min(40);
    let base = policy.retry_delay_ms.saturating_mul(1u64 << exp).min(policy.max_retry_delay_ms);
    // FNV-1a of (job id, attempt): same on every replica.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in job_id.bytes().chain(attempt.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let jitter = if base >= 10 { h % (base / 10 + 1) } else { 0 };
    (base + jitter).min(policy.max_retry_delay_ms)
}

/// After a failed attempt: retry later, or dead-letter once retries are used up.
fn after_failure(
    state: &mut Overlay<'_>,
    job: &mut JobRecord,
    index: u64,
    now: u64,
    error: String,
    retryable: bool,
    min_delay_ms: u64,
    policy: &QueuePolicy,
) -> Response {
    job.last_error = Some(truncate(&error));
    if !retryable || job.attempts > policy.max_retries {
        let why = if retryable { format!("{error} (attempt {} of {})", job.attempts, policy.max_retries + 1) } else { format!("{error} (not retryable)") };
        transition(state, job, JobState::Dead, index, now, Some(truncate(&why)));
        finish_event_if_done(state, job.event_id, now);
        return Response::Failed { dead: true, ready_at_ms: 0 };
    }
    job.ready_at_ms = now.saturating_add(backoff_ms(policy, &job.job_id, job.attempts).max(min_delay_ms));
    let note = format!("{} — retry at +{} ms", truncate(&error), job.ready_at_ms - now);
    transition(state, job, JobState::Delayed, index, now, Some(note));
    Response::Failed { dead: false, ready_at_ms: job.ready_at_ms }
}

/// When every job of an event is terminal, the event is finished and its retention starts.
pub(super) fn finish_event_if_done(state: &mut Overlay<'_>, event_id: u64, now: u64) {
    let Some(mut e) = events::get_event(state, event_id) else { return };
    let jobs = events::jobs_of(state, &e);
    if !jobs.iter().all(|j| j.state.is_terminal()) {
        return;
    }
    e.status = if jobs.iter().any(|j| j.state != JobState::Completed) { EventStatus::Failed } else { EventStatus::Completed };
    events::set_finished(state, &mut e, now);
}

/// Lease up to `count` jobs, highest priority first, FIFO within a priority.
pub(super) fn grant(state: &mut Overlay<'_>, index: u64, now: u64, g: &GrantRequest) -> Response {
    release_delayed(state, index, now, TICK_BUDGET);
    let candidates: Vec<Vec<u8>> = state.range(events::READY, &prefix_end(events::READY)).take(GRANT_SCAN_LIMIT).map(|(k, _)| k).collect();
    let mut out = Vec::new();
    let mut in_flight = super::controls::InFlight::default();
    for k in candidates {
        if out.len() >= g.count.max(1) as usize {
            break;
        }
        let Some(mut job) = job_from_index_key(state, &k, events::READY.len() + 1) else { continue };
        if !g.targets.is_empty() && !g.targets.iter().any(|t| *t == job.route.name) {
            continue;
        }
        if !in_flight.admits(state, &job.route.name) {
            continue; // the target has its most jobs in flight; waits for one to finish
        }
        if let Some(rl) = job.rate_limit.clone() {
            if !take_token(state, &rl, now) {
                continue; // waits (never dropped) until its bucket refills
            }
        }
        let Some(event) = events::get_event(state, job.event_id) else { continue };
        job.attempts += 1;
        job.lease = Some(LeaseInfo { token: index, worker_id: g.worker_id.clone(), deadline_ms: now.saturating_add(g.policy.lease_timeout_ms) });
        let note = format!("leased to {} (attempt {}, token {index})", g.worker_id, job.attempts);
        transition(state, &mut job, JobState::Leased, index, now, Some(note));
        in_flight.leased(&job.route.name);
        let lease = job.lease.clone().expect("just set");
        out.push(LeaseGrant {
            job_id: job.job_id.clone(),
            token: lease.token,
            deadline_ms: lease.deadline_ms,
            attempt: job.attempts,
            event_id: event.event_id,
            delivery_id: event.delivery_id.clone(),
            event: event.event.clone(),
            received_ms: event.received_ms,
            trigger: job.trigger.clone(),
            route: job.route.clone(),
            context: event.context.clone(),
            payload: events::get_payload(state, event.event_id).unwrap_or_default(),
            traceparent: event.traceparent.clone(),
        });
    }
    Response::Granted(out)
}

/// The job if `token` names its live lease, else the reason it does not.
fn leased_job(state: &dyn KvRead, job_id: &str, token: u64, planted: Planted) -> Result<JobRecord, Response> {
    let Some(job) = events::get_job(state, job_id) else {
        return Err(Response::JobNotFound { job_id: job_id.to_string() });
    };
    let fenced = !planted.skip_fencing;
    match &job.lease {
        Some(l) if job.state == JobState::Leased && (l.token == token || !fenced) => Ok(job),
        Some(l) if job.state == JobState::Leased => Err(Response::StaleToken {
            job_id: job_id.to_string(),
            reason: format!("the job is leased under token {}, not {token}: this lease expired and the job was leased again", l.token),
        }),
        _ if job.state == JobState::Cancelled => Err(Response::StaleToken {
            job_id: job_id.to_string(),
            reason: format!(
                "job was cancelled ({}); token {token} is no longer valid — stop working on it",
                job.history.last().and_then(|h| h.note.as_deref()).unwrap_or("cancelled")
            ),
        }),
        _ => Err(Response::StaleToken {
            job_id: job_id.to_string(),
            reason: format!("the job is {} and holds no lease; token {token} is no longer valid", job.state.as_str()),
        }),
    }
}

pub(super) fn extend(state: &mut Overlay<'_>, _index: u64, now: u64, job_id: &str, token: u64, extend_ms: u64, planted: Planted) -> Response {
    let mut job = match leased_job(state, job_id, token, planted) {
        Ok(j) => j,
        Err(r) => return r,
    };
    if let Some(k) = leased_key(&job) {
        state.delete(k);
    }
    let deadline = now.saturating_add(extend_ms);
    if let Some(l) = job.lease.as_mut() {
        l.deadline_ms = l.deadline_ms.max(deadline);
    }
    let deadline_ms = job.lease.as_ref().map_or(deadline, |l| l.deadline_ms);
    state.put(leased_key(&job).expect("leased"), Vec::new());
    state.put(job_key(&job), codec::Record::encode_record(&job));
    Response::Extended { deadline_ms }
}

pub(super) fn complete(state: &mut Overlay<'_>, index: u64, now: u64, job_id: &str, token: u64, result: &str, planted: Planted) -> Response {
    let mut job = match leased_job(state, job_id, token, planted) {
        Ok(j) => j,
        Err(r) => return r,
    };
    job.result = Some(truncate(result));
    let worker = job.lease.as_ref().map(|l| l.worker_id.clone()).unwrap_or_default();
    transition(state, &mut job, JobState::Completed, index, now, Some(format!("completed by {worker}")));
    finish_event_if_done(state, job.event_id, now);
    Response::Completed
}

#[allow(clippy::too_many_arguments)]
pub(super) fn fail(
    state: &mut Overlay<'_>,
    index: u64,
    now: u64,
    job_id: &str,
    token: u64,
    error: &str,
    retryable: bool,
    delay_ms: u64,
    policy: &QueuePolicy,
    planted: Planted,
) -> Response {
    let mut job = match leased_job(state, job_id, token, planted) {
        Ok(j) => j,
        Err(r) => return r,
    };
    after_failure(state, &mut job, index, now, error.to_string(), retryable, delay_ms, policy)
}

/// Expire leases past their deadline (retry or dead-letter) and release delayed
/// jobs that are due. Returns (expired leases, released jobs).
pub(super) fn tick(state: &mut Overlay<'_>, index: u64, now: u64, policy: &QueuePolicy) -> (u64, u64) {
    let end = [LEASED, &now.to_be_bytes()[..], &[0xff; 10]].concat();
    let due: Vec<Vec<u8>> = state.range(LEASED, &end).take(TICK_BUDGET).map(|(k, _)| k).collect();
    let mut expired = 0;
    for k in due {
        let Some(mut job) = job_from_index_key(state, &k, LEASED.len() + 8) else {
            state.delete(k);
            continue;
        };
        let worker = job.lease.as_ref().map(|l| l.worker_id.clone()).unwrap_or_default();
        let err = format!("lease expired: worker {worker} neither extended nor finished it in time");
        after_failure(state, &mut job, index, now, err, true, 0, policy);
        expired += 1;
    }
    let released = release_delayed(state, index, now, TICK_BUDGET);
    // Pending jobs past their target's TTL go to the DLQ (not counted as lease expiries).
    super::controls::expire_pending(state, index, now);
    (expired, released)
}

fn dead_jobs(state: &dyn KvRead, job_id: Option<&str>) -> Vec<JobRecord> {
    match job_id {
        Some(id) => events::get_job(state, id).into_iter().filter(|j| j.state == JobState::Dead).collect(),
        None => state.range(DEAD, &prefix_end(DEAD)).filter_map(|(k, _)| job_from_index_key(state, &k, DEAD.len())).collect(),
    }
}

pub(super) fn redrive(state: &mut Overlay<'_>, index: u64, now: u64, job_id: Option<&str>) -> Response {
    let jobs = dead_jobs(state, job_id);
    if let (Some(id), true) = (job_id, jobs.is_empty()) {
        return Response::JobNotFound { job_id: id.to_string() };
    }
    let mut ids = Vec::new();
    for mut job in jobs {
        job.attempts = 0;
        transition(state, &mut job, JobState::Ready, index, now, Some("redriven from the dead-letter queue".into()));
        if let Some(mut e) = events::get_event(state, job.event_id) {
            e.status = EventStatus::Queued;
            events::set_unfinished(state, &mut e);
        }
        ids.push(job.job_id);
    }
    Response::Redriven { jobs: ids }
}

pub(super) fn purge(state: &mut Overlay<'_>, index: u64, now: u64, job_id: Option<&str>) -> Response {
    let jobs = dead_jobs(state, job_id);
    if let (Some(id), true) = (job_id, jobs.is_empty()) {
        return Response::JobNotFound { job_id: id.to_string() };
    }
    let mut ids = Vec::new();
    for mut job in jobs {
        transition(state, &mut job, JobState::Purged, index, now, Some("purged from the dead-letter queue".into()));
        ids.push(job.job_id);
    }
    Response::Purged { jobs: ids }
}

/// When the next lease deadline or delayed release is due (the leader ticks then).
pub fn next_due(state: &dyn KvRead) -> Option<u64> {
    let first = |p: &[u8]| {
        state.range(p, &prefix_end(p)).next().and_then(|(k, _)| k.get(p.len()..p.len() + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
    };
    [first(LEASED), first(DELAYED), super::controls::next_ttl_due(state), super::outbox::next_expiry(state)].into_iter().flatten().min()
}

/// Whether some ready job serves one of `targets` (empty = any), scanning a bounded
/// prefix of the ready index. A hint for claim loops; the grant decides.
pub fn has_ready(state: &dyn KvRead, targets: &[String]) -> bool {
    state
        .range(events::READY, &prefix_end(events::READY))
        .take(GRANT_SCAN_LIMIT)
        .filter_map(|(k, _)| job_from_index_key(state, &k, events::READY.len() + 1))
        .any(|j| targets.is_empty() || targets.iter().any(|t| *t == j.route.name))
}

/// Jobs waiting for a worker — ready now, or delayed until a retry's backoff has
/// passed — up to `limit`: the answer is `min(backlog, limit)`, read from the
/// counter apply keeps (one key; see `events::index_put`), or, in a state from
/// before the counter, counted over at most `limit` index keys. Leased jobs are not
/// counted: a worker holds them, and they leave the queue by completing, failing
/// (back to delayed, then counted) or expiring. What the gateway's intake limit
/// (`spec.queue.max_ready`) is compared with.
pub fn backlog(state: &dyn KvRead, limit: usize) -> usize {
    match events::stored_backlog(state) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(limit),
        None => events::count_backlog(state, limit),
    }
}

/// The dead-letter queue, oldest first.
pub fn list_dead(state: &dyn KvRead, limit: usize) -> Vec<JobRecord> {
    state.range(DEAD, &prefix_end(DEAD)).take(limit).filter_map(|(k, _)| job_from_index_key(state, &k, DEAD.len())).collect()
}

/// Queue depth per (target, priority).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    pub target_kind: String,
    pub target: String,
    pub priority: String,
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    pub oldest_ready_ms: Option<u64>,
}

/// Depths of every (target, priority) with live jobs, sorted.
pub fn stats(state: &dyn KvRead) -> Vec<Depth> {
    let mut map: std::collections::BTreeMap<(String, String, std::cmp::Reverse<Priority>), Depth> = Default::default();
    for (prefix, at) in [(events::READY, 1usize), (DELAYED, 8), (LEASED, 8), (DEAD, 0)] {
        for (k, _) in state.range(prefix, &prefix_end(prefix)) {
            let Some(j) = job_from_index_key(state, &k, prefix.len() + at) else { continue };
            let kind = format!("{:?}", j.route.kind).to_lowercase();
            let d = map.entry((kind.clone(), j.route.name.clone(), std::cmp::Reverse(j.priority))).or_insert_with(|| Depth {
                target_kind: kind,
                target: j.route.name.clone(),
                priority: format!("{:?}", j.priority).to_lowercase(),
                ..Default::default()
            });
            match j.state {
                JobState::Ready => {
                    d.ready += 1;
                    d.oldest_ready_ms = Some(d.oldest_ready_ms.map_or(j.enqueued_ms, |o| o.min(j.enqueued_ms)));
                }
                JobState::Delayed => d.delayed += 1,
                JobState::Leased => d.leased += 1,
                JobState::Dead => d.dead += 1,
                _ => {}
            }
        }
    }
    map.into_values().collect()
}
