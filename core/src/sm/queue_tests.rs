//! Exact-output tests of the queue core: commands in, responses and state out,
//! with time passed in by hand (no sockets, no sleeps).

use super::events::{self, JobState};
use super::queue;
use super::{apply, MemKv, Overlay};
use crate::github::facts::EventFacts;
use crate::types::{Command, Delivery, GrantRequest, QueuePolicy, Request, Response};

const POLICY: QueuePolicy = QueuePolicy { lease_timeout_ms: 30_000, max_retries: 3, retry_delay_ms: 1000, max_retry_delay_ms: 60_000 };

/// A state machine driven by hand: each command gets the next log index.
struct Sm {
    kv: MemKv,
    index: u64,
}

impl Sm {
    fn new() -> Self {
        Sm { kv: MemKv::default(), index: 0 }
    }
    fn run(&mut self, now: u64, cmd: Command) -> Response {
        self.index += 1;
        let mut o = Overlay::new(&self.kv);
        let r = apply(&mut o, self.index, &Request { time_ms: now, cmd }, Default::default());
        let w = o.into_writes();
        self.kv.commit(w);
        // The backlog counter apply keeps equals a count of the indexes after every
        // command of every test here.
        let counted = events::count_backlog(&self.kv, usize::MAX);
        assert_eq!(events::stored_backlog(&self.kv).unwrap_or(0), counted as u64, "backlog counter after {r:?}");
        r
    }
    fn trigger(&mut self, name: &str, spec: &str) {
        let yaml = format!("apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n{spec}");
        let doc = crate::registry::canonical_trigger(name, yaml.as_bytes()).unwrap();
        let r = self.run(0, Command::PutTrigger { name: name.into(), doc_json: doc, if_match: None });
        assert!(matches!(r, Response::TriggerPut { .. }), "{r:?}");
    }
    /// Ingest a delivery; returns its job id.
    fn deliver(&mut self, now: u64, id: &str, event: &str, repo: &str) -> String {
        let facts = EventFacts {
            event: event.into(),
            repo_full_name: Some(repo.into()),
            org: repo.split('/').next().map(str::to_string),
            ..Default::default()
        };
        let d = Delivery { delivery_id: id.into(), facts, payload: b"{}".to_vec(), received_by: 1, retention_ms: 3_600_000, traceparent: String::new(), signed_by: Default::default() };
        match self.run(now, Command::IngestWebhook(Box::new(d))) {
            Response::Ingested(r) => r.jobs.first().cloned().unwrap_or_else(|| panic!("no job for {id}: {r:?}")),
            other => panic!("{other:?}"),
        }
    }
    fn grant(&mut self, now: u64, count: u32) -> Vec<(String, u64, u32)> {
        match self.run(now, Command::Grant(GrantRequest { worker_id: "w".into(), targets: vec![], count, policy: POLICY })) {
            Response::Granted(v) => v.into_iter().map(|l| (l.job_id, l.token, l.attempt)).collect(),
            other => panic!("{other:?}"),
        }
    }
    fn job(&self, id: &str) -> events::JobRecord {
        events::get_job(&self.kv, id).unwrap()
    }
    fn tick(&mut self, now: u64) -> Response {
        self.run(now, Command::Tick { policy: POLICY })
    }
}

fn catch_all(sm: &mut Sm) {
    sm.trigger("all", "  type: GitHub\n  config: {}\n  default_agent: worker\n");
}

