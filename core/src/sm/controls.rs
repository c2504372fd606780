//! Queue controls: cancelling a job, re-running an event, and per-target limits
//! (most jobs leased at once, longest time pending). Pure functions over the key
//! space, like [`super::queue`].
//!
//! | key          | value            |
//! |--------------|------------------|
//! | `q/<target>` | [`TargetLimits`] |
//!
//! Limits are keyed by the target's name, as workers claim by name. They live in
//! their own key rather than in a Trigger document because they belong to the
//! target (several triggers may route to one target, and the limit is shared).
//!
//! **Architecture Invariant**: like everything in `apply`, time is the leader-stamped
//! `now`; a job's pending time counts from `JobRecord::enqueued_ms` (when it last
//! entered the ready queue, itself leader-stamped).

use std::collections::BTreeMap;

use super::events::{self, JobRecord, JobState, JobTransition};
use super::kv::{prefix_end, KvRead, Overlay};
use super::queue;
use crate::codec;
use crate::types::{EventStatus, Response, TargetLimits};

const LIMITS: &[u8] = b"q/";

/// Most targets with limits (bounds the state and the work of one tick).
pub const MAX_LIMITED_TARGETS: usize = 1024;
/// Ready + delayed index entries one tick inspects for pending-TTL expiry.
pub const TTL_SCAN_LIMIT: usize = 10_000;
/// Jobs one event may have (job ids carry an 8-bit position).
pub const MAX_JOBS_PER_EVENT: usize = 256;

fn limits_key(target: &str) -> Vec<u8> {
    [LIMITS, target.as_bytes()].concat()
}

/// The limits of a target (all zero when none are set).
pub fn get_limits(state: &dyn KvRead, target: &str) -> TargetLimits {
    state.get(&limits_key(target)).map(|v| events::decode(&v)).unwrap_or_default()
}

/// Every target with limits, by name.
pub fn all_limits(state: &dyn KvRead) -> Vec<(String, TargetLimits)> {
    state
        .range(LIMITS, &prefix_end(LIMITS))
        .take(MAX_LIMITED_TARGETS)
        .map(|(k, v)| (String::from_utf8_lossy(&k[LIMITS.len()..]).into_owned(), events::decode(&v)))
        .collect()
}

pub(super) fn set_limits(state: &mut Overlay<'_>, target: &str, limits: TargetLimits) -> Response {
    let key = limits_key(target);
    if limits.is_empty() {
        state.delete(key);
    } else {
        if state.get(&key).is_none() && state.range(LIMITS, &prefix_end(LIMITS)).take(MAX_LIMITED_TARGETS).count() >= MAX_LIMITED_TARGETS {
            return Response::Refused {
                reason: format!("{MAX_LIMITED_TARGETS} targets already have limits; remove some (set them to 0) first"),
            };
        }
        state.put(key, codec::Record::encode_record(&limits));
    }
    Response::TargetLimitsSet { target: target.to_string(), limits }
}

/// Jobs of `target` leased right now.
pub fn leased_count(state: &dyn KvRead, target: &str) -> u32 {
    state
        .range(queue::LEASED, &prefix_end(queue::LEASED))
        .filter_map(|(k, _)| queue::job_from_index_key(state, &k, queue::LEASED.len() + 8))
        .filter(|j| j.route.name == target)
        .count() as u32
}

/// The in-flight limits one grant enforces: each limited target's leased count is
/// read once, then counted up as the grant leases more.
#[derive(Default)]
pub(super) struct InFlight {
    /// target → (max in flight, leased now); `None` = no limit.
    targets: BTreeMap<String, Option<(u32, u32)>>,
}

