//! The replicated event log and the jobs events create.
//!
//! Key space:
//!
//! | key                                   | value                      |
//! |---------------------------------------|----------------------------|
//! | `e/<event_id:8>`                      | [`EventRecord`]            |
//! | `p/<event_id:8>`                      | the payload ([`super::payload`]) |
//! | `d/<delivery_id>`                     | event id (dedup index)     |
//! | `j/<event_id:8><n:1>`                 | [`JobRecord`]              |
//! | `r/<255-priority:1><event_id:8><n:1>` | ready-queue index (empty)  |
//! | `x/<expires_ms:8><event_id:8>`        | retention index (empty)    |
//! | `m/backlog`                           | jobs ready or delayed (u64; [`index_put`]) |
//!
//! An event's id is the sequence number ([`crate::types::seq`]: log index `<< 8` +
//! position in a batch) of the `IngestWebhook` command that created it, so ids are
//! unique, increase in commit order, and every replica assigns the same one.
//!
//! **Architecture Invariant**: a delivery id is accepted once. While its event is
//! retained, a replay gets the original answer with `duplicate: true` and creates
//! nothing. Retention (`Delivery::retention_ms`) counts from the leader-stamped time
//! at which the event finished; expiry removes the event, its payload, its jobs and
//! its dedup entry together, so state stays proportional to live + retained events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kv::{prefix_end, KvRead, Overlay};
use crate::codec;
use crate::github::facts::CtxValue;
use crate::github::matcher::{self, MatchOutcome};
use crate::github::facts::EventFacts;
use crate::github::trigger::{Priority, RateLimit, RateLimitScope, Route};
use crate::types::{Delivery, EventStatus, IngestResult, PackedDelivery, Response, SignedBy};

const EVENT: &[u8] = b"e/";
const PAYLOAD: &[u8] = b"p/";
const DEDUP: &[u8] = b"d/";
const JOB: &[u8] = b"j/";
pub(super) const READY: &[u8] = b"r/";
pub(super) const EXPIRY: &[u8] = b"x/";

/// Expired events removed per applied command (bounds the work of one apply).
pub const GC_BUDGET_PER_COMMAND: usize = 16;
/// Expired events removed by one `Tick`.
pub const GC_BUDGET_PER_TICK: usize = 1024;

/// An event as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: u64,
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub repo: Option<String>,
    pub sender: Option<String>,
    pub received_ms: u64,
    pub received_by: u64,
    /// The answer given when it was accepted (replays get this).
    pub accepted_status: EventStatus,
    pub status: EventStatus,
    pub trigger: Option<String>,
    /// The command key or slash command that routed it, if any.
    pub command: Option<String>,
    pub jobs: Vec<String>,
    pub context: BTreeMap<String, CtxValue>,
    pub payload_bytes: u64,
    pub retention_ms: u64,
    pub finished_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    /// W3C trace context of the delivery, handed to workers.
    pub traceparent: String,
}

/// The state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a worker.
    Ready,
    /// Held by a worker until its lease deadline.
    Leased,
    /// Waiting for its retry time (backoff).
    Delayed,
    Completed,
    /// In the dead-letter queue.
    Dead,
    /// Removed from the dead-letter queue by `aofctl dlq purge`.
    Purged,
    /// Cancelled by an operator (`aofctl cancel job`) before it finished. Added last:
    /// bincode stores the variant index, so records written before it still load.
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Delayed => "delayed",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Purged => "purged",
            JobState::Cancelled => "cancelled",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Dead | JobState::Purged | JobState::Cancelled)
    }
    /// Parse [`JobState::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ready, Self::Leased, Self::Delayed, Self::Completed, Self::Dead, Self::Purged, Self::Cancelled]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The lease a job is under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The sequence number of the grant ([`crate::types::seq`]): the fencing token.
    pub token: u64,
    pub worker_id: String,
    pub deadline_ms: u64,
}

/// A rate limit a job is subject to (from its trigger), as a token bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRateLimit {
    /// `org:<login>` or `repo:<owner/name>`.
    pub bucket: String,
    pub per_minute: u32,
    pub burst: u32,
}

/// One step of a job's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTransition {
    pub state: JobState,
    pub at_ms: u64,
    /// Sequence number ([`crate::types::seq`]) of the command that made the transition.
    pub index: u64,
    pub note: Option<String>,
}