#[test]
fn lease_expiry_retries_on_the_backoff_schedule_then_dead_letters() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    let mut now = 1_000;
    let mut retry_at = Vec::new();
    for attempt in 1..=4u32 {
        let g = sm.grant(now, 1);
        assert_eq!(g.len(), 1, "attempt {attempt}");
        assert_eq!(g[0].2, attempt);
        // Nothing happens before the deadline...
        assert!(matches!(sm.tick(now + 29_999), Response::Ticked { expired_leases: 0, .. }));
        // ...and at the deadline the lease expires.
        now += 30_000;
        let r = sm.tick(now);
        assert!(matches!(r, Response::Ticked { expired_leases: 1, .. }), "{r:?}");
        let j = sm.job(&job);
        if attempt <= 3 {
            assert_eq!(j.state, JobState::Delayed);
            assert_eq!(j.ready_at_ms - now, queue::backoff_ms(&POLICY, &job, attempt));
            retry_at.push(j.ready_at_ms - now);
            // Not grantable until the backoff has passed.
            assert!(sm.grant(j.ready_at_ms - 1, 1).is_empty());
            now = j.ready_at_ms;
        } else {
            assert_eq!(j.state, JobState::Dead);
            assert!(j.last_error.unwrap().contains("lease expired"));
        }
    }
    // Exponential: 1 s, 2 s, 4 s (+ up to 10 % jitter).
    for (k, d) in retry_at.iter().enumerate() {
        let base = 1000u64 << k;
        assert!(*d >= base && *d <= base + base / 10, "retry {k}: {d} ms");
    }
    assert_eq!(queue::list_dead(&sm.kv, 10).len(), 1);
    let e = events::get_event(&sm.kv, sm.job(&job).event_id).unwrap();
    assert_eq!(e.status, crate::types::EventStatus::Failed);
}

#[test]
fn a_stale_token_is_rejected_after_re_lease_and_changes_nothing() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(0, "d1", "push", "acme/api");
    let (_, old_token, _) = sm.grant(0, 1)[0].clone();
    sm.tick(30_000); // expires → delayed
    let ready = sm.job(&job).ready_at_ms;
    let (_, new_token, attempt) = sm.grant(ready, 1)[0].clone();
    assert_eq!(attempt, 2);
    assert!(new_token > old_token);
    let before = sm.kv.clone();
    for cmd in [
        Command::Complete { job_id: job.clone(), token: old_token, result: "late".into() },
        Command::Extend { job_id: job.clone(), token: old_token, extend_ms: 1000 },
        Command::Fail { job_id: job.clone(), token: old_token, error: "x".into(), retryable: true, delay_ms: 0, policy: POLICY },
    ] {
        let r = sm.run(ready + 1, cmd);
        assert!(matches!(&r, Response::StaleToken { reason, .. } if reason.contains(&new_token.to_string())), "{r:?}");
    }
    // Only the clock key may differ: the job and every index are untouched.
    let diff: Vec<_> = sm.kv.0.iter().filter(|(k, v)| before.0.get(*k) != Some(v)).map(|(k, _)| String::from_utf8_lossy(k).to_string()).collect();
    assert!(diff.iter().all(|k| k == "m/clock"), "stale commands changed {diff:?}");
    // The current token completes it exactly once.
    assert_eq!(sm.run(ready + 2, Command::Complete { job_id: job.clone(), token: new_token, result: "ok".into() }), Response::Completed);
    assert!(matches!(sm.run(ready + 3, Command::Complete { job_id: job.clone(), token: new_token, result: "again".into() }), Response::StaleToken { .. }));
    assert_eq!(sm.job(&job).state, JobState::Completed);
    assert_eq!(sm.job(&job).result.as_deref(), Some("ok"));
}

