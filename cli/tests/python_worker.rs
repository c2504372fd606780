//! The Python example worker (`client/examples/python/worker.py`) against a real
//! three-node cluster: `aofctl serve` processes on loopback, signed GitHub webhooks
//! from the fixture corpus posted to different nodes, and the worker claiming,
//! heart-beating, and completing the jobs over gRPC (`aof.v1.WorkQueue`) through a
//! follower, with the cluster's worker token (`AOF_WORKER_TOKEN`); without a token
//! it is refused and exits 2 saying what to set.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`bash .ci/python-deps.sh`).
//! Without them the test is skipped with a loud message — except under CI (`CI` set),
//! where it fails. `PYTHON` selects another interpreter; `AOF_TEST_SHOW_LOGS=1` prints
//! the worker's log even on success.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aof_client::Consistency;
use serde_json::Value;

mod common;
use common::{all_ready, sign, start_three, wait_until, Creds, Node, Proc};

const SECRET: &str = "python-worker-test-secret";
const TARGET: &str = "py-worker";
const JOBS: usize = 5;
/// The cluster's lease timeout. The worker's simulated work is longer, so a job
/// completes with attempt 1 only if the worker's heartbeats (Extend every
/// lease_timeout / 3) kept the lease alive.
const LEASE_TIMEOUT_MS: u64 = 2000;
const WORK_MS: u64 = 3000;
/// Less than JOBS: the server must hold back leases until completions free room.
const MAX_IN_FLIGHT: usize = 3;
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);
/// One fixture of each of these events, each a different shape and size.
const EVENTS: [&str; JOBS] = ["push", "pull_request", "issues", "issue_comment", "workflow_run"];

fn python() -> String {
    std::env::var("PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Whether the Python side can run; on CI a missing toolchain is a failure.
fn python_ready() -> bool {
    let py = python();
    let why = match Command::new(&py).args(["-c", "import grpc, grpc_tools"]).output() {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!("`{py} -c \"import grpc, grpc_tools\"` failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => format!("cannot run {py}: {e}"),
    };
    if on_ci() {
        panic!("{why}\nThe Python worker test needs grpcio and grpcio-tools: run `bash .ci/python-deps.sh` before the tests (CI is set, so this is a failure, not a skip).");
    }
    eprintln!(
        "\n{bar}\n!!! SKIPPING python_worker: {why}\n!!! Install the dependencies with `bash .ci/python-deps.sh` to run it.\n{bar}\n",
        bar = "!".repeat(78)
    );
    false
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cli/ has a parent").to_path_buf()
}

fn fixtures_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(dir) = std::env::var_os("AOF_FIXTURES_DIR") {
        let dir = PathBuf::from(dir);
        assert!(dir.is_dir(), "AOF_FIXTURES_DIR={} is not a directory", dir.display());
        return dir;
    }
    let candidates = [manifest.join("../../shared/fixtures/github-webhooks"), manifest.join("../shared/fixtures/github-webhooks")];
    candidates.into_iter().find(|d| d.is_dir()).unwrap_or_else(|| {
        panic!(
            "GitHub webhook fixtures not found: set AOF_FIXTURES_DIR to the github-webhooks fixture directory, or put \
             shared/fixtures/github-webhooks next to the repository (looked in {m}/../../shared/fixtures/github-webhooks \
             and {m}/../shared/fixtures/github-webhooks)",
            m = manifest.display()
        )
    })
}

/// (event, file, body): the first fixture of each of [`EVENTS`].
fn pick_payloads() -> Vec<(String, PathBuf, Vec<u8>)> {
    let dir = fixtures_dir();
    EVENTS
        .iter()
        .map(|event| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(event))
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(event).display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            let file = files.into_iter().next().unwrap_or_else(|| panic!("no fixture in {}", dir.join(event).display()));
            let body = std::fs::read(&file).unwrap();
            (event.to_string(), file, body)
        })
        .collect()
}

