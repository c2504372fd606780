//! The queue checker (like Jepsen's total-queue, plus fencing).
//!
//! Inputs: the history (webhook `post`s, worker `lease`s, `extend`s, `complete`s,
//! `fail-job`s) and the final state read after healing and draining (every event
//! with its jobs and their state history, from linearizable reads).
//!
//! Anomalies (any one fails the run):
//! - **lost**: a delivery acknowledged (202, or 200 duplicate) whose event is missing
//!   from the final state (`missing`), whose job is missing or never completed (nor
//!   dead-lettered) after the drain (`unfinished`), or a `Complete` answered OK whose
//!   job is not completed in the final state (`lost_completions`);
//! - **unexpected**: an event whose delivery we never sent, or whose every send
//!   failed definitely; a lease for a job no final event has;
//! - **duplicated**: a delivery with two events, an event with more than one job (the
//!   catch-all trigger makes exactly one), a job with two `Complete`s answered OK or
//!   two `completed` transitions;
//! - **stale_token_accepted**: an `Extend`/`Complete` answered OK although the job had
//!   been granted again under a newer token before the call — known either in real
//!   time (a worker of ours received the newer lease before the call was invoked) or
//!   from the job's history (a grant at a log position between the token and the
//!   completion).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{pairs, Kind, Op, Pair};

/// One transition of a job, as `GET /v1/deliveries/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: String,
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalJob {
    pub job_id: String,
    pub state: String,
    #[serde(default)]
    pub attempts: u64,
    #[serde(default)]
    pub history: Vec<Transition>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalEvent {
    pub event_id: u64,
    pub delivery_id: String,
    pub status: String,
    #[serde(default)]
    pub jobs: Vec<FinalJob>,
}

/// What the final reads found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// Every event the cluster holds (from `GET /v1/events`, all pages).
    pub events: Vec<FinalEvent>,
    /// False if the final reads could not finish: lost/unexpected are then unknown.
    pub complete: bool,
    /// Items of the final reads that did not parse as events (with why): the final
    /// state is then incomplete too, and the report says so.
    #[serde(default)]
    pub unparsed: Vec<String>,
}

impl FinalState {
    /// Parse `GET /v1/events` items / `GET /v1/deliveries/{id}` bodies.
    pub fn event_from_json(v: &Value) -> Option<FinalEvent> {
        serde_json::from_value(v.clone()).ok()
    }