impl InFlight {
    /// Whether one more job of `target` may be leased.
    pub(super) fn admits(&mut self, state: &dyn KvRead, target: &str) -> bool {
        let entry = self.targets.entry(target.to_string()).or_insert_with(|| {
            let l = get_limits(state, target);
            (l.max_in_flight > 0).then(|| (l.max_in_flight, leased_count(state, target)))
        });
        match entry {
            Some((max, leased)) => leased < max,
            None => true,
        }
    }
    pub(super) fn leased(&mut self, target: &str) {
        if let Some(Some((_, leased))) = self.targets.get_mut(target) {
            *leased += 1;
        }
    }
}

/// `1h`, `30m`, `45s`, `1500ms`: a duration as configured.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Ready and delayed jobs (a bounded scan) of targets with a pending TTL, with their TTL.
fn pending_with_ttl(state: &dyn KvRead) -> Vec<(JobRecord, u64)> {
    let ttls: BTreeMap<String, u64> = all_limits(state).into_iter().filter(|(_, l)| l.pending_ttl_ms > 0).map(|(t, l)| (t, l.pending_ttl_ms)).collect();
    if ttls.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut budget = TTL_SCAN_LIMIT;
    for (prefix, at) in [(events::READY, 1usize), (queue::DELAYED, 8)] {
        for (k, _) in state.range(prefix, &prefix_end(prefix)).take(budget) {
            budget -= 1;
            let Some(job) = queue::job_from_index_key(state, &k, prefix.len() + at) else { continue };
            if let Some(&ttl) = ttls.get(&job.route.name) {
                out.push((job, ttl));
            }
        }
    }
    out
}

/// Dead-letter ready / delayed jobs pending longer than their target's TTL; how many.
pub(super) fn expire_pending(state: &mut Overlay<'_>, index: u64, now: u64) -> u64 {
    let mut n = 0;
    for (mut job, ttl) in pending_with_ttl(state) {
        if now < job.enqueued_ms.saturating_add(ttl) {
            continue;
        }
        let why = format!("expired: pending longer than ttl {}", human_ms(ttl));
        job.last_error = Some(why.clone());
        queue::transition(state, &mut job, JobState::Dead, index, now, Some(why));
        queue::finish_event_if_done(state, job.event_id, now);
        n += 1;
    }
    n
}

/// When the next pending job reaches its target's TTL (the leader ticks then).
pub fn next_ttl_due(state: &dyn KvRead) -> Option<u64> {
    pending_with_ttl(state).into_iter().map(|(j, ttl)| j.enqueued_ms.saturating_add(ttl)).min()
}

pub(super) fn cancel(state: &mut Overlay<'_>, index: u64, now: u64, job_id: &str, by: &str, reason: &str) -> Response {
    let Some(mut job) = events::get_job(state, job_id) else {
        return Response::JobNotFound { job_id: job_id.to_string() };
    };
    if job.state.is_terminal() {
        return Response::NotCancellable { job_id: job_id.to_string(), state: job.state.as_str().to_string() };
    }
    let was = job.state.as_str().to_string();
    let mut note = if reason.is_empty() { format!("cancelled by {by}") } else { format!("cancelled by {by}: {reason}") };
    if let Some(l) = &job.lease {
        note.push_str(&format!(" (lease of worker {} under token {} revoked)", l.worker_id, l.token));
    }
    queue::transition(state, &mut job, JobState::Cancelled, index, now, Some(queue::truncate(&note)));
    queue::finish_event_if_done(state, job.event_id, now);
    Response::JobCancelled { job_id: job_id.to_string(), was }
}

