//! `aofctl worker` end to end: three `aofctl serve` processes on loopback, a
//! catch-all trigger, signed GitHub webhooks, and `aofctl worker` processes running
//! shell commands — exactly-once completion with the payload on stdin, retries into
//! the dead-letter queue and `aofctl dlq redrive`, a worker SIGKILLed mid-job, a
//! worker whose node is SIGKILLed, and a graceful drain on SIGTERM.
//!
//! The nodes run with real tokens and peer certificates; workers present the
//! worker token (`AOF_WORKER_TOKEN`), API calls the admin token. Every wait is
//! bounded; everything listens on 127.0.0.1. `AOF_TEST_SHOW_LOGS=1` prints the
//! workers' logs even on success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use aof_client::{Client, Consistency};
use serde_json::Value;

mod common;
use common::{aofctl_cmd, sign, start_three, Creds, Node, Proc};

const SECRET: &str = "worker-e2e-secret";
/// Set in the worker's environment under credential names; no job may see it.
const LEAK_CANARY: &str = "worker-e2e-credential-canary";
/// The catch-all trigger routes every event to this agent.
const TARGET: &str = "worker";
const LEASE_TIMEOUT_MS: u64 = 2000;

/// Three nodes, a catch-all trigger, and helpers to drive them.
struct Cluster {
    dir: tempfile::TempDir,
    creds: Creds,
    nodes: Vec<Node>,
    workers: Vec<Proc>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let spec = format!("  platforms:\n    github:\n      enabled: true\n      webhook_secret: \"{SECRET}\"\n  queue:\n    lease_timeout_ms: {LEASE_TIMEOUT_MS}\n    retry_delay_ms: 200\n    max_retries: 1\n");
        let creds = Creds::new(dir.path());
        let nodes = start_three(dir.path(), "worker-e2e", &spec, &creds);
        let c = Cluster {
            dir,
            creds,
            nodes,
            workers: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        };
        c.wait_until("three nodes ready", 60, || async {
            for n in &c.nodes {
                if Client::new(vec![n.public_url()]).ready().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        let trigger = format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{}}\n  default_agent: {TARGET}\n");
        let r = c
            .http
            .put(format!("{}/v1/triggers/catch-all", c.nodes[1].api_url()))
            .bearer_auth(&c.creds.admin)
            .header("content-type", "application/yaml")
            .body(trigger)
            .send()
            .await
            .unwrap();
        let code = r.status();
        assert!(
            code.is_success(),
            "PUT trigger: {code} {}",
            r.text().await.unwrap_or_default()
        );
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The API listeners of the live nodes.
    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.proc.child.is_some())
            .map(Node::api_url)
            .collect()
    }

    fn dump(&self) {
        for n in &self.nodes {
            eprintln!("---- log of {} ----\n{}", n.proc.name, n.proc.log_text());
        }
        for w in &self.workers {
            eprintln!("---- log of {} ----\n{}", w.name, w.log_text());
        }
    }

    fn fail(&self, msg: String) -> ! {
        self.dump();
        panic!("{msg}");
    }

    async fn wait_until<F, Fut>(&self, what: &str, secs: u64, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(format!("timed out after {secs}s waiting for: {what}"));
    }

    /// Starts `aofctl worker ARGS -- COMMAND...` with `OUTDIR` set and passed to
    /// the commands (`--pass-env`), the worker token in `AOF_WORKER_TOKEN`, and
    /// credentials set that commands must never see; returns its index.
    fn start_worker(
        &mut self,
        name: &str,
        endpoints: &[String],
        extra: &[&str],
        command: &[&str],
        outdir: &Path,
    ) -> usize {
        let token = self.creds.worker.clone();
        self.start_worker_with(name, endpoints, Some(&token), extra, command, outdir)
    }

