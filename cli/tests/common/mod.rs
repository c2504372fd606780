//! Shared harness of the process-level tests: free loopback ports, `aofctl serve`
//! configs, child processes that are killed on drop, signed webhooks, bounded waits.
//! Everything listens on 127.0.0.1.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aofctl");

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `X-Hub-Signature-256` of `body` under `secret`: the one signer of the
/// workspace, as `aofctl dev` and the node's verifier use it.
#[allow(unused_imports)]
pub use aof_contract::signature::sign;

/// Write `node<id>.yaml` in `dir`: a DaemonConfig for node `id` of a loopback cluster
/// with fast Raft timings and a small cache, without tokens or TLS (`auth.insecure`).
/// The API and peer addresses (127.0.0.2, the HTTP and gRPC ports) are distinct
/// from the others, as the config requires; until those listeners are served on
/// their own sockets, the API answers on the HTTP port and peers on the gRPC port. `spec_extra` is YAML inserted under
/// `spec:` (indented two spaces: platforms, queue, ...). `members` are
/// `(id, http port, grpc port)`; empty = no `initial_members` (a node to be joined).
pub fn write_config(dir: &Path, name: &str, id: u64, http: u16, grpc: u16, members: &[(u64, u16, u16)], spec_extra: &str) -> PathBuf {
    let mut yaml = format!(
        "apiVersion: aof.dev/v1\nkind: DaemonConfig\nmetadata:\n  name: {name}-node{id}\nspec:\n  server:\n    host: 127.0.0.1\n    port: {http}\n  auth:\n    insecure: true\n{spec_extra}  cluster:\n    node_id: {id}\n    api_addr: 127.0.0.2:{http}\n    grpc_addr: 127.0.0.1:{grpc}\n    peer_addr: 127.0.0.2:{grpc}\n    data_dir: {}\n    raft:\n      heartbeat_interval_ms: 100\n      election_timeout_min_ms: 500\n      election_timeout_max_ms: 1000\n      request_timeout_ms: 3000\n    storage:\n      cache_capacity_mb: 8\n",
        dir.join(format!("data{id}")).display()
    );
    if !members.is_empty() {
        yaml.push_str("    initial_members:\n");
        for (mid, mh, mg) in members {
            yaml.push_str(&format!(
                "      - {{ id: {mid}, peer_addr: 127.0.0.2:{mg}, grpc_addr: 127.0.0.1:{mg}, api_addr: 127.0.0.2:{mh}, http_addr: 127.0.0.1:{mh} }}\n"
            ));
        }
    }
    let path = dir.join(format!("node{id}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
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
    pub http: u16,
    pub grpc: u16,
    pub proc: Proc,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
    pub fn grpc_url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.grpc)
    }
}

/// Start a three-node cluster in `dir` (configs by [`write_config`] with `spec_extra`).
pub fn start_three(dir: &Path, name: &str, spec_extra: &str) -> Vec<Node> {
    let ports: Vec<(u64, u16, u16)> = (1..=3).map(|id| (id, free_port(), free_port())).collect();
    ports
        .iter()
        .map(|&(id, http, grpc)| {
            let config = write_config(dir, name, id, http, grpc, &ports, spec_extra);
            let proc = Proc::spawn(format!("node {id}"), dir.join(format!("node{id}.log")), &mut serve(&config));
            Node { id, http, grpc, proc }
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

/// Every given node answers `/ready`.
pub async fn all_ready(urls: impl IntoIterator<Item = String>) -> bool {
    for u in urls {
        if aof_client::Client::new(vec![u]).ready().await.is_err() {
            return false;
        }
    }
    true
}
