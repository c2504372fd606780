//! Shared harness of the process-level tests: free loopback ports, `aofctl serve`
//! configs with the four listeners, the test run's certificates and tokens, child
//! processes that are killed on drop, signed webhooks, bounded waits. Everything
//! listens on 127.0.0.1.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aofctl");

/// A free TCP port on 127.0.0.1, never the same one twice in a test binary.
#[allow(unused_imports)]
pub use aof_contract::ports::free_port;

/// `X-Hub-Signature-256` of `body` under `secret`: the one signer of the
/// workspace, as `aofctl dev` and the node's verifier use it.
#[allow(unused_imports)]
pub use aof_contract::signature::sign;

/// The four listeners of a node, on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// Public: webhooks, /health, /ready.
    pub http: u16,
    /// Workers' gRPC.
    pub grpc: u16,
    /// API: /v1/*, /metrics.
    pub api: u16,
    /// Peers: Raft, forwarding (mutual TLS with [`Creds`]).
    pub peer: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports { http: free_port(), grpc: free_port(), api: free_port(), peer: free_port() }
    }
}

/// 16 random bytes from the kernel, hex.
pub fn random_hex() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    hex::encode(b)
}

/// What a secured test cluster's nodes and clients share: the cluster CA and node
/// certificates (made for this test run by `aof_node::tls::init_certs`, as
/// `aofctl certs init` does) and the three tokens the nodes read from
/// `AOF_ADMIN_TOKEN`, `AOF_READ_TOKEN` and `AOF_WORKER_TOKEN`.
#[derive(Clone, Debug)]
pub struct Creds {
    pub certs: PathBuf,
    pub admin: String,
    pub read: String,
    pub worker: String,
}

impl Creds {
    /// Certificates for nodes 1-5 in `dir/certs`, and fresh random tokens.
    pub fn new(dir: &Path) -> Creds {
        let certs = dir.join("certs");
        aof_node::tls::init_certs(&aof_node::tls::CertsInit::new(&certs)).expect("test certificates");
        Creds {
            certs,
            admin: format!("admin-{}", random_hex()),
            read: format!("read-{}", random_hex()),
            worker: format!("worker-{}", random_hex()),
        }
    }

    /// Gives a node process its tokens.
    pub fn node_env(&self, cmd: &mut Command) {
        cmd.env("AOF_ADMIN_TOKEN", &self.admin)
            .env("AOF_READ_TOKEN", &self.read)
            .env("AOF_WORKER_TOKEN", &self.worker);
    }

    /// An API client with the admin token.
    pub fn admin_client(&self, endpoints: Vec<String>) -> aof_client::Client {
        aof_client::Client::builder(endpoints).token(self.admin.clone()).build()
    }
}

/// How a test node authenticates callers.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// `spec.auth.insecure: true` without tokens or peer TLS: for tests about
    /// something else.
    Insecure,
    /// The default tokens (from the environment, see [`Creds::node_env`]) and
    /// mutual TLS between peers with the test run's certificates.
    Secure(&'a Creds),
}