    /// Add the items of one page of `GET /v1/events`; an item that does not parse is
    /// kept in `unparsed`, never dropped silently.
    pub fn push_items(&mut self, items: &[Value]) {
        for item in items {
            match serde_json::from_value::<FinalEvent>(item.clone()) {
                Ok(e) => self.events.push(e),
                Err(e) => {
                    let mut text = item.to_string();
                    text.truncate(200);
                    self.unparsed.push(format!("{e}: {text}"));
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueReport {
    /// Distinct deliveries sent.
    pub attempted: usize,
    /// Distinct deliveries acknowledged (202 or 200 duplicate).
    pub acked: usize,
    /// Deliveries whose every send was indeterminate (503 / timeout) or failed.
    pub unacked: usize,
    /// Unacknowledged deliveries that exist anyway (allowed for indeterminate sends).
    pub unacked_present: usize,
    pub leases: usize,
    pub completes_ok: usize,
    pub completes_rejected: usize,
    pub completes_info: usize,
    pub extends_ok: usize,
    pub extends_rejected: usize,
    pub fails_ok: usize,
    /// Jobs completed in the final state.
    pub completed: usize,
    /// Jobs that took more than one attempt.
    pub retried: usize,
    /// Jobs in the dead-letter queue.
    pub dead_lettered: usize,
    pub final_events: usize,
    pub final_read_complete: bool,
    /// Items of the final read that did not parse (the read counts as incomplete).
    pub final_unparsed: Vec<String>,

    pub missing: Vec<String>,
    pub unfinished: Vec<String>,
    pub lost_completions: Vec<String>,
    pub unexpected: Vec<String>,
    pub duplicated: Vec<String>,
    pub stale_token_accepted: Vec<String>,
}

impl QueueReport {
    pub fn lost(&self) -> usize {
        self.missing.len() + self.unfinished.len() + self.lost_completions.len()
    }
    pub fn valid(&self) -> Option<bool> {
        if self.lost() > 0
            || !self.unexpected.is_empty()
            || !self.duplicated.is_empty()
            || !self.stale_token_accepted.is_empty()
        {
            Some(false)
        } else if !self.final_read_complete {
            None
        } else {
            Some(true)
        }
    }
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}
fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

/// A token-carrying call (extend / complete / fail-job) of a worker.
struct Call<'a> {
    pair: &'a Pair,
    job: String,
    token: u64,
}

pub fn check(ops: &[Op], fin: &FinalState) -> QueueReport {
    let ps = pairs(ops);
    // An item that did not parse could be any delivery's event: nothing can be
    // called missing or unexpected then.
    let complete = fin.complete && fin.unparsed.is_empty();
    let mut r = QueueReport {
        final_read_complete: complete,
        final_events: fin.events.len(),
        final_unparsed: fin.unparsed.clone(),
        ..Default::default()
    };

    // --- deliveries sent ---
    // delivery -> (acked, any indeterminate, any definite fail)
    let mut sent: BTreeMap<String, (bool, bool, bool)> = BTreeMap::new();
    // delivery -> time of the first acknowledgement
    for p in ps.iter().filter(|p| p.invoke.f == "post") {
        let Some(d) = s(&p.invoke.value, "delivery") else {
            continue;
        };
        let e = sent.entry(d).or_default();
        match p.kind() {
            Kind::Ok => e.0 = true,
            Kind::Fail => e.2 = true,
            _ => e.1 = true,
        }
    }
    r.attempted = sent.len();
    r.acked = sent.values().filter(|v| v.0).count();
    r.unacked = r.attempted - r.acked;

    // --- final state, by delivery and by job ---
    let mut by_delivery: BTreeMap<&str, Vec<&FinalEvent>> = BTreeMap::new();
    let mut jobs: BTreeMap<&str, (&FinalEvent, &FinalJob)> = BTreeMap::new();
    for ev in &fin.events {
        by_delivery
            .entry(ev.delivery_id.as_str())
            .or_default()
            .push(ev);
        for j in &ev.jobs {
            if jobs.insert(j.job_id.as_str(), (ev, j)).is_some() {
                r.duplicated
                    .push(format!("job {} appears in two events", j.job_id));
            }
            match j.state.as_str() {
                "completed" => r.completed += 1,
                "dead" => r.dead_lettered += 1,
                _ => {}
            }
            if j.attempts > 1 {
                r.retried += 1;
            }
            let completions = j.history.iter().filter(|t| t.state == "completed").count();
            if completions > 1 {
                r.duplicated.push(format!(
                    "job {} (delivery {}) has {completions} completed transitions",
                    j.job_id, ev.delivery_id
                ));
            }
        }
    }
    for (d, evs) in &by_delivery {
        if evs.len() > 1 {
            let ids: Vec<u64> = evs.iter().map(|e| e.event_id).collect();
            r.duplicated
                .push(format!("delivery {d} has {} events {ids:?}", evs.len()));
        }
        for ev in evs {
            if ev.jobs.len() > 1 {
                r.duplicated.push(format!(
                    "delivery {d} (event {}) has {} jobs; the catch-all makes one",
                    ev.event_id,
                    ev.jobs.len()
                ));
            }
        }
    }

    if complete {
        for (d, (acked, info, failed)) in &sent {
            let present = by_delivery.get(d.as_str());
            if *acked {
                match present {
                    None => r.missing.push(format!(
                        "delivery {d}: acknowledged, but no event in the final state"
                    )),
                    Some(evs) => {
                        let ev = evs[0];
                        match ev.jobs.first() {
                            None => r.unfinished.push(format!(
                                "delivery {d} (event {}, status {}): no job",
                                ev.event_id, ev.status
                            )),
                            // A dead-lettered job was given up, not done (the harness
                            // sets max_retries so high that none should be).
                            Some(j) if j.state == "dead" => r.unfinished.push(format!(
                                "delivery {d}: job {} was dead-lettered after {} attempts, never completed",
                                j.job_id, j.attempts
                            )),
                            Some(j) if j.state != "completed" => {
                                r.unfinished.push(format!(
                                    "delivery {d}: job {} is {} after the drain (attempts {})",
                                    j.job_id, j.state, j.attempts
                                ))
                            }
                            _ => {}
                        }
                    }
                }
            } else if present.is_some() {
                if *info {
                    r.unacked_present += 1;
                } else if *failed {
                    r.unexpected.push(format!(
                        "delivery {d}: every send failed definitely, yet the event exists"
                    ));
                }
            }
        }
        for (d, evs) in &by_delivery {
            if !sent.contains_key(*d) {
                r.unexpected.push(format!(
                    "event {} for delivery {d}, which was never sent",
                    evs[0].event_id
                ));
            }
        }
    }

    // --- worker calls ---
    // job -> grants observed by our workers: (token, time received)
    let mut observed: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for p in ps
        .iter()
        .filter(|p| p.invoke.f == "lease" && p.kind() == Kind::Ok)
    {
        let v = p.value();
        if let (Some(job), Some(token)) = (s(v, "job"), u(v, "token")) {
            r.leases += 1;
            let t = p.complete_time().unwrap_or(p.invoke.time);
            observed.entry(job.clone()).or_default().push((token, t));
            if complete && !jobs.contains_key(job.as_str()) {
                r.unexpected.push(format!(
                    "lease of job {job} (token {token}), which no final event has"
                ));
            }
        }
    }
    let calls: Vec<Call> = ps
        .iter()
        .filter(|p| matches!(p.invoke.f.as_str(), "extend" | "complete" | "fail-job"))
        .filter_map(|p| {
            Some(Call {
                pair: p,
                job: s(&p.invoke.value, "job")?,
                token: u(&p.invoke.value, "token")?,
            })
        })
        .collect();
    let mut ok_completes: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in &calls {
        let f = c.pair.invoke.f.as_str();
        match (f, c.pair.kind()) {
            ("complete", Kind::Ok) => {
                r.completes_ok += 1;
                ok_completes.entry(c.job.as_str()).or_default().push(c);
            }
            ("complete", Kind::Fail) => r.completes_rejected += 1,
            ("complete", _) => r.completes_info += 1,
            ("extend", Kind::Ok) => r.extends_ok += 1,
            ("extend", Kind::Fail) => r.extends_rejected += 1,
            ("fail-job", Kind::Ok) => r.fails_ok += 1,
            _ => {}
        }
        if c.pair.kind() != Kind::Ok || f == "fail-job" {
            continue;
        }
        // The caller itself had read (linearizably) that the job was granted again.
        let invoked = c.pair.invoke.time;
        if let Some(g) = u(&c.pair.invoke.value, "seen_grant").filter(|g| *g > c.token) {
            r.stale_token_accepted.push(format!(
                "{f} of job {} with token {} answered OK, though the caller had already read a newer grant at index {g}",
                c.job, c.token
            ));
            continue;
        }
        // Real time: a newer lease of this job was in a worker's hands before the call.
        if let Some((newer, at)) = observed.get(&c.job).and_then(|g| {
            g.iter()
                .filter(|(t, at)| *t > c.token && *at < invoked)
                .max_by_key(|(t, _)| *t)
        }) {
            r.stale_token_accepted.push(format!(
                "{f} of job {} with token {} answered OK at {:.3}s, but token {newer} had been granted by {:.3}s",
                c.job,
                c.token,
                c.pair.complete_time().unwrap_or(invoked) as f64 / 1e9,
                *at as f64 / 1e9
            ));
        }
    }
    for (job, cs) in &ok_completes {
        if cs.len() > 1 {
            let tokens: Vec<u64> = cs.iter().map(|c| c.token).collect();
            r.duplicated.push(format!(
                "job {job}: {} Complete calls answered OK (tokens {tokens:?})",
                cs.len()
            ));
        }
        let Some((ev, fj)) = jobs.get(job) else {
            if complete {
                r.unexpected.push(format!(
                    "Complete of job {job} answered OK, but no final event has that job"
                ));
            }
            continue;
        };
        if fj.state != "completed" && fj.state != "purged" {
            r.lost_completions.push(format!(
                "job {job} (delivery {}): Complete answered OK, but the job is {} in the final state",
                ev.delivery_id, fj.state
            ));
        }
        // Log order: with one accepted Complete, the completion at position c must not
        // follow a grant newer than its token.
        if cs.len() == 1 {
            let token = cs[0].token;
            if let Some(c) = fj
                .history
                .iter()
                .find(|t| t.state == "completed")
                .map(|t| t.index)
            {
                let mut grants: BTreeSet<u64> = fj
                    .history
                    .iter()
                    .filter(|t| t.state == "leased")
                    .map(|t| t.index)
                    .collect();
                grants.extend(observed.get(*job).into_iter().flatten().map(|(t, _)| *t));
                if let Some(g) = grants.range(token + 1..c).next_back() {
                    let msg = format!(
                        "complete of job {job} with token {token} accepted at log position {c}, after the job was granted again at {g}"
                    );
                    if !r.stale_token_accepted.iter().any(|m| {
                        m.starts_with(&format!("complete of job {job} with token {token} "))
                    }) {
                        r.stale_token_accepted.push(msg);
                    }
                }
            }
        }
    }
    r.missing.sort();
    r.unfinished.sort();
    r.duplicated.sort();
    r.duplicated.dedup();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::json;

    fn job(id: &str, state: &str, hist: &[(&str, u64)]) -> FinalJob {
        FinalJob {
            job_id: id.into(),
            state: state.into(),
            attempts: hist.iter().filter(|(s, _)| *s == "leased").count() as u64,
            history: hist
                .iter()
                .map(|(s, i)| Transition {
                    state: s.to_string(),
                    at_ms: 0,
                    index: *i,
                    note: None,
                })
                .collect(),
        }
    }
    fn ev(id: u64, d: &str, jobs: Vec<FinalJob>) -> FinalEvent {
        FinalEvent {
            event_id: id,
            delivery_id: d.into(),
            status: "completed".into(),
            jobs,
        }
    }
    fn post(h: &mut H, p: u64, d: &str, outcome: &str) {
        h.invoke(p, "post", "", json!({"delivery": d}));
        match outcome {
            "ok" => h.ok(p, "post", "", json!({"delivery": d, "code": 202})),
            "info" => h.info(p, "post", "", Value::Null),
            _ => h.fail(p, "post", "", Value::Null, "connection refused"),
        };
    }
    fn lease(h: &mut H, p: u64, job: &str, token: u64) {
        h.invoke(p, "lease", "", Value::Null).ok(
            p,
            "lease",
            "",
            json!({"job": job, "token": token}),
        );
    }
    fn call(h: &mut H, p: u64, f: &str, job: &str, token: u64, ok: bool) {
        h.invoke(p, f, "", json!({"job": job, "token": token}));
        if ok {
            h.ok(p, f, "", Value::Null);
        } else {
            h.fail(p, f, "", Value::Null, "stale fencing token");
        }
    }

    #[test]
    fn clean_history_passes_with_counts() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        post(&mut h, 1, "d2", "info");
        post(&mut h, 1, "d3", "fail");
        lease(&mut h, 10, "j1", 5);
        // lease expired, re-granted to another worker; the late call is rejected
        lease(&mut h, 11, "j1", 9);
        call(&mut h, 10, "complete", "j1", 5, false);
        call(&mut h, 11, "extend", "j1", 9, true);
        call(&mut h, 11, "complete", "j1", 9, true);
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![
                ev(
                    1,
                    "d1",
                    vec![job(
                        "j1",
                        "completed",
                        &[
                            ("ready", 4),
                            ("leased", 5),
                            ("ready", 8),
                            ("leased", 9),
                            ("completed", 12),
                        ],
                    )],
                ),
                ev(
                    2,
                    "d2",
                    vec![job(
                        "j2",
                        "completed",
                        &[("ready", 6), ("leased", 7), ("completed", 10)],
                    )],
                ),
            ],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.valid(), Some(true), "{r:#?}");
        assert_eq!(
            (r.attempted, r.acked, r.unacked, r.unacked_present),
            (3, 1, 2, 1)
        );
        assert_eq!(
            (r.leases, r.completes_ok, r.completes_rejected, r.extends_ok),
            (2, 1, 1, 1)
        );
        assert_eq!((r.completed, r.retried, r.dead_lettered), (2, 1, 0));
    }

    #[test]
    fn acknowledged_but_missing_or_unfinished_is_lost() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        post(&mut h, 1, "d2", "ok");
        post(&mut h, 1, "d3", "ok");
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![
                ev(2, "d2", vec![job("j2", "ready", &[("ready", 3)])]),
                ev(
                    3,
                    "d3",
                    vec![job(
                        "j3",
                        "dead",
                        &[("ready", 4), ("leased", 5), ("dead", 6)],
                    )],
                ),
            ],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.valid(), Some(false));
        assert_eq!(r.missing.len(), 1, "{r:#?}");
        assert!(r.missing[0].contains("d1"));
        // d2's job is still ready; d3's was dead-lettered: given up, not done.
        assert_eq!(r.unfinished.len(), 2, "{r:#?}");
        assert!(r.unfinished.iter().any(|u| u.contains("d3") && u.contains("dead-lettered")), "{r:#?}");
        assert_eq!(r.lost(), 3);
        assert_eq!(r.dead_lettered, 1);
    }

