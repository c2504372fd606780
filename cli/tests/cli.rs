//! End-to-end tests of the `aofctl` binary that need no real cluster: usage,
//! error reporting, contexts, and the commands against a fake node API served by
//! axum (which, like a node's API listener, wants a bearer token).

use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

mod common;

/// The token the fake node accepts.
const TOKEN: &str = "t0k-fake-admin";

/// A directory for aofctl's config file, shared by the tests of this process
/// (none of them writes contexts there).
fn config_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_path_buf()
}

/// `aofctl ARGS` with `env`, aofctl's config file in `dir`, and nothing from the
/// caller's environment.
fn aofctl_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = common::aofctl_cmd(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run aofctl")
}

fn aofctl_blocking(args: &[&str]) -> Output {
    aofctl_in(&config_dir(), args, &[])
}

/// `aofctl ARGS` with the fake node's token in `AOF_TOKEN`.
async fn aofctl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        aofctl_in(&config_dir(), &args, &[("AOF_TOKEN", TOKEN)])
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[test]
fn help_lists_the_subcommands() {
    let out = aofctl_blocking(&["--help"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for cmd in ["serve", "cluster", "apply", "get", "delete", "dev"] {
        assert!(
            stdout.contains(&format!("\n  {cmd} ")),
            "{cmd} missing from:\n{stdout}"
        );
    }
    let out = aofctl_blocking(&["cluster", "--help"]);
    let stdout = text(&out.stdout);
    for cmd in ["status", "join", "leave"] {
        assert!(
            stdout.contains(&format!("\n  {cmd} ")),
            "{cmd} missing from:\n{stdout}"
        );
    }
}

#[test]
fn unreachable_cluster_is_a_clear_error_naming_the_endpoint() {
    let out = aofctl_blocking(&["get", "triggers", "--endpoint", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let out = aofctl_blocking(&["cluster", "join", "--node-id", "four"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("error:"));
}

#[test]
fn apply_reports_invalid_yaml_with_file_and_line_before_contacting_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "kind: Trigger\nmetadata:\n  name: x\n  labels: [a\n").unwrap();
    let out = aofctl_blocking(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--endpoint",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("broken.yaml: invalid YAML"), "{stderr}");
    assert!(stderr.contains("line "), "{stderr}");
    assert!(
        !stderr.contains("127.0.0.1:1"),
        "nothing is sent when a file is invalid: {stderr}"
    );
}

#[test]
fn apply_skips_kinds_the_cluster_does_not_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agents.yaml");
    std::fs::write(&file, "kind: Agent\nmetadata: {name: reviewer}\n---\nkind: Fleet\nmetadata: {name: review-fleet}\n")
        .unwrap();
    let out = aofctl_blocking(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--endpoint",
        "http://127.0.0.1:1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "skipped agent/reviewer: not stored in the cluster\nskipped fleet/review-fleet: not stored in the cluster\n"
    );
}

// ---- against a fake node ----

#[derive(Default)]
struct Fake {
    /// name -> (revision, document)
    triggers: std::collections::BTreeMap<String, (u64, Value)>,
    index: u64,
    learner: Option<(u64, Value, u64)>, // id, the POSTed body, matched
    promoted: bool,
    /// How far a learner gets per poll of /v1/cluster (0 = never catches up).
    catch_up_step: u64,
    /// Reads of /v1/queue/stats so far.
    stats_reads: u64,
    /// Dead jobs listed after 7-0; those starting with `gone-` answer 404 to a redrive.
    more_dead: Vec<String>,
    /// Bodies POSTed to /v1/dlq/redrive.
    redrives: Vec<Value>,
}

type Shared = Arc<Mutex<Fake>>;

fn member(id: u64, role: &str, matched: Option<u64>, leader: bool) -> Value {
    json!({"id":id,"peer_addr":format!("127.0.0.1:600{id}"),"grpc_addr":format!("127.0.0.1:400{id}"),
           "api_addr":format!("127.0.0.1:500{id}"),"http_addr":format!("127.0.0.1:300{id}"),
           "role":role,"is_leader":leader,"matched_index":matched})
}

/// Like a node's API listener: 401 without the token, 415 for a change without a
/// JSON or YAML content type.
async fn require_token(req: Request, next: Next) -> Response {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        let msg = if auth.is_empty() { "no Authorization header" } else { "the bearer token is not one this node accepts" };
        return (StatusCode::UNAUTHORIZED, Json(json!({"error":"unauthenticated","message":msg}))).into_response();
    }
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let mutating = !matches!(req.method().as_str(), "GET" | "DELETE");
    if mutating && !(ct.starts_with("application/json") || ct.starts_with("application/yaml")) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(json!({"error":"unsupported_media_type","message":"changes must be JSON or YAML"}))).into_response();
    }
    next.run(req).await
}

