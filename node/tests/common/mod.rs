//! In-process test clusters: real nodes on real loopback sockets (port 0), each
//! with its own temp data dir and a graceful-shutdown handle.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aof_node::config::{DaemonConfig, InitialMember, NodeAddrs};
use aof_node::server::Listeners;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestNode {
    pub id: u64,
    /// The public listener (webhooks, health).
    pub http: SocketAddr,
    /// The workers' gRPC listener.
    pub grpc: SocketAddr,
    /// The API listener (`/v1/*`, `/metrics`).
    pub api: SocketAddr,
    /// The peer listener (Raft, forwarding).
    pub peer: SocketAddr,
    pub cfg: DaemonConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestNode {
    /// The URL of `path` on the listener that serves it: the public one for the
    /// webhook intake and health probes, the API one for everything else.
    pub fn url(&self, path: &str) -> String {
        let public = ["/webhook/", "/health", "/ready"]
            .iter()
            .any(|p| path.starts_with(p));
        format!(
            "http://{}{}",
            if public { self.http } else { self.api },
            path
        )
    }

    pub fn addrs(&self) -> NodeAddrs<SocketAddr> {
        NodeAddrs {
            http_addr: self.http,
            api_addr: self.api,
            grpc_addr: self.grpc,
            peer_addr: self.peer,
        }
    }
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub dir: tempfile::TempDir,
    /// Sends the admin token on every request in a [secured](TestCluster::start_secure) cluster.
    pub http: reqwest::Client,
    /// The CA and node certificates of a secured cluster.
    pub certs: Option<tempfile::TempDir>,
}

/// The tokens of a [secured](TestCluster::start_secure) test cluster.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
/// A worker token limited to the target `a`.
pub const WORKER_A_TOKEN: &str = "worker-a-token-0123456789abcdef";
/// A worker token for every target.
pub const WORKER_TOKEN: &str = "worker-token-0123456789abcdef";

/// Make `cfg` a node of a secured cluster: peer mutual TLS with certificates from
/// `certs` (made by [`aof_node::tls::init_certs`]) and the tokens above.
pub fn secure(cfg: &mut DaemonConfig, certs: &std::path::Path) {
    use aof_node::config::{PeerTlsConfig, Role, Secret, TokenConfig};
    let id = cfg.spec.cluster.node_id;
    cfg.spec.cluster.peer_tls = Some(PeerTlsConfig {
        ca_file: certs.join("ca.crt"),
        cert_file: certs.join(format!("node{id}.crt")),
        key_file: certs.join(format!("node{id}.key")),
    });
    let token = |name: &str, role, value: &str, targets: &[&str]| TokenConfig {
        name: name.into(),
        role,
        env: None,
        file: None,
        token: Some(Secret::new(value)),
        optional: false,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    cfg.spec.auth.tokens = vec![
        token("admin", Role::Admin, ADMIN_TOKEN, &[]),
        token("read", Role::Read, READ_TOKEN, &[]),
        token("worker-a", Role::Worker, WORKER_A_TOKEN, &["a"]),
        token("workers", Role::Worker, WORKER_TOKEN, &[]),
    ];
    cfg.spec.auth.insecure = false;
}

/// An HTTP client that sends `token` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Fast Raft timings for loopback tests.
pub fn tune(cfg: &mut DaemonConfig, snapshot_every: u64) {
    let r = &mut cfg.spec.cluster.raft;
    r.heartbeat_interval_ms = 50;
    r.election_timeout_min_ms = 300;
    r.election_timeout_max_ms = 600;
    r.snapshot_every = snapshot_every;
    r.logs_to_keep_after_snapshot = 0;
    r.request_timeout_ms = 3000;
    cfg.spec.cluster.storage.cache_capacity_mb = 8;
}

/// Four listeners on free loopback ports, kept open and handed to the node (no
/// bind-then-drop race).
async fn bind() -> (Listeners, NodeAddrs<SocketAddr>) {
    let one = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let l = Listeners {
        public: one().await,
        api: one().await,
        grpc: one().await,
        peer: one().await,
    };
    let a = NodeAddrs {
        http_addr: l.public.local_addr().unwrap(),
        api_addr: l.api.local_addr().unwrap(),
        grpc_addr: l.grpc.local_addr().unwrap(),
        peer_addr: l.peer.local_addr().unwrap(),
    };
    (l, a)
}

/// Bind the same four addresses again (a restart).
async fn rebind(a: &NodeAddrs<SocketAddr>) -> Listeners {
    let one = |addr: SocketAddr| async move { TcpListener::bind(addr).await.unwrap() };
    Listeners {
        public: one(a.http_addr).await,
        api: one(a.api_addr).await,
        grpc: one(a.grpc_addr).await,
        peer: one(a.peer_addr).await,
    }
}

fn node_of(id: u64, a: &NodeAddrs<SocketAddr>, cfg: DaemonConfig) -> TestNode {
    TestNode {
        id,
        http: a.http_addr,
        grpc: a.grpc_addr,
        api: a.api_addr,
        peer: a.peer_addr,
        cfg,
        stop: None,
        task: None,
    }
}

impl TestCluster {
    /// Start `n` nodes listed in each other's `initial_members`.
    pub async fn start(n: u64, snapshot_every: u64) -> TestCluster {
        Self::start_with(n, snapshot_every, |_| {}).await
    }

    /// Start `n` nodes with peer mutual TLS and bearer tokens (see [`secure`]);
    /// [`TestCluster::http`] sends the admin token.
    pub async fn start_secure(n: u64, snapshot_every: u64) -> TestCluster {
        let certs = tempfile::tempdir().unwrap();
        let mut opts = aof_node::tls::CertsInit::new(certs.path());
        opts.nodes = 9;
        aof_node::tls::init_certs(&opts).unwrap();
        let path = certs.path().to_path_buf();
        let mut c = Self::start_with(n, snapshot_every, |cfg| secure(cfg, &path)).await;
        c.http = client_with_token(ADMIN_TOKEN);
        c.certs = Some(certs);
        c
    }

    /// The certificate dir of a [secured](TestCluster::start_secure) cluster.
    pub fn certs_dir(&self) -> std::path::PathBuf {
        self.certs
            .as_ref()
            .expect("a secured cluster")
            .path()
            .to_path_buf()
    }

    /// Like [`TestCluster::start`], with a hook that adjusts each node's config.
    pub async fn start_with(
        n: u64,
        snapshot_every: u64,
        hook: impl Fn(&mut DaemonConfig),
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(bind().await);
        }
        let members: Vec<InitialMember> = listeners
            .iter()
            .enumerate()
            .map(|(i, (_, a))| InitialMember {
                id: i as u64 + 1,
                peer_addr: a.peer_addr.to_string(),
                grpc_addr: a.grpc_addr.to_string(),
                api_addr: a.api_addr.to_string(),
                http_addr: a.http_addr.to_string(),
            })
            .collect();
        let mut c = TestCluster {
            nodes: Vec::new(),
            dir,
            http: reqwest::Client::new(),
            certs: None,
        };
        for (i, (l, a)) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut cfg = DaemonConfig::with_addrs(id, &a, c.dir.path().join(format!("node{id}")));
            cfg.spec.cluster.initial_members = members.clone();
            tune(&mut cfg, snapshot_every);
            hook(&mut cfg);
            let mut node = node_of(id, &a, cfg);
            spawn(&mut node, l);
            c.nodes.push(node);
        }
        c
    }

    /// Start `n` nodes with automatic membership (`spec.cluster.discovery.seeds`:
    /// every node's peer address) instead of `initial_members`, in the order `order`
    /// (indexes, each started `gap` after the previous), secured like
    /// [`TestCluster::start_secure`]. `hook` adjusts each node's config.
    pub async fn start_discovery(
        n: u64,
        max_voters: u32,
        order: &[usize],
        gap: Duration,
        hook: impl Fn(&mut DaemonConfig),
    ) -> TestCluster {
        let certs = tempfile::tempdir().unwrap();
        let mut opts = aof_node::tls::CertsInit::new(certs.path());
        opts.nodes = n.max(5);
        aof_node::tls::init_certs(&opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut bound = Vec::new();
        for _ in 0..n {
            bound.push(bind().await);
        }
        let seeds: Vec<String> = bound.iter().map(|(_, a)| a.peer_addr.to_string()).collect();
        let mut c = TestCluster {
            nodes: Vec::new(),
            dir,
            http: client_with_token(ADMIN_TOKEN),
            certs: None,
        };
        let mut listeners = Vec::new();
        for (i, (l, a)) in bound.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut cfg = DaemonConfig::with_addrs(id, &a, c.dir.path().join(format!("node{id}")));
            tune(&mut cfg, 10_000);
            secure(&mut cfg, certs.path());
            cfg.spec.cluster.discovery = Some(aof_node::config::DiscoveryConfig {
                seeds: seeds.clone(),
                dns: None,
                max_voters,
            });
            hook(&mut cfg);
            c.nodes.push(node_of(id, &a, cfg));
            listeners.push(Some(l));
        }
        for &i in order {
            let l = listeners[i].take().expect("each node starts once");
            spawn(&mut c.nodes[i], l);
            tokio::time::sleep(gap).await;
        }
        c.certs = Some(certs);
        c
    }

    /// Start an extra node with no initial members (to be joined).
    pub async fn add_unjoined_node(&mut self, snapshot_every: u64) -> usize {
        self.add_unjoined_node_with(snapshot_every, |_| {}).await
    }

    /// Like [`TestCluster::add_unjoined_node`], with a hook on its config.
    pub async fn add_unjoined_node_with(
        &mut self,
        snapshot_every: u64,
        hook: impl Fn(&mut DaemonConfig),
    ) -> usize {
        let (l, a) = bind().await;
        let id = self.nodes.len() as u64 + 1;
        let mut cfg = DaemonConfig::with_addrs(id, &a, self.dir.path().join(format!("node{id}")));
        tune(&mut cfg, snapshot_every);
        hook(&mut cfg);
        let mut node = node_of(id, &a, cfg);
        spawn(&mut node, l);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The JSON body of `POST /v1/cluster/learners` for node `i`.
    pub fn learner_body(&self, i: usize) -> Value {
        let n = &self.nodes[i];
        serde_json::json!({
            "node_id": n.id,
            "peer_addr": n.peer.to_string(),
            "grpc_addr": n.grpc.to_string(),
            "api_addr": n.api.to_string(),
            "http_addr": n.http.to_string(),
        })
    }

    /// Stop node `i` gracefully and wait for it to finish.
    pub async fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(tx) = node.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = node.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("node stops within 20s")
                .unwrap();
            // Once run() has returned the data dir is free again (no store handle left).
            if let Err(e) = aof_node::store::Store::open(&node.cfg.spec.cluster.data_dir, 1 << 20) {
                panic!("a stopped node leaves its data dir locked: {e}");
            }
        }
    }

    /// Restart a stopped node on its old addresses with its old data.
    pub async fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.task.is_none(), "stop the node first");
        let l = rebind(&node.addrs()).await;
        spawn(node, l);
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics_text(&self, i: usize) -> String {
        self.http.get(self.nodes[i].url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    pub async fn get_json(&self, i: usize, path: &str) -> (u16, Value) {
        let r = self.http.get(self.nodes[i].url(path)).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Poll until `f` holds, at most `secs` seconds.
    pub async fn eventually<F, Fut>(&self, what: &str, secs: u64, mut f: F)
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
        panic!("timed out after {secs}s waiting for: {what}");
    }

    /// Wait until every running node answers `/ready` with 200; returns the leader id.
    pub async fn wait_ready(&self, secs: u64) -> u64 {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        self.eventually("all running nodes ready", secs, || async {
            let mut ok = true;
            for &i in &running {
                ok &= self.get_json(i, "/ready").await.0 == 200;
            }
            ok
        })
        .await;
        let (_, v) = self.get_json(running[0], "/v1/cluster").await;
        v["leader_id"].as_u64().expect("a leader")
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    pub async fn put_trigger(
        &self,
        i: usize,
        name: &str,
        event: &str,
        if_match: Option<u64>,
    ) -> (u16, Value) {
        let body = format!(
            "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  type: GitHub\n  config:\n    github_events: [{event}]\n"
        );
        let mut req = self
            .http
            .put(self.nodes[i].url(&format!("/v1/triggers/{name}")))
            .header("content-type", "application/yaml")
            .body(body);
        if let Some(m) = if_match {
            req = req.header("if-match", m.to_string());
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(tx) = n.stop.take() {
                let _ = tx.send(());
            }
        }
    }
}

fn spawn(node: &mut TestNode, listeners: Listeners) {
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = node.cfg.clone();
    let task = tokio::spawn(async move {
        aof_node::server::run_with_listeners(cfg, listeners, async move {
            let _ = rx.await;
        })
        .await
        .expect("node runs and stops cleanly");
    });
    node.stop = Some(tx);
    node.task = Some(task);
}

/// POST a delivery to `url` (a node's `/webhook/github`) signed with `secret`, as
/// GitHub does; the response (a transport error panics).
pub async fn signed_webhook(
    http: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: &str,
) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            aof_node::github::signature::sign(secret.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// The real GitHub payloads: `$AOF_FIXTURES_DIR`, or `shared/fixtures/github-webhooks`
/// beside the repository (or beside its parent, for a worktree).
pub fn fixtures_dir() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(dir) = std::env::var_os("AOF_FIXTURES_DIR") {
        let dir = std::path::PathBuf::from(dir);
        assert!(dir.is_dir(), "AOF_FIXTURES_DIR={} is not a directory", dir.display());
        return dir;
    }
    let candidates =
        [manifest.join("../../shared/fixtures/github-webhooks"), manifest.join("../shared/fixtures/github-webhooks")];
    candidates.into_iter().find(|d| d.is_dir()).unwrap_or_else(|| {
        panic!(
            "GitHub webhook fixtures not found: set AOF_FIXTURES_DIR to the github-webhooks fixture directory, or put \
             shared/fixtures/github-webhooks next to the repository (looked in \
             {m}/../../shared/fixtures/github-webhooks and {m}/../shared/fixtures/github-webhooks)",
            m = manifest.display()
        )
    })
}

/// One fixture's bytes, by its path under [`fixtures_dir`] (`issues/00-edited.json`).
pub fn fixture(path: &str) -> Vec<u8> {
    let file = fixtures_dir().join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()))
}

/// Create or replace trigger `name` from YAML through node 1's API; asserts success.
pub async fn put_trigger(c: &TestCluster, name: &str, yaml: &str) {
    let r = c.http.put(c.nodes[0].url(&format!("/v1/triggers/{name}"))).header("content-type", "application/yaml").body(yaml.to_string()).send().await.unwrap();
    assert!(r.status().is_success(), "{name}: {:?}", r.text().await);
}

/// Poll `/v1/deliveries/{delivery}` on node `node` (index) until its status is
/// `status`, for at most `secs` seconds; the delivery's record.
pub async fn wait_status(c: &TestCluster, node: usize, delivery: &str, status: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let (s, v) = c.get_json(node, &format!("/v1/deliveries/{delivery}")).await;
        if s == 200 && v["status"] == status {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("delivery {delivery} never reached {status}: {last}");
}