    #[test]
    fn a_complete_acknowledged_then_undone_is_lost() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        lease(&mut h, 10, "j1", 5);
        call(&mut h, 10, "complete", "j1", 5, true);
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![ev(
                1,
                "d1",
                vec![job("j1", "dead", &[("leased", 5), ("dead", 9)])],
            )],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.lost_completions.len(), 1, "{r:#?}");
        assert_eq!(r.valid(), Some(false));
    }

    #[test]
    fn unknown_events_and_failed_sends_that_exist_are_unexpected() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "fail");
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![
                ev(1, "d1", vec![job("j1", "completed", &[])]),
                ev(2, "zz", vec![job("j2", "completed", &[])]),
            ],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.unexpected.len(), 2, "{r:#?}");
        assert_eq!(r.valid(), Some(false));
    }

    #[test]
    fn two_events_two_jobs_or_two_accepted_completes_are_duplicates() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        post(&mut h, 1, "d2", "ok");
        post(&mut h, 1, "d3", "ok");
        lease(&mut h, 10, "j3", 5);
        call(&mut h, 10, "complete", "j3", 5, true);
        call(&mut h, 10, "complete", "j3", 5, true);
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![
                ev(1, "d1", vec![job("j1", "completed", &[])]),
                ev(2, "d1", vec![job("j1b", "completed", &[])]),
                ev(
                    3,
                    "d2",
                    vec![job("j2", "completed", &[]), job("j2b", "completed", &[])],
                ),
                ev(
                    4,
                    "d3",
                    vec![job("j3", "completed", &[("leased", 5), ("completed", 6)])],
                ),
            ],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.duplicated.len(), 3, "{r:#?}");
        assert_eq!(r.valid(), Some(false));
    }

    #[test]
    fn stale_token_accepted_in_real_time_and_by_log_position() {
        // Real time: worker 11 held token 9 before worker 10's Complete(5) got OK.
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        lease(&mut h, 10, "j1", 5);
        lease(&mut h, 11, "j1", 9);
        call(&mut h, 10, "extend", "j1", 5, true);
        call(&mut h, 10, "complete", "j1", 5, true);
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![ev(
                1,
                "d1",
                vec![job(
                    "j1",
                    "completed",
                    &[
                        ("leased", 5),
                        ("ready", 8),
                        ("leased", 9),
                        ("completed", 12),
                    ],
                )],
            )],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.stale_token_accepted.len(), 2, "{r:#?}");
        assert_eq!(r.valid(), Some(false));

        // Log index only: the newer grant was never seen by our workers.
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        lease(&mut h, 10, "j1", 5);
        call(&mut h, 10, "complete", "j1", 5, true);
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![ev(
                1,
                "d1",
                vec![job(
                    "j1",
                    "completed",
                    &[
                        ("leased", 5),
                        ("ready", 8),
                        ("leased", 9),
                        ("completed", 12),
                    ],
                )],
            )],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.stale_token_accepted.len(), 1, "{r:#?}");
        assert!(
            r.stale_token_accepted[0].contains("granted again at 9"),
            "{r:#?}"
        );
    }

    #[test]
    fn a_call_made_after_reading_a_newer_grant_must_be_refused() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        lease(&mut h, 10, "j1", 5);
        h.invoke(
            10,
            "extend",
            "",
            json!({"job": "j1", "token": 5, "seen_grant": 9}),
        )
        .ok(10, "extend", "", Value::Null);
        h.invoke(
            10,
            "complete",
            "",
            json!({"job": "j1", "token": 5, "seen_grant": 9}),
        )
        .fail(10, "complete", "", Value::Null, "FailedPrecondition");
        let fin = FinalState {
            complete: true,
            unparsed: vec![],
            events: vec![ev(
                1,
                "d1",
                vec![job(
                    "j1",
                    "completed",
                    &[
                        ("leased", 5),
                        ("ready", 8),
                        ("leased", 9),
                        ("completed", 12),
                    ],
                )],
            )],
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.stale_token_accepted.len(), 1, "{r:#?}");
        assert!(r.stale_token_accepted[0].starts_with("extend"));
    }

    #[test]
    fn incomplete_final_read_is_unknown_not_lost() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        let r = check(
            &h.done(),
            &FinalState {
                complete: false,
                unparsed: vec![],
                events: vec![],
            },
        );
        assert_eq!(r.lost(), 0);
        assert_eq!(r.valid(), None);
    }

    #[test]
    fn a_dead_lettered_job_of_an_acknowledged_delivery_is_not_done() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        let fin = FinalState {
            complete: true,
            events: vec![ev(1, "d1", vec![job("j1", "dead", &[("ready", 2), ("leased", 3), ("dead", 4)])])],
            ..Default::default()
        };
        let r = check(&h.done(), &fin);
        assert_eq!(r.valid(), Some(false), "{r:#?}");
        assert_eq!(r.unfinished.len(), 1);
        assert!(r.unfinished[0].contains("dead-lettered"), "{r:#?}");
    }

    #[test]
    fn final_items_that_do_not_parse_are_kept_and_make_the_read_incomplete() {
        let mut h = H::new();
        post(&mut h, 1, "d1", "ok");
        post(&mut h, 1, "d2", "ok");
        let mut fin = FinalState { complete: true, ..Default::default() };
        fin.push_items(&[
            json!({"event_id": 1, "delivery_id": "d1", "status": "completed", "jobs": [{"job_id": "j1", "state": "completed"}]}),
            // d2's event, in a shape this checker does not know
            json!({"event_id": "two", "delivery_id": "d2"}),
        ]);
        assert_eq!((fin.events.len(), fin.unparsed.len()), (1, 1), "{fin:#?}");
        assert!(fin.unparsed[0].contains("\"delivery_id\":\"d2\""), "{fin:#?}");
        let r = check(&h.done(), &fin);
        // Not "d2 missing" (its event may be the unparsed item), and not valid.
        assert!(r.missing.is_empty(), "{r:#?}");
        assert_eq!(r.valid(), None);
        assert_eq!(r.final_unparsed.len(), 1);
    }
}