fn fake_node(state: Shared) -> Router {
    const COMMIT: u64 = 1500;
    Router::new()
        .route(
            "/v1/cluster",
            get(|State(s): State<Shared>| async move {
                let mut s = s.lock().unwrap();
                let step = s.catch_up_step;
                let promoted = s.promoted;
                let mut members = vec![
                    member(1, "voter", Some(COMMIT), true),
                    member(2, "voter", Some(COMMIT), false),
                    member(3, "voter", Some(COMMIT - 2), false),
                ];
                if let Some((id, body, matched)) = s.learner.as_mut() {
                    *matched = (*matched + step).min(COMMIT);
                    let role = if promoted { "voter" } else { "learner" };
                    let mut m = body.clone();
                    m["id"] = json!(*id);
                    m["role"] = json!(role);
                    m["is_leader"] = json!(false);
                    m["matched_index"] = json!(*matched);
                    members.push(m);
                }
                Json(json!({"node_id":1,"leader_id":1,"term":3,"commit_index":COMMIT,"last_applied":COMMIT,"members":members}))
            }),
        )
        .route(
            "/v1/cluster/learners",
            post(|State(s): State<Shared>, Json(b): Json<Value>| async move {
                let mut s = s.lock().unwrap();
                let id = b["node_id"].as_u64().unwrap();
                s.learner = Some((id, b.clone(), 0));
                Json(json!({"node_id":id,"log_index":1501}))
            }),
        )
        .route(
            "/v1/cluster/voters/{id}",
            post(|State(s): State<Shared>, Path(id): Path<u64>| async move {
                s.lock().unwrap().promoted = true;
                Json(json!({"node_id":id,"log_index":1502}))
            }),
        )
        .route(
            "/v1/triggers",
            get(|State(s): State<Shared>| async move {
                let s = s.lock().unwrap();
                let items: Vec<Value> = s
                    .triggers
                    .iter()
                    .map(|(n, (rev, doc))| json!({"name":n,"revision":rev,"created_revision":rev,"updated_ms":0,"trigger":doc}))
                    .collect();
                Json(json!({ "items": items }))
            }),
        )
        .route(
            "/v1/triggers/{name}",
            put(|State(s): State<Shared>, Path(name): Path<String>, Json(doc): Json<Value>| async move {
                let mut s = s.lock().unwrap();
                if doc["spec"].is_null() {
                    return (
                        StatusCode::BAD_REQUEST,
                        Json(json!({"error":"invalid_trigger","message":format!("trigger {name}: spec is required")})),
                    );
                }
                s.index += 1;
                let index = s.index;
                let result = match s.triggers.get(&name) {
                    None => "created",
                    Some((_, old)) if *old == doc => "unchanged",
                    Some(_) => "configured",
                };
                if result != "unchanged" {
                    s.triggers.insert(name.clone(), (index, doc));
                }
                (StatusCode::OK, Json(json!({"name":name,"revision":index,"result":result})))
            })
            .get(|State(s): State<Shared>, Path(name): Path<String>| async move {
                match s.lock().unwrap().triggers.get(&name) {
                    Some((rev, doc)) => (
                        StatusCode::OK,
                        Json(json!({"name":name,"revision":rev,"created_revision":rev,"updated_ms":0,"trigger":doc})),
                    ),
                    None => (
                        StatusCode::NOT_FOUND,
                        Json(json!({"error":"not_found","message":format!("trigger {name:?} does not exist")})),
                    ),
                }
            })
            .delete(|State(s): State<Shared>, Path(name): Path<String>| async move {
                match s.lock().unwrap().triggers.remove(&name) {
                    Some((rev, _)) => (StatusCode::OK, Json(json!({"name":name,"revision":rev + 1}))),
                    None => (
                        StatusCode::NOT_FOUND,
                        Json(json!({"error":"not_found","message":format!("trigger {name:?} does not exist")})),
                    ),
                }
            }),
        )
        .route(
            "/v1/events",
            get(|| async {
                let event = |id: u64| json!({"event_id": id, "delivery_id": format!("d-{id}"), "event": "push", "action": null,
                    "repo": "myorg/api", "sender": "alice", "status": "completed", "trigger": "all", "command": null,
                    "received_ms": 1_000_000, "received_by": 2, "finished_ms": 1_003_000, "expires_ms": 2_000_000,
                    "payload_bytes": 9, "context": {}, "jobs": []});
                Json(json!({"items": [event(12), event(13)], "next_after": null}))
            }),
        )
        .route(
            "/v1/queue/stats",
            get(|State(s): State<Shared>| async move {
                // Every third read sees one more ready job.
                let mut s = s.lock().unwrap();
                s.stats_reads += 1;
                let ready = s.stats_reads / 3;
                Json(json!({"items": [{"target_kind": "agent", "target": "helper", "priority": "normal",
                    "ready": ready, "delayed": 0, "leased": 0, "dead": 0, "oldest_ready_age_ms": s.stats_reads * 1000}]}))
            }),
        )
        .route(
            "/v1/dlq",
            get(|State(s): State<Shared>| async move {
                let dead = |id: &str| json!({"job_id": id, "event_id": 7, "delivery_id": "d-7",
                    "target": {"kind": "flow", "name": "deploy"}, "trigger": "push-main", "attempts": 2,
                    "last_error": "exit status 3", "dead_since_ms": 1000});
                let mut items = vec![dead("7-0")];
                items.extend(s.lock().unwrap().more_dead.iter().map(|id| dead(id)));
                Json(json!({"items": items}))
            }),
        )
        .route(
            "/v1/dlq/redrive",
            post(|State(s): State<Shared>, Json(body): Json<Value>| async move {
                s.lock().unwrap().redrives.push(body.clone());
                match body["job_id"].as_str() {
                    Some(id) if id.starts_with("gone-") => (
                        StatusCode::NOT_FOUND,
                        Json(json!({"error": "not_found", "message": format!("job {id} is not in the dead-letter queue")})),
                    ),
                    Some(id) => (StatusCode::OK, Json(json!({"jobs": [id]}))),
                    None => (StatusCode::OK, Json(json!({"jobs": []}))),
                }
            }),
        )
        .layer(axum::middleware::from_fn(require_token))
        .with_state(state)
}

