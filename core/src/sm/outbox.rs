//! The completion-callback outbox: a signed notice per finished job of a trigger
//! with `spec.callback`, written by the same command that finishes the job, sent by
//! the leader (`node/src/callbacks.rs`) until a report of a successful attempt
//! removes it.
//!
//! Key space:
//!
//! | key                                        | value                                |
//! |--------------------------------------------|--------------------------------------|
//! | `o/<seq:8><event_id:8><n:1>`               | [`NoticeRecord`] (versioned, below)  |
//! | `oq/<seq:8><event_id:8><n:1>`              | pending index (empty)                |
//! | `ox/<expires_ms:8><seq:8><event_id:8><n:1>`| retention index of dead notices      |
//!
//! `seq` is the sequence number ([`crate::types::seq`]) of the command that finished
//! the job, so notices are kept in the order jobs finished and a job that finishes
//! again (after a redrive) gets a new notice. A record starts with its format version
//! byte (`1`).
//!
//! **Architecture Invariant**: a finished job's notice is in the outbox from the
//! commit that finished it (the same apply writes both), and leaves it only when a
//! `CallbackAttempt` reporting its delivery is committed, or — dead after
//! `max_attempts` failed attempts — when its retention ends. A new leader therefore
//! resends whatever was not confirmed (at least once; receivers dedup by the
//! idempotency key). A report for another attempt than the notice's next one, or for
//! a notice no longer pending, changes nothing. The body is built here,
//! deterministically, so every resend carries the same bytes (and signature).

use serde::{Deserialize, Serialize};

use super::events::{self, JobRecord, JobState};
use super::kv::{prefix_end, KvRead, Overlay};
use crate::codec;
use crate::types::{CallbackAttempt, Response};

const NOTICE: &[u8] = b"o/";
const PENDING: &[u8] = b"oq/";
const EXPIRY: &[u8] = b"ox/";
/// Layout byte of a version-1 record.
const V1: u8 = 1;
/// Dead notices removed per applied command at most.
pub const GC_BUDGET_PER_COMMAND: usize = 16;
/// Dead notices removed by one `Tick` at most.
pub const GC_BUDGET_PER_TICK: usize = 1024;
/// Longest error text kept in a notice.
pub const MAX_ERROR_BYTES: usize = 1024;
/// Most records one listing inspects (bounds one request).
pub const LIST_SCAN_LIMIT: usize = 100_000;

/// Where a notice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeState {
    /// Not yet delivered; the leader sends it.
    Pending,
    /// Failed `max_attempts` times; kept for the event retention, not sent again.
    Dead,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Pending => "pending",
            NoticeState::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A notice in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// `<seq>-<job id>`.
    pub id: String,
    pub state: NoticeState,
    /// `spec.callback.url` of the trigger when the job finished.
    pub url: String,
    /// `spec.callback.secret_env`: the variable the sending node reads the key from.
    pub secret_env: String,
    pub trigger: String,
    pub event_id: u64,
    pub delivery_id: String,
    pub job_id: String,
    /// `completed` or `dead`.
    pub outcome: String,
    /// `<delivery id>/<job id>/<seq>`: the same on every resend of this notice.
    pub idempotency_key: String,
    /// The JSON body, as sent (and signed).
    pub body: String,
    /// When the job finished (leader-stamped).
    pub created_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub last_attempt_ms: Option<u64>,
    pub last_error: Option<String>,
    /// How long a dead notice is kept (the event's retention).
    pub retention_ms: u64,
    pub dead_ms: Option<u64>,
    pub expires_ms: Option<u64>,
}

/// The JSON notice (field order fixed: the body must be byte-identical on resends).
#[derive(Serialize)]
struct Body<'a> {
    notice_id: &'a str,
    idempotency_key: &'a str,
    outcome: &'a str,
    event_id: u64,
    delivery_id: &'a str,
    event: Option<&'a str>,
    action: Option<&'a str>,
    repo: Option<&'a str>,
    trigger: &'a str,
    job_id: &'a str,
    target: Target<'a>,
    result: Option<&'a str>,
    error: Option<&'a str>,
    attempts: u32,
    created_ms: Option<u64>,
    finished_ms: u64,
}

