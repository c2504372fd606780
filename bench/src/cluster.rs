//! An aof-cluster of real `aofctl serve` processes on loopback (three nodes, or one),
//! each with its own data dir, from generated DaemonConfig files. fsync stays on (it
//! is not configurable: every log append is flushed before it is acknowledged).
//!
//! The nodes run as in production: four listeners (public, API, workers' gRPC,
//! peers), bearer tokens generated for the run (the API calls here send the admin
//! token, the workers the worker token: one SHA-256 per request or call) and
//! mutual TLS between peers with certificates from `aofctl certs init`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::load::{http_call, HttpClient, REQUEST_TIMEOUT};
use crate::sys::free_port;

/// Environment variable the nodes read the webhook secret from.
pub const SECRET_ENV: &str = "AOF_BENCH_WEBHOOK_SECRET";

/// The catch-all trigger: every event creates one job for agent `bench`.
pub const TRIGGER_YAML: &str = "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: bench\n";

/// Node settings the benchmark changes from the defaults.
#[derive(Clone, Debug)]
pub struct NodeTuning {
    /// `RUST_LOG` of the nodes (`warn`: the per-webhook `info` line is not measured).
    pub log_level: String,
    /// `spec.cluster.raft.snapshot_every`; `None` = the product default (10 000).
    pub snapshot_every: Option<u64>,
    /// `spec.queue.retention_secs`; `None` = the product default (7 days).
    pub retention_secs: Option<u64>,
    /// `spec.cluster.storage.cache_capacity_mb` (sled's page cache).
    pub cache_mb: u64,
}

pub struct NodeProc {
    pub id: u64,
    /// Public listener (webhooks, /ready).
    pub http: u16,
    /// Workers' gRPC listener.
    pub grpc: u16,
    /// API listener (/v1/*, /metrics).
    pub api: u16,
    /// Peer listener (mutual TLS).
    pub peer: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Its DaemonConfig file.
    pub config: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

pub struct AofCluster {
    pub nodes: Vec<NodeProc>,
    pub dir: PathBuf,
    /// The `aofctl` the nodes run, and how they are started (for restarts).
    bin: PathBuf,
    secret: String,
    log_level: String,
    certs: PathBuf,
    tuning: NodeTuning,
    /// Sent by every API call of the benchmark.
    pub admin_token: String,
    /// Sent by the workers.
    pub worker_token: String,
    client: HttpClient,
}

/// A random token (16 bytes from the kernel, hex).
fn random_token(role: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!("bench-{role}-{}", hex::encode(b)))
}

/// The (id, http, grpc, api, peer) of each member.
type Members = [(u64, u16, u16, u16, u16)];

fn node_config(n: &NodeProc, members: &Members, certs: &Path, t: &NodeTuning) -> String {
    let mut y = format!(
        "apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: bench-node{id}
spec:
  server:
    host: 127.0.0.1
    port: {http}
  platforms:
    github:
      enabled: true
      webhook_secret_env: {SECRET_ENV}
  gateway:
    ack_timeout_ms: 5000
    max_in_flight: 4096
",
        id = n.id,
        http = n.http
    );
    if let Some(r) = t.retention_secs {
        y.push_str(&format!("  queue:\n    retention_secs: {r}\n"));
    }
    // The default tokens (from the environment the node is started with) and
    // mutual TLS between peers, as in production.
    y.push_str(&format!(
        "  auth:
    tokens:
      - {{ name: admin, role: admin, env: AOF_ADMIN_TOKEN }}
      - {{ name: worker, role: worker, env: AOF_WORKER_TOKEN }}
  cluster:
    node_id: {id}
    api_addr: 127.0.0.1:{api}
    grpc_addr: 127.0.0.1:{grpc}
    peer_addr: 127.0.0.1:{peer}
    peer_tls:
      ca_file: {certs}/ca.crt
      cert_file: \"{certs}/node{{node_id}}.crt\"
      key_file: \"{certs}/node{{node_id}}.key\"
    data_dir: {data}
    raft:
      request_timeout_ms: 5000
",
        id = n.id,
        api = n.api,
        grpc = n.grpc,
        peer = n.peer,
        certs = certs.display(),
        data = n.data_dir.display()
    ));
    if let Some(s) = t.snapshot_every {
        y.push_str(&format!("      snapshot_every: {s}\n"));
    }
    y.push_str(&format!("    storage:\n      cache_capacity_mb: {}\n", t.cache_mb));
    // Without initial members the node bootstraps nothing: it waits to be added.
    if !members.is_empty() {
        y.push_str("    initial_members:\n");
    }
    for (id, http, grpc, api, peer) in members {
        y.push_str(&format!(
            "      - {{ id: {id}, peer_addr: 127.0.0.1:{peer}, grpc_addr: 127.0.0.1:{grpc}, api_addr: 127.0.0.1:{api}, http_addr: 127.0.0.1:{http} }}\n"
        ));
    }
    y
}