fn dump_all(nodes: &[Node], worker: Option<&Proc>) {
    for n in nodes {
        n.proc.dump();
    }
    if let Some(w) = worker {
        w.dump();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_claims_heartbeats_and_completes_signed_webhooks() {
    if !python_ready() {
        return;
    }
    let started = Instant::now();
    let payloads = pick_payloads();
    assert_eq!(payloads.iter().map(|p| &p.2).collect::<BTreeSet<_>>().len(), JOBS, "the fixtures must differ");

    // Three nodes.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("  platforms:\n    github:\n      enabled: true\n      webhook_secret: \"{SECRET}\"\n  queue:\n    lease_timeout_ms: {LEASE_TIMEOUT_MS}\n");
    let creds = Creds::new(dir.path());
    let nodes = start_three(dir.path(), "py", &spec, &creds);
    wait_until("three nodes ready", 60, || dump_all(&nodes, None), || all_ready(nodes.iter().map(Node::public_url))).await;
    let urls: Vec<String> = nodes.iter().map(Node::api_url).collect();
    let status = creds.admin_client(urls.clone()).cluster_status(Consistency::Linearizable).await.unwrap();
    let leader = status.leader_id.expect("a leader");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();

    // The trigger: every GitHub event goes to the agent the worker serves.
    let trigger = format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{}}\n  default_agent: {TARGET}\n");
    let r = http
        .put(format!("{}/v1/triggers/python-worker", urls[1]))
        .bearer_auth(&creds.admin)
        .header("content-type", "application/yaml")
        .body(trigger)
        .send()
        .await
        .unwrap();
    let code = r.status();
    assert!(code.is_success(), "PUT trigger: {code} {}", r.text().await.unwrap_or_default());

    // Generated code, as a worker's build would do it.
    let gen = dir.path().join("gen");
    std::fs::create_dir(&gen).unwrap();
    let o = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo_root().join("proto/proto"))
        .arg(format!("--python_out={}", gen.display()))
        .arg(format!("--grpc_python_out={}", gen.display()))
        .arg("aof/v1/queue.proto")
        .output()
        .unwrap();
    assert!(o.status.success(), "protoc: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(gen.join("aof/v1/queue_pb2_grpc.py").is_file());

    // Without a token every node refuses the worker: it exits 2 at once, saying
    // what to set, and claims nothing.
    let via = nodes.iter().find(|n| n.id != leader).unwrap();
    let all_grpc: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.ports.grpc)).collect();
    let mut refused = Proc::spawn(
        "python worker without a token",
        dir.path().join("refused.log"),
        Command::new(python())
            .arg(repo_root().join("client/examples/python/worker.py"))
            .args(["--endpoint", &all_grpc.join(","), "--target", TARGET])
            .env_remove("AOF_WORKER_TOKEN")
            .env("PYTHONPATH", &gen)
            .env("PYTHONUNBUFFERED", "1"),
    );
    match refused.wait_exit(30).await {
        Some(s) if s.code() == Some(2) => {}
        other => {
            dump_all(&nodes, Some(&refused));
            panic!("the Python worker without a token: {other:?}");
        }
    }
    let log = refused.log_text();
    assert!(log.contains("UNAUTHENTICATED") && log.contains("AOF_WORKER_TOKEN"), "{log}");

    // The worker, on a follower's gRPC port: its calls are forwarded to the leader.
    let out = dir.path().join("out");
    let mut worker = Proc::spawn(
        "python worker",
        dir.path().join("worker.log"),
        Command::new(python())
            .arg(repo_root().join("client/examples/python/worker.py"))
            .args(["--endpoint", &format!("grpc://127.0.0.1:{}", via.ports.grpc)])
            .env("AOF_WORKER_TOKEN", &creds.worker)
            .args(["--target", TARGET, "--worker-id", "python-e2e"])
            .args(["--max-in-flight", &MAX_IN_FLIGHT.to_string(), "--max-jobs", &JOBS.to_string()])
            .args(["--work-ms", &WORK_MS.to_string()])
            .arg("--out-dir")
            .arg(&out)
            .env("PYTHONPATH", &gen)
            .env("PYTHONUNBUFFERED", "1"),
    );

    // Five signed deliveries, spread over the nodes.
    let mut deliveries = Vec::new();
    for (i, (event, file, body)) in payloads.iter().enumerate() {
        let delivery = format!("py-worker-{}-{i}-{event}", std::process::id());
        let node = &nodes[i % nodes.len()];
        let r = http
            .post(format!("{}/webhook/github", node.public_url()))
            .header("content-type", "application/json")
            .header("x-github-event", event.as_str())
            .header("x-github-delivery", delivery.as_str())
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let code = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if code != reqwest::StatusCode::ACCEPTED || v["status"] != "queued" {
            dump_all(&nodes, Some(&worker));
            panic!("webhook {} ({}) to node {}: {code} {v}", delivery, file.display(), node.id);
        }
        deliveries.push((delivery, body));
    }

    // The worker exits 0 by itself after --max-jobs completions.
    let deadline = Instant::now() + WORKER_TIMEOUT;
    let exit = loop {
        if let Some(s) = worker.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            dump_all(&nodes, Some(&worker));
            panic!("the Python worker did not finish {JOBS} jobs within {WORKER_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.child = None;
    if !exit.success() {
        dump_all(&nodes, Some(&worker));
        panic!("the Python worker exited with {exit}");
    }

    // Every delivery completed, first attempt, and its job's output is its payload.
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), JOBS, "output files: {files:?}");
    for (i, (delivery, body)) in deliveries.iter().enumerate() {
        let url = format!("{}/v1/deliveries/{delivery}", urls[(i + 1) % urls.len()]);
        let v: Value = http.get(&url).bearer_auth(&creds.read).send().await.unwrap().json().await.unwrap();
        let jobs = v["jobs"].as_array().unwrap_or_else(|| panic!("{url}: {v}"));
        let ok = v["status"] == "completed" && jobs.len() == 1 && jobs[0]["state"] == "completed";
        if !ok {
            dump_all(&nodes, Some(&worker));
            panic!("delivery {delivery} is not completed: {v:#}");
        }
        if jobs[0]["attempts"] != 1 {
            dump_all(&nodes, Some(&worker));
            panic!("delivery {delivery} needed {} attempts: the worker's heartbeats did not keep the lease: {v:#}", jobs[0]["attempts"]);
        }
        let job_id = jobs[0]["job_id"].as_str().unwrap();
        let written = std::fs::read(out.join(format!("{job_id}.json"))).unwrap_or_else(|e| panic!("output of job {job_id}: {e}"));
        assert!(written == **body, "job {job_id} (delivery {delivery}): the worker's payload differs from the posted body");
    }
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(!log.contains("Traceback"), "the worker logged a traceback:\n{log}");
    if std::env::var_os("AOF_TEST_SHOW_LOGS").is_some() {
        worker.dump();
    }
    eprintln!("python_worker: {JOBS} jobs done in {:.1?} (cluster start included)", started.elapsed());
}
