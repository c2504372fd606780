//! Queue controls on a real three-node cluster: cancelling jobs (ready, leased,
//! finished), listing jobs, re-running events, the per-target concurrency limit
//! under concurrent workers, and the pending TTL.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aof_node::config::{DaemonConfig, GithubConfig};
use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use common::TestCluster;
use serde_json::{json, Value};

const SECRET: &str = "s3cret";

async fn cluster() -> TestCluster {
    let c = TestCluster::start_with(3, 10_000, |cfg: &mut DaemonConfig| {
        let gh: GithubConfig =
            serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.queue.lease_timeout_ms = 20_000;
    })
    .await;
    c.wait_ready(30).await;
    c
}

async fn put_trigger(c: &TestCluster, name: &str, target: &str, event: &str) {
    let yaml = format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{github_events: [{event}]}}\n  default_agent: {target}\n");
    let r = c
        .http
        .put(c.nodes[0].url(&format!("/v1/triggers/{name}")))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Deliver a webhook; returns (event id, job id).
async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str) -> (u64, String) {
    let body =
        br#"{"action":"opened","repository":{"full_name":"acme/api","owner":{"login":"acme"}}}"#;
    let r = common::signed_webhook(
        &c.http,
        &c.nodes[i].url("/webhook/github"),
        event,
        delivery,
        body,
        SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    (
        v["event_id"].as_u64().unwrap(),
        v["jobs"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no job: {v}"))
            .to_string(),
    )
}

async fn send(
    c: &TestCluster,
    i: usize,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let r = c
        .http
        .request(method, c.nodes[i].url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The next lease of a claim stream.
async fn next_lease(stream: &mut tonic::Streaming<pb::Lease>) -> pb::Lease {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a lease in time")
        .unwrap()
        .unwrap()
}

fn job_of<'a>(event: &'a Value, job_id: &str) -> &'a Value {
    event["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| panic!("{job_id} not in {event}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_list_and_rerun_jobs() {
    let c = cluster().await;
    put_trigger(&c, "ctl", "ctl", "issues").await;
    let mut wq = WorkQueueClient::connect(format!("http://{}", c.nodes[1].grpc))
        .await
        .unwrap();

    // A cancelled ready job is never granted: the next claim gets the job behind it.
    let (_, ready_job) = post(&c, 1, "issues", "c-ready").await;
    let (s, v) = send(
        &c,
        2,
        reqwest::Method::POST,
        &format!("/v1/jobs/{ready_job}/cancel"),
        json!({"reason": "duplicate"}),
    )
    .await;
    assert_eq!((s, v["was"].as_str()), (200, Some("ready")), "{v}");
    // One worker holding at most one lease at a time, for the rest of the test.
    let mut stream = wq
        .claim(pb::ClaimRequest {
            worker_id: "w-ctl".into(),
            targets: vec!["ctl".into()],
            max_in_flight: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let (_, leased_job) = post(&c, 1, "issues", "c-leased").await;
    let lease = next_lease(&mut stream).await;
    assert_eq!(lease.job_id, leased_job, "the cancelled job is skipped");

    // A cancelled lease: the worker's Complete (and heartbeat) is refused, nothing changes.
    let (s, v) = send(
        &c,
        0,
        reqwest::Method::POST,
        &format!("/v1/jobs/{leased_job}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!((s, v["was"].as_str()), (200, Some("leased")), "{v}");
    let (_, before) = c.get_json(1, "/v1/deliveries/c-leased").await;
    for err in [
        wq.complete(pb::CompleteRequest {
            job_id: leased_job.clone(),
            fencing_token: lease.fencing_token,
            result: "done".into(),
        })
        .await
        .unwrap_err(),
        wq.extend(pb::ExtendRequest {
            job_id: leased_job.clone(),
            fencing_token: lease.fencing_token,
            extend_ms: 0,
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("job was cancelled"),
            "{}",
            err.message()
        );
    }
    let (_, after) = c.get_json(1, "/v1/deliveries/c-leased").await;
    assert_eq!(
        job_of(&before, &leased_job),
        job_of(&after, &leased_job),
        "refused calls change nothing"
    );
    let job = job_of(&after, &leased_job);
    assert_eq!(job["state"], "cancelled");
    let note = job["history"].as_array().unwrap().last().unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        note.starts_with("cancelled by ") && note.contains("revoked"),
        "{note}"
    );

    // A finished job: 409 with the reason, unchanged.
    let (done_event, done_job) = post(&c, 0, "issues", "c-done").await;
    let l = next_lease(&mut stream).await;
    assert_eq!(l.job_id, done_job);
    wq.complete(pb::CompleteRequest {
        job_id: done_job.clone(),
        fencing_token: l.fencing_token,
        result: "ok".into(),
    })
    .await
    .unwrap();
    let (s, v) = send(
        &c,
        0,
        reqwest::Method::POST,
        &format!("/v1/jobs/{done_job}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("already completed"),
        "{v}"
    );
    let (_, ev) = c.get_json(0, "/v1/deliveries/c-done").await;
    assert_eq!(job_of(&ev, &done_job)["state"], "completed");

    // Bad input: 4xx with a reason, nothing proposed.
    let long = "x".repeat(2000);
    assert_eq!(
        send(
            &c,
            0,
            reqwest::Method::POST,
            &format!("/v1/jobs/{ready_job}/cancel"),
            json!({"reason": long})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            &c,
            0,
            reqwest::Method::POST,
            "/v1/jobs/not-a-job/cancel",
            json!({})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            &c,
            0,
            reqwest::Method::POST,
            "/v1/jobs/999999-0/cancel",
            json!({})
        )
        .await
        .0,
        404
    );
    assert_eq!(c.get_json(0, "/v1/jobs?state=bogus").await.0, 400);

    // Listing: by state, target and event; paging with a cursor.
    let (s, v) = c
        .get_json(2, "/v1/jobs?state=cancelled&target=ctl&event=issues")
        .await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ready_job.as_str(), leased_job.as_str()], "{v}");
    assert_eq!(
        c.get_json(2, "/v1/jobs?event=push").await.1["items"],
        json!([])
    );
    let (_, p1) = c.get_json(2, "/v1/jobs?limit=2").await;
    let next = p1["next_after"].as_str().expect("a cursor").to_string();
    let (_, p2) = c
        .get_json(
            2,
            &format!("/v1/jobs?limit=2&after={next}&consistency=stale"),
        )
        .await;
    assert_eq!(p2["items"][0]["job_id"], done_job.as_str(), "{p2}");

    // Re-run: a new job with a new token, the history says why, the event shows it.
    let (s, v) = send(
        &c,
        1,
        reqwest::Method::POST,
        &format!("/v1/events/{done_event}/rerun"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let new_job = v["jobs"][0].as_str().unwrap().to_string();
    assert_ne!(new_job, done_job);
    let l2 = next_lease(&mut stream).await;
    assert_eq!(l2.job_id, new_job);
    assert!(l2.fencing_token > l.fencing_token, "a new fencing token");
    assert_eq!(l2.attempt, 1);
    let (_, ev) = c.get_json(0, "/v1/deliveries/c-done").await;
    assert_eq!(ev["status"], "queued", "{ev}");
    let first = job_of(&ev, &new_job)["history"][0]["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first.starts_with(&format!("re-run of event {done_event} by request of ")),
        "{first}"
    );
    let (s, v) = send(
        &c,
        1,
        reqwest::Method::POST,
        "/v1/events/999999/rerun",
        json!({}),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("cannot be re-run"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrency_limit_holds_under_concurrent_workers() {
    const JOBS: usize = 20;
    const MAX: u64 = 2;
    let c = cluster().await;
    put_trigger(&c, "lim", "lim", "issues").await;
    let (s, v) = send(
        &c,
        0,
        reqwest::Method::PUT,
        "/v1/targets/lim/limits",
        json!({"max_in_flight": MAX, "ttl": ""}),
    )
    .await;
    assert_eq!((s, v["max_in_flight"].as_u64()), (200, Some(MAX)), "{v}");
    assert_eq!(
        send(
            &c,
            0,
            reqwest::Method::PUT,
            "/v1/targets/lim/limits",
            json!({"max_in_flight": 1, "ttl": "1y"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        send(
            &c,
            0,
            reqwest::Method::PUT,
            "/v1/targets/lim/limits",
            json!({"bogus": 1})
        )
        .await
        .0,
        400
    );
    for i in 0..JOBS {
        post(&c, i % 3, "issues", &format!("lim-{i}")).await;
    }

    // Four workers on all three nodes, each willing to hold 3 leases.
    let completed = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let addr = format!("http://{}", c.nodes[w % 3].grpc);
        let (completed, stop) = (completed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut wq = WorkQueueClient::connect(addr).await.unwrap();
            let mut stream = wq
                .claim(pb::ClaimRequest {
                    worker_id: format!("lim-{w}"),
                    targets: vec!["lim".into()],
                    max_in_flight: 3,
                })
                .await
                .unwrap()
                .into_inner();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok(Ok(Some(lease))) =
                    tokio::time::timeout(Duration::from_millis(200), stream.message()).await
                else {
                    continue;
                };
                let mut wq = wq.clone();
                let completed = completed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    wq.complete(pb::CompleteRequest {
                        job_id: lease.job_id,
                        fencing_token: lease.fencing_token,
                        result: String::new(),
                    })
                    .await
                    .unwrap();
                    completed.fetch_add(1, Ordering::SeqCst);
                });
            }
        }));
    }
    // Sample the leased count (linearizable reads) until every job completed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut samples, mut max_seen) = (0, 0);
    while completed.load(Ordering::SeqCst) < JOBS as u32 {
        assert!(
            Instant::now() < deadline,
            "only {} of {JOBS} jobs completed",
            completed.load(Ordering::SeqCst)
        );
        let (s, v) = c
            .get_json(samples % 3, "/v1/jobs?state=leased&target=lim")
            .await;
        assert_eq!(s, 200);
        let leased = v["items"].as_array().unwrap().len() as u64;
        assert!(
            leased <= MAX,
            "{leased} jobs leased at once, limit {MAX}: {v}"
        );
        max_seen = max_seen.max(leased);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(samples > 5, "sampled while the jobs ran");
    assert_eq!(
        max_seen, MAX,
        "the limit was reached (the test exercised it)"
    );
    let (_, v) = c.get_json(0, "/v1/jobs?target=lim&state=completed").await;
    assert_eq!(v["items"].as_array().unwrap().len(), JOBS);
    let (_, limits) = c.get_json(1, "/v1/queue/limits").await;
    assert_eq!(limits["items"][0]["target"], "lim", "{limits}");
    assert_eq!(limits["items"][0]["leased"], 0, "{limits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_pending_past_the_ttl_are_dead_lettered() {
    let c = cluster().await;
    put_trigger(&c, "ttl", "slowpoke", "issues").await;
    let (s, v) = send(
        &c,
        0,
        reqwest::Method::PUT,
        "/v1/targets/slowpoke/limits",
        json!({"ttl": "1s"}),
    )
    .await;
    assert_eq!((s, v["ttl"].as_str()), (200, Some("1s")), "{v}");
    let (_, job) = post(&c, 1, "issues", "ttl-1").await;
    c.eventually("the pending job expires into the DLQ", 20, || async {
        let (_, dlq) = c.get_json(2, "/v1/dlq").await;
        dlq["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|j| j["job_id"] == job.as_str()))
    })
    .await;
    let (_, ev) = c.get_json(0, "/v1/deliveries/ttl-1").await;
    let j = job_of(&ev, &job);
    assert_eq!(j["state"], "dead");
    assert_eq!(
        j["last_error"], "expired: pending longer than ttl 1s",
        "{ev}"
    );
    assert_eq!(ev["status"], "failed");
}

/// Whether process `pid` has ended (gone, or a zombie no one reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Cancelling a job a built-in executor is running stops the command: its next
/// heartbeat (Extend) is refused as cancelled, and the executor kills the
/// command's whole process group — long before the command would end by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_leased_job_kills_the_built_in_executors_command() {
    let out = tempfile::tempdir().unwrap();
    let pidfile = out.path().join("sleep.pid");
    // The command's child, in the command's process group, writes its pid.
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig =
            serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        // Heartbeats every second (a third of the lease).
        cfg.spec.queue.lease_timeout_ms = 3_000;
        cfg.spec.runtime.executors.insert(
            "sleeper".into(),
            aof_node::config::ExecutorConfig::Command {
                command: vec!["sh".into(), "-c".into(), script.clone()],
                timeout_secs: None,
            },
        );
    })
    .await;
    c.wait_ready(30).await;
    put_trigger(&c, "sleepy", "sleeper", "issues").await;
    let (_, job) = post(&c, 0, "issues", "cancel-running").await;

    // Wait until a node's built-in worker runs the command.
    let mut pid = None;
    for _ in 0..500 {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = pid.expect("the built-in executor starts the command within 10 s");
    assert!(!process_gone(pid), "the command runs");
    let (_, ev) = c.get_json(1, "/v1/deliveries/cancel-running").await;
    assert_eq!(job_of(&ev, &job)["state"], "leased", "{ev}");

    let (s, v) = send(
        &c,
        2,
        reqwest::Method::POST,
        &format!("/v1/jobs/{job}/cancel"),
        json!({"reason": "wrong branch"}),
    )
    .await;
    assert_eq!((s, v["was"].as_str()), (200, Some("leased")), "{v}");

    // The next heartbeat (within a second) is refused and the group is killed.
    let started = Instant::now();
    while !process_gone(pid) && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        process_gone(pid),
        "the cancelled job's command (pid {pid}) still runs {:?} after the cancel",
        started.elapsed()
    );
    // The job stays cancelled: the executor reported nothing for it.
    let (_, ev) = c.get_json(0, "/v1/deliveries/cancel-running").await;
    let j = job_of(&ev, &job);
    assert_eq!(j["state"], "cancelled", "{ev}");
    assert!(j["result"].is_null(), "{ev}");
}

/// The value of the sample `name{labels}` in Prometheus text, 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Every refused request is counted, by listener and reason: the API listener's
/// 4xx answers (the token check's included) and the workers' gRPC refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_requests_are_counted_by_listener_and_reason() {
    use common::{client_with_token, READ_TOKEN, WORKER_TOKEN};
    let c = TestCluster::start_secure(1, 10_000).await;
    c.wait_ready(30).await;
    let url = |p: &str| c.nodes[0].url(p);
    let series = |listener: &str, reason: &str| {
        format!("aof_requests_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
    };
    let read_metrics = || async { c.http.get(url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let before = read_metrics().await;

    // API: no token, a read token changing something, a bad job id, an unknown job.
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(reqwest::Client::new().get(url("/v1/jobs")).send().await.unwrap()), 401);
    let json_post = |client: &reqwest::Client, path: &str| {
        client.post(url(path)).header("content-type", "application/json").body("{}")
    };
    assert_eq!(status(json_post(&client_with_token(READ_TOKEN), "/v1/jobs/1-0/cancel").send().await.unwrap()), 403);
    assert_eq!(status(json_post(&c.http, "/v1/jobs/nope/cancel").send().await.unwrap()), 400);
    assert_eq!(status(json_post(&c.http, "/v1/jobs/999999-0/cancel").send().await.unwrap()), 404);

    // gRPC: no token, then a worker token with an empty job id.
    let mut wq = WorkQueueClient::connect(format!("http://{}", c.nodes[0].grpc)).await.unwrap();
    let complete = || pb::CompleteRequest { job_id: String::new(), fencing_token: 1, result: String::new() };
    let err = wq.complete(complete()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let mut req = tonic::Request::new(complete());
    req.metadata_mut().insert("authorization", format!("Bearer {WORKER_TOKEN}").parse().unwrap());
    let err = wq.complete(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let after = read_metrics().await;
    for (listener, reason) in [
        ("api", "unauthenticated"),
        ("api", "forbidden"),
        ("api", "invalid"),
        ("api", "not_found"),
        ("grpc", "unauthenticated"),
        ("grpc", "invalid_argument"),
    ] {
        let s = series(listener, reason);
        assert_eq!(sample(&after, &s) - sample(&before, &s), 1, "{s} once:\n{after}");
    }
}