#[test]
fn fail_not_retryable_dead_letters_at_once_and_redrive_runs_it_again() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(0, "d1", "push", "acme/api");
    let (_, t, _) = sm.grant(0, 1)[0].clone();
    let r = sm.run(5, Command::Fail { job_id: job.clone(), token: t, error: "bad input".into(), retryable: false, delay_ms: 0, policy: POLICY });
    assert_eq!(r, Response::Failed { dead: true, ready_at_ms: 0 });
    assert_eq!(queue::stats(&sm.kv)[0].dead, 1);
    assert_eq!(sm.run(6, Command::Redrive { job_id: Some("9-0".into()) }), Response::JobNotFound { job_id: "9-0".into() });
    assert_eq!(sm.run(7, Command::Redrive { job_id: None }), Response::Redriven { jobs: vec![job.clone()] });
    let j = sm.job(&job);
    assert_eq!((j.state, j.attempts), (JobState::Ready, 0));
    let e = events::get_event(&sm.kv, j.event_id).unwrap();
    assert_eq!((e.status, e.expires_ms), (crate::types::EventStatus::Queued, None));
    let (_, t2, attempt) = sm.grant(8, 1)[0].clone();
    assert_eq!(attempt, 1);
    assert_eq!(sm.run(9, Command::Complete { job_id: job.clone(), token: t2, result: String::new() }), Response::Completed);
    // Retryable failure with an explicit delay waits at least that long.
    let job2 = sm.deliver(10, "d2", "push", "acme/api");
    let (_, t3, _) = sm.grant(10, 1)[0].clone();
    let r = sm.run(11, Command::Fail { job_id: job2.clone(), token: t3, error: "busy".into(), retryable: true, delay_ms: 50_000, policy: POLICY });
    assert_eq!(r, Response::Failed { dead: false, ready_at_ms: 50_011 });
    // Purge empties the DLQ.
    let job3 = sm.deliver(12, "d3", "push", "acme/api");
    let (_, t4, _) = sm.grant(12, 1)[0].clone();
    sm.run(13, Command::Fail { job_id: job3.clone(), token: t4, error: "x".into(), retryable: false, delay_ms: 0, policy: POLICY });
    assert_eq!(sm.run(14, Command::Purge { job_id: None }), Response::Purged { jobs: vec![job3.clone()] });
    assert!(queue::list_dead(&sm.kv, 10).is_empty());
}

#[test]
fn higher_priority_first_fifo_within_a_priority() {
    let mut sm = Sm::new();
    sm.trigger("a-critical", "  type: GitHub\n  priority: critical\n  config: {github_events: [deployment]}\n  default_agent: deployer\n");
    sm.trigger("b-low", "  type: GitHub\n  priority: low\n  config: {github_events: [star]}\n  default_agent: thanks\n");
    sm.trigger("c-normal", "  type: GitHub\n  config: {}\n  default_agent: worker\n");
    let l1 = sm.deliver(0, "1", "star", "a/b");
    let n1 = sm.deliver(1, "2", "push", "a/b");
    let c1 = sm.deliver(2, "3", "deployment", "a/b");
    let n2 = sm.deliver(3, "4", "issues", "a/b");
    let c2 = sm.deliver(4, "5", "deployment", "a/b");
    let order: Vec<String> = sm.grant(5, 10).into_iter().map(|g| g.0).collect();
    assert_eq!(order, vec![c1, c2, n1, n2, l1]);
}

#[test]
fn grants_only_serve_the_requested_targets() {
    let mut sm = Sm::new();
    sm.trigger("a", "  type: GitHub\n  config: {github_events: [push]}\n  default_agent: builder\n");
    sm.trigger("b", "  type: GitHub\n  config: {}\n  default_agent: other\n");
    sm.deliver(0, "1", "issues", "a/b");
    let push = sm.deliver(1, "2", "push", "a/b");
    let r = sm.run(2, Command::Grant(GrantRequest { worker_id: "w".into(), targets: vec!["builder".into()], count: 5, policy: POLICY }));
    let Response::Granted(v) = r else { panic!() };
    assert_eq!(v.iter().map(|l| l.job_id.clone()).collect::<Vec<_>>(), vec![push]);
    assert!(queue::has_ready(&sm.kv, &["other".into()]));
    assert!(!queue::has_ready(&sm.kv, &["builder".into()]));
}

#[test]
fn rate_limit_holds_jobs_then_releases_them_as_the_bucket_refills() {
    let mut sm = Sm::new();
    sm.trigger("limited", "  type: GitHub\n  config:\n    rate_limit: {per: org, events_per_minute: 60, burst: 2}\n  default_agent: worker\n");
    let jobs: Vec<String> = (0..5).map(|k| sm.deliver(0, &format!("d{k}"), "push", "acme/api")).collect();
    // Burst of 2, then nothing until a token refills (60/min = one per second).
    assert_eq!(sm.grant(0, 10).len(), 2);
    assert!(sm.grant(999, 10).is_empty());
    assert_eq!(queue::stats(&sm.kv)[0].ready, 3, "held jobs wait, never dropped");
    assert_eq!(sm.grant(1_000, 10).len(), 1);
    let rest: Vec<String> = sm.grant(3_000, 10).into_iter().map(|g| g.0).collect();
    assert_eq!(rest, jobs[3..].to_vec());
    // Another organisation has its own bucket.
    sm.deliver(3_000, "other", "push", "globex/api");
    assert_eq!(sm.grant(3_000, 10).len(), 1);
}