    /// [`Cluster::start_worker`] with this token (`None`: no token at all).
    fn start_worker_with(
        &mut self,
        name: &str,
        endpoints: &[String],
        token: Option<&str>,
        extra: &[&str],
        command: &[&str],
        outdir: &Path,
    ) -> usize {
        std::fs::create_dir_all(outdir).unwrap();
        let mut cmd = aofctl_cmd(self.dir.path());
        cmd.arg("worker")
            .args(["--endpoint", &endpoints.join(","), "--worker-id", name])
            .args(["--pass-env", "OUTDIR"])
            .args(extra)
            .arg("--")
            .args(command)
            .env("OUTDIR", outdir)
            .env("GITHUB_TOKEN", LEAK_CANARY)
            .env("AOF_ADMIN_TOKEN", LEAK_CANARY)
            .env("GITHUB_WEBHOOK_SECRET", LEAK_CANARY)
            .env("RUST_LOG", "info")
            .env_remove("AOF_GRPC_ENDPOINT");
        if let Some(t) = token {
            cmd.env("AOF_WORKER_TOKEN", t);
        }
        self.workers.push(Proc::spawn(
            format!("worker {name}"),
            self.path(&format!("{name}.log")),
            &mut cmd,
        ));
        self.workers.len() - 1
    }