#[derive(Serialize)]
struct Target<'a> {
    kind: String,
    name: &'a str,
}

fn suffix(seq: u64, job_id: &str) -> Option<Vec<u8>> {
    let (e, n) = events::parse_job_id(job_id)?;
    Some([&seq.to_be_bytes()[..], &e.to_be_bytes()[..], &[n]].concat())
}

/// The key suffix of a notice id (`<seq>-<event>-<n>`).
fn suffix_of_id(id: &str) -> Option<Vec<u8>> {
    let (seq, job) = id.split_once('-')?;
    suffix(seq.parse().ok()?, job)
}

fn notice_key(sfx: &[u8]) -> Vec<u8> {
    [NOTICE, sfx].concat()
}
fn pending_key(sfx: &[u8]) -> Vec<u8> {
    [PENDING, sfx].concat()
}
fn expiry_key(expires_ms: u64, sfx: &[u8]) -> Vec<u8> {
    [EXPIRY, &expires_ms.to_be_bytes()[..], sfx].concat()
}

fn encode(r: &NoticeRecord) -> Vec<u8> {
    let mut out = vec![V1];
    out.extend_from_slice(&codec::encode(r));
    out
}

fn decode(v: &[u8]) -> Option<NoticeRecord> {
    match v.split_first() {
        Some((&V1, rest)) => codec::decode(rest).ok(),
        _ => None,
    }
}

/// One notice by id.
pub fn get(state: &dyn KvRead, id: &str) -> Option<NoticeRecord> {
    state
        .get(&notice_key(&suffix_of_id(id)?))
        .and_then(|v| decode(&v))
}

/// A job reached `Completed` or `Dead` in the command with sequence number `seq`:
/// if its trigger names a callback, put a notice in the outbox.
pub(super) fn on_job_finished(state: &mut Overlay<'_>, job: &JobRecord, seq: u64, now: u64) {
    let outcome = match job.state {
        JobState::Completed => "completed",
        JobState::Dead => "dead",
        _ => return,
    };
    let Some(t) = super::triggers::get(state, &job.trigger) else {
        return;
    };
    // Cheap test first: finishing a job is the hot path.
    if !t.doc_json.contains("\"callback\"") {
        return;
    }
    let Some(cb) = crate::github::trigger::callback_of(&t.doc_json) else {
        return;
    };
    let Some(sfx) = suffix(seq, &job.job_id) else {
        return;
    };
    let event = events::get_event(state, job.event_id);
    let id = format!("{seq}-{}", job.job_id);
    let idempotency_key = format!("{}/{}/{seq}", job.delivery_id, job.job_id);
    let body = Body {
        notice_id: &id,
        idempotency_key: &idempotency_key,
        outcome,
        event_id: job.event_id,
        delivery_id: &job.delivery_id,
        event: event.as_ref().map(|e| e.event.as_str()),
        action: event.as_ref().and_then(|e| e.action.as_deref()),
        repo: event.as_ref().and_then(|e| e.repo.as_deref()),
        trigger: &job.trigger,
        job_id: &job.job_id,
        target: Target {
            kind: format!("{:?}", job.route.kind).to_lowercase(),
            name: &job.route.name,
        },
        result: if outcome == "completed" {
            job.result.as_deref()
        } else {
            None
        },
        error: if outcome == "dead" {
            job.last_error.as_deref()
        } else {
            None
        },
        attempts: job.attempts,
        created_ms: event.as_ref().map(|e| e.received_ms),
        finished_ms: now,
    };
    let body = serde_json::to_string(&body).expect("a notice serializes");
    let rec = NoticeRecord {
        id,
        state: NoticeState::Pending,
        url: cb.url,
        secret_env: cb.secret_env,
        trigger: job.trigger.clone(),
        event_id: job.event_id,
        delivery_id: job.delivery_id.clone(),
        job_id: job.job_id.clone(),
        outcome: outcome.to_string(),
        idempotency_key,
        body,
        created_ms: now,
        attempts: 0,
        last_attempt_ms: None,
        last_error: None,
        retention_ms: event.as_ref().map_or(0, |e| e.retention_ms),
        dead_ms: None,
        expires_ms: None,
    };
    state.put(notice_key(&sfx), encode(&rec));
    state.put(pending_key(&sfx), Vec::new());
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_BYTES {
        return s.to_string();
    }
    let mut end = MAX_ERROR_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes truncated)", &s[..end], s.len() - end)
}