#[test]
fn extend_pushes_the_deadline_and_retention_expires_finished_events() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(0, "d1", "push", "acme/api");
    let (_, t, _) = sm.grant(0, 1)[0].clone();
    assert_eq!(sm.run(20_000, Command::Extend { job_id: job.clone(), token: t, extend_ms: 30_000 }), Response::Extended { deadline_ms: 50_000 });
    assert!(matches!(sm.tick(40_000), Response::Ticked { expired_leases: 0, .. }));
    assert_eq!(sm.run(45_000, Command::Complete { job_id: job.clone(), token: t, result: "done".into() }), Response::Completed);
    let e = events::get_event(&sm.kv, sm.job(&job).event_id).unwrap();
    assert_eq!(e.expires_ms, Some(45_000 + 3_600_000));
    // Replays inside retention are duplicates; after it the event, payload, job and
    // dedup entry are gone and the key space is back to triggers + clock.
    assert!(matches!(sm.run(46_000, Command::IngestWebhook(Box::new(Delivery { delivery_id: "d1".into(), facts: EventFacts { event: "push".into(), ..Default::default() }, payload: vec![], received_by: 1, retention_ms: 1, traceparent: String::new(), signed_by: Default::default() }))), Response::Ingested(r) if r.duplicate));
    let r = sm.tick(45_000 + 3_600_000);
    assert!(matches!(r, Response::Ticked { expired_events: 1, .. }), "{r:?}");
    let left: Vec<String> = sm.kv.0.keys().map(|k| String::from_utf8_lossy(&k[..2]).to_string()).collect();
    assert!(left.iter().all(|k| k == "t/" || k == "m/" || k == "b/"), "{left:?}");
}

fn delivery(id: &str) -> Command {
    let facts = EventFacts { event: "push".into(), repo_full_name: Some("o/r".into()), org: Some("o".into()), ..Default::default() };
    Command::IngestWebhook(Box::new(Delivery {
        delivery_id: id.into(),
        facts,
        payload: id.as_bytes().to_vec(),
        received_by: 1,
        retention_ms: 3_600_000,
        traceparent: String::new(),
        signed_by: Default::default(),
    }))
}