/// A unit of work for a target (agent, fleet or flow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub event_id: u64,
    pub delivery_id: String,
    pub trigger: String,
    pub route: Route,
    pub priority: Priority,
    pub state: JobState,
    /// Leases granted so far (the current or last attempt number).
    pub attempts: u32,
    pub lease: Option<LeaseInfo>,
    /// When a delayed job becomes ready again.
    pub ready_at_ms: u64,
    /// When it (last) entered the ready queue, for "oldest ready age".
    pub enqueued_ms: u64,
    pub rate_limit: Option<JobRateLimit>,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub history: Vec<JobTransition>,
}

pub(super) fn ek(event_id: u64) -> Vec<u8> {
    [EVENT, &event_id.to_be_bytes()[..]].concat()
}
pub(super) fn pk(event_id: u64) -> Vec<u8> {
    [PAYLOAD, &event_id.to_be_bytes()[..]].concat()
}
pub(super) fn dk(delivery_id: &str) -> Vec<u8> {
    [DEDUP, delivery_id.as_bytes()].concat()
}
pub(super) fn jk(event_id: u64, n: u8) -> Vec<u8> {
    [JOB, &event_id.to_be_bytes()[..], &[n]].concat()
}
pub(super) fn rk(priority: Priority, event_id: u64, n: u8) -> Vec<u8> {
    [READY, &[255 - priority as u8], &event_id.to_be_bytes()[..], &[n]].concat()
}
pub(super) fn xk(expires_ms: u64, event_id: u64) -> Vec<u8> {
    [EXPIRY, &expires_ms.to_be_bytes()[..], &event_id.to_be_bytes()[..]].concat()
}

// --- The job indexes (see `super::queue`): one entry per non-terminal job, matching
// its state. Kept here with the job record so that expiry needs nothing from the
// queue module (which builds on this one, never the other way).

pub(super) const DELAYED: &[u8] = b"w/";
pub(super) const LEASED: &[u8] = b"l/";
pub(super) const DEAD: &[u8] = b"z/";

pub(super) fn suffix(job: &JobRecord) -> Vec<u8> {
    let (e, n) = parse_job_id(&job.job_id).expect("job ids are well-formed");
    [&e.to_be_bytes()[..], &[n]].concat()
}
fn ready_key(job: &JobRecord) -> Vec<u8> {
    [READY, &[255 - job.priority as u8], &suffix(job)].concat()
}
fn delayed_key(job: &JobRecord) -> Vec<u8> {
    [DELAYED, &job.ready_at_ms.to_be_bytes()[..], &suffix(job)].concat()
}
pub(super) fn leased_key(job: &JobRecord) -> Option<Vec<u8>> {
    job.lease.as_ref().map(|l| [LEASED, &l.deadline_ms.to_be_bytes()[..], &suffix(job)].concat())
}
fn dead_key(job: &JobRecord) -> Vec<u8> {
    [DEAD, &suffix(job)].concat()
}
pub(super) fn job_key(job: &JobRecord) -> Vec<u8> {
    [b"j/".as_slice(), &suffix(job)].concat()
}

/// The index entry of a job in its current state, if any.
pub(super) fn index_key(job: &JobRecord) -> Option<Vec<u8>> {
    match job.state {
        JobState::Ready => Some(ready_key(job)),
        JobState::Delayed => Some(delayed_key(job)),
        JobState::Leased => leased_key(job),
        JobState::Dead => Some(dead_key(job)),
        JobState::Completed | JobState::Purged | JobState::Cancelled => None,
    }
}

/// Remove a job's index entry (used when its event expires).
pub(super) fn unindex(state: &mut Overlay<'_>, job: &JobRecord) {
    if let Some(k) = index_key(job) {
        index_delete(state, k);
    }
}

// --- The backlog counter: jobs ready or delayed, kept by apply. ---

/// `m/backlog`: how many keys the ready and delayed indexes hold (u64 big-endian).
///
/// **Architecture Invariant**: every write of a ready or delayed index entry goes
/// through [`index_put`] / [`index_delete`], which keep this count exact (they look
/// the key up first, so a repeated put or delete does not count twice); intake's
/// back-pressure (`spec.queue.max_ready`) then reads one key per webhook instead of
/// counting the queue. A state written before the counter existed has no key: the
/// first index write counts the indexes once (the same on every replica, at the same
/// log index), and [`backlog`] counts them until then.
const BACKLOG: &[u8] = b"m/backlog";

