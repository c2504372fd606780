//! The work queue end to end on a real three-node cluster: built-in executors
//! (command, and github against a local fake GitHub), external gRPC workers with
//! fencing, and leases that survive losing the leader.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aof_node::config::{DaemonConfig, ExecutorConfig, GithubConfig};
use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use axum::http::HeaderMap;
use common::{fixture, put_trigger, wait_status, TestCluster};
use serde_json::Value;

const SECRET: &str = "s3cret";

async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8]) -> Value {
    let r = common::signed_webhook(&c.http, &c.nodes[i].url("/webhook/github"), event, delivery, body, SECRET).await;
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.unwrap()
}

/// A fake GitHub API recording every request.
async fn fake_github() -> (String, Arc<Mutex<Vec<(String, String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, String, Value)>>> = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let seen = s2.clone();
        async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            seen.lock().unwrap().push((uri.path().to_string(), auth, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            (axum::http::StatusCode::CREATED, axum::Json(serde_json::json!({"id": 1})))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn built_in_executors_run_commands_and_call_github() {
    let out = tempfile::tempdir().unwrap();
    let (api, seen) = fake_github().await;
    let out_dir = out.path().to_path_buf();
    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\ntoken: test-token\napi_url: {api}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.runtime.executors.insert(
            "writer".into(),
            ExecutorConfig::Command {
                command: vec!["sh".into(), "-c".into(), format!("cat > {}/$AOF_JOB_ID; echo wrote $AOF_REPO", out_dir.display())],
                timeout_secs: None,
            },
        );
        cfg.spec.runtime.executors.insert(
            "commenter".into(),
            ExecutorConfig::Github {
                comment: Some("Thanks @{{ metadata.sender_login }} for #{{ metadata.pr_number }}".into()),
                labels: vec!["triage".into()],
                check_run: None,
            },
        );
    })
    .await;
    c.wait_ready(30).await;
    put_trigger(&c, "issues", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issues]}\n  default_agent: writer\n").await;
    put_trigger(&c, "prs", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [pull_request.opened]}\n  default_agent: commenter\n").await;

    let issue = fixture("issues/00-edited.json");
    let pr = fixture("pull_request/00-opened.json");
    let r1 = post(&c, 1, "issues", "q-issue", &issue).await;
    post(&c, 2, "pull_request", "q-pr", &pr).await;

    let ev = wait_status(&c, 1, "q-issue", "completed", 30).await;
    let job_id = r1["jobs"][0].as_str().unwrap();
    assert_eq!(std::fs::read(out.path().join(job_id)).unwrap(), issue, "payload reaches the command's stdin byte for byte");
    let history: Vec<&str> = ev["jobs"][0]["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(history, vec!["ready", "leased", "completed"], "exactly one run: {ev}");

    wait_status(&c, 1, "q-pr", "completed", 30).await;
    let payload: Value = serde_json::from_slice(&pr).unwrap();
    let repo = payload["repository"]["full_name"].as_str().unwrap();
    let number = payload["pull_request"]["number"].as_u64().unwrap();
    let sender = payload["sender"]["login"].as_str().unwrap();
    let calls = seen.lock().unwrap().clone();
    let comment = calls.iter().find(|(p, _, _)| p == &format!("/repos/{repo}/issues/{number}/comments")).unwrap_or_else(|| panic!("{calls:?}"));
    assert_eq!(comment.2["body"], format!("Thanks @{sender} for #{number}"));
    assert!(comment.1.contains("test-token"), "authorization header: {}", comment.1);
    let labels = calls.iter().find(|(p, _, _)| p == &format!("/repos/{repo}/issues/{number}/labels")).unwrap();
    assert_eq!(labels.2["labels"][0], "triage");

    let (_, stats) = c.get_json(0, "/v1/queue/stats").await;
    assert!(stats["items"].as_array().unwrap().iter().all(|d| d["ready"] == 0 && d["leased"] == 0), "{stats}");

    // Metrics move: grants and event→claim across the nodes, Raft gauges everywhere.
    let mut grants = 0.0;
    let mut claims = 0.0;
    let mut leaders = 0.0;
    for i in 0..3 {
        let text = c.metrics_text(i).await;
        let value = |name: &str| -> f64 {
            text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        };
        grants += value("aof_lease_grants_total ");
        claims += value("aof_event_to_claim_seconds_count ");
        leaders += value("aof_raft_is_leader ");
        assert!(value("aof_raft_term ") >= 1.0, "{text}");
        assert!(value("aof_raft_applied_index ") >= 4.0);
        assert!(value("aof_log_entries_flushed_total ") >= value("aof_log_flushes_total ") && value("aof_log_flushes_total ") > 0.0);
    }
    assert_eq!((grants, claims, leaders), (2.0, 2.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_worker_leases_are_fenced_and_survive_leader_loss() {
    let mut c = TestCluster::start_with(3, 10_000, |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.queue.lease_timeout_ms = 20_000;
    })
    .await;
    let leader = c.wait_ready(30).await;
    put_trigger(&c, "all", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: ext\n").await;
    let follower = (0..3).find(|&i| c.nodes[i].id != leader).unwrap();
    let other = (0..3).find(|&i| c.nodes[i].id != leader && i != follower).unwrap();
    let body = br#"{"action":"opened","repository":{"full_name":"acme/api","owner":{"login":"acme"}}}"#;
    post(&c, follower, "issues", "ext-1", body).await;

    let mut wq = WorkQueueClient::connect(format!("http://{}", c.nodes[follower].grpc)).await.unwrap();
    let mut stream = wq.claim(pb::ClaimRequest { worker_id: "ext".into(), targets: vec!["ext".into()], max_in_flight: 1 }).await.unwrap().into_inner();
    let lease = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(lease.delivery_id, "ext-1");
    assert_eq!(lease.payload, body.to_vec());
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.context.get("repo_full_name").map(String::as_str), Some("acme/api"));
    assert!(lease.fencing_token > 0);
    // Queue depth by target, priority and state shows the leased job.
    let want = r#"aof_queue_jobs{target="ext",priority="normal",state="leased"} 1"#;
    let mut text = String::new();
    for _ in 0..50 {
        text = c.metrics_text(follower).await;
        if text.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(want), "{text}");

    // A wrong token is refused with a reason and changes nothing.
    let err = wq.complete(pb::CompleteRequest { job_id: lease.job_id.clone(), fencing_token: lease.fencing_token - 1, result: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("stale fencing token"), "{}", err.message());
    drop(stream);

    // Lose the leader: the lease is replicated state and outlives it.
    c.stop(c.index_of(leader)).await;
    let mut wq2 = WorkQueueClient::connect(format!("http://{}", c.nodes[other].grpc)).await.unwrap();
    let mut extended = None;
    for _ in 0..100 {
        match wq2.extend(pb::ExtendRequest { job_id: lease.job_id.clone(), fencing_token: lease.fencing_token, extend_ms: 0 }).await {
            Ok(r) => {
                extended = Some(r.into_inner().deadline_ms);
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("{s:?}"),
        }
    }
    // The extension happened on the new leader after a failover (hundreds of ms at
    // least), so the deadline it set lies beyond the one granted before.
    let extended = extended.expect("the lease could be extended after the failover");
    assert!(extended > lease.deadline_ms, "extend did not push the deadline: {extended} <= {}", lease.deadline_ms);
    wq2.complete(pb::CompleteRequest { job_id: lease.job_id.clone(), fencing_token: lease.fencing_token, result: "done".into() }).await.unwrap();
    // Completing twice is refused: the lease is gone.
    let again = wq2.complete(pb::CompleteRequest { job_id: lease.job_id.clone(), fencing_token: lease.fencing_token, result: "again".into() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let (_, ev) = c.get_json(other, "/v1/deliveries/ext-1").await;
    assert_eq!(ev["status"], "completed", "{ev}");
    let stats = wq2.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert!(stats.depths.iter().all(|d| d.ready == 0 && d.leased == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_a_node_drains_its_running_jobs() {
    let out = tempfile::tempdir().unwrap();
    let marker = out.path().join("done");
    let started = out.path().join("started");
    let script = format!("touch {}; sleep 3; touch {}", started.display(), marker.display());
    let mut c = TestCluster::start_with(1, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.runtime.drain_timeout_secs = 20;
        cfg.spec.runtime.executors.insert("slow".into(), ExecutorConfig::Command { command: vec!["sh".into(), "-c".into(), script.clone()], timeout_secs: None });
    })
    .await;
    c.wait_ready(30).await;
    put_trigger(&c, "all", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: slow\n").await;
    post(&c, 0, "push", "drain-1", br#"{"repository":{"full_name":"acme/api"}}"#).await;
    // Wait until the job is leased and its command is running, then stop the node.
    let mut running = false;
    for _ in 0..500 {
        if c.get_json(0, "/v1/deliveries/drain-1").await.1["jobs"][0]["state"] == "leased" && started.exists() {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "the job starts");
    // A fresh client: no pooled connection from before the stop.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let ready_url = c.nodes[0].url("/ready");
    // Poll /ready while the node drains: it must answer 503 before it goes away.
    let probe = tokio::spawn(async move {
        for _ in 0..500 {
            match http.get(&ready_url).send().await {
                Ok(r) if r.status().as_u16() == 503 => return true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return false,
            }
        }
        false
    });
    c.stop(0).await; // returns once the node has drained and exited
    assert!(probe.await.unwrap(), "a draining node reports not-ready before it exits");
    assert!(marker.exists(), "the running job finished before the node exited");
}

/// An external worker's open claim stream does not hold a stopping node: the stream
/// ends with `Unavailable` (the worker moves to another node) and the node exits,
/// instead of waiting on the stream until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_a_node_ends_its_claim_streams() {
    let mut c = TestCluster::start(1, 10_000).await;
    c.wait_ready(30).await;
    let mut wq = WorkQueueClient::connect(format!("http://{}", c.nodes[0].grpc)).await.unwrap();
    let mut stream = wq.claim(pb::ClaimRequest { worker_id: "idle".into(), targets: vec![], max_in_flight: 1 }).await.unwrap().into_inner();
    c.stop(0).await; // panics unless the node has stopped within its bound
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("the claim stream ends");
    match end {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(m) => panic!("expected Unavailable at the end of the stream, got {m:?}"),
    }
}

/// The `github` executor acts on the delivery's own repository only, when the
/// trigger's patterns allow it; payload text never reaches an API path, and a
/// repository name that could steer the path sends the job to the dead-letter
/// queue without any API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_github_executor_touches_only_the_deliverys_checked_repository() {
    let (api, seen) = fake_github().await;
    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\ntoken: test-token\napi_url: {api}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.runtime.executors.insert(
            "echo".into(),
            ExecutorConfig::Github { comment: Some("{{ metadata.comment_body }}".into()), labels: vec!["{{ comment_body }}".into()], check_run: None },
        );
    })
    .await;
    c.wait_ready(30).await;
    put_trigger(&c, "comments", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issue_comment], repositories: [\"myorg/*\"]}\n  default_agent: echo\n").await;
    put_trigger(&c, "issues", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issues]}\n  default_agent: echo\n").await;

    let with_repo = |path: &str, full_name: &str, comment: Option<&str>| -> Vec<u8> {
        let mut p: Value = serde_json::from_slice(&fixture(path)).unwrap();
        let (owner, name) = full_name.split_once('/').unwrap();
        p["repository"]["full_name"] = full_name.into();
        p["repository"]["name"] = name.into();
        p["repository"]["owner"]["login"] = owner.into();
        if let Some(body) = comment {
            p["comment"]["body"] = body.into();
            p["issue"]["body"] = body.into();
        }
        serde_json::to_vec(&p).unwrap()
    };
    let steer = "/repos/victim/secret/issues/1/comments ../../../orgs/victim %2F..%2F";
    let good = with_repo("issue_comment/00-created.json", "myorg/api", Some(steer));
    let number = serde_json::from_slice::<Value>(&good).unwrap()["issue"]["number"].as_u64().unwrap();
    post(&c, 0, "issue_comment", "scope-good", &good).await;
    post(&c, 0, "issues", "scope-dots", &with_repo("issues/16-opened.json", "myorg/../victim", None)).await;
    post(&c, 0, "issues", "scope-encoded", &with_repo("issues/16-opened.json", "myorg/api%2F..%2F..%2Fvictim", None)).await;

    wait_status(&c, 1, "scope-good", "completed", 30).await;
    for delivery in ["scope-dots", "scope-encoded"] {
        let v = wait_status(&c, 1, delivery, "failed", 30).await;
        assert_eq!(v["jobs"][0]["state"], "dead", "{v}");
        assert!(v.to_string().contains("refusing to act"), "{v}");
    }
    let calls = seen.lock().unwrap().clone();
    let paths: Vec<&str> = calls.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, [format!("/repos/myorg/api/issues/{number}/comments"), format!("/repos/myorg/api/issues/{number}/labels")], "{calls:?}");
    assert_eq!(calls[0].2["body"], steer, "payload text is a JSON value");
    assert_eq!(calls[1].2["labels"][0], steer);
}