#[test]
fn a_batch_applies_in_order_with_one_sequence_number_per_command() {
    let mut sm = Sm::new();
    catch_all(&mut sm); // index 1
    let r = sm.run(1000, Command::Batch(vec![delivery("a"), delivery("b"), delivery("a")]));
    let Response::Batch(rs) = r else { panic!("{r:?}") };
    let ids: Vec<(u64, bool)> = rs
        .iter()
        .map(|r| match r {
            Response::Ingested(i) => (i.event_id, i.duplicate),
            other => panic!("{other:?}"),
        })
        .collect();
    // index 2: positions 0 and 1; the replay of "a" in the same entry is a duplicate
    // with the original answer.
    assert_eq!(ids, vec![(2 << 8, false), ((2 << 8) | 1, false), (2 << 8, true)]);
    assert_eq!(events::get_payload(&sm.kv, (2 << 8) | 1).as_deref(), Some(&b"b"[..]));
    // A lone command at index 3 gets position 0; the ready queue keeps commit order
    // across batched and lone entries, and tokens keep increasing.
    let c = sm.deliver(1000, "c", "push", "o/r");
    assert_eq!(c, format!("{}-0", 3 << 8));
    let g = sm.grant(1000, 3);
    let got: Vec<&str> = g.iter().map(|(j, _, _)| j.as_str()).collect();
    assert_eq!(got, vec![format!("{}-0", 2 << 8), format!("{}-0", (2 << 8) | 1), c.clone()]);
    assert!(g.iter().all(|(_, t, _)| *t == 4 << 8));
    // Two grants in one entry never lease the same job, and get distinct tokens.
    sm.deliver(1000, "d", "push", "o/r");
    let grant = || Command::Grant(GrantRequest { worker_id: "w".into(), targets: vec![], count: 1, policy: POLICY });
    let Response::Batch(rs) = sm.run(1000, Command::Batch(vec![grant(), grant()])) else { panic!() };
    let leases: Vec<Vec<(String, u64)>> = rs
        .into_iter()
        .map(|r| match r {
            Response::Granted(v) => v.into_iter().map(|l| (l.job_id, l.token)).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(leases, vec![vec![(format!("{}-0", 5 << 8), 6 << 8)], vec![]]);
}

#[test]
fn a_command_that_may_not_be_batched_is_refused_inside_a_batch_and_changes_nothing() {
    let mut sm = Sm::new();
    let before = sm.kv.clone();
    let put = Command::PutTrigger { name: "t".into(), doc_json: "{}".into(), if_match: None };
    let r = sm.run(0, Command::Batch(vec![put, Command::Tick { policy: POLICY }, Command::Batch(vec![])]));
    assert_eq!(
        r,
        Response::Batch(vec![
            Response::NotBatchable { kind: "put_trigger".into() },
            Response::NotBatchable { kind: "tick".into() },
            Response::NotBatchable { kind: "batch".into() },
        ])
    );
    assert_eq!(sm.kv, before);
}

// --- Queue controls: cancel, re-run, per-target limits. ---

fn cancel(sm: &mut Sm, now: u64, job: &str) -> Response {
    sm.run(now, Command::CancelJob { job_id: job.into(), by: "ops".into(), reason: "wrong repo".into() })
}

fn limits(sm: &mut Sm, target: &str, max_in_flight: u32, pending_ttl_ms: u64) {
    let r = sm.run(0, Command::SetTargetLimits { target: target.into(), limits: crate::types::TargetLimits { max_in_flight, pending_ttl_ms } });
    assert!(matches!(r, Response::TargetLimitsSet { .. }), "{r:?}");
}

#[test]
fn a_cancelled_ready_or_delayed_job_is_never_granted() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    assert_eq!(cancel(&mut sm, 2_000, &job), Response::JobCancelled { job_id: job.clone(), was: "ready".into() });
    assert!(sm.grant(3_000, 10).is_empty());
    let j = sm.job(&job);
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.history.last().unwrap().note.as_deref(), Some("cancelled by ops: wrong repo"));
    assert_eq!(events::get_event(&sm.kv, j.event_id).unwrap().status, crate::types::EventStatus::Failed);

    // A delayed (backing-off) job: cancelled before its retry time, never released.
    let job2 = sm.deliver(4_000, "d2", "push", "acme/api");
    let (_, t, _) = sm.grant(4_000, 1)[0].clone();
    sm.run(4_100, Command::Fail { job_id: job2.clone(), token: t, error: "busy".into(), retryable: true, delay_ms: 0, policy: POLICY });
    assert_eq!(sm.job(&job2).state, JobState::Delayed);
    assert_eq!(cancel(&mut sm, 4_200, &job2), Response::JobCancelled { job_id: job2.clone(), was: "delayed".into() });
    sm.tick(200_000);
    assert!(sm.grant(200_000, 10).is_empty());
    assert_eq!(queue::next_due(&sm.kv), None, "no index entry is left behind");
}