fn is_backlog_key(k: &[u8]) -> bool {
    k.starts_with(READY) || k.starts_with(DELAYED)
}

/// The ready and delayed index entries, counted (up to `limit`).
pub(super) fn count_backlog(state: &dyn KvRead, limit: usize) -> usize {
    let ready = state.range(READY, &prefix_end(READY)).take(limit).count();
    ready + state.range(DELAYED, &prefix_end(DELAYED)).take(limit - ready).count()
}

/// The stored backlog counter (`None`: a state from before it existed).
pub(super) fn stored_backlog(state: &dyn KvRead) -> Option<u64> {
    state.get(BACKLOG).and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
}

fn add_to_backlog(state: &mut Overlay<'_>, delta: i64) {
    let n = stored_backlog(state).unwrap_or_else(|| count_backlog(state, usize::MAX) as u64);
    state.put(BACKLOG.to_vec(), n.saturating_add_signed(delta).to_be_bytes().to_vec());
}

/// Write a job index entry (the backlog counter follows ready and delayed ones).
pub(super) fn index_put(state: &mut Overlay<'_>, k: Vec<u8>) {
    if is_backlog_key(&k) && state.get(&k).is_none() {
        add_to_backlog(state, 1);
    }
    state.put(k, Vec::new());
}

/// Remove a job index entry (the backlog counter follows ready and delayed ones).
pub(super) fn index_delete(state: &mut Overlay<'_>, k: Vec<u8>) {
    if is_backlog_key(&k) && state.get(&k).is_some() {
        add_to_backlog(state, -1);
    }
    state.delete(k);
}

/// The bucket of a trigger's rate limit for an event, if the event has that scope.
pub fn bucket_for(rl: &RateLimit, facts: &EventFacts) -> Option<JobRateLimit> {
    let bucket = match rl.per {
        RateLimitScope::Org => format!("org:{}", facts.org.as_deref()?.to_ascii_lowercase()),
        RateLimitScope::Repo => format!("repo:{}", facts.repo_full_name.as_deref()?.to_ascii_lowercase()),
    };
    Some(JobRateLimit { bucket, per_minute: rl.events_per_minute, burst: rl.burst.max(1) })
}

// Each record type carries its own layout version (see `crate::codec::Record`).
crate::first_record_layout!(EventRecord => "event", JobRecord => "job");

/// The job id of job `n` of an event.
pub fn job_id(event_id: u64, n: u8) -> String {
    format!("{event_id}-{n}")
}

/// Parse a job id back into (event id, n).
pub fn parse_job_id(id: &str) -> Option<(u64, u8)> {
    let (e, n) = id.split_once('-')?;
    Some((e.parse().ok()?, n.parse().ok()?))
}

pub(super) fn decode<T: codec::Record>(v: &[u8]) -> T {
    T::decode_record(v).unwrap_or_else(|e| panic!("{} record of an unknown layout: {e}", T::KIND))
}

pub fn get_event(state: &dyn KvRead, event_id: u64) -> Option<EventRecord> {
    state.get(&ek(event_id)).map(|v| decode(&v))
}

pub fn get_payload(state: &dyn KvRead, event_id: u64) -> Option<Vec<u8>> {
    state.get(&pk(event_id)).map(|v| super::payload::unpack(&v).expect("payload written by this build"))
}

pub fn event_by_delivery(state: &dyn KvRead, delivery_id: &str) -> Option<EventRecord> {
    let id = state.get(&dk(delivery_id))?;
    get_event(state, u64::from_be_bytes(id.as_slice().try_into().ok()?))
}

pub fn get_job(state: &dyn KvRead, job_id: &str) -> Option<JobRecord> {
    let (e, n) = parse_job_id(job_id)?;
    state.get(&jk(e, n)).map(|v| decode(&v))
}

/// The jobs of an event, in order.
pub fn jobs_of(state: &dyn KvRead, event: &EventRecord) -> Vec<JobRecord> {
    event.jobs.iter().filter_map(|j| get_job(state, j)).collect()
}

/// Filters of [`list_events`].
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub repo: Option<String>,
    pub status: Option<EventStatus>,
    pub event: Option<String>,
    /// Only events with an id greater than this (paging cursor).
    pub after: Option<u64>,
    pub limit: usize,
}

/// Most records a listing inspects, whatever the filter (bounds one request).
pub const LIST_SCAN_LIMIT: usize = 100_000;

