//! The webhook gateway on a real three-node cluster: every GitHub fixture signed and
//! posted (to followers too), dedup of replays, rejects that store nothing, and no
//! lost 202 when the leader goes away mid-stream.

mod common;

use std::sync::Arc;

use aof_node::config::{DaemonConfig, GithubConfig};
use aof_node::github::signature::sign;
use common::{fixtures_dir, put_trigger, TestCluster};
use serde_json::{json, Value};

const SECRET: &str = "it's-a-secret-to-everybody";

/// Every fixture: (event, action-from-file-name, body).
fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(fixtures_dir()).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).collect();
    dirs.sort_by_key(|e| e.file_name());
    for d in dirs {
        let event = d.file_name().to_string_lossy().to_string();
        let mut files: Vec<_> = std::fs::read_dir(d.path()).unwrap().filter_map(|e| e.ok()).collect();
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let name = f.file_name().to_string_lossy().to_string();
            let action = name.trim_end_matches(".json").split_once('-').map(|(_, a)| a.to_string()).unwrap();
            out.push((event.clone(), action, std::fs::read(f.path()).unwrap()));
        }
    }
    out
}

fn with_secret(max_body: usize) -> impl Fn(&mut DaemonConfig) {
    move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: \"{SECRET}\"\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.gateway.max_body_bytes = max_body;
        cfg.spec.gateway.ack_timeout_ms = 4000;
    }
}

