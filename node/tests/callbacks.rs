//! Signed completion callbacks through the replicated outbox, on a real three-node
//! cluster with a callback receiver (axum on 127.0.0.1) that verifies every
//! notice's HMAC itself (SHA-256 from `sha2`, not the node's signer):
//!
//! * a receiver down (connection refused) for 30 s gets, after it returns, every
//!   notice of the jobs finished meanwhile — each once, correctly signed — and no
//!   notice it already had;
//! * a receiver that fails the first attempts sees the retries (same body, same
//!   idempotency key, attempt numbers rising), then the delivery; notices that keep
//!   failing — an answer of 500, a secret variable missing on the nodes — end dead
//!   and are listed by `GET /v1/callbacks?state=dead` with their reason;
//! * the leader stopped after the job finished but while its POST of the notice was
//!   still unanswered: the new leader delivers the notice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aof_node::config::{DaemonConfig, ExecutorConfig, GithubConfig};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{fixture, put_trigger, wait_status, TestCluster};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WEBHOOK_SECRET: &str = "callbacks-webhook-secret";
const CB_SECRET_ENV: &str = "AOF_TEST_CALLBACK_SECRET";
const CB_SECRET: &str = "callback-secret-0123456789";

/// HMAC-SHA256 written out (RFC 2104), independent of the node's signer.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("sha256={}", hex(&outer))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    key: String,
    attempt: u32,
    body: Value,
    raw: Vec<u8>,
    signature: String,
    signed_ok: bool,
    answered: u16,
    at: Instant,
}

const UP: u8 = 0;
/// Accept the request and never answer it (until the sender gives up).
const HANG: u8 = 1;

#[derive(Default)]
struct Log {
    got: Vec<Received>,
}

#[derive(Clone)]
struct Receiver {
    log: Arc<Mutex<Log>>,
    mode: Arc<AtomicU8>,
    /// Attempts answered 500 per idempotency key on `/flaky`.
    fail_first: u32,
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.log.lock().unwrap().got.clone()
    }
    /// Delivered notices (answered 2xx), by idempotency key.
    fn delivered(&self) -> BTreeMap<String, Vec<Received>> {
        let mut m: BTreeMap<String, Vec<Received>> = BTreeMap::new();
        for r in self.got().into_iter().filter(|r| r.answered == 200) {
            m.entry(r.key.clone()).or_default().push(r);
        }
        m
    }
}

/// Answers with `Connection: close`, so no pooled connection outlives a stopped receiver.
async fn handle(
    State(rx): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (
    StatusCode,
    [(axum::http::header::HeaderName, &'static str); 1],
) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let signature = h("x-aof-signature-256");
    let key = h("x-aof-idempotency-key");
    let signed_ok = signature == hmac_sha256(CB_SECRET.as_bytes(), &body);
    let path = uri.path().to_string();
    let earlier = rx
        .log
        .lock()
        .unwrap()
        .got
        .iter()
        .filter(|r| r.key == key && r.path == path)
        .count() as u32;
    let answered = if !signed_ok || h("content-type") != "application/json" {
        StatusCode::UNAUTHORIZED
    } else if path == "/flaky" && earlier < rx.fail_first || path == "/broken" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let hang = rx.mode.load(Ordering::SeqCst) == HANG;
    rx.log.lock().unwrap().got.push(Received {
        path,
        key,
        attempt: h("x-aof-attempt").parse().unwrap_or(0),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        signature,
        signed_ok,
        answered: if hang { 0 } else { answered.as_u16() },
        at: Instant::now(),
    });
    if hang {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    (answered, [(axum::http::header::CONNECTION, "close")])
}

/// Serve the receiver on `l` until the returned handle is aborted.
fn serve(rx: &Receiver, l: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/{*path}", post(handle))
        .with_state(rx.clone());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    })
}

fn receiver(fail_first: u32) -> Receiver {
    Receiver {
        log: Arc::default(),
        mode: Arc::new(AtomicU8::new(UP)),
        fail_first,
    }
}

/// A three-node cluster whose nodes run the target `ok` (exit 0) and send callbacks fast.
async fn cluster(max_attempts: u32) -> TestCluster {
    std::env::set_var("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET);
    std::env::set_var(CB_SECRET_ENV, CB_SECRET);
    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig =
            serde_yaml::from_str("enabled: true\nwebhook_secret_env: GITHUB_WEBHOOK_SECRET\n")
                .unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.runtime.executors.insert(
            "ok".into(),
            ExecutorConfig::Command {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo done $AOF_DELIVERY_ID".into(),
                ],
                timeout_secs: None,
            },
        );
        cfg.spec.callbacks.initial_backoff_ms = 200;
        cfg.spec.callbacks.max_backoff_ms = 2000;
        cfg.spec.callbacks.timeout_ms = 2000;
        cfg.spec.callbacks.max_attempts = max_attempts;
    })
    .await;
    c.wait_ready(30).await;
    c
}