/// Apply a [`CallbackAttempt`] report.
pub(super) fn attempt(state: &mut Overlay<'_>, now: u64, a: &CallbackAttempt) -> Response {
    let recorded = |state: &str, attempts, changed| Response::CallbackRecorded {
        id: a.id.clone(),
        state: state.to_string(),
        attempts,
        changed,
    };
    let Some(sfx) = suffix_of_id(&a.id) else {
        return recorded("gone", 0, false);
    };
    let Some(mut rec) = state.get(&notice_key(&sfx)).and_then(|v| decode(&v)) else {
        return recorded("gone", 0, false);
    };
    if rec.state != NoticeState::Pending || a.attempt != rec.attempts.saturating_add(1) {
        return recorded(rec.state.as_str(), rec.attempts, false);
    }
    rec.attempts = a.attempt;
    rec.last_attempt_ms = Some(now);
    if a.delivered {
        state.delete(notice_key(&sfx));
        state.delete(pending_key(&sfx));
        return recorded("delivered", rec.attempts, true);
    }
    rec.last_error = Some(truncate(&a.error));
    if rec.attempts >= a.max_attempts.max(1) {
        let expires = now.saturating_add(rec.retention_ms);
        rec.state = NoticeState::Dead;
        rec.dead_ms = Some(now);
        rec.expires_ms = Some(expires);
        state.delete(pending_key(&sfx));
        state.put(expiry_key(expires, &sfx), Vec::new());
    }
    state.put(notice_key(&sfx), encode(&rec));
    recorded(rec.state.as_str(), rec.attempts, true)
}

/// Remove up to `budget` dead notices whose retention ended at or before `now`.
pub(super) fn expire(state: &mut Overlay<'_>, now: u64, budget: usize) -> u64 {
    let end = [EXPIRY, &now.to_be_bytes()[..], &[0xff; 18]].concat();
    let due: Vec<Vec<u8>> = state
        .range(EXPIRY, &end)
        .take(budget)
        .map(|(k, _)| k)
        .collect();
    for k in &due {
        let sfx = &k[EXPIRY.len() + 8..];
        state.delete(notice_key(sfx));
        state.delete(pending_key(sfx));
        state.delete(k.clone());
    }
    due.len() as u64
}

/// Earliest retention end of a dead notice, if any (the leader ticks then).
pub fn next_expiry(state: &dyn KvRead) -> Option<u64> {
    let (k, _) = state.range(EXPIRY, &prefix_end(EXPIRY)).next()?;
    Some(u64::from_be_bytes(
        k.get(EXPIRY.len()..EXPIRY.len() + 8)?.try_into().ok()?,
    ))
}

/// Up to `limit` pending notices, oldest first (what the leader sends).
pub fn pending(state: &dyn KvRead, limit: usize) -> Vec<NoticeRecord> {
    state
        .range(PENDING, &prefix_end(PENDING))
        .take(limit)
        .filter_map(|(k, _)| {
            state
                .get(&notice_key(&k[PENDING.len()..]))
                .and_then(|v| decode(&v))
        })
        .collect()
}

/// Number of pending notices.
pub fn pending_count(state: &dyn KvRead) -> usize {
    state.range(PENDING, &prefix_end(PENDING)).count()
}