#[test]
fn a_cancelled_lease_refuses_its_worker_and_a_finished_job_is_not_cancelled() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    let (_, token, _) = sm.grant(1_000, 1)[0].clone();
    assert_eq!(cancel(&mut sm, 2_000, &job), Response::JobCancelled { job_id: job.clone(), was: "leased".into() });
    let before = sm.kv.clone();
    for cmd in [
        Command::Complete { job_id: job.clone(), token, result: "done".into() },
        Command::Extend { job_id: job.clone(), token, extend_ms: 1000 },
        Command::Fail { job_id: job.clone(), token, error: "x".into(), retryable: true, delay_ms: 0, policy: POLICY },
    ] {
        match sm.run(2_000, cmd) {
            Response::StaleToken { reason, .. } => assert!(reason.starts_with("job was cancelled (cancelled by ops: wrong repo"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    let mut after = sm.kv.clone();
    after.0.remove(b"m/clock".as_slice());
    let mut before = before;
    before.0.remove(b"m/clock".as_slice());
    assert_eq!(before, after, "refused commands change nothing");
    assert_eq!(sm.job(&job).state, JobState::Cancelled);
    // The lease deadline passes: nothing is retried.
    sm.tick(100_000);
    assert_eq!(sm.job(&job).state, JobState::Cancelled);

    // Finished jobs: refused with their state, unchanged.
    let done = sm.deliver(3_000, "d2", "push", "acme/api");
    let (_, t2, _) = sm.grant(3_000, 1)[0].clone();
    assert_eq!(sm.run(3_100, Command::Complete { job_id: done.clone(), token: t2, result: "ok".into() }), Response::Completed);
    let h = sm.job(&done).history.len();
    assert_eq!(cancel(&mut sm, 3_200, &done), Response::NotCancellable { job_id: done.clone(), state: "completed".into() });
    assert_eq!(cancel(&mut sm, 3_200, &job), Response::NotCancellable { job_id: job.clone(), state: "cancelled".into() });
    assert_eq!(sm.job(&done).history.len(), h);
    assert_eq!(cancel(&mut sm, 3_300, "99-0"), Response::JobNotFound { job_id: "99-0".into() });
}

#[test]
fn a_rerun_makes_new_jobs_with_new_tokens_and_says_why() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    let (_, t1, _) = sm.grant(1_000, 1)[0].clone();
    sm.run(1_100, Command::Complete { job_id: job.clone(), token: t1, result: "ok".into() });
    let event_id = sm.job(&job).event_id;
    let r = sm.run(2_000, Command::RerunEvent { event_id, by: "ops".into() });
    let new = format!("{event_id}-1");
    assert_eq!(r, Response::Rerun { event_id, jobs: vec![new.clone()] });
    let e = events::get_event(&sm.kv, event_id).unwrap();
    assert_eq!(e.jobs, vec![job.clone(), new.clone()], "the event shows the re-run");
    assert_eq!(e.status, crate::types::EventStatus::Queued);
    assert_eq!(e.expires_ms, None, "retention stops while the re-run is pending");
    let j = sm.job(&new);
    assert_eq!(j.history[0].note.as_deref(), Some(format!("re-run of event {event_id} by request of ops (as job {job} ran)").as_str()));
    let g = sm.grant(3_000, 5);
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, new);
    assert!(g[0].1 > t1, "a new fencing token");
    assert_eq!(g[0].2, 1, "attempts start over");
    // The old token does not touch the new job.
    assert!(matches!(sm.run(3_100, Command::Complete { job_id: new.clone(), token: t1, result: "x".into() }), Response::StaleToken { .. }));

    // An unknown / expired event, and an event without a route.
    assert_eq!(sm.run(4_000, Command::RerunEvent { event_id: 12345, by: "ops".into() }), Response::EventNotFound { event_id: 12345 });
}

#[test]
fn a_rerun_is_refused_once_the_payload_is_gone() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    let event_id = sm.job(&job).event_id;
    // Simulate a payload removed (retention removes event and payload together; a
    // record without its payload must still be refused cleanly).
    sm.kv.0.remove(&events::pk(event_id));
    match sm.run(2_000, Command::RerunEvent { event_id, by: "ops".into() }) {
        Response::RerunRefused { reason, .. } => assert!(reason.contains("no longer kept"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(events::get_event(&sm.kv, event_id).unwrap().jobs.len(), 1);
}

#[test]
fn at_most_max_in_flight_jobs_of_a_target_are_leased() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    limits(&mut sm, "worker", 2, 0);
    let jobs: Vec<String> = (0..6).map(|i| sm.deliver(1_000, &format!("d{i}"), "push", "acme/api")).collect();
    let g = sm.grant(2_000, 10);
    assert_eq!(g.len(), 2, "{g:?}");
    assert!(sm.grant(2_001, 10).is_empty(), "at the limit");
    assert_eq!(crate::sm::controls::leased_count(&sm.kv, "worker"), 2);
    sm.run(2_002, Command::Complete { job_id: g[0].0.clone(), token: g[0].1, result: String::new() });
    let g2 = sm.grant(2_003, 10);
    assert_eq!(g2.len(), 1, "one slot freed");
    // Removing the limit (all zero) lets the rest through.
    limits(&mut sm, "worker", 0, 0);
    assert_eq!(sm.grant(2_004, 10).len(), jobs.len() - 3);
    assert!(crate::sm::controls::all_limits(&sm.kv).is_empty());
}

#[test]
fn jobs_pending_past_their_targets_ttl_are_dead_lettered() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    limits(&mut sm, "worker", 0, 3_600_000);
    let old = sm.deliver(1_000, "d1", "push", "acme/api");
    let young = sm.deliver(1_000_000, "d2", "push", "acme/api");
    assert_eq!(queue::next_due(&sm.kv), Some(3_601_000));
    sm.tick(3_600_999);
    assert_eq!(sm.job(&old).state, JobState::Ready);
    sm.tick(3_601_000);
    let j = sm.job(&old);
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.history.last().unwrap().note.as_deref(), Some("expired: pending longer than ttl 1h"));
    assert_eq!(j.last_error.as_deref(), Some("expired: pending longer than ttl 1h"));
    assert_eq!(sm.job(&young).state, JobState::Ready);
    assert_eq!(queue::list_dead(&sm.kv, 10).len(), 1);
}