/// The cluster CA and certificates of nodes `1..=n` in `dir`, by `aofctl certs init`.
fn make_certs(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["certs", "init", "--force", "--dir"])
        .arg(dir)
        .args(["--nodes", &n.to_string()])
        .output()
        .with_context(|| format!("running {} certs init", bin.display()))?;
    if !out.status.success() {
        bail!("aofctl certs init --dir {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl AofCluster {
    /// Start `n` nodes under `dir` and wait until all are ready and the catch-all
    /// trigger is stored.
    pub async fn start(bin: &Path, n: usize, dir: &Path, secret: &str, tuning: &NodeTuning) -> anyhow::Result<AofCluster> {
        std::fs::create_dir_all(dir)?;
        let certs = dir.join("certs");
        // One certificate more than nodes: for a member that joins later.
        make_certs(bin, &certs, n + 1)?;
        let members: Vec<(u64, u16, u16, u16, u16)> =
            (1..=n as u64).map(|id| (id, free_port(), free_port(), free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for &(id, http, grpc, api, peer) in &members {
            let node = NodeProc {
                id,
                http,
                grpc,
                api,
                peer,
                data_dir: dir.join(format!("data{id}")),
                log: dir.join(format!("node{id}.log")),
                config: dir.join(format!("node{id}.yaml")),
                child: None,
            };
            std::fs::write(&node.config, node_config(&node, &members, &certs, tuning))?;
            nodes.push(node);
        }
        let mut cluster = AofCluster {
            nodes,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            secret: secret.to_string(),
            log_level: tuning.log_level.clone(),
            certs,
            tuning: tuning.clone(),
            admin_token: random_token("admin")?,
            worker_token: random_token("worker")?,
            client: crate::load::http_client(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn_node(i)?;
        }
        cluster.wait_ready(Duration::from_secs(90)).await?;
        cluster.put_trigger().await?;
        Ok(cluster)
    }

    /// Start node `i` (not running) with its config; its log is appended to. Call it
    /// from the runtime's `block_on` thread (see [`crate::sys::die_with_parent`]).
    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("node {} is already running", node.id);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let mut cmd = Command::new(&self.bin);
        crate::sys::die_with_parent(&mut cmd);
        let child = cmd
            .args(["serve", "--config"])
            .arg(&node.config)
            .env(SECRET_ENV, &self.secret)
            .env("AOF_ADMIN_TOKEN", &self.admin_token)
            .env("AOF_WORKER_TOKEN", &self.worker_token)
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {} serve", self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Stop node `i` gracefully (SIGTERM, as a service manager would) and wait for it to
    /// exit; SIGKILL after `within`. Returns how long it took to exit.
    pub async fn stop_node(&mut self, i: usize, within: Duration) -> anyhow::Result<Duration> {
        let node = &mut self.nodes[i];
        let Some(mut child) = node.child.take() else { bail!("node {} is not running", node.id) };
        let t0 = Instant::now();
        // SAFETY: kill(2) on a child of ours that has not been reaped (its pid is ours to signal).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = t0 + within;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    eprintln!("aof-bench: node {} exited with {status} after SIGTERM", node.id);
                }
                return Ok(t0.elapsed());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {} did not exit within {within:?} of SIGTERM (killed; log {})", node.id, node.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start node `i` again (after [`Self::stop_node`]) and wait until its `/ready`
    /// answers 200. Returns the time from the spawn to ready.
    pub async fn restart_node(&mut self, i: usize, within: Duration) -> anyhow::Result<Duration> {
        self.spawn_node(i)?;
        let t0 = Instant::now();
        let url = format!("http://127.0.0.1:{}/ready", self.nodes[i].http);
        loop {
            self.check_alive()?;
            if matches!(http_call(&self.client, "GET", &url, None, Bytes::new()).await, Ok((200, _))) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= within {
                bail!("node {} not ready within {within:?} of its restart (log {})", self.nodes[i].id, self.nodes[i].log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start one more node (no initial members: it waits to be added) and add it with
    /// `aofctl cluster join` (learner, then voter once caught up). Returns the time
    /// from its start until the command reported it a voter.
    pub async fn join_node(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let id = self.nodes.len() as u64 + 1;
        let node = NodeProc {
            id,
            http: free_port(),
            grpc: free_port(),
            api: free_port(),
            peer: free_port(),
            data_dir: self.dir.join(format!("data{id}")),
            log: self.dir.join(format!("node{id}.log")),
            config: self.dir.join(format!("node{id}.yaml")),
            child: None,
        };
        std::fs::write(&node.config, node_config(&node, &[], &self.certs, &self.tuning))?;
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["cluster", "join", "--node-id", &id.to_string()])
            .args(["--peer-addr", &addr(node.peer), "--grpc-addr", &addr(node.grpc), "--api-addr", &addr(node.api)])
            .args(["--http-addr", &addr(node.http), "--timeout", &format!("{}s", within.as_secs().max(1))])
            .env("AOF_ENDPOINT", self.api_urls().join(","))
            .env("AOF_TOKEN", &self.admin_token)
            .env_remove("AOF_CONTEXT")
            .stdin(Stdio::null());
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.spawn_node(i)?;
        let t0 = Instant::now();
        // Its public listener answers /health once it runs (it is not ready until added).
        let health = format!("http://127.0.0.1:{}/health", self.nodes[i].http);
        loop {
            self.check_alive()?;
            if matches!(http_call(&self.client, "GET", &health, None, Bytes::new()).await, Ok((200, _))) {
                break;
            }
            if t0.elapsed() >= within {
                bail!("node {id} did not answer /health within {within:?} of its start (log {})", self.nodes[i].log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = tokio::task::spawn_blocking(move || cmd.output()).await?.context("running aofctl cluster join")?;
        if !out.status.success() {
            bail!(
                "aofctl cluster join --node-id {id} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t0.elapsed())
    }

    /// `snapshot_index` of node `i`'s own Raft view (`GET /v1/cluster?consistency=stale`
    /// on that node): `Ok(None)` while it has none.
    pub async fn snapshot_index(&self, i: usize) -> anyhow::Result<Option<u64>> {
        let url = format!("{}/v1/cluster?consistency=stale", self.api_urls()[i]);
        let (status, body) = self.api_call("GET", &url, None, Bytes::new()).await?;
        if status != 200 {
            bail!("GET {url}: HTTP {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))?;
        Ok(v.get("snapshot_index").and_then(serde_json::Value::as_u64))
    }

    /// `GET /v1/snapshot` on node `i` (admin): the node builds a Raft snapshot at the
    /// read index unless it has one, and answers with a backup file of it. The body
    /// is read and dropped; returns its length.
    pub async fn fetch_backup(&self, i: usize, within: Duration) -> anyhow::Result<u64> {
        let url = format!("{}/v1/snapshot", self.api_urls()[i]);
        let req = hyper::Request::get(&url)
            .header("authorization", format!("Bearer {}", self.admin_token))
            .body(Full::new(Bytes::new()))?;
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut len = 0u64;
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    len += data.len() as u64;
                    if status != 200 && text.len() < 500 {
                        text.extend_from_slice(&data);
                    }
                }
            }
            if status != 200 {
                bail!("GET {url}: HTTP {status}: {}", String::from_utf8_lossy(&text));
            }
            Ok(len)
        };
        tokio::time::timeout(within, call).await.with_context(|| format!("GET {url}: no answer within {within:?}"))?
    }

    /// The public listeners (webhooks).
    pub fn http_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.http)).collect()
    }

    /// The API listeners.
    pub fn api_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.api)).collect()
    }

    /// One call to an API listener with the admin token: (status, body).
    async fn api_call(&self, method: &str, url: &str, content_type: Option<&str>, body: Bytes) -> anyhow::Result<(u16, String)> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.admin_token));
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let req = b.body(Full::new(body))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await.context("timed out")??;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await.context("timed out")??.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub fn grpc_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.grpc)).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(NodeProc::pid).collect()
    }

    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.data_dir.clone()).collect()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                    bail!("node {} exited ({status}); last log lines:\n{tail}", n.id);
                }
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            let mut ready = 0;
            for u in self.http_urls() {
                if matches!(http_call(&self.client, "GET", &format!("{u}/ready"), None, Bytes::new()).await, Ok((200, _))) {
                    ready += 1;
                }
            }
            if ready == self.nodes.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("aof-cluster nodes not ready within {within:?} (logs in {})", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn put_trigger(&self) -> anyhow::Result<()> {
        let url = format!("{}/v1/triggers/all", self.api_urls()[0]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.api_call("PUT", &url, Some("application/yaml"), Bytes::from_static(TRIGGER_YAML.as_bytes())).await {
                Ok((s, _)) if (200..300).contains(&s) => return Ok(()),
                other if Instant::now() >= deadline => bail!("PUT /v1/triggers/all failed: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Sum of each Prometheus sample of the named metrics, per node (missing = NaN).
    pub async fn metrics(&self, names: &[&str]) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        for u in self.api_urls() {
            let text = match self.api_call("GET", &format!("{u}/metrics"), None, Bytes::new()).await {
                Ok((200, t)) => t,
                _ => String::new(),
            };
            out.push(names.iter().map(|n| metric_sum(&text, n)).collect());
        }
        out
    }

    /// The node the cluster says leads, as an index into `nodes`.
    pub async fn leader_index(&self) -> Option<usize> {
        let url = format!("{}/v1/cluster?consistency=stale", self.api_urls()[0]);
        let (_, body) = self.api_call("GET", &url, None, Bytes::new()).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let id = v.get("leader_id")?.as_u64()?;
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Stop every node (SIGKILL; the data dirs are thrown away).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for AofCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sum of the samples of metric `name` (any labels) in a Prometheus/OpenMetrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    if found {
        sum
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_configs_have_four_listeners_tokens_and_peer_tls() {
        let n = NodeProc { id: 2, http: 3002, grpc: 4002, api: 5002, peer: 6002, data_dir: "/d/data2".into(), log: "/d/n2.log".into(), config: "/d/node2.yaml".into(), child: None };
        let members = [(1, 3001, 4001, 5001, 6001), (2, 3002, 4002, 5002, 6002)];
        let t = NodeTuning { log_level: "warn".into(), snapshot_every: None, retention_secs: None, cache_mb: 64 };
        let y = node_config(&n, &members, Path::new("/d/certs"), &t);
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        let c = &v["spec"]["cluster"];
        assert_eq!((c["api_addr"].as_str(), c["grpc_addr"].as_str(), c["peer_addr"].as_str()), (Some("127.0.0.1:5002"), Some("127.0.0.1:4002"), Some("127.0.0.1:6002")));
        assert_eq!(v["spec"]["server"]["port"].as_u64(), Some(3002));
        assert_eq!(c["peer_tls"]["cert_file"].as_str(), Some("/d/certs/node{node_id}.crt"));
        assert_eq!(v["spec"]["auth"]["tokens"][0]["env"].as_str(), Some("AOF_ADMIN_TOKEN"));
        assert!(v["spec"]["auth"]["insecure"].is_null());
        assert_eq!(c["initial_members"][1]["api_addr"].as_str(), Some("127.0.0.1:5002"));
        assert_eq!(c["initial_members"][0]["peer_addr"].as_str(), Some("127.0.0.1:6001"));
        // A node that joins later bootstraps nothing.
        let y = node_config(&n, &[], Path::new("/d/certs"), &t);
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        assert!(v["spec"]["cluster"]["initial_members"].is_null(), "{y}");
        assert_eq!(v["spec"]["cluster"]["storage"]["cache_capacity_mb"].as_u64(), Some(64));
    }

    #[test]
    fn sums_metric_samples() {
        let t = "# HELP aof_log_flushes Log\naof_log_flushes_total 12\naof_log_flushes_totalx 1\naof_webhook_requests_total{outcome=\"accepted\"} 3\naof_webhook_requests_total{outcome=\"duplicate\"} 2\n";
        assert_eq!(metric_sum(t, "aof_log_flushes_total"), 12.0);
        assert_eq!(metric_sum(t, "aof_webhook_requests_total"), 5.0);
        assert!(metric_sum(t, "nope").is_nan());
    }
}
