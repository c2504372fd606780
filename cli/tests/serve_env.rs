//! `aofctl serve` without `--config`: a node configured by `AOF__*` environment
//! variables alone.

mod common;

use std::process::Command;

use common::{all_ready, free_port, wait_until, Proc, BIN};

/// `aofctl serve` with exactly these environment variables.
fn serve_env(vars: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").env_clear().env("RUST_LOG", "info,openraft=warn");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn without_config_or_variables_it_says_what_to_set() {
    let out = serve_env(&[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no configuration") && stderr.contains("--config") && stderr.contains("AOF__"), "{stderr}");

    // a bad variable is named with its key
    let out = serve_env(&[("AOF__CLUSTER__NODE_ID", "three".into()), ("AOF__CLUSTER__DATA_DIR", "/nonexistent".into())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("environment variable AOF__CLUSTER__NODE_ID: spec.cluster.node_id"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_from_environment_variables_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, api, peer) = (free_port(), free_port(), free_port(), free_port());
    let member = format!(
        "[{{id=1,peer_addr=\"127.0.0.1:{peer}\",grpc_addr=\"127.0.0.1:{grpc}\",api_addr=\"127.0.0.1:{api}\",http_addr=\"127.0.0.1:{http}\"}}]"
    );
    let vars = [
        ("AOF__SERVER__HOST", "127.0.0.1".to_string()),
        ("AOF__SERVER__PORT", http.to_string()),
        ("AOF__CLUSTER__NODE_ID", "1".into()),
        ("AOF__CLUSTER__GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("AOF__CLUSTER__API_ADDR", format!("127.0.0.1:{api}")),
        ("AOF__CLUSTER__PEER_ADDR", format!("127.0.0.1:{peer}")),
        ("AOF__CLUSTER__DATA_DIR", dir.path().join("data").display().to_string()),
        ("AOF__CLUSTER__INITIAL_MEMBERS", member),
        ("AOF__CLUSTER__RAFT__HEARTBEAT_INTERVAL_MS", "100".into()),
        ("AOF__CLUSTER__RAFT__ELECTION_TIMEOUT_MIN_MS", "500".into()),
        ("AOF__CLUSTER__RAFT__ELECTION_TIMEOUT_MAX_MS", "1000".into()),
        ("AOF__CLUSTER__STORAGE__CACHE_CAPACITY_MB", "8".into()),
        ("AOF__AUTH__INSECURE", "true".into()),
    ];
    let mut node = Proc::spawn("node 1", dir.path().join("node1.log"), &mut serve_env(&vars));
    let url = format!("http://127.0.0.1:{http}");
    wait_until("the node to be ready", 30, || node.dump(), || all_ready([url.clone()])).await;
    let log = node.log_text();
    assert!(log.contains("configured by AOF__* variables"), "{log}");
    // the notice for auth.insecure is logged at start
    assert!(log.contains("spec.auth.insecure"), "{log}");
    node.sigterm();
    assert!(node.wait_exit(20).await.is_some_and(|s| s.success()), "graceful stop");
}

/// AOF's example daemon.yaml with keys aof-cluster accepts but does not use (a
/// gateway mode, a Redis queue, a Slack platform), plus a cluster section: the node
/// starts, and logs one warning per such key, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_aof_daemon_yaml_logs_its_unused_keys_as_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, api, peer) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: aof-daemon
spec:
  mode: gateway
  server:
    port: {http}
    host: "127.0.0.1"
    cors: true
    timeout_secs: 60
  platforms:
    github:
      enabled: true
      token_env: GITHUB_TOKEN
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
      bot_name: aofbot
    slack:
      enabled: true
      bot_token_env: SLACK_BOT_TOKEN
      signing_secret_env: SLACK_SIGNING_SECRET
  queue:
    type: redis
    url: redis://redis:6379
    stream: aof-events
  agents:
    directory: ./agents/
  runtime:
    max_concurrent_tasks: 10
    task_timeout_secs: 300
  auth:
    insecure: true
  cluster:
    node_id: 1
    data_dir: {data}
    grpc_addr: 127.0.0.1:{grpc}
    api_addr: 127.0.0.1:{api}
    peer_addr: 127.0.0.1:{peer}
    raft: {{ heartbeat_interval_ms: 100, election_timeout_min_ms: 500, election_timeout_max_ms: 1000 }}
    storage: {{ cache_capacity_mb: 8 }}
    initial_members:
      - {{ id: 1, peer_addr: "127.0.0.1:{peer}", grpc_addr: "127.0.0.1:{grpc}", api_addr: "127.0.0.1:{api}", http_addr: "127.0.0.1:{http}" }}
"#,
        data = dir.path().join("data").display()
    );
    let config = dir.path().join("daemon.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = common::serve(&config);
    cmd.env("GITHUB_WEBHOOK_SECRET", "s3cret").env("NO_COLOR", "1");
    let mut node = Proc::spawn("node 1", dir.path().join("node1.log"), &mut cmd);
    let url = format!("http://127.0.0.1:{http}");
    wait_until("the node to be ready", 30, || node.dump(), || all_ready([url.clone()])).await;
    let log = node.log_text();
    for key in ["spec.mode", "spec.queue", "spec.platforms.slack", "spec.auth.insecure"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("key={key}")))
            .unwrap_or_else(|| panic!("no notice for {key} in:\n{log}"));
        assert!(line.contains("WARN"), "{key} is logged as a warning: {line}");
    }
    assert!(log.contains("accepted, not used"), "{log}");
    node.sigterm();
    assert!(node.wait_exit(20).await.is_some_and(|s| s.success()), "graceful stop");
}