/// `JobState::Cancelled` was added after records were written: a record encoded with
/// the previous enum (same variants, in the same order, minus the new one) still loads.
#[test]
fn job_records_written_before_cancelled_existed_still_load() {
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum OldJobState {
        Ready,
        Leased,
        Delayed,
        Completed,
        Dead,
        Purged,
    }
    for (old, new) in [(OldJobState::Ready, JobState::Ready), (OldJobState::Purged, JobState::Purged), (OldJobState::Dead, JobState::Dead)] {
        let back: JobState = crate::codec::decode(&crate::codec::encode(&old)).unwrap();
        assert_eq!(back, new);
    }
    // And a whole job as stored by an older node.
    let mut sm = Sm::new();
    catch_all(&mut sm);
    let job = sm.deliver(1_000, "d1", "push", "acme/api");
    let stored = sm.job(&job);
    assert_eq!(crate::codec::decode::<events::JobRecord>(&crate::codec::encode(&stored)).unwrap(), stored);
}

#[test]
fn backlog_counts_ready_and_delayed_jobs_not_leased_ones_up_to_the_limit() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    for k in 0..4 {
        sm.deliver(0, &format!("d{k}"), "push", "acme/api");
    }
    assert_eq!(queue::backlog(&sm.kv, 100), 4);
    // Two leased: not counted.
    let leased = sm.grant(0, 2);
    assert_eq!(queue::backlog(&sm.kv, 100), 2);
    // One lease expires: its job waits for a retry (delayed) and counts again.
    sm.run(1, Command::Extend { job_id: leased[1].0.clone(), token: leased[1].1, extend_ms: 60_000 });
    sm.tick(30_000);
    assert_eq!(sm.job(&leased[0].0).state, JobState::Delayed);
    assert_eq!(queue::backlog(&sm.kv, 100), 3);
    // The count stops at the limit.
    assert_eq!(queue::backlog(&sm.kv, 2), 2);
    assert_eq!(queue::backlog(&sm.kv, 3), 3);
    assert_eq!(queue::backlog(&sm.kv, 0), 0);
    // Completed: gone from the backlog.
    assert_eq!(sm.run(2, Command::Complete { job_id: leased[1].0.clone(), token: leased[1].1, result: "ok".into() }), Response::Completed);
    assert_eq!(queue::backlog(&sm.kv, 100), 3);
}