/// One page of [`list_events`].
#[derive(Clone, Debug, Default)]
pub struct EventPage {
    pub items: Vec<EventRecord>,
    /// When more events may follow: the cursor to pass as [`EventFilter::after`] for
    /// the next page — the last event *scanned*, which is past the last one returned
    /// when a filtered scan stopped at [`LIST_SCAN_LIMIT`] (then `items` may even be
    /// empty, and the caller continues from there).
    pub next_after: Option<u64>,
}

/// Events in id order, filtered, at most [`LIST_SCAN_LIMIT`] inspected per call.
pub fn list_events(state: &dyn KvRead, f: &EventFilter) -> EventPage {
    let start = ek(f.after.map_or(0, |a| a.saturating_add(1)));
    let mut out = Vec::new();
    let mut last_scanned = None;
    for (scanned, (_, v)) in state.range(&start, &prefix_end(EVENT)).enumerate() {
        if out.len() >= f.limit || scanned >= LIST_SCAN_LIMIT {
            return EventPage { items: out, next_after: last_scanned };
        }
        let e: EventRecord = decode(&v);
        last_scanned = Some(e.event_id);
        let keep = f.repo.as_ref().is_none_or(|r| e.repo.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(r)))
            && f.status.is_none_or(|s| e.status == s)
            && f.event.as_ref().is_none_or(|ev| &e.event == ev);
        if keep {
            out.push(e);
        }
    }
    EventPage { items: out, next_after: None }
}

/// Earliest retention expiry in the state, if any (the leader proposes `Tick` when due).
pub fn next_expiry(state: &dyn KvRead) -> Option<u64> {
    let (k, _) = state.range(EXPIRY, &prefix_end(EXPIRY)).next()?;
    Some(u64::from_be_bytes(k[EXPIRY.len()..EXPIRY.len() + 8].try_into().ok()?))
}

/// Number of jobs in the ready queue.
pub fn ready_count(state: &dyn KvRead) -> usize {
    state.range(READY, &prefix_end(READY)).count()
}

/// Apply `IngestPacked`: the payload record comes packed by the gateway and is
/// stored as it is, once [checked](super::payload::check) (a damaged record, or one
/// past [`super::payload::MAX_RAW_BYTES`], is refused and changes nothing).
pub(super) fn ingest_packed(state: &mut Overlay<'_>, seq: u64, now: u64, d: &PackedDelivery) -> Response {
    // The dedup lookup comes first: a replay gets the original answer even when its
    // payload is damaged or oversized, and pays no decompression.
    if let Some(answer) = replay(state, &d.delivery_id) {
        return answer;
    }
    match super::payload::check(&d.payload, super::payload::MAX_RAW_BYTES) {
        Ok(raw_len) => ingest_new(state, seq, now, d, raw_len),
        Err(e) => Response::Refused { reason: format!("delivery {}: {e}", d.delivery_id) },
    }
}

/// Apply `IngestWebhook` (the layout of earlier builds, raw payload): packed here, as
/// those builds did, and never refused for its size (they did not refuse it either,
/// and every replica must keep applying their log entries the same way).
pub(super) fn ingest_raw(state: &mut Overlay<'_>, seq: u64, now: u64, d: &Delivery) -> Response {
    if let Some(answer) = replay(state, &d.delivery_id) {
        return answer;
    }
    let raw_len = d.payload.len() as u64;
    ingest_new(state, seq, now, &PackedDelivery::from(d.clone()), raw_len)
}

/// The original answer to a delivery id already accepted (and still retained), marked
/// `duplicate`; `None` for a delivery id not seen.
fn replay(state: &Overlay<'_>, delivery_id: &str) -> Option<Response> {
    let orig = event_by_delivery(state, delivery_id)?;
    Some(Response::Ingested(IngestResult {
        event_id: orig.event_id,
        delivery_id: orig.delivery_id,
        status: orig.accepted_status,
        trigger: orig.trigger,
        jobs: orig.jobs,
        duplicate: true,
    }))
}

