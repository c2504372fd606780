//! Back-pressure on a real three-node cluster (`spec.queue.max_ready`): with a small
//! limit and no worker, `limit` deliveries are accepted and the next is refused with
//! 503 `queue_full` + `Retry-After`, counted, storing nothing; replays and pings still
//! get their answers; a leased job does not count; once a worker (the Rust client)
//! has claimed and completed the jobs, intake accepts again.

mod common;

use std::time::Duration;

use aof_client::Worker;
use aof_node::config::{DaemonConfig, GithubConfig};
use common::{put_trigger, TestCluster};
use serde_json::Value;

const SECRET: &str = "backpressure-secret";
const LIMIT: usize = 3;
const BODY: &[u8] =
    br#"{"action":"opened","repository":{"full_name":"acme/api","owner":{"login":"acme"}}}"#;

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str) -> Answer {
    let r = common::signed_webhook(
        &c.http,
        &c.nodes[i].url("/webhook/github"),
        event,
        delivery,
        BODY,
        SECRET,
    )
    .await;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Answer {
        status,
        retry_after,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

/// `aof_webhook_requests_total{outcome="queue_full"}` of node `i` (0 when absent).
async fn queue_full_count(c: &TestCluster, i: usize) -> u64 {
    c.metrics_text(i).await.lines()
        .find_map(|l| l.strip_prefix(r#"aof_webhook_requests_total{outcome="queue_full"} "#))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn assert_queue_full(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("30"), "{what}: Retry-After");
    assert_eq!(a.body["error"], "queue_full", "{what}: {}", a.body);
    let m = a.body["message"].as_str().unwrap();
    assert!(
        m.contains("spec.queue.max_ready") && m.contains("add workers"),
        "{what}: says what to do: {m}"
    );
    assert_eq!(a.body["max_ready"], LIMIT, "{what}: {}", a.body);
}

/// A three-node cluster with GitHub intake, `spec.queue.max_ready = limit` and one
/// trigger that routes every event to target `ext`; and its leader.
async fn start(limit: usize, snapshot_every: u64) -> (TestCluster, u64) {
    let c = TestCluster::start_with(3, snapshot_every, |cfg: &mut DaemonConfig| {
        let gh: GithubConfig =
            serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.queue.max_ready = limit;
    })
    .await;
    let leader = c.wait_ready(30).await;
    put_trigger(&c, "all", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: ext\n").await;
    (c, leader)
}

async fn assert_unknown(c: &TestCluster, delivery: &str) {
    let (s, v) = c.get_json(0, &format!("/v1/deliveries/{delivery}")).await;
    assert_eq!(s, 404, "{delivery} must not be stored: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_refuses_at_max_ready_and_accepts_again_once_drained() {
    let (c, leader) = start(LIMIT, 10_000).await;
    // Deliveries go to the leader: its applied state is the one the queue changes on
    // first (a follower's count lags by its replication delay: a soft limit).
    let l = c.index_of(leader);
    let f = (0..3).find(|&i| i != l).unwrap();

    // No worker: `LIMIT` deliveries are accepted, one job each.
    let mut accepted = Vec::new();
    for k in 1..=LIMIT {
        let a = post(&c, l, "issues", &format!("bp-{k}")).await;
        assert_eq!(a.status, 202, "bp-{k}: {}", a.body);
        assert_eq!(a.body["jobs"].as_array().unwrap().len(), 1, "{}", a.body);
        accepted.push(a.body);
    }
    // The next is refused, counted, and stores nothing.
    let full = post(&c, l, "issues", "bp-over").await;
    assert_queue_full(&full, "at the limit");
    assert_eq!(full.body["backlog"], LIMIT);
    assert_eq!(queue_full_count(&c, l).await, 1);
    assert_unknown(&c, "bp-over").await;

    // While full, a replay still gets its original answer (dedup), and a ping a pong.
    let replay = post(&c, l, "issues", "bp-2").await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["duplicate"], true);
    assert_eq!(replay.body["event_id"], accepted[1]["event_id"]);
    assert_eq!(post(&c, l, "ping", "bp-ping").await.status, 200);

    // A follower refuses too once it has applied the backlog.
    c.eventually("the follower applied the three jobs", 10, || async {
        let (_, v) = c.get_json(f, "/v1/queue/stats?consistency=stale").await;
        v["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .map(|d| d["ready"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == LIMIT as u64
        })
    })
    .await;
    assert_queue_full(&post(&c, f, "issues", "bp-follower").await, "on a follower");
    assert_eq!(queue_full_count(&c, f).await, 1);
    assert_unknown(&c, "bp-follower").await;

    // A worker (the Rust client) on the leader takes one job: leased jobs do not count,
    // so there is room for exactly one more.
    let mut worker = Worker::builder([format!("http://{}", c.nodes[l].grpc)])
        .worker_id("drain")
        .targets(["ext"])
        .max_in_flight(1)
        .start()
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), worker.next())
        .await
        .expect("a lease")
        .expect("a lease");
    assert_eq!(first.delivery_id(), "bp-1");
    let a = post(&c, l, "issues", "bp-over").await;
    assert_eq!(a.status, 202, "one job leased, room for one: {}", a.body);
    assert_queue_full(&post(&c, l, "issues", "bp-next").await, "full again");
    assert_eq!(queue_full_count(&c, l).await, 2);
    assert_unknown(&c, "bp-next").await;

    // Drain: claim and complete every job through the client.
    first.complete("done").await.unwrap();
    for _ in 0..LIMIT {
        let lease = tokio::time::timeout(Duration::from_secs(10), worker.next())
            .await
            .expect("a lease")
            .expect("a lease");
        lease.complete("done").await.unwrap();
    }
    worker.stop();
    let (_, stats) = c.get_json(l, "/v1/queue/stats").await;
    assert!(
        stats["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["ready"] == 0 && d["delayed"] == 0 && d["leased"] == 0),
        "{stats}"
    );

    // Intake accepts again, up to the limit.
    for k in 0..LIMIT {
        let a = post(&c, l, "issues", &format!("bp-after-{k}")).await;
        assert_eq!(a.status, 202, "after draining: {}", a.body);
    }
    assert_queue_full(
        &post(&c, l, "issues", "bp-after-over").await,
        "full once more",
    );
    assert_eq!(queue_full_count(&c, l).await, 3);
}

/// A limit past any fixed scan size: the backlog is the counter apply keeps, so the
/// limit is as exact at 300 as at 3 for deliveries sent one at a time to the leader
/// (each 202 comes after the leader applied it) — never refused below the limit,
/// refused at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_larger_limit_is_exact_for_deliveries_sent_one_at_a_time() {
    const LARGE: usize = 300;
    let (c, leader) = start(LARGE, 100_000).await;
    let l = c.index_of(leader);
    for k in 0..LARGE {
        let a = post(&c, l, "issues", &format!("large-{k}")).await;
        assert_eq!(a.status, 202, "large-{k}, below the limit {LARGE}: {}", a.body);
    }
    let a = post(&c, l, "issues", "large-over").await;
    assert_eq!(a.status, 503, "at the limit: {}", a.body);
    assert_eq!(a.body["error"], "queue_full", "{}", a.body);
    assert_eq!(a.body["max_ready"], LARGE, "{}", a.body);
    assert_eq!(a.body["backlog"].as_u64(), Some(LARGE as u64), "{}", a.body);
    assert_unknown(&c, "large-over").await;
}