/// Write `node<id>.yaml` in `dir`: a DaemonConfig for node `id` of a loopback
/// cluster with its four listeners, fast Raft timings and a small cache. `auth`
/// decides between real tokens + peer TLS and `auth.insecure`. `spec_extra` is
/// YAML inserted under `spec:` (indented two spaces: platforms, queue, ...).
/// `members` are `(id, ports)`; empty = no `initial_members` (a node to be joined).
pub fn write_config(dir: &Path, name: &str, id: u64, ports: Ports, members: &[(u64, Ports)], spec_extra: &str, auth: Auth<'_>) -> PathBuf {
    let (auth_yaml, peer_tls) = match auth {
        Auth::Insecure => ("  auth:\n    insecure: true\n".to_string(), String::new()),
        Auth::Secure(c) => (
            // The default tokens, spelled out.
            "  auth:\n    tokens:\n      - { name: admin, role: admin, env: AOF_ADMIN_TOKEN }\n      - { name: read, role: read, env: AOF_READ_TOKEN }\n      - { name: worker, role: worker, env: AOF_WORKER_TOKEN }\n".to_string(),
            format!(
                "    peer_tls:\n      ca_file: {d}/ca.crt\n      cert_file: \"{d}/node{{node_id}}.crt\"\n      key_file: \"{d}/node{{node_id}}.key\"\n",
                d = c.certs.display()
            ),
        ),
    };
    let Ports { http, grpc, api, peer } = ports;
    let mut yaml = format!(
        "apiVersion: aof.dev/v1\nkind: DaemonConfig\nmetadata:\n  name: {name}-node{id}\nspec:\n  server:\n    host: 127.0.0.1\n    port: {http}\n{auth_yaml}{spec_extra}  cluster:\n    node_id: {id}\n    api_addr: 127.0.0.1:{api}\n    grpc_addr: 127.0.0.1:{grpc}\n    peer_addr: 127.0.0.1:{peer}\n{peer_tls}    data_dir: {}\n    raft:\n      heartbeat_interval_ms: 100\n      election_timeout_min_ms: 500\n      election_timeout_max_ms: 1000\n      request_timeout_ms: 3000\n    storage:\n      cache_capacity_mb: 8\n",
        dir.join(format!("data{id}")).display()
    );
    if !members.is_empty() {
        yaml.push_str("    initial_members:\n");
        for (mid, p) in members {
            yaml.push_str(&format!(
                "      - {{ id: {mid}, peer_addr: 127.0.0.1:{}, grpc_addr: 127.0.0.1:{}, api_addr: 127.0.0.1:{}, http_addr: 127.0.0.1:{} }}\n",
                p.peer, p.grpc, p.api, p.http
            ));
        }
    }
    let path = dir.join(format!("node{id}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// An `aofctl` command that talks to a cluster: its own (empty) context file, so
/// the user's `~/.config/aofctl` never changes what a test does, and none of the
/// caller's connection variables.
pub fn aofctl_cmd(config_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("AOF_CONFIG", config_dir.join("aofctl-config.yaml"));
    for v in ["AOF_ENDPOINT", "AOF_GRPC_ENDPOINT", "AOF_TOKEN", "AOF_WORKER_TOKEN", "AOF_CA_FILE", "AOF_CONTEXT", "RUST_LOG"] {
        cmd.env_remove(v);
    }
    cmd
}

/// `aofctl serve --config <config>`, ready to spawn.
pub fn serve(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(config).env("RUST_LOG", "info,openraft=warn");
    cmd
}

/// A child process (node or worker) logging to a file; SIGKILLed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, log: PathBuf, cmd: &mut Command) -> Proc {
        let name = name.into();
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name, log, child: Some(child) }
    }
    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }
    /// SIGKILL: no graceful shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }
    /// Waits (bounded) for the process to exit; its status.
    pub async fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(s) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn dump(&self) {
        eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A node process and its ports.
pub struct Node {
    pub id: u64,
    pub ports: Ports,
    pub proc: Proc,
}

impl Node {
    /// The public listener: webhooks, /health, /ready.
    pub fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }
    /// The API listener: /v1/*, /metrics.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.api)
    }
    /// The workers' gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.ports.grpc)
    }
}

/// Start a three-node cluster in `dir` (configs by [`write_config`] with
/// `spec_extra`), with real tokens and peer certificates (`creds`).
pub fn start_three(dir: &Path, name: &str, spec_extra: &str, creds: &Creds) -> Vec<Node> {
    let ports: Vec<(u64, Ports)> = (1..=3).map(|id| (id, Ports::free())).collect();
    ports
        .iter()
        .map(|&(id, p)| {
            let config = write_config(dir, name, id, p, &ports, spec_extra, Auth::Secure(creds));
            let mut cmd = serve(&config);
            creds.node_env(&mut cmd);
            let proc = Proc::spawn(format!("node {id}"), dir.join(format!("node{id}.log")), &mut cmd);
            Node { id, ports: p, proc }
        })
        .collect()
}

/// Poll `f` every 200 ms for up to `secs`; on timeout call `on_timeout` (dump logs)
/// and panic.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, on_timeout: impl FnOnce(), mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    on_timeout();
    panic!("timed out after {secs}s waiting for: {what}");
}

/// Every given node answers `/ready` (public or API listener URLs).
pub async fn all_ready(urls: impl IntoIterator<Item = String>) -> bool {
    for u in urls {
        if aof_client::Client::new(vec![u]).ready().await.is_err() {
            return false;
        }
    }
    true
}