const TRIGGERS: &str = "\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: pr-bot
spec:
  type: GitHub
  config:
    github_events: [pull_request]
    repositories: [myorg/api]
---
apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: reviewer
---
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: broken
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_against_a_fake_node() {
    let state = Shared::default();
    // First endpoint is dead: every command fails over to the live one.
    let endpoints = format!(
        "http://127.0.0.1:1,{}",
        serve(fake_node(state.clone())).await
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, TRIGGERS).unwrap();
    let file = file.to_str().unwrap();

    let out = aofctl(&["apply", "-f", file, "--endpoint", &endpoints]).await;
    assert_eq!(out.status.code(), Some(1), "one trigger is invalid");
    assert_eq!(
        text(&out.stdout),
        "trigger/pr-bot created\nskipped agent/reviewer: not stored in the cluster\n"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: trigger/broken"), "{stderr}");
    assert!(stderr.contains("spec is required"), "{stderr}");
    assert!(
        stderr.contains("1 of 2 triggers were not applied"),
        "{stderr}"
    );

    let out = aofctl(&["apply", "-f", file, "--endpoint", &endpoints]).await;
    assert!(text(&out.stdout).starts_with("trigger/pr-bot unchanged\n"));

    let out = aofctl(&["get", "triggers", "--endpoint", &endpoints]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "NAME     REVISION   UPDATED   EVENTS         REPOS\npr-bot   1          -         pull_request   myorg/api\n"
    );

    let out = aofctl(&["get", "triggers", "-o", "json", "--endpoint", &endpoints]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["trigger"]["spec"]["type"], "GitHub");

    let out = aofctl(&["delete", "trigger", "pr-bot", "--endpoint", &endpoints]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "trigger/pr-bot deleted (revision 2)\n");

    let out = aofctl(&["delete", "trigger", "pr-bot", "--endpoint", &endpoints]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: deleting trigger \"pr-bot\": trigger \"pr-bot\" does not exist\n"
    );

    let out = aofctl(&["get", "triggers", "--endpoint", &endpoints]).await;
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr), "No triggers found.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_table_and_json() {
    let endpoint = serve(fake_node(Shared::default())).await;
    let out = aofctl(&["cluster", "status", "--endpoint", &endpoint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Leader: node 1   Term: 3   Commit index: 1500"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ID   API              GRPC             PUBLIC           PEER             ROLE    LEADER   MATCHED   LAG\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3    127.0.0.1:5003   127.0.0.1:4003   127.0.0.1:3003   127.0.0.1:6003   voter            1498      2\n"),
        "{stdout}"
    );

    let out = aofctl(&["cluster", "status", "-o", "json", "--endpoint", &endpoint]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
}

/// The joining node's own HTTP server (answers /health with its id).
async fn joining_node(id: u64) -> String {
    let url = serve(Router::new().route(
        "/health",
        get(move || async move { Json(json!({"status":"ok","node_id":id})) }),
    ))
    .await;
    url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_adds_a_learner_waits_for_catch_up_and_promotes() {
    let state = Shared::default();
    state.lock().unwrap().catch_up_step = 500;
    let endpoint = serve(fake_node(state.clone())).await;
    let http4 = joining_node(4).await;
    let out = aofctl(&[
        "cluster",
        "join",
        "--node-id",
        "4",
        "--peer-addr",
        "127.0.0.1:6004",
        "--grpc-addr",
        "127.0.0.1:4004",
        "--api-addr",
        "127.0.0.1:5004",
        "--http-addr",
        &http4,
        "--timeout",
        "20s",
        "--endpoint",
        &endpoint,
    ])
    .await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        text(&out.stdout),
        "node 4 joined as voter (log index 1502)\n"
    );
    assert!(
        stderr.contains("node 4 added as a learner (log index 1501)"),
        "{stderr}"
    );
    assert!(stderr.contains("catching up: matched 500/1500"), "{stderr}");
    assert!(state.lock().unwrap().promoted);
    // The learner was added with its four addresses.
    let (_, body, _) = state.lock().unwrap().learner.clone().unwrap();
    assert_eq!(
        body,
        json!({"node_id":4,"peer_addr":"127.0.0.1:6004","grpc_addr":"127.0.0.1:4004","api_addr":"127.0.0.1:5004","http_addr":http4})
    );

    // Joining again is a no-op.
    let out = aofctl(&[
        "cluster",
        "join",
        "--node-id",
        "4",
        "--peer-addr",
        "127.0.0.1:6004",
        "--grpc-addr",
        "127.0.0.1:4004",
        "--api-addr",
        "127.0.0.1:5004",
        "--http-addr",
        &http4,
        "--endpoint",
        &endpoint,
    ])
    .await;
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "node 4 is already a voter\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gives_up_with_a_hint_when_the_node_never_catches_up() {
    let state = Shared::default();
    let endpoint = serve(fake_node(state.clone())).await;
    let out = aofctl(&[
        "cluster",
        "join",
        "--node-id",
        "5",
        "--peer-addr",
        "127.0.0.1:6005",
        "--grpc-addr",
        "127.0.0.1:4005",
        "--api-addr",
        "127.0.0.1:5005",
        "--http-addr",
        "127.0.0.1:1",
        "--timeout",
        "1s",
        "--endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: node 5 does not answer at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: node 5 did not catch up within 1s (matched 0/1500)"),
        "{stderr}"
    );
    assert!(stderr.contains("Check its log"), "{stderr}");
    assert!(!state.lock().unwrap().promoted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_a_node_that_reports_another_id() {
    let endpoint = serve(fake_node(Shared::default())).await;
    let http = joining_node(7).await;
    let out = aofctl(&[
        "cluster",
        "join",
        "--node-id",
        "4",
        "--peer-addr",
        "127.0.0.1:6004",
        "--grpc-addr",
        "127.0.0.1:4004",
        "--api-addr",
        "127.0.0.1:5004",
        "--http-addr",
        &http,
        "--endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("reports node_id 7, not 4"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dev_without_configs_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = aofctl_blocking(&["dev", "--configs", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("node1.yaml"), "{stderr}");
    assert!(stderr.contains("--configs"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_the_token_are_refused_with_what_to_set() {
    let endpoint = serve(fake_node(Shared::default())).await;
    let out = tokio::task::spawn_blocking(move || aofctl_blocking(&["cluster", "status", "--endpoint", &endpoint]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: reading cluster status: no Authorization header"), "{stderr}");
    assert!(stderr.contains("--token, $AOF_TOKEN or a context"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_round_trip_and_follow_the_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let good = serve(fake_node(Shared::default())).await;
    let run = move |args: Vec<String>, env: Vec<(String, String)>| {
        let d = d.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                aofctl_in(&d, &args, &env)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ok = |o: &Output| {
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };

    // No context yet.
    let o = run(args(&["config", "current-context"]), vec![]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no current context"), "{}", text(&o.stderr));

    // The first context becomes current; the token is stored, never shown.
    let o = run(args(&["config", "set-context", "local", "--api", &good, "--grpc", "grpc://127.0.0.1:4001", "--token", TOKEN]), vec![]).await;
    assert_eq!(ok(&o).trim_end(), format!("context \"local\" created (current) in {}", dir.path().join("aofctl-config.yaml").display()));
    let o = run(args(&["config", "set-context", "broken", "--api", "http://127.0.0.1:1", "--token-env", "BROKEN_TOKEN"]), vec![]).await;
    assert!(ok(&o).starts_with("context \"broken\" created in"));
    assert_eq!(ok(&run(args(&["config", "current-context"]), vec![]).await), "local\n");
    let o = run(args(&["config", "get-contexts", "-o", "json"]), vec![]).await;
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["current_context"], "local");
    assert_eq!(v["contexts"][0], json!({"name":"local","api":[good],"grpc":["grpc://127.0.0.1:4001"],"token":"(stored)"}));
    assert_eq!(v["contexts"][1], json!({"name":"broken","api":["http://127.0.0.1:1"],"token_env":"BROKEN_TOKEN"}));
    let table = ok(&run(args(&["config", "get-contexts"]), vec![]).await);
    assert!(!table.contains(TOKEN) && table.contains("$BROKEN_TOKEN"), "{table}");
    let file = std::fs::read_to_string(dir.path().join("aofctl-config.yaml")).unwrap();
    assert!(file.contains(TOKEN), "the file keeps the token: {file}");

    // The current context serves a command with no flags (the fake wants its token).
    let o = run(args(&["cluster", "status", "-o", "json"]), vec![]).await;
    let s: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(s["leader_id"], 1);

    // Switch; the other context's token variable is unset: a clear error.
    ok(&run(args(&["config", "use-context", "broken"]), vec![]).await);
    let o = run(args(&["cluster", "status"]), vec![]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("takes its token from $BROKEN_TOKEN, which is not set"), "{}", text(&o.stderr));
    // With the variable, its (dead) endpoint is used and named.
    let o = run(args(&["cluster", "status"]), vec![("BROKEN_TOKEN".into(), "x".into())]).await;
    assert!(text(&o.stderr).contains("http://127.0.0.1:1"), "{}", text(&o.stderr));
    // --context and $AOF_CONTEXT pick another context for one command.
    ok(&run(args(&["cluster", "status", "--context", "local"]), vec![]).await);
    ok(&run(args(&["cluster", "status"]), vec![("AOF_CONTEXT".into(), "local".into())]).await);
    // Flags and variables beat the context: the endpoint, then the token.
    ok(&run(args(&["cluster", "status", "--endpoint", &good, "--token", TOKEN]), vec![("BROKEN_TOKEN".into(), "x".into())]).await);
    ok(&run(args(&["cluster", "status"]), vec![("AOF_ENDPOINT".into(), good.clone()), ("AOF_TOKEN".into(), TOKEN.into())]).await);
    let o = run(args(&["cluster", "status", "--context", "local", "--token", "wrong"]), vec![]).await;
    assert!(text(&o.stderr).contains("the token was refused"), "{}", text(&o.stderr));

    // delete-context forgets it (and the current context with it).
    ok(&run(args(&["config", "delete-context", "broken"]), vec![]).await);
    let o = run(args(&["config", "current-context"]), vec![]).await;
    assert_eq!(o.status.code(), Some(1));
    let o = run(args(&["config", "use-context", "broken"]), vec![]).await;
    assert!(text(&o.stderr).contains("no context named \"broken\" (contexts: local)"), "{}", text(&o.stderr));
}

#[test]
fn completion_scripts_for_three_shells_name_the_subcommands() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef aofctl"), ("fish", "complete -c aofctl")] {
        let out = aofctl_blocking(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}:\n{script}");
        for sub in ["snapshot", "dlq", "describe", "completion"] {
            assert!(script.contains(sub), "{shell} script does not name {sub}");
        }
    }
    assert_eq!(aofctl_blocking(&["completion", "tcsh"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_name_prints_kind_slash_name_like_kubectl() {
    let state = Shared::default();
    state.lock().unwrap().triggers.insert("alpha".into(), (3, json!({"spec": {}})));
    state.lock().unwrap().triggers.insert("beta".into(), (4, json!({"spec": {}})));
    let endpoint = serve(fake_node(state)).await;
    for (args, want) in [
        (vec!["get", "triggers"], "trigger/alpha\ntrigger/beta\n"),
        (vec!["get", "events"], "event/12\nevent/13\n"),
        (vec!["dlq", "list"], "job/7-0\n"),
    ] {
        let mut full = args.clone();
        full.extend(["-o", "name", "--endpoint", &endpoint]);
        let out = aofctl(&full).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "{args:?}");
    }
    let out = aofctl(&["get", "trigger", "beta", "-o", "name", "--endpoint", &endpoint]).await;
    assert_eq!(text(&out.stdout), "trigger/beta\n");
    // Commands that show one thing or no list take no `-o name`.
    assert_eq!(aofctl(&["cluster", "status", "-o", "name", "--endpoint", &endpoint]).await.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_trigger_shows_matches_routes_and_the_document() {
    let state = Shared::default();
    let doc = json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "metadata": {"name": "pr-bot"},
        "spec": {"type": "GitHub", "default_agent": "reviewer",
            "commands": {"/deploy": {"flow": "deploy", "description": "ship it"}},
            "config": {"github_events": ["pull_request", "issue_comment"], "repositories": ["myorg/*"],
                       "webhook_secret": "<redacted>"}}});
    state.lock().unwrap().triggers.insert("pr-bot".into(), (17, doc.clone()));
    let endpoint = serve(fake_node(state)).await;
    let out = aofctl(&["describe", "trigger", "pr-bot", "--endpoint", &endpoint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "Name:        pr-bot\n",
        "Type:        GitHub\n",
        "Revision:    17\n",
        "Secret:      <redacted>\n",
        "Matches:\n  FIELD          VALUES\n  events         pull_request, issue_comment\n",
        "  repositories   myorg/*\n",
        "  branches       (any)\n",
        "Routes:\n  COMMAND     TARGET           DESCRIPTION\n  /deploy     flow/deploy      ship it\n  (default)   agent/reviewer   -\n",
        "Document:\n  apiVersion: aof.dev/v1\n",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let out = aofctl(&["describe", "trigger", "pr-bot", "-o", "json", "--endpoint", &endpoint]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["revision"].as_u64(), &v["trigger"]), (Some(17), &doc));
    let out = aofctl(&["describe", "trigger", "nope", "--endpoint", &endpoint]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("trigger \"nope\" does not exist"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_watch_prints_a_row_only_when_a_count_changes() {
    let state = Shared::default();
    let endpoint = serve(fake_node(state.clone())).await;
    let out = aofctl(&["queue", "stats", "-w", "--interval", "100ms", "--watch-timeout", "3s", "--endpoint", &endpoint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let reads = state.lock().unwrap().stats_reads;
    // The header once, then one row per change of READY (every third read), not
    // one per poll although OLDEST changes every time.
    assert!(lines[0].starts_with("TARGET"), "{stdout}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("TARGET")).count(), 1, "{stdout}");
    let rows: Vec<u64> = lines[1..].iter().map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap()).collect();
    // Each READY value once, in order (the last read may have been cut off by the timeout).
    assert_eq!(rows, (0..rows.len() as u64).collect::<Vec<_>>(), "{stdout}");
    assert!(rows.len() >= 2 && rows.len() as u64 >= reads / 3, "{reads} reads, rows {rows:?}");
    // --interval and --watch-timeout belong to --watch.
    assert_eq!(aofctl(&["queue", "stats", "--watch-timeout", "1s", "--endpoint", &endpoint]).await.status.code(), Some(2));
}

#[test]
fn help_of_commands_ends_with_examples() {
    for args in [&["get", "events", "--help"][..], &["dlq", "purge", "--help"], &["serve", "--help"], &["apply", "-h"]] {
        let out = aofctl_blocking(args);
        let stdout = text(&out.stdout);
        assert!(stdout.contains("\nExamples:\n  aofctl "), "{args:?}:\n{stdout}");
    }
    // serve keeps its own text before the examples.
    assert!(text(&aofctl_blocking(&["serve", "--help"]).stdout).contains("AOF__CLUSTER__NODE_ID=3, AOF__SERVER__PORT=3001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_on_ctrl_c_with_exit_code_0() {
    let endpoint = serve(fake_node(Shared::default())).await;
    let mut cmd = common::aofctl_cmd(&config_dir());
    cmd.args(["queue", "stats", "-w", "--interval", "100ms", "--endpoint", &endpoint]).env("AOF_TOKEN", TOKEN);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut watch = common::Proc::spawn("watch", log.path().to_path_buf(), &mut cmd);
    common::wait_until("the first listing", 30, || watch.dump(), || async { watch.log_text().contains("TARGET") }).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(watch.pid(), libc::SIGINT) };
    let status = watch.wait_exit(30).await.expect("the watch exits after SIGINT");
    assert!(status.success(), "{status:?}");
}

/// `dlq redrive --all` redrives the listed jobs one by one, skipping those no longer
/// dead. Without a terminal (here: pipes) no progress bar is drawn and the output
/// stays parseable: JSON with `-o json`, the one-line summary otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_all_without_a_terminal_prints_no_progress_and_parseable_output() {
    let state = Shared::default();
    state.lock().unwrap().more_dead = vec!["8-0".into(), "gone-9".into(), "10-0".into()];
    let endpoint = serve(fake_node(state.clone())).await;

    let out = aofctl(&["dlq", "redrive", "--all", "-o", "json", "--endpoint", &endpoint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&out.stdout)));
    assert_eq!(v, json!({"jobs": ["7-0", "8-0", "10-0"]}));
    assert_eq!(text(&out.stderr), "", "no progress without a terminal");
    let mut asked: Vec<String> = state.lock().unwrap().redrives.iter().map(|b| b.to_string()).collect();
    asked.sort();
    assert_eq!(
        asked,
        [r#"{"job_id":"10-0"}"#, r#"{"job_id":"7-0"}"#, r#"{"job_id":"8-0"}"#, r#"{"job_id":"gone-9"}"#],
        "one request per listed job"
    );

    let out = aofctl(&["dlq", "redrive", "--all", "--endpoint", &endpoint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "redriven 3 jobs (back in the queue): 7-0, 8-0, 10-0\n");
    assert_eq!(text(&out.stderr), "");
}

/// On a terminal (`script` gives aofctl a pseudo-terminal) the same redrive draws a
/// progress bar of the jobs back in the queue, then prints the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_all_on_a_terminal_shows_a_progress_bar() {
    let Some(script) = ["/usr/bin/script", "/bin/script"].into_iter().find(|p| std::path::Path::new(p).exists()) else {
        eprintln!("SKIP: no script(1) to run aofctl on a pseudo-terminal");
        return;
    };
    let state = Shared::default();
    state.lock().unwrap().more_dead = vec!["8-0".into()];
    let endpoint = serve(fake_node(state.clone())).await;
    let line = format!("{} dlq redrive --all --endpoint {endpoint}", common::BIN);
    let dir = config_dir();
    let out = tokio::task::spawn_blocking(move || {
        // script(1) runs the line under a pseudo-terminal: stdout and stderr are terminals.
        let mut cmd = std::process::Command::new(script);
        cmd.args(["-qec", &line, "/dev/null"])
            .env("AOF_CONFIG", dir.join("aofctl-config.yaml"))
            .env("AOF_TOKEN", TOKEN)
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null());
        for v in ["AOF_ENDPOINT", "AOF_CONTEXT", "RUST_LOG"] {
            cmd.env_remove(v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let all = text(&out.stdout);
    assert!(out.status.success(), "{all}{}", text(&out.stderr));
    assert!(all.contains("redriving dead jobs"), "a progress bar on the terminal: {all:?}");
    assert!(all.contains("redriven 2 jobs (back in the queue): 7-0, 8-0"), "{all:?}");
}