async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut req = c
        .http
        .post(c.nodes[i].url("/webhook/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post_signed(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
    post(c, i, event, delivery, body, Some(sign(SECRET.as_bytes(), body))).await
}

async fn event_count(c: &TestCluster) -> usize {
    c.get_json(0, "/v1/events?limit=1000").await.1["items"].as_array().unwrap().len()
}

/// What the matcher should decide for a fixture under the triggers installed below,
/// computed from the payload itself.
fn expected(event: &str, payload: &Value) -> (&'static str, Option<&'static str>) {
    let action = payload.get("action").and_then(Value::as_str);
    if event == "pull_request" && action == Some("opened") {
        return ("queued", Some("a-pr-opened"));
    }
    if event == "push" && payload["ref"].as_str().is_some_and(|r| r.starts_with("refs/heads/")) {
        return ("queued", Some("b-push-branches"));
    }
    ("unmatched", None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fixture_is_accepted_and_recorded_from_any_node() {
    let c = TestCluster::start_with(3, 10_000, with_secret(25 * 1024 * 1024)).await;
    c.wait_ready(30).await;
    put_trigger(&c, "a-pr-opened", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    github_events: [pull_request.opened]\n  default_agent: reviewer\n").await;
    put_trigger(&c, "b-push-branches", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    github_events: [push]\n    branches: ['*', '**']\n  commands:\n    push:\n      flow: build\n").await;

    let all = fixtures();
    assert!(all.len() >= 100, "expected the full fixture set, found {}", all.len());
    let mut accepted = 0;
    for (k, (event, action, body)) in all.iter().enumerate() {
        let delivery = format!("fixture-{k}");
        let node = k % 3;
        let (s, r) = post_signed(&c, node, event, &delivery, body).await;
        let payload: Value = serde_json::from_slice(body).unwrap();
        if event == "ping" {
            assert_eq!(s, 200, "{event}/{action}: {r}");
            assert_eq!(r["pong"], true);
            assert_eq!(c.get_json(0, &format!("/v1/deliveries/{delivery}")).await.0, 404, "ping is not stored");
            continue;
        }
        assert_eq!(s, 202, "{event}/{action} on node {}: {r}", node + 1);
        accepted += 1;
        let (want_status, want_trigger) = expected(event, &payload);
        assert_eq!(r["status"], want_status, "{event}/{action}: {r}");
        assert_eq!(r["trigger"].as_str(), want_trigger, "{event}/{action}: {r}");
        assert_eq!(r["jobs"].as_array().unwrap().len(), usize::from(want_status == "queued"));
        // Read it back linearizably from another node.
        let (s, rec) = c.get_json((node + 1) % 3, &format!("/v1/deliveries/{delivery}")).await;
        assert_eq!(s, 200, "{rec}");
        assert_eq!(rec["event_id"], r["event_id"]);
        assert_eq!(rec["event"], event.as_str());
        assert_eq!(rec["action"].as_str(), payload.get("action").and_then(Value::as_str), "{event}/{action}");
        assert_eq!(rec["status"], want_status);
        assert_eq!(rec["payload_bytes"].as_u64(), Some(body.len() as u64));
        if let Some(repo) = payload.pointer("/repository/full_name").and_then(Value::as_str) {
            assert_eq!(rec["repo"], repo);
            assert_eq!(rec["context"]["repo_full_name"], repo);
        }
        if want_status == "queued" {
            let job = &rec["jobs"][0];
            assert_eq!(job["state"], "ready");
            let want_target = if event == "push" { json!({"kind": "flow", "name": "build"}) } else { json!({"kind": "agent", "name": "reviewer"}) };
            assert_eq!(job["target"], want_target);
        }
        let (s, by_id) = c.get_json(2, &format!("/v1/events/{}", r["event_id"])).await;
        assert_eq!((s, &by_id["delivery_id"]), (200, &json!(delivery)));
    }
    assert_eq!(event_count(&c).await, accepted);
    // Paging and filters.
    let (_, page) = c.get_json(1, "/v1/events?limit=10").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    let after = page["next_after"].as_u64().expect("more pages");
    let (_, page2) = c.get_json(1, &format!("/v1/events?limit=10&after={after}")).await;
    assert!(page2["items"][0]["event_id"].as_u64().unwrap() > after);
    let (_, queued) = c.get_json(2, "/v1/events?status=queued&limit=1000").await;
    assert!(queued["items"].as_array().unwrap().iter().all(|e| e["status"] == "queued"));
    let (_, pushes) = c.get_json(2, "/v1/events?event=push&limit=1000").await;
    assert!(!pushes["items"].as_array().unwrap().is_empty());
    assert!(pushes["items"].as_array().unwrap().iter().all(|e| e["event"] == "push"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_get_the_original_answer_and_bad_input_stores_nothing() {
    let c = TestCluster::start_with(3, 10_000, with_secret(64 * 1024)).await;
    c.wait_ready(30).await;
    put_trigger(&c, "all", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: helper\n").await;
    let body = br#"{"action":"opened","repository":{"full_name":"acme/api","owner":{"login":"acme"}},"sender":{"login":"alice"},"issue":{"number":7,"title":"x"}}"#;
    let (s, first) = post_signed(&c, 1, "issues", "d-1", body).await;
    assert_eq!((s, first["status"].as_str(), first["duplicate"].as_bool()), (202, Some("queued"), Some(false)), "{first}");
    // GitHub's "Redeliver" keeps the delivery id: same answer, no second job, from any node.
    for i in 0..3 {
        let (s, again) = post_signed(&c, i, "issues", "d-1", body).await;
        assert_eq!(s, 200);
        assert_eq!(again["duplicate"], true);
        assert_eq!((&again["event_id"], &again["jobs"]), (&first["event_id"], &first["jobs"]));
    }
    assert_eq!(event_count(&c).await, 1);
    let (_, rec) = c.get_json(2, "/v1/deliveries/d-1").await;
    assert_eq!(rec["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(rec["context"]["issue_number"], 7);

    // Each kind of bad input: the right status, a JSON error, nothing stored, counted.
    let before = event_count(&c).await;
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (401, "bad_signature", post(&c, 0, "issues", "b-1", body, Some(sign(b"wrong", body))).await),
        (401, "bad_signature", post(&c, 1, "issues", "b-2", body, None).await),
        (401, "bad_signature", post(&c, 2, "issues", "b-3", body, Some("sha1=abc".into())).await),
        (400, "invalid_request", post_signed(&c, 0, "issues", "b-4", b"not json").await),
        (400, "invalid_request", post(&c, 0, "", "b-5", body, Some(sign(SECRET.as_bytes(), body))).await),
        (413, "payload_too_large", post_signed(&c, 1, "issues", "b-6", &vec![b' '; 65 * 1024]).await),
    ];
    for (want, code, (s, e)) in &cases {
        assert_eq!((s, e["error"].as_str()), (want, Some(*code)), "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Missing delivery header.
    let r = c.http.post(c.nodes[0].url("/webhook/github")).header("x-github-event", "issues").body(body.to_vec()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(event_count(&c).await, before);
    for b in ["b-1", "b-2", "b-4", "b-6"] {
        assert_eq!(c.get_json(0, &format!("/v1/deliveries/{b}")).await.0, 404);
    }
    // Rejections are counted per node.
    let (_, _) = c.get_json(0, "/health").await;
    let metrics = c.http.get(c.nodes[0].url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("aof_webhook_requests_total{outcome=\"bad_signature\"}")).expect(&metrics);
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_202_survives_losing_the_leader_mid_stream() {
    let mut c = TestCluster::start_with(3, 10_000, with_secret(1024 * 1024)).await;
    let leader = c.wait_ready(30).await;
    let li = c.index_of(leader);
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let body = Arc::new(br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/api"}}"#.to_vec());
    // Post a stream of deliveries to the followers; stop the leader half-way.
    let urls: Vec<String> = followers.iter().map(|&i| c.nodes[i].url("/webhook/github")).collect();
    let http = c.http.clone();
    let acked_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = acked_so_far.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in 0..120 {
            let body = body.clone();
            let r = http
                .post(&urls[k % urls.len()])
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("s-{k}"))
                .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
                .body(body.to_vec())
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().as_u16() == 202 {
                    acked.push(format!("s-{k}"));
                    counter.store(acked.len(), std::sync::atomic::Ordering::SeqCst);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
        acked
    });
    // Stop the leader once a third of the stream was acknowledged (not after a
    // fixed time, which on a slow machine may come before any 202 or after the last).
    c.eventually("40 deliveries acknowledged before the leader stops", 30, || {
        let n = acked_so_far.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 40 }
    })
    .await;
    c.stop(li).await;
    let acked = writer.await.unwrap();
    c.wait_ready(30).await;
    for d in &acked {
        let (s, rec) = c.get_json(followers[0], &format!("/v1/deliveries/{d}")).await;
        assert_eq!(s, 200, "acknowledged delivery {d} is missing: {rec}");
    }
}

/// A `# TYPE ... histogram` sample's value from a node's `/metrics`.
async fn metric(c: &TestCluster, i: usize, name: &str) -> f64 {
    let text = c.http.get(c.nodes[i].url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse::<f64>().unwrap()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// Concurrent webhooks are group-committed on the leader (several per log entry),
/// and each caller still gets its own answer: distinct event ids, the right status,
/// and a record readable from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_webhooks_share_log_entries_and_each_gets_its_own_answer() {
    let c = Arc::new(TestCluster::start_with(3, 10_000, with_secret(25 * 1024 * 1024)).await);
    let leader = c.index_of(c.wait_ready(30).await);
    put_trigger(&c, "pushes", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    github_events: [push]\n  default_agent: builder\n").await;
    let entries_before = metric(&c, leader, "aof_proposal_batch_commands_count").await;
    const N: usize = 120;
    let mut tasks = Vec::new();
    for k in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Pushes are queued, issues unmatched: each answer must be the caller's own.
            let (event, body) = if k % 2 == 0 { ("push", json!({"ref": "refs/heads/main", "n": k})) } else { ("issues", json!({"action": "opened", "n": k})) };
            let body = serde_json::to_vec(&body).unwrap();
            let delivery = format!("burst-{k}");
            let (s, r) = post_signed(&c, k % 3, event, &delivery, &body).await;
            (k, s, r)
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (k, s, r) = t.await.unwrap();
        assert_eq!(s, 202, "burst-{k}: {r}");
        assert_eq!(r["delivery_id"], format!("burst-{k}"));
        assert_eq!(r["status"], if k % 2 == 0 { "queued" } else { "unmatched" }, "burst-{k}: {r}");
        assert!(ids.insert(r["event_id"].as_u64().unwrap()), "event id given twice: {r}");
        let (s, rec) = c.get_json((k + 1) % 3, &format!("/v1/deliveries/burst-{k}")).await;
        assert_eq!((s, &rec["event_id"]), (200, &r["event_id"]));
    }
    let entries = metric(&c, leader, "aof_proposal_batch_commands_count").await - entries_before;
    let commands = metric(&c, leader, "aof_proposal_batch_commands_sum").await;
    assert!(commands >= N as f64, "every webhook went through the proposer: {commands}");
    assert!(entries < N as f64, "{N} concurrent webhooks took {entries} log entries: no group commit");
}
