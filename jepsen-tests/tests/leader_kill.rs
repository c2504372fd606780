//! The leader is SIGKILLed while a stream of webhooks is being posted (to every
//! node, the leader included). After a new leader is elected and the old one is
//! back, every delivery answered 202 (or 200 duplicate) must exist exactly once,
//! every other delivery at most once, and every event must have exactly one job:
//! nothing acknowledged is lost and nothing is duplicated, also when the
//! indeterminate deliveries are redelivered (as GitHub's "Redeliver" does).
//!
//! Real `aofctl serve` processes on loopback (no namespaces needed); the run is
//! bounded: ~3 s of stream before the kill, up to 30 s for a new leader, ~3 s of
//! stream after it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jepsen_tests::cluster::{Db, DbOpts, CATCH_ALL, TARGET};
use jepsen_tests::history::{Kind, Recorder};
use jepsen_tests::run;
use jepsen_tests::workloads::queue::{final_state, Queue, QueueOpts};
use jepsen_tests::workloads::{Ctx, PRODUCER_PROCESSES};

fn bin() -> PathBuf {
    match std::env::var_os("JEPSEN_AOFCTL") {
        Some(p) => PathBuf::from(p),
        // The same binary as tests/planted.rs (no bug switched on): one build for both.
        None => run::build_aofctl(true, false).expect("building aofctl --features planted-bugs"),
    }
}

/// Posts deliveries `from..to` round-robin over the nodes, `pause` apart, until
/// `until`; returns each delivery's outcome.
async fn stream(
    q: &Queue,
    run: &str,
    nodes: usize,
    from: u64,
    to: u64,
    pause: Duration,
    until: Instant,
) -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    for i in from..to {
        if Instant::now() >= until {
            break;
        }
        let d = format!("{run}-d{i}");
        let kind = q.post(PRODUCER_PROCESSES + i, &d, i as usize % nodes).await;
        out.push((d, kind));
        tokio::time::sleep(pause).await;
    }
    out
}

#[test]
fn leader_sigkill_mid_stream_loses_no_acknowledged_delivery_and_duplicates_none() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = format!("jt-{}-1eed", std::process::id());
        let _guard = jepsen_tests::cleanup::Guard(prefix.clone());
        let dir = std::env::temp_dir().join("aof-jepsen-tests").join(format!("leader-kill-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut opts = DbOpts::new(3, bin());
        // To see this test fail: JEPSEN_LEADER_KILL_PLANT=ack-before-commit.
        opts.planted = std::env::var("JEPSEN_LEADER_KILL_PLANT").ok();
        let db = Db::new(&prefix, opts, &dir, None).unwrap();
        db.start_all().unwrap();
        db.wait_ready(Duration::from_secs(60)).await.expect("the cluster starts");
        let doc = format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{}}\n  default_agent: {TARGET}\n");
        db.put_trigger(CATCH_ALL, &doc, Duration::from_secs(30)).await.unwrap();
        let ctx = Ctx {
            db: db.clone(),
            rec: Recorder::new(Some(&dir.join("history.jsonl"))).unwrap(),
            run: prefix.clone(),
            seed: 1,
            stop: Arc::new(AtomicBool::new(false)),
            timeout: Duration::from_secs(5),
        };
        let q = Queue::new(
            ctx.clone(),
            QueueOpts {
                producers: 1,
                rate: 50.0,
                workers: 0,
                status_reads: 0.0,
                zombie_rate: 0.0,
                crash_rate: 0.0,
                fail_rate: 0.0,
                hold_max_ms: 1000,
                max_in_flight: 1,
                lease_timeout_ms: 2000,
            },
        );
        let pause = Duration::from_millis(10);

        // Before the kill, and a stream running through it.
        let mut sent = stream(&q, &prefix, 3, 0, 300, pause, Instant::now() + Duration::from_secs(3)).await;
        let old = db.leader().await.expect("a leader before the kill");
        let during = {
            let q = q.clone();
            let p = prefix.clone();
            tokio::spawn(async move { stream(&q, &p, 3, 1000, 1300, pause, Instant::now() + Duration::from_secs(4)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        db.kill(old); // SIGKILL
        let killed_at = Instant::now();
        sent.extend(during.await.unwrap());

        // A new leader (bounded), then more of the stream through it.
        let new = loop {
            match db.leader().await {
                Some(l) if l != old => break l,
                _ if killed_at.elapsed() > Duration::from_secs(30) => panic!("no new leader within 30 s of the kill"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let after = stream(&q, &prefix, 3, 2000, 2300, pause, Instant::now() + Duration::from_secs(3)).await;
        let acked_after = after.iter().filter(|(_, k)| *k == Kind::Ok).count();
        sent.extend(after);

        // GitHub redelivers what it got no answer for.
        let unanswered: Vec<String> = sent.iter().filter(|(_, k)| *k != Kind::Ok).map(|(d, _)| d.clone()).collect();
        let mut redelivered: BTreeMap<String, usize> = BTreeMap::new();
        for (i, d) in unanswered.iter().enumerate() {
            let kind = q.post(PRODUCER_PROCESSES + 5000 + i as u64, d, new).await;
            *redelivered.entry(format!("{kind:?}")).or_default() += 1;
            sent.push((d.clone(), kind));
        }
        eprintln!("redeliveries: {redelivered:?}");

        db.start(old).unwrap();
        db.wait_ready(Duration::from_secs(60)).await.expect("the old leader rejoins");
        let fin = final_state(&ctx, Duration::from_secs(60)).await;
        assert!(fin.complete, "the final read finished");

        let mut acked: BTreeMap<&str, bool> = BTreeMap::new();
        for (d, k) in &sent {
            *acked.entry(d.as_str()).or_default() |= *k == Kind::Ok;
        }
        let mut events: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &fin.events {
            *events.entry(e.delivery_id.as_str()).or_default() += 1;
            assert_eq!(e.jobs.len(), 1, "event {} of {} has {} jobs", e.event_id, e.delivery_id, e.jobs.len());
        }
        let lost: Vec<&&str> = acked.iter().filter(|(d, a)| **a && !events.contains_key(**d)).map(|(d, _)| d).collect();
        let dup: Vec<(&&str, &usize)> = events.iter().filter(|(_, n)| **n > 1).collect();
        let unexpected: Vec<&&str> = events.keys().filter(|d| !acked.contains_key(**d)).collect();
        let n_acked = acked.values().filter(|a| **a).count();
        let unacked_present = acked.iter().filter(|(d, a)| !**a && events.contains_key(**d)).count();
        eprintln!(
            "leader {} killed; new leader {}; {} deliveries, {n_acked} acked ({acked_after} after the new leader), {} not acked ({unacked_present} of them present), {} redelivered",
            db.name(old),
            db.name(new),
            acked.len(),
            acked.len() - n_acked,
            unanswered.len()
        );
        assert!(lost.is_empty(), "acknowledged deliveries lost: {lost:?}");
        assert!(dup.is_empty(), "deliveries with more than one event: {dup:?}");
        assert!(unexpected.is_empty(), "events for deliveries never sent: {unexpected:?}");
        assert!(n_acked > 100 && acked_after > 0, "the stream flowed before and after the kill: {n_acked} acked, {acked_after} after");
        db.teardown_disks(false);
        if std::env::var_os("JEPSEN_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}