pub(super) fn rerun(state: &mut Overlay<'_>, seq: u64, now: u64, event_id: u64, by: &str) -> Response {
    let Some(mut e) = events::get_event(state, event_id) else {
        return Response::EventNotFound { event_id };
    };
    let refuse = |reason: String| Response::RerunRefused { event_id, reason };
    if events::get_payload(state, event_id).is_none() {
        return refuse(format!("the payload of event {event_id} is no longer kept (expired by retention); redeliver it from GitHub's Recent Deliveries instead"));
    }
    let jobs = events::jobs_of(state, &e);
    // One new job per distinct route the event's jobs took (a re-run of a re-run
    // does not multiply them).
    let mut routes: Vec<&JobRecord> = Vec::new();
    for j in &jobs {
        if !routes.iter().any(|r| r.trigger == j.trigger && r.route == j.route) {
            routes.push(j);
        }
    }
    if routes.is_empty() {
        return refuse(format!("event {event_id} is {} and matched no route: nothing to re-run", e.status.as_str()));
    }
    if e.jobs.len() + routes.len() > MAX_JOBS_PER_EVENT {
        return refuse(format!("event {event_id} already has {} jobs, at most {MAX_JOBS_PER_EVENT} are kept per event", e.jobs.len()));
    }
    let mut new = Vec::new();
    for r in routes {
        let n = e.jobs.len() as u8;
        let job = JobRecord {
            job_id: events::job_id(event_id, n),
            event_id,
            delivery_id: e.delivery_id.clone(),
            trigger: r.trigger.clone(),
            route: r.route.clone(),
            priority: r.priority,
            state: JobState::Ready,
            attempts: 0,
            lease: None,
            ready_at_ms: now,
            enqueued_ms: now,
            rate_limit: r.rate_limit.clone(),
            last_error: None,
            result: None,
            history: vec![JobTransition {
                state: JobState::Ready,
                at_ms: now,
                index: seq,
                note: Some(queue::truncate(&format!("re-run of event {event_id} by request of {by} (as job {} ran)", r.job_id))),
            }],
        };
        state.put(events::jk(event_id, n), codec::Record::encode_record(&job));
        events::index_put(state, events::rk(job.priority, event_id, n));
        e.jobs.push(job.job_id.clone());
        new.push(job.job_id);
    }
    e.status = EventStatus::Queued;
    events::set_unfinished(state, &mut e);
    Response::Rerun { event_id, jobs: new }
}

/// Filters of [`list_jobs`].
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// The target's name.
    pub target: Option<String>,
    /// The event's GitHub event name (`push`, `pull_request`, ...).
    pub event: Option<String>,
    /// Only jobs after this one (paging cursor, a job id).
    pub after: Option<(u64, u8)>,
    pub limit: usize,
}

/// One page of [`list_jobs`]: the jobs with their event's name.
#[derive(Clone, Debug, Default)]
pub struct JobPage {
    pub items: Vec<(JobRecord, String)>,
    /// When more jobs may follow: the last job *scanned* (see
    /// [`events::EventPage::next_after`]).
    pub next_after: Option<String>,
}

/// Jobs in id order (event order, then position), filtered, at most
/// [`events::LIST_SCAN_LIMIT`] inspected per call.
pub fn list_jobs(state: &dyn KvRead, f: &JobFilter) -> JobPage {
    let start = match f.after {
        Some((e, n)) => {
            let mut k = events::jk(e, n);
            k.push(0);
            k
        }
        None => b"j/".to_vec(),
    };
    let mut out = Vec::new();
    let mut last_scanned = None;
    let mut event_names: BTreeMap<u64, String> = BTreeMap::new();
    for (scanned, (_, v)) in state.range(&start, &prefix_end(b"j/")).enumerate() {
        if out.len() >= f.limit || scanned >= events::LIST_SCAN_LIMIT {
            return JobPage { items: out, next_after: last_scanned };
        }
        let j: JobRecord = events::decode(&v);
        last_scanned = Some(j.job_id.clone());
        if f.state.is_some_and(|s| j.state != s) || f.target.as_ref().is_some_and(|t| *t != j.route.name) {
            continue;
        }
        let name = event_names
            .entry(j.event_id)
            .or_insert_with(|| events::get_event(state, j.event_id).map(|e| e.event).unwrap_or_default())
            .clone();
        if f.event.as_ref().is_some_and(|ev| *ev != name) {
            continue;
        }
        out.push((j, name));
    }
    JobPage { items: out, next_after: None }
}