fn trigger(event: &str, url: &str, secret_env: &str) -> String {
    format!(
        "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{github_events: [{event}]}}\n  default_agent: ok\n  callback: {{url: \"{url}\", secret_env: {secret_env}}}\n"
    )
}

/// Post a signed `issues` delivery to node `i` and wait until its job completed;
/// returns the job id.
async fn finished_job(c: &TestCluster, i: usize, event: &str, delivery: &str) -> String {
    let body = match event {
        "issues" => fixture("issues/00-edited.json"),
        _ => fixture("issue_comment/00-created.json"),
    };
    let r = common::signed_webhook(
        &c.http,
        &c.nodes[i].url("/webhook/github"),
        event,
        delivery,
        &body,
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    let v = wait_status(c, i, delivery, "completed", 30).await;
    v["jobs"][0]["job_id"]
        .as_str()
        .or_else(|| v["jobs"][0].as_str())
        .unwrap_or_else(|| panic!("a job: {v}"))
        .to_string()
}

async fn callbacks(c: &TestCluster, i: usize, query: &str) -> Value {
    let (s, v) = c.get_json(i, &format!("/v1/callbacks{query}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Poll `GET /v1/callbacks{query}` on node `i` until `ok` holds (at most `secs`); the answer.
async fn wait_callbacks(
    c: &TestCluster,
    i: usize,
    query: &str,
    what: &str,
    secs: u64,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = callbacks(c, i, query).await;
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}; last {last}");
}

async fn wait_for<F: FnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric_sum(c: &TestCluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for n in c.nodes.iter().filter(|n| n.is_running()) {
        let text = c
            .http
            .get(n.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += metric(&text, name);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_down_for_30s_gets_every_notice_of_the_jobs_finished_meanwhile() {
    let rx = receiver(0);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    let server = serve(&rx, l);
    let c = cluster(1000).await;
    put_trigger(
        &c,
        "cb",
        &trigger("issues", &format!("http://{addr}/cb"), CB_SECRET_ENV),
    )
    .await;

    // Up: the first job's notice arrives.
    let before = finished_job(&c, 0, "issues", "cb-before").await;
    wait_for("the first notice", 20, || rx.delivered().len() == 1).await;

    // Down (connection refused) for 30 s; jobs finish meanwhile, on deliveries to every node.
    server.abort();
    let _ = server.await;
    let down_at = Instant::now();
    let mut meanwhile = BTreeMap::new();
    for k in 0..5 {
        let d = format!("cb-down-{k}");
        let job = finished_job(&c, k % 3, "issues", &d).await;
        meanwhile.insert(d, job);
    }
    // The outbox holds them, attempts failing with the reason.
    let listed = wait_callbacks(
        &c,
        1,
        "?state=pending",
        "5 pending notices, each tried",
        20,
        |v| {
            v["pending"] == 5
                && v["items"]
                    .as_array()
                    .is_some_and(|v| v.iter().all(|n| n["attempts"].as_u64() >= Some(1)))
        },
    )
    .await;
    let err = listed["items"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("cannot reach") && err.contains(&addr.to_string()),
        "{err}"
    );
    assert_eq!(listed["items"][0]["state"], "pending");
    let wait = Duration::from_secs(30).saturating_sub(down_at.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(
        callbacks(&c, 2, "?consistency=stale").await["pending"],
        5,
        "nothing is delivered while the receiver is down"
    );
    assert!(metric_sum(&c, "aof_callbacks_failed_total").await >= 5.0);

    // Back on the same address.
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let up_at = Instant::now();
    let _server = serve(&rx, l);
    wait_for("every notice of the jobs finished meanwhile", 30, || {
        rx.delivered().len() == 6
    })
    .await;

    let delivered = rx.delivered();
    for (key, got) in &delivered {
        assert_eq!(got.len(), 1, "{key} delivered {} times", got.len());
        let r = &got[0];
        assert!(r.signed_ok, "{key}: bad signature {}", r.signature);
        assert_eq!(r.body["idempotency_key"], key.as_str());
        assert_eq!(r.body["outcome"], "completed");
        assert_eq!(r.body["trigger"], "cb");
        assert_eq!(r.body["event"], "issues");
        assert_eq!(r.body["repo"], "Codertocat/Hello-World");
        assert_eq!(
            r.body["target"],
            serde_json::json!({"kind": "agent", "name": "ok"})
        );
        assert!(
            r.body["result"]
                .as_str()
                .unwrap_or_default()
                .contains("done"),
            "{}",
            r.body
        );
        assert!(r.body["finished_ms"].as_u64() >= r.body["created_ms"].as_u64());
    }
    let by_delivery: BTreeMap<String, (String, Instant)> = delivered
        .values()
        .map(|g| {
            (
                g[0].body["delivery_id"].as_str().unwrap().to_string(),
                (g[0].body["job_id"].as_str().unwrap().to_string(), g[0].at),
            )
        })
        .collect();
    assert_eq!(by_delivery["cb-before"].0, before);
    for (d, job) in &meanwhile {
        let (got_job, at) = &by_delivery[d];
        assert_eq!(got_job, job, "{d}");
        assert!(*at >= up_at, "{d} arrived after the receiver returned");
    }
    assert_eq!(
        by_delivery.len(),
        6,
        "exactly the notices of the finished jobs: {:?}",
        by_delivery.keys()
    );
    // The earlier notice was not sent again.
    assert_eq!(
        rx.got()
            .iter()
            .filter(|r| r.body["delivery_id"] == "cb-before")
            .count(),
        1
    );
    // Confirmed notices leave the outbox.
    c.eventually("an empty outbox", 10, || async {
        callbacks(&c, 0, "").await["items"]
            .as_array()
            .is_some_and(|v| v.is_empty())
    })
    .await;
    assert!(metric_sum(&c, "aof_callbacks_sent_total").await >= 6.0);
    c.eventually("aof_callbacks_pending 0 everywhere", 10, || async {
        metric_sum(&c, "aof_callbacks_pending").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_receivers_see_retries_and_hopeless_notices_end_dead() {
    let rx = receiver(2);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _server = serve(&rx, l);
    let c = cluster(4).await;
    put_trigger(
        &c,
        "flaky",
        &trigger("issues", &format!("http://{addr}/flaky"), CB_SECRET_ENV),
    )
    .await;
    put_trigger(
        &c,
        "broken",
        &trigger(
            "issue_comment",
            &format!("http://{addr}/broken"),
            CB_SECRET_ENV,
        ),
    )
    .await;

    // Fails twice, then delivered on the third attempt: same body, same key, same signature.
    let job = finished_job(&c, 1, "issues", "flaky-1").await;
    wait_for("the flaky notice delivered", 30, || {
        rx.delivered().len() == 1
    })
    .await;
    let tries: Vec<Received> = rx
        .got()
        .into_iter()
        .filter(|r| r.path == "/flaky")
        .collect();
    assert_eq!(
        tries
            .iter()
            .map(|r| (r.attempt, r.answered))
            .collect::<Vec<_>>(),
        vec![(1, 500), (2, 500), (3, 200)]
    );
    assert!(tries.iter().all(|r| r.signed_ok
        && r.raw == tries[0].raw
        && r.key == tries[0].key
        && r.signature == tries[0].signature));
    assert_eq!(tries[0].body["job_id"], job.as_str());
    assert!(
        tries[1].at >= tries[0].at + Duration::from_millis(150),
        "backoff between attempts"
    );

    // Always 500: dead after 4 attempts, with the receiver's answer as the reason.
    finished_job(&c, 2, "issue_comment", "broken-1").await;
    let dead = wait_callbacks(&c, 0, "?state=dead", "the broken notice dead", 30, |v| {
        v["items"].as_array().is_some_and(|v| v.len() == 1)
    })
    .await;
    let n = &dead["items"][0];
    assert_eq!(
        (
            n["state"].as_str(),
            n["attempts"].as_u64(),
            n["delivery_id"].as_str()
        ),
        (Some("dead"), Some(4), Some("broken-1"))
    );
    assert!(n["last_error"].as_str().unwrap().contains("500"), "{n}");
    assert!(
        n["expires_ms"].as_u64() > n["dead_ms"].as_u64(),
        "kept for the retention: {n}"
    );
    assert_eq!(
        rx.got().iter().filter(|r| r.path == "/broken").count(),
        4,
        "no attempt after the notice is dead"
    );

    // The secret variable is missing on the nodes: every attempt fails with that reason.
    put_trigger(
        &c,
        "flaky",
        &trigger(
            "issues",
            &format!("http://{addr}/flaky"),
            "AOF_TEST_CALLBACK_SECRET_UNSET",
        ),
    )
    .await;
    finished_job(&c, 0, "issues", "nosecret-1").await;
    c.eventually("the unsigned notice dead", 30, || async {
        callbacks(&c, 1, "?state=dead").await["items"]
            .as_array()
            .is_some_and(|v| v.len() == 2)
    })
    .await;
    let dead = callbacks(&c, 1, "?state=dead&consistency=stale").await;
    let n = dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["delivery_id"] == "nosecret-1")
        .unwrap()
        .clone();
    let why = n["last_error"].as_str().unwrap();
    assert!(
        why.contains("AOF_TEST_CALLBACK_SECRET_UNSET") && why.contains("not set"),
        "{why}"
    );
    assert!(
        !rx.got()
            .iter()
            .any(|r| r.body["delivery_id"] == "nosecret-1"),
        "nothing is sent unsigned"
    );
    assert_eq!(
        callbacks(&c, 1, "?state=pending").await["items"],
        serde_json::json!([])
    );
    assert!(metric_sum(&c, "aof_callbacks_dead_total").await >= 2.0);
    let (s, v) = c.get_json(0, "/v1/callbacks?state=delivered").await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notice_the_stopped_leader_did_not_get_confirmed_is_delivered_by_the_new_leader() {
    let rx = receiver(0);
    rx.mode.store(HANG, Ordering::SeqCst);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _server = serve(&rx, l);
    let mut c = cluster(1000).await;
    put_trigger(
        &c,
        "cb",
        &trigger("issues", &format!("http://{addr}/cb"), CB_SECRET_ENV),
    )
    .await;
    let leader = c.wait_ready(30).await;
    let li = c.index_of(leader);
    let other = (li + 1) % 3;

    // The job finishes; the leader's POST of its notice is left unanswered.
    let job = finished_job(&c, other, "issues", "failover-1").await;
    wait_for("the leader's first POST", 20, || !rx.got().is_empty()).await;
    let first = rx.got()[0].clone();
    assert_eq!((first.attempt, first.answered), (1, 0));
    assert_eq!(first.body["job_id"], job.as_str());
    c.stop(li).await;
    rx.mode.store(UP, Ordering::SeqCst);

    // The new leader sends it from the replicated outbox.
    let new_leader = c.wait_ready(30).await;
    assert_ne!(new_leader, leader);
    wait_for("the notice delivered by the new leader", 30, || {
        rx.delivered().len() == 1
    })
    .await;
    let got = &rx.delivered()[&first.key];
    assert_eq!(got.len(), 1);
    assert!(got[0].signed_ok);
    assert_eq!(got[0].raw, first.raw, "the same notice, byte for byte");
    c.eventually("an empty outbox", 10, || async {
        callbacks(&c, other, "").await["pending"] == 0
    })
    .await;
    let _ = BTreeSet::<String>::new();
}