/// Up to `limit` notices in `state` (both when `None`), oldest first, inspecting at
/// most [`LIST_SCAN_LIMIT`] records.
pub fn list(state: &dyn KvRead, filter: Option<NoticeState>, limit: usize) -> Vec<NoticeRecord> {
    if filter == Some(NoticeState::Pending) {
        return pending(state, limit);
    }
    state
        .range(NOTICE, &prefix_end(NOTICE))
        .take(LIST_SCAN_LIMIT)
        .filter_map(|(_, v)| decode(&v))
        .filter(|r| filter.is_none_or(|s| r.state == s))
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{apply, MemKv, Overlay};
    use super::*;
    use crate::github::facts::EventFacts;
    use crate::types::{Command, Delivery, GrantRequest, QueuePolicy, Request, SignedBy};

    const TRIGGER: &str = r#"{"apiVersion":"aof.dev/v1","kind":"Trigger","metadata":{"name":"t"},"spec":{"type":"GitHub","config":{"github_events":["push"]},"default_agent":"a","callback":{"url":"http://127.0.0.1:9/cb","secret_env":"CB_SECRET"}}}"#;
    const PLAIN: &str = r#"{"apiVersion":"aof.dev/v1","kind":"Trigger","metadata":{"name":"t"},"spec":{"type":"GitHub","config":{"github_events":["push"]},"default_agent":"a"}}"#;

    fn run(kv: &mut MemKv, index: u64, time_ms: u64, cmd: Command) -> Response {
        let mut o = Overlay::new(kv);
        let r = apply(&mut o, index, &Request { time_ms, cmd }, Default::default());
        let w = o.into_writes();
        kv.commit(w);
        r
    }

    fn delivery(id: &str) -> Command {
        Command::IngestWebhook(Box::new(Delivery {
            delivery_id: id.into(),
            facts: EventFacts {
                event: "push".into(),
                repo_full_name: Some("acme/api".into()),
                ..Default::default()
            },
            payload: b"{}".to_vec(),
            received_by: 1,
            retention_ms: 10_000,
            traceparent: String::new(),
            signed_by: SignedBy::Daemon,
        }))
    }

    fn policy(max_retries: u32) -> QueuePolicy {
        QueuePolicy {
            lease_timeout_ms: 1000,
            max_retries,
            retry_delay_ms: 10,
            max_retry_delay_ms: 10,
        }
    }

    fn grant(kv: &mut MemKv, index: u64, t: u64) -> (String, u64) {
        let g = GrantRequest {
            worker_id: "w".into(),
            targets: vec![],
            count: 1,
            policy: policy(0),
        };
        match run(kv, index, t, Command::Grant(g)) {
            Response::Granted(v) => (v[0].job_id.clone(), v[0].token),
            r => panic!("{r:?}"),
        }
    }

    fn report(id: &str, attempt: u32, delivered: bool) -> Command {
        Command::CallbackAttempt(CallbackAttempt {
            id: id.into(),
            attempt,
            delivered,
            error: if delivered {
                String::new()
            } else {
                "503".into()
            },
            max_attempts: 3,
        })
    }

    /// A cluster state with trigger `t` (callback or not) and one event (delivery
    /// `d-1`) it matched.
    fn delivered(doc: &str) -> MemKv {
        let mut kv = MemKv::default();
        run(
            &mut kv,
            1,
            1000,
            Command::PutTrigger {
                name: "t".into(),
                doc_json: doc.into(),
                if_match: None,
            },
        );
        run(&mut kv, 2, 1100, delivery("d-1"));
        kv
    }

    /// A cluster state with trigger `t` (callback or not) and one completed job.
    fn completed(doc: &str) -> MemKv {
        let mut kv = delivered(doc);
        let (job, token) = grant(&mut kv, 3, 1200);
        assert_eq!(
            run(
                &mut kv,
                4,
                1300,
                Command::Complete {
                    job_id: job,
                    token,
                    result: "ok".into()
                }
            ),
            Response::Completed
        );
        kv
    }

    #[test]
    fn completing_a_job_writes_its_notice_in_the_same_apply() {
        let kv = completed(TRIGGER);
        let p = pending(&kv, 10);
        assert_eq!(p.len(), 1);
        let n = &p[0];
        assert_eq!(
            (
                n.id.as_str(),
                n.job_id.as_str(),
                n.outcome.as_str(),
                n.attempts
            ),
            ("1024-512-0", "512-0", "completed", 0)
        );
        assert_eq!(n.idempotency_key, "d-1/512-0/1024");
        assert_eq!(
            (
                n.url.as_str(),
                n.secret_env.as_str(),
                n.created_ms,
                n.retention_ms
            ),
            ("http://127.0.0.1:9/cb", "CB_SECRET", 1300, 10_000)
        );
        let body: serde_json::Value = serde_json::from_str(&n.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "notice_id": "1024-512-0", "idempotency_key": "d-1/512-0/1024", "outcome": "completed",
                "event_id": 512, "delivery_id": "d-1", "event": "push", "action": null, "repo": "acme/api",
                "trigger": "t", "job_id": "512-0", "target": {"kind": "agent", "name": "a"},
                "result": "ok", "error": null, "attempts": 1, "created_ms": 1100, "finished_ms": 1300
            })
        );
        // Deterministic: the same log gives the same bytes.
        assert_eq!(completed(TRIGGER), kv);
        // A trigger without a callback writes nothing.
        assert!(pending(&completed(PLAIN), 10).is_empty());
        assert_eq!(
            completed(PLAIN)
                .0
                .keys()
                .filter(|k| k.starts_with(b"o"))
                .count(),
            0
        );
    }

    #[test]
    fn a_dead_lettered_job_gets_a_dead_outcome_notice() {
        let mut kv = delivered(TRIGGER);
        let (job, token) = grant(&mut kv, 3, 1200);
        let fail = Command::Fail {
            job_id: job,
            token,
            error: "boom".into(),
            retryable: true,
            delay_ms: 0,
            policy: policy(0),
        };
        assert!(matches!(
            run(&mut kv, 4, 1300, fail),
            Response::Failed { dead: true, .. }
        ));
        let n = &pending(&kv, 10)[0];
        assert_eq!(n.outcome, "dead");
        let body: serde_json::Value = serde_json::from_str(&n.body).unwrap();
        assert_eq!(
            (body["result"].clone(), body["error"].as_str()),
            (serde_json::Value::Null, Some("boom"))
        );
    }

    #[test]
    fn confirm_is_idempotent_and_stale_reports_change_nothing() {
        let mut kv = completed(TRIGGER);
        let id = pending(&kv, 1)[0].id.clone();
        // A report for an attempt that is not the next one (a former leader's) changes nothing.
        let before = kv.clone();
        assert_eq!(
            run(&mut kv, 5, 1400, report(&id, 2, true)),
            Response::CallbackRecorded {
                id: id.clone(),
                state: "pending".into(),
                attempts: 0,
                changed: false
            }
        );
        let strip_clock = |kv: &MemKv| {
            kv.0.iter()
                .filter(|(k, _)| k.as_slice() != b"m/clock")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip_clock(&kv), strip_clock(&before));
        // A failed attempt is counted; the notice stays pending.
        assert_eq!(
            run(&mut kv, 6, 1500, report(&id, 1, false)),
            Response::CallbackRecorded {
                id: id.clone(),
                state: "pending".into(),
                attempts: 1,
                changed: true
            }
        );
        let n = get(&kv, &id).unwrap();
        assert_eq!(
            (n.attempts, n.last_attempt_ms, n.last_error.as_deref()),
            (1, Some(1500), Some("503"))
        );
        // The same report again (replayed) is stale.
        assert!(matches!(
            run(&mut kv, 7, 1600, report(&id, 1, false)),
            Response::CallbackRecorded {
                changed: false,
                attempts: 1,
                ..
            }
        ));
        // Delivered: the notice and its index are gone.
        assert_eq!(
            run(&mut kv, 8, 1700, report(&id, 2, true)),
            Response::CallbackRecorded {
                id: id.clone(),
                state: "delivered".into(),
                attempts: 2,
                changed: true
            }
        );
        assert!(get(&kv, &id).is_none() && pending(&kv, 10).is_empty());
        assert_eq!(
            kv.0.keys().filter(|k| k.starts_with(b"o")).count(),
            0,
            "confirmed notices leave nothing behind"
        );
        // Confirming again changes nothing.
        let before = strip_clock(&kv);
        assert_eq!(
            run(&mut kv, 9, 1800, report(&id, 3, true)),
            Response::CallbackRecorded {
                id: id.clone(),
                state: "gone".into(),
                attempts: 0,
                changed: false
            }
        );
        assert_eq!(strip_clock(&kv), before);
        // Garbage ids change nothing either.
        assert!(matches!(
            run(&mut kv, 10, 1900, report("nope", 1, true)),
            Response::CallbackRecorded { changed: false, .. }
        ));
    }

    #[test]
    fn a_notice_dies_after_max_attempts_and_expires_with_the_retention() {
        let mut kv = completed(TRIGGER);
        let id = pending(&kv, 1)[0].id.clone();
        for a in 1..=2 {
            assert!(
                matches!(run(&mut kv, 4 + a as u64, 2000, report(&id, a, false)), Response::CallbackRecorded { ref state, .. } if state == "pending")
            );
        }
        assert!(
            matches!(run(&mut kv, 7, 2000, report(&id, 3, false)), Response::CallbackRecorded { ref state, changed: true, .. } if state == "dead")
        );
        assert!(pending(&kv, 10).is_empty());
        let dead = list(&kv, Some(NoticeState::Dead), 10);
        assert_eq!(
            (dead.len(), dead[0].dead_ms, dead[0].expires_ms),
            (1, Some(2000), Some(12_000))
        );
        assert_eq!(list(&kv, None, 10).len(), 1);
        // Dead is final: a late delivered report changes nothing.
        assert!(matches!(
            run(&mut kv, 8, 2100, report(&id, 4, true)),
            Response::CallbackRecorded { changed: false, .. }
        ));
        assert_eq!(next_expiry(&kv), Some(12_000));
        // Before the retention ends it stays; after, any command removes it.
        run(&mut kv, 9, 11_999, Command::Tick { policy: policy(0) });
        assert!(get(&kv, &id).is_some());
        run(&mut kv, 10, 12_000, Command::Tick { policy: policy(0) });
        assert!(get(&kv, &id).is_none());
        assert_eq!(next_expiry(&kv), None);
        assert_eq!(
            kv.0.keys().filter(|k| k.starts_with(b"o")).count(),
            0,
            "bounded: nothing of the notice is left"
        );
    }

    #[test]
    fn every_finish_of_a_job_gets_its_own_notice() {
        // Two deliveries, both completed: two notices, oldest first, distinct keys.
        let mut kv = completed(TRIGGER);
        run(&mut kv, 5, 1400, delivery("d-2"));
        let (job, token) = grant(&mut kv, 6, 1500);
        run(
            &mut kv,
            7,
            1600,
            Command::Complete {
                job_id: job,
                token,
                result: "ok2".into(),
            },
        );
        let p = pending(&kv, 10);
        assert_eq!(
            p.iter().map(|n| n.delivery_id.as_str()).collect::<Vec<_>>(),
            vec!["d-1", "d-2"]
        );
        assert_ne!(p[0].idempotency_key, p[1].idempotency_key);
        assert_eq!(pending_count(&kv), 2);
        assert_eq!(pending(&kv, 1).len(), 1);
    }
}