    /// Posts a signed delivery to node `i`, retrying 503s (a delivery id is
    /// deduplicated); the answer's JSON.
    async fn post(&self, i: usize, event: &str, delivery: &str, body: &[u8]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .http
                .post(format!("{}/webhook/github", self.nodes[i].public_url()))
                .header("content-type", "application/json")
                .header("x-github-event", event)
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
                .body(body.to_vec())
                .send()
                .await;
            let (code, v) = match r {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(e) => (0, Value::String(e.to_string())),
            };
            if (code == 202 || code == 200) && v["status"] == "queued" {
                return v;
            }
            if (code != 503 && code != 0) || Instant::now() > deadline {
                self.fail(format!(
                    "webhook {delivery} to node {}: {code} {v}",
                    self.nodes[i].id
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET /v1/deliveries/{id}` from any live node (None while unavailable).
    async fn delivery(&self, delivery: &str) -> Option<Value> {
        for url in self.urls() {
            if let Ok(r) = self
                .http
                .get(format!("{url}/v1/deliveries/{delivery}"))
                .bearer_auth(&self.creds.read)
                .send()
                .await
            {
                if r.status().is_success() {
                    return r.json().await.ok();
                }
            }
        }
        None
    }

    /// The lease deadline of a leased job (`GET /v1/jobs?state=leased`).
    async fn lease_deadline(&self, job_id: &str) -> Option<u64> {
        for url in self.urls() {
            let r = self
                .http
                .get(format!("{url}/v1/jobs?state=leased&target={TARGET}"))
                .bearer_auth(&self.creds.read)
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    let v: Value = r.json().await.ok()?;
                    return v["items"]
                        .as_array()?
                        .iter()
                        .find(|j| j["job_id"] == job_id)
                        .and_then(|j| j["lease"]["deadline_ms"].as_u64());
                }
            }
        }
        None
    }

    async fn wait_job_state(&self, delivery: &str, state: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = self.delivery(delivery).await {
                if v["jobs"][0]["state"] == state {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(format!(
            "delivery {delivery}: job not {state} within {secs}s; last seen: {last:#}"
        ));
    }

    async fn wait_event_status(&self, delivery: &str, status: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = self.delivery(delivery).await {
                if v["status"] == status {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(format!(
            "delivery {delivery}: event not {status} within {secs}s; last seen: {last:#}"
        ));
    }

    /// Runs `aofctl ARGS --endpoint <live nodes' API>` with the admin token in
    /// `AOF_TOKEN`.
    fn aofctl(&self, args: &[&str]) -> Output {
        aofctl_cmd(self.dir.path())
            .args(args)
            .args(["--endpoint", &self.urls().join(",")])
            .env("AOF_TOKEN", &self.creds.admin)
            .output()
            .expect("run aofctl")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("AOF_TEST_SHOW_LOGS").is_some() {
            for w in &self.workers {
                eprintln!("---- log of {} ----\n{}", w.name, w.log_text());
            }
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Files of `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn job_of(v: &Value) -> (String, u64) {
    let j = &v["jobs"][0];
    (
        j["job_id"].as_str().unwrap().to_string(),
        j["attempts"].as_u64().unwrap(),
    )
}

/// A webhook body that differs per `i` (sizes, non-ASCII, newlines).
fn body(i: usize, event: &str) -> Vec<u8> {
    let pad = "x".repeat(if i == 0 { 200_000 } else { i * 37 });
    let v = serde_json::json!({
        "action": if event == "issues" { Some("opened") } else { None },
        "ref": "refs/heads/main",
        "issue": {"number": i, "title": format!("issue {i}")},
        "repository": {"full_name": format!("acme/repo-{i}"), "name": format!("repo-{i}"), "owner": {"login": "acme"}},
        "sender": {"login": "alice"},
        "note": format!("ünïcødé\nline {i}\t\"quoted\""),
        "pad": pad,
    });
    serde_json::to_vec_pretty(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_once_with_the_payload_on_stdin_and_sigterm_drains() {
    let mut c = Cluster::start().await;
    let out = c.path("out");
    let endpoints: Vec<String> = c.nodes.iter().map(Node::grpc_url).collect();

    // Without a token, or with the read token, every node refuses the worker: it
    // exits 1 at once, saying what to set.
    let read = c.creds.read.clone();
    for (name, token, want) in [
        ("w-none", None, "no token was sent"),
        ("w-read", Some(read.as_str()), "PermissionDenied"),
    ] {
        let refused = c.path(name);
        let i = c.start_worker_with(name, &endpoints, token, &[], &["cat"], &refused);
        match c.workers[i].wait_exit(30).await {
            Some(s) if s.code() == Some(1) => {}
            other => c.fail(format!("worker {name} with a refused token: {other:?}")),
        }
        let log = c.workers[i].log_text();
        assert!(log.contains("the cluster refused the worker") && log.contains(want), "{log}");
        if token.is_none() {
            assert!(log.contains("AOF_WORKER_TOKEN"), "{log}");
        }
    }

    // Records a second run of a job instead of hiding it.
    let script = r#"f="$OUTDIR/$AOF_JOB_ID"; [ -e "$f" ] && echo "$AOF_JOB_ID" >> "$OUTDIR/duplicates"; env | sort > "$f.env"; cat > "$f"; echo "done $AOF_JOB_ID""#;
    let w = c.start_worker(
        "w-a",
        &endpoints[1..],
        &["--concurrency", "3"],
        &["sh", "-c", script],
        &out,
    );

    let n = 6;
    let mut sent = Vec::new();
    for i in 0..n {
        let event = if i % 2 == 0 { "push" } else { "issues" };
        let delivery = format!("a-{}-{i}", std::process::id());
        let b = body(i, event);
        c.post(i % 3, event, &delivery, &b).await;
        sent.push((delivery, event, b));
    }
    for (delivery, event, b) in &sent {
        let v = c.wait_event_status(delivery, "completed", 60).await;
        let (job_id, attempts) = job_of(&v);
        assert_eq!(attempts, 1, "{v:#}");
        assert_eq!(v["jobs"][0]["state"], "completed");
        let got = std::fs::read(out.join(&job_id))
            .unwrap_or_else(|e| c.fail(format!("output of {job_id}: {e}")));
        if got != *b {
            c.fail(format!(
                "job {job_id}: stdin differs from the posted body ({} vs {} bytes)",
                got.len(),
                b.len()
            ));
        }
        let env: BTreeMap<String, String> =
            std::fs::read_to_string(out.join(format!("{job_id}.env")))
                .unwrap()
                .lines()
                .filter_map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
        let i: usize = delivery.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(
            env.get("AOF_EVENT").map(String::as_str),
            Some(*event),
            "{env:?}"
        );
        assert_eq!(env.get("AOF_DELIVERY_ID"), Some(delivery));
        assert_eq!(env.get("AOF_JOB_ID"), Some(&job_id));
        assert_eq!(
            env.get("AOF_EVENT_ID").map(String::as_str),
            Some(v["event_id"].to_string().as_str())
        );
        assert_eq!(env.get("AOF_REPO"), Some(&format!("acme/repo-{i}")));
        assert_eq!(
            env.get("AOF_CTX_REPO_FULL_NAME"),
            Some(&format!("acme/repo-{i}"))
        );
        assert_eq!(
            env.get("AOF_CTX_EVENT_TYPE").map(String::as_str),
            Some(*event)
        );
        assert_eq!(
            env.get("AOF_ACTION").map(String::as_str),
            Some(if *event == "issues" { "opened" } else { "" })
        );
        assert_eq!(env.get("AOF_ATTEMPT").map(String::as_str), Some("1"));
        assert_eq!(env.get("AOF_TARGET").map(String::as_str), Some(TARGET));
        assert_eq!(
            env.get("AOF_TARGET_KIND").map(String::as_str),
            Some("agent")
        );
        assert_eq!(
            env.get("AOF_TRIGGER").map(String::as_str),
            Some("catch-all")
        );
        assert!(env.contains_key("AOF_PARAMS"), "{env:?}");
        assert_eq!(env.get("AOF_WORKER_ID").map(String::as_str), Some("w-a"));
        assert!(env.contains_key("AOF_FENCING_TOKEN"), "{env:?}");
        // A cleared environment: the allow-list and --pass-env, never credentials.
        assert!(env.contains_key("PATH") && env.contains_key("OUTDIR"), "{env:?}");
        for never in ["GITHUB_TOKEN", "AOF_ADMIN_TOKEN", "GITHUB_WEBHOOK_SECRET", "RUST_LOG"] {
            assert!(!env.contains_key(never), "{never} reached the job: {env:?}");
        }
        assert!(!env.values().any(|v| v.contains(LEAK_CANARY)), "{env:?}");
        // The history names the worker.
        let hist = v["jobs"][0]["history"].to_string();
        assert!(hist.contains("completed by w-a"), "{hist}");
    }
    assert!(
        !out.join("duplicates").exists(),
        "jobs ran twice: {}",
        std::fs::read_to_string(out.join("duplicates")).unwrap()
    );
    assert_eq!(files(&out).len(), 2 * n, "{:?}", files(&out));

    // The status commands see the same.
    let o = c.aofctl(&["get", "events", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let page: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), n);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "completed"),
        "{page:#}"
    );
    let o = c.aofctl(&["get", "events", "--event", "issues"]);
    let table = text(&o);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header[..3], ["ID", "DELIVERY", "EVENT"], "{table}");
    assert_eq!(table.lines().count(), 1 + n / 2, "{table}");
    let o = c.aofctl(&["describe", "event", "--delivery", &sent[1].0]);
    let d = text(&o);
    assert!(o.status.success(), "{d}");
    for want in [
        "Status:      completed",
        "Type:        issues",
        "repo_full_name",
        "Target:    agent/worker",
        "completed by w-a",
    ] {
        assert!(d.contains(want), "describe lacks {want:?}:\n{d}");
    }
    let o = c.aofctl(&["queue", "stats", "-o", "json"]);
    let stats: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert!(
        stats["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["ready"] == 0 && d["leased"] == 0),
        "{stats:#}"
    );

    // SIGTERM with nothing running: exit 0 promptly.
    c.workers[w].sigterm();
    match c.workers[w].wait_exit(15).await {
        Some(s) if s.success() => {}
        other => c.fail(format!("worker w-a after SIGTERM: {other:?}")),
    }

    // SIGTERM while a command runs: it finishes (drain), the job completes, exit 0.
    let slow = c.path("slow");
    let w2 = c.start_worker(
        "w-drain",
        &endpoints[..1],
        &[],
        &["sh", "-c", r#"sleep 2; cat > "$OUTDIR/$AOF_JOB_ID""#],
        &slow,
    );
    let delivery = format!("a-drain-{}", std::process::id());
    c.post(2, "push", &delivery, &body(99, "push")).await;
    c.wait_job_state(&delivery, "leased", 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.workers[w2].sigterm();
    match c.workers[w2].wait_exit(20).await {
        Some(s) if s.success() => {}
        other => c.fail(format!("worker w-drain after SIGTERM: {other:?}")),
    }
    let v = c.wait_event_status(&delivery, "completed", 10).await;
    let (job_id, attempts) = job_of(&v);
    assert_eq!(attempts, 1, "{v:#}");
    assert_eq!(files(&slow), vec![job_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jobs_are_retried_then_dead_and_redrive_runs_them_again() {
    let mut c = Cluster::start().await;
    let endpoints: Vec<String> = c.nodes.iter().map(Node::grpc_url).collect();
    let bad_out = c.path("bad");
    let bad = c.start_worker(
        "w-bad",
        &endpoints,
        &[],
        &[
            "sh",
            "-c",
            "echo \"boom on attempt $AOF_ATTEMPT\" >&2; exit 3",
        ],
        &bad_out,
    );
    let delivery = format!("b-{}", std::process::id());
    let payload = body(1, "push");
    c.post(0, "push", &delivery, &payload).await;

    // max_retries: 1 → two attempts, then the dead-letter queue.
    let v = c.wait_event_status(&delivery, "failed", 60).await;
    let (job_id, attempts) = job_of(&v);
    assert_eq!(
        (attempts, v["jobs"][0]["state"].as_str()),
        (2, Some("dead")),
        "{v:#}"
    );
    let o = c.aofctl(&["dlq", "list", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let dlq: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let items = dlq["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dlq:#}");
    assert_eq!(items[0]["job_id"], job_id.as_str());
    let err = items[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("exit status 3") && err.contains("boom on attempt 2"),
        "{err}"
    );
    let o = c.aofctl(&["dlq", "list"]);
    assert!(text(&o).contains(&job_id), "{}", text(&o));
    let o = c.aofctl(&["queue", "stats"]);
    let t = text(&o);
    assert!(
        t.starts_with("TARGET   KIND    PRIORITY   READY   DELAYED   LEASED   DEAD   OLDEST\n"),
        "{t}"
    );
    assert!(
        t.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(TARGET) && l.split_whitespace().nth(6) == Some("1")),
        "{t}"
    );

    // Purge without a terminal and without --yes is refused, and changes nothing.
    let o = c.aofctl(&["dlq", "purge", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    assert_eq!(
        c.delivery(&delivery).await.unwrap()["jobs"][0]["state"],
        "dead"
    );

    // Replace the failing worker; redrive; the job runs again and completes.
    c.workers[bad].sigterm();
    assert!(c.workers[bad]
        .wait_exit(15)
        .await
        .is_some_and(|s| s.success()));
    let good_out = c.path("good");
    c.start_worker(
        "w-good",
        &endpoints,
        &[],
        &["sh", "-c", r#"cat > "$OUTDIR/$AOF_JOB_ID""#],
        &good_out,
    );
    // Nothing to do yet: the job is dead, and a dead job is never leased (the state
    // says so; no waiting for something not to happen).
    assert_eq!(c.delivery(&delivery).await.unwrap()["jobs"][0]["state"], "dead");
    assert!(files(&good_out).is_empty());
    let o = c.aofctl(&["dlq", "redrive", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("redriven job {job_id}")),
        "{}",
        text(&o)
    );
    let v = c.wait_event_status(&delivery, "completed", 30).await;
    assert_eq!(job_of(&v), (job_id.clone(), 1), "{v:#}");
    assert_eq!(files(&good_out), vec![job_id.clone()]);
    assert_eq!(std::fs::read(good_out.join(&job_id)).unwrap(), payload);
    let o = c.aofctl(&["dlq", "list", "-o", "json"]);
    let dlq: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(dlq["items"].as_array().unwrap().is_empty(), "{dlq:#}");
    // Redriving a job that is not dead is a clear 404.
    let o = c.aofctl(&["dlq", "redrive", &job_id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("not in the dead-letter queue"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_sigkilled_worker_is_completed_once_by_another() {
    let mut c = Cluster::start().await;
    let endpoints: Vec<String> = c.nodes.iter().map(Node::grpc_url).collect();
    let out = c.path("out");
    let slow = c.start_worker(
        "w-slow",
        &endpoints,
        &[],
        &["sh", "-c", r#"sleep 30; cat > "$OUTDIR/slow-$AOF_JOB_ID""#],
        &out,
    );
    let delivery = format!("c-{}", std::process::id());
    c.post(1, "push", &delivery, &body(3, "push")).await;
    let v = c.wait_job_state(&delivery, "leased", 30).await;
    let (job_id, _) = job_of(&v);
    // Heartbeats keep the lease past its timeout while the command runs: wait
    // (bounded) until its deadline has moved (an Extend was committed) and the first
    // deadline has passed; the job is still leased, on its first attempt.
    let first = c.lease_deadline(&job_id).await.expect("the leased job is listed");
    let bound = Instant::now() + Duration::from_millis(10 * LEASE_TIMEOUT_MS);
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let current = c.lease_deadline(&job_id).await;
        if now > first && current.is_some_and(|d| d > first) {
            break;
        }
        if Instant::now() > bound {
            c.fail(format!("the lease of {job_id} was not extended past {first} (now {now}, deadline {current:?})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = c.delivery(&delivery).await.unwrap();
    assert_eq!(
        (
            v["jobs"][0]["state"].as_str(),
            v["jobs"][0]["attempts"].as_u64()
        ),
        (Some("leased"), Some(1)),
        "{v:#}"
    );

    c.workers[slow].kill9();
    c.start_worker(
        "w-fast",
        &endpoints,
        &[],
        &["sh", "-c", r#"cat > "$OUTDIR/fast-$AOF_JOB_ID""#],
        &out,
    );
    let v = c.wait_event_status(&delivery, "completed", 30).await;
    assert_eq!(job_of(&v), (job_id.clone(), 2), "{v:#}");
    let hist = v["jobs"][0]["history"].to_string();
    assert!(hist.contains("lease expired: worker w-slow"), "{hist}");
    assert!(hist.contains("completed by w-fast"), "{hist}");
    // Exactly one run produced output, and the killed one does not finish later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(files(&out), vec![format!("fast-{job_id}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_working_after_its_node_is_sigkilled() {
    let mut c = Cluster::start().await;
    let status = c.creds.admin_client(c.urls())
        .cluster_status(Consistency::Linearizable)
        .await
        .unwrap();
    // Node A is the leader (the harder case: the queue changes hands too), B another.
    let a = c
        .nodes
        .iter()
        .position(|n| Some(n.id) == status.leader_id)
        .expect("a leader");
    let b = (a + 1) % 3;
    let out = c.path("out");
    let eps = vec![c.nodes[a].grpc_url(), c.nodes[b].grpc_url()];
    let w = c.start_worker(
        "w-failover",
        &eps,
        &[],
        &["sh", "-c", r#"cat > "$OUTDIR/$AOF_JOB_ID""#],
        &out,
    );

    let d1 = format!("d1-{}", std::process::id());
    c.post(b, "push", &d1, &body(5, "push")).await;
    let v1 = c.wait_event_status(&d1, "completed", 30).await;
    assert!(v1["jobs"][0]["history"]
        .to_string()
        .contains("completed by w-failover"));

    c.nodes[a].proc.kill9();
    let d2 = format!("d2-{}", std::process::id());
    c.post(b, "push", &d2, &body(6, "push")).await;
    let v2 = c.wait_event_status(&d2, "completed", 60).await;
    let (job2, _) = job_of(&v2);
    assert!(
        v2["jobs"][0]["history"]
            .to_string()
            .contains("completed by w-failover"),
        "{v2:#}"
    );
    assert!(out.join(&job2).is_file());
    assert_eq!(files(&out).len(), 2);
    let log = c.workers[w].log_text();
    assert!(
        log.contains("claim stream lost"),
        "the worker did not report the reconnect:\n{log}"
    );
    assert!(
        c.workers[w]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the worker exited:\n{log}"
    );
}