#[test]
fn a_state_from_before_the_backlog_counter_is_counted_then_kept() {
    let mut sm = Sm::new();
    catch_all(&mut sm);
    for k in 0..5 {
        sm.deliver(0, &format!("d{k}"), "push", "acme/api");
    }
    // The state as an earlier build left it: indexes, no counter.
    sm.kv.0.remove(b"m/backlog".as_slice());
    assert_eq!(events::stored_backlog(&sm.kv), None);
    assert_eq!(queue::backlog(&sm.kv, 100), 5, "counted while there is no counter");
    assert_eq!(queue::backlog(&sm.kv, 3), 3);
    // The next index write counts once and keeps it from then on (`Sm::run` checks).
    assert_eq!(sm.grant(0, 2).len(), 2);
    assert_eq!(events::stored_backlog(&sm.kv), Some(3));
    assert_eq!(queue::backlog(&sm.kv, 100), 3);
}

mod backlog_counter {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Deliver,
        Grant(u32),
        Complete(usize),
        Fail { pick: usize, retryable: bool, delay_ms: u64 },
        Tick(u64),
        Cancel(usize),
        Rerun(usize),
        Redrive,
        Purge,
        Limits(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Deliver),
            2 => (1u32..4).prop_map(Op::Grant),
            2 => any::<usize>().prop_map(Op::Complete),
            2 => (any::<usize>(), any::<bool>(), 0u64..5_000).prop_map(|(pick, retryable, delay_ms)| Op::Fail { pick, retryable, delay_ms }),
            2 => (1u64..40_000).prop_map(Op::Tick),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => any::<usize>().prop_map(Op::Rerun),
            1 => Just(Op::Redrive),
            1 => Just(Op::Purge),
            1 => (0u32..3).prop_map(Op::Limits),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Whatever the queue goes through, the counter apply keeps is the number of
        /// ready and delayed index entries (`Sm::run` asserts it after each command).
        #[test]
        fn the_backlog_counter_stays_exact(ops in prop::collection::vec(op(), 1..80)) {
            let mut sm = Sm::new();
            catch_all(&mut sm);
            let (mut now, mut delivered, mut leases, mut events_seen) = (1_000u64, 0u32, Vec::<(String, u64)>::new(), Vec::<u64>::new());
            for op in ops {
                match op {
                    Op::Deliver => {
                        delivered += 1;
                        let job = sm.deliver(now, &format!("d{delivered}"), "push", "acme/api");
                        events_seen.push(events::parse_job_id(&job).unwrap().0);
                    }
                    Op::Grant(n) => leases.extend(sm.grant(now, n).into_iter().map(|(j, t, _)| (j, t))),
                    Op::Complete(i) if !leases.is_empty() => {
                        let (job_id, token) = leases.remove(i % leases.len());
                        sm.run(now, Command::Complete { job_id, token, result: "ok".into() });
                    }
                    Op::Fail { pick, retryable, delay_ms } if !leases.is_empty() => {
                        let (job_id, token) = leases.remove(pick % leases.len());
                        sm.run(now, Command::Fail { job_id, token, error: "boom".into(), retryable, delay_ms, policy: POLICY });
                    }
                    Op::Tick(dt) => {
                        now += dt;
                        sm.tick(now);
                    }
                    Op::Cancel(i) if !events_seen.is_empty() => {
                        let e = events_seen[i % events_seen.len()];
                        cancel(&mut sm, now, &events::job_id(e, 0));
                    }
                    Op::Rerun(i) if !events_seen.is_empty() => {
                        let event_id = events_seen[i % events_seen.len()];
                        sm.run(now, Command::RerunEvent { event_id, by: "ops".into() });
                    }
                    Op::Redrive => {
                        sm.run(now, Command::Redrive { job_id: None });
                    }
                    Op::Purge => {
                        sm.run(now, Command::Purge { job_id: None });
                    }
                    Op::Limits(n) => limits(&mut sm, "worker", n, if n == 0 { 0 } else { 20_000 }),
                    _ => {}
                }
            }
        }
    }
}