/// Record a delivery not seen before (the caller checked with [`replay`]).
fn ingest_new(state: &mut Overlay<'_>, seq: u64, now: u64, d: &PackedDelivery, raw_len: u64) -> Response {
    let event_id = seq;
    // A delivery signed with a trigger's own secret may reach that trigger only.
    let triggers: Vec<_> = super::triggers::compiled(state)
        .iter()
        .filter(|t| match &d.signed_by {
            SignedBy::Trigger(name) => t.name == *name,
            SignedBy::Daemon | SignedBy::Org(_) => true,
        })
        .map(|t| (**t).clone())
        .collect();
    let outcome = matcher::match_event(&triggers, &d.facts);
    let mut context = d.facts.context.clone();
    let (status, trigger, command, jobs) = match outcome {
        MatchOutcome::Unmatched => (EventStatus::Unmatched, None, None, vec![]),
        MatchOutcome::NoRoute { trigger } => (EventStatus::NoRoute, Some(trigger), None, vec![]),
        MatchOutcome::Matched(m) => {
            if let Some(c) = &m.command {
                context.insert("command".into(), CtxValue::Str(c.clone()));
            }
            let job = JobRecord {
                job_id: job_id(event_id, 0),
                event_id,
                delivery_id: d.delivery_id.clone(),
                trigger: m.trigger.clone(),
                route: m.route.clone(),
                priority: m.priority,
                state: JobState::Ready,
                attempts: 0,
                lease: None,
                ready_at_ms: now,
                enqueued_ms: now,
                rate_limit: triggers
                    .iter()
                    .find(|t| t.name == m.trigger)
                    .and_then(|t| t.rate_limit.as_ref())
                    .and_then(|rl| bucket_for(rl, &d.facts)),
                last_error: None,
                result: None,
                history: vec![JobTransition { state: JobState::Ready, at_ms: now, index: seq, note: None }],
            };
            state.put(jk(event_id, 0), codec::Record::encode_record(&job));
            index_put(state, rk(m.priority, event_id, 0));
            (EventStatus::Queued, Some(m.trigger), m.command, vec![job.job_id])
        }
    };
    let mut rec = EventRecord {
        event_id,
        delivery_id: d.delivery_id.clone(),
        event: d.facts.event.clone(),
        action: d.facts.action.clone(),
        repo: d.facts.repo_full_name.clone(),
        sender: d.facts.sender.clone(),
        received_ms: now,
        received_by: d.received_by,
        accepted_status: status,
        status,
        trigger: trigger.clone(),
        command,
        jobs: jobs.clone(),
        context,
        payload_bytes: raw_len,
        retention_ms: d.retention_ms,
        finished_ms: None,
        expires_ms: None,
        traceparent: d.traceparent.clone(),
    };
    if status.is_finished() {
        set_finished(state, &mut rec, now);
    } else {
        state.put(ek(event_id), codec::Record::encode_record(&rec));
    }
    state.put(pk(event_id), d.payload.clone());
    state.put(dk(&d.delivery_id), event_id.to_be_bytes().to_vec());
    Response::Ingested(IngestResult { event_id, delivery_id: d.delivery_id.clone(), status, trigger, jobs, duplicate: false })
}

/// Mark an event finished at `now` (its status already set): its retention starts.
pub(super) fn set_finished(state: &mut Overlay<'_>, e: &mut EventRecord, now: u64) {
    if let Some(old) = e.expires_ms {
        state.delete(xk(old, e.event_id));
    }
    let expires = now.saturating_add(e.retention_ms);
    e.finished_ms = Some(now);
    e.expires_ms = Some(expires);
    state.put(xk(expires, e.event_id), Vec::new());
    state.put(ek(e.event_id), codec::Record::encode_record(e));
}

/// Mark an event unfinished again (a redriven job): its retention stops.
pub(super) fn set_unfinished(state: &mut Overlay<'_>, e: &mut EventRecord) {
    if let Some(old) = e.expires_ms.take() {
        state.delete(xk(old, e.event_id));
    }
    e.finished_ms = None;
    state.put(ek(e.event_id), codec::Record::encode_record(e));
}

/// Remove up to `budget` events whose retention ended at or before `now`.
pub(super) fn expire(state: &mut Overlay<'_>, now: u64, budget: usize) -> u64 {
    let end = xk(now, u64::MAX);
    let due: Vec<Vec<u8>> = state.range(EXPIRY, &end).take(budget).map(|(k, _)| k).collect();
    for k in &due {
        let event_id = u64::from_be_bytes(k[EXPIRY.len() + 8..].try_into().expect("16-byte expiry key"));
        if let Some(e) = get_event(state, event_id) {
            for j in &e.jobs {
                if let Some(job) = get_job(state, j) {
                    unindex(state, &job);
                }
                if let Some((ev, n)) = parse_job_id(j) {
                    state.delete(jk(ev, n));
                }
            }
            // The dedup entry may already point at a newer event with the same delivery
            // id only if this one was gone; check before removing.
            if state.get(&dk(&e.delivery_id)).as_deref() == Some(&event_id.to_be_bytes()[..]) {
                state.delete(dk(&e.delivery_id));
            }
        }
        state.delete(ek(event_id));
        state.delete(pk(event_id));
        state.delete(k.clone());
    }
    due.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::kv::MemKv;
    use crate::types::{Command, Request};

    fn run(kv: &mut MemKv, index: u64, cmd: Command) -> Response {
        let req = Request { time_ms: 1_000, cmd };
        let mut o = Overlay::new(kv);
        let r = crate::sm::apply(&mut o, index, &req, Default::default());
        let w = o.into_writes();
        kv.commit(w);
        r
    }

    fn delivery(id: &str, payload: Vec<u8>) -> Delivery {
        Delivery {
            delivery_id: id.into(),
            facts: EventFacts { event: "push".into(), ..Default::default() },
            payload,
            received_by: 2,
            retention_ms: 60_000,
            traceparent: String::new(),
            signed_by: SignedBy::Daemon,
        }
    }

    /// A GitHub-like body: JSON that compresses well.
    fn body() -> Vec<u8> {
        let mut b = String::from("{\"ref\":\"refs/heads/main\",\"commits\":[");
        for i in 0..100 {
            b.push_str(&format!("{{\"id\":\"{i:040}\",\"message\":\"fix the build\",\"author\":{{\"name\":\"octocat\"}}}},"));
        }
        b.push_str("{}]}");
        b.into_bytes()
    }

    /// The packed payload is stored as it came (no second compression); the event
    /// counts the raw size; workers and the API get the body as received.
    #[test]
    fn a_packed_payload_is_stored_as_it_came() {
        let mut kv = MemKv::default();
        let raw = body();
        let packed = PackedDelivery::from(delivery("d-1", raw.clone()));
        assert!(packed.payload.len() < raw.len() / 2, "the body compresses: {} of {}", packed.payload.len(), raw.len());
        let r = run(&mut kv, 1, Command::IngestPacked(Box::new(packed.clone())));
        let Response::Ingested(res) = r else { panic!("{r:?}") };
        assert_eq!(kv.get(&pk(res.event_id)), Some(packed.payload.clone()));
        assert_eq!(get_payload(&kv, res.event_id), Some(raw.clone()));
        assert_eq!(get_event(&kv, res.event_id).unwrap().payload_bytes, raw.len() as u64);
    }

    /// A log entry of the earlier layout (raw payload) applies to the same state as
    /// the packed command of the same delivery: the migration.
    #[test]
    fn the_raw_layout_applies_like_the_packed_one() {
        let raw = body();
        let (mut old, mut new) = (MemKv::default(), MemKv::default());
        let a = run(&mut old, 1, Command::IngestWebhook(Box::new(delivery("d-1", raw.clone()))));
        let b = run(&mut new, 1, Command::IngestPacked(Box::new(PackedDelivery::from(delivery("d-1", raw)))));
        assert_eq!(a, b);
        assert_eq!(old.0, new.0);
    }

    /// A damaged or oversized payload record (a buggy or hostile forwarder) is refused
    /// in apply: nothing is stored, not even the dedup entry, so the delivery can
    /// still be accepted later with a sound payload.
    #[test]
    fn a_damaged_or_oversized_payload_is_refused_and_changes_nothing() {
        let raw = body();
        let good = PackedDelivery::from(delivery("d-1", raw.clone()));
        let mut lying = good.clone();
        lying.payload[1..5].copy_from_slice(&(crate::sm::payload::MAX_RAW_BYTES as u32 + 1).to_le_bytes());
        let mut damaged = good.clone();
        let n = damaged.payload.len();
        damaged.payload.truncate(n - 5);
        let mut short = good.clone();
        short.payload[1..5].copy_from_slice(&(raw.len() as u32 + 100).to_le_bytes());
        let mut kv = MemKv::default();
        let mut index = 0;
        for bad in [lying, damaged, short] {
            index += 1;
            let before = kv.0.clone();
            let r = run(&mut kv, index, Command::IngestPacked(Box::new(bad)));
            assert!(matches!(&r, Response::Refused { reason } if reason.contains("d-1")), "{r:?}");
            // Only the applied clock moves.
            let changed: Vec<_> = kv.0.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
            assert!(changed.iter().all(|k| k.starts_with("m/")), "a refused ingest wrote {changed:?}");
        }
        let r = run(&mut kv, index + 1, Command::IngestPacked(Box::new(good)));
        assert!(matches!(&r, Response::Ingested(res) if !res.duplicate), "{r:?}");
    }

    /// A replay of an accepted delivery gets the original answer even when the
    /// replayed payload is damaged: the dedup lookup comes before the payload check.
    #[test]
    fn a_replay_with_a_damaged_payload_gets_the_original_answer() {
        let good = PackedDelivery::from(delivery("d-1", body()));
        let mut damaged = good.clone();
        let n = damaged.payload.len();
        damaged.payload.truncate(n - 5);
        let mut kv = MemKv::default();
        let Response::Ingested(first) = run(&mut kv, 1, Command::IngestPacked(Box::new(good))) else { panic!() };
        let before = kv.0.clone();
        let r = run(&mut kv, 2, Command::IngestPacked(Box::new(damaged)));
        let Response::Ingested(again) = r else { panic!("a replay must get the original answer: {r:?}") };
        assert!(again.duplicate);
        assert_eq!((again.event_id, again.status, again.jobs), (first.event_id, first.status, first.jobs));
        let changed: Vec<_> = kv.0.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
        assert!(changed.iter().all(|k| k.starts_with("m/")), "a replay wrote {changed:?}");
    }

    fn record(event_id: u64, repo: &str) -> EventRecord {
        EventRecord {
            event_id,
            delivery_id: format!("d-{event_id}"),
            event: "push".into(),
            action: None,
            repo: Some(repo.into()),
            sender: None,
            received_ms: 0,
            received_by: 1,
            accepted_status: EventStatus::Unmatched,
            status: EventStatus::Unmatched,
            trigger: None,
            command: None,
            jobs: vec![],
            context: BTreeMap::new(),
            payload_bytes: 0,
            retention_ms: 0,
            finished_ms: None,
            expires_ms: None,
            traceparent: String::new(),
        }
    }

    /// Follow the cursor from the start, as a client does; every id found, and the
    /// number of pages (bounded).
    fn list_all(kv: &MemKv, repo: &str, limit: usize) -> (Vec<u64>, usize) {
        let mut f = EventFilter { repo: Some(repo.into()), limit, ..Default::default() };
        let mut found = Vec::new();
        for pages in 1..=100 {
            let page = list_events(kv, &f);
            found.extend(page.items.iter().map(|e| e.event_id));
            match page.next_after {
                Some(next) => {
                    assert!(f.after.is_none_or(|a| next > a), "the cursor must move forward: {next} after {:?}", f.after);
                    f.after = Some(next);
                }
                None => return (found, pages),
            }
        }
        panic!("listing never ended");
    }

    #[test]
    fn a_filtered_listing_continues_past_the_scan_limit() {
        // More non-matching events than one call scans, then a matching one.
        let mut kv = MemKv::default();
        let others = LIST_SCAN_LIMIT as u64 + 10;
        let mut writes = BTreeMap::new();
        for id in 1..=others {
            writes.insert(ek(id), Some(codec::encode(&record(id, "acme/other"))));
        }
        writes.insert(ek(others + 1), Some(codec::encode(&record(others + 1, "acme/api"))));
        kv.commit(writes);

        // The first page is empty but says where to continue.
        let first = list_events(&kv, &EventFilter { repo: Some("acme/api".into()), limit: 10, ..Default::default() });
        assert!(first.items.is_empty());
        assert_eq!(first.next_after, Some(LIST_SCAN_LIMIT as u64));

        let (found, pages) = list_all(&kv, "acme/api", 10);
        assert_eq!(found, vec![others + 1]);
        assert_eq!(pages, 2);
        // Unfiltered paging: the cursor is the last event returned.
        let page = list_events(&kv, &EventFilter { limit: 3, ..Default::default() });
        assert_eq!((page.items.len(), page.next_after), (3, Some(3)));
        let last = list_events(&kv, &EventFilter { limit: 3, after: Some(others - 1), ..Default::default() });
        assert_eq!((last.items.len(), last.next_after), (2, None));
    }
}
