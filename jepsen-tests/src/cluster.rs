//! The database under test: `aofctl serve` processes, one per slot, each in its
//! own network namespace (or on loopback ports in fallback mode), started from
//! generated DaemonConfig YAML files, killed with SIGKILL, paused with SIGSTOP,
//! removed from and joined back into the cluster.
//!
//! A *slot* is a machine: its namespace, address, data directory and log. The
//! node id in a slot changes when the membership nemesis removes it and joins it
//! back (a removed node's id is never reused, as the node docs require).
//!
//! The nodes run as in production: four listeners each (public, API, workers'
//! gRPC, peers), bearer tokens generated for the run (`AOF_ADMIN_TOKEN`,
//! `AOF_WORKER_TOKEN`), and mutual TLS between peers with a cluster CA and node
//! certificates made by `aofctl certs init` (more are issued, from the same CA,
//! when the membership nemesis brings up a node with a new id). [`Db::http`] sends
//! webhooks and health probes to a node's public listener and everything else to
//! its API listener with the admin token; workers send the worker token
//! ([`Db::queue_client`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aof_proto::v1::work_queue_client::WorkQueueClient;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cleanup;
use crate::disk::{DiskOpts, SlotDisk};
use crate::http::{self, Response};
use crate::net::{self, Dialer, Net};

/// The ports of the four listeners on a slot's own IP (namespaces mode).
pub const HTTP_PORT: u16 = 3000;
pub const GRPC_PORT: u16 = 4000;
pub const API_PORT: u16 = 5000;
pub const PEER_PORT: u16 = 6000;
/// The catch-all trigger the queue workload needs (sorts after every other name).
pub const CATCH_ALL: &str = "zz-jepsen-catch-all";
/// The target of the catch-all's jobs.
pub const TARGET: &str = "jepsen";

/// Settings of the nodes.
#[derive(Clone, Debug)]
pub struct DbOpts {
    pub nodes: usize,
    pub bin: PathBuf,
    /// `AOF_PLANTED_BUG` for every node.
    pub planted: Option<String>,
    pub secret: String,
    pub lease_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub request_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    /// The admin token of the run (every API call of the harness).
    pub admin_token: String,
    /// The worker token of the run (the queue workload's workers).
    pub worker_token: String,
    /// The slots' disks (plain, tmpfs, faultfs).
    pub disk: DiskOpts,
    /// `spec.cluster.raft.snapshot_every` (with `snapshot_log_percent: 0`), for
    /// frequent snapshots; the node's default when `None`.
    pub snapshot_every: Option<u64>,
    /// `spec.cluster.raft.logs_to_keep_after_snapshot` (small: restarted nodes
    /// catch up by installing a snapshot).
    pub logs_to_keep: Option<u64>,
}

/// A random token (16 bytes, hex).
fn random_token(role: &str) -> String {
    let b: [u8; 16] = rand::random();
    format!("jepsen-{role}-{}", hex::encode(b))
}

impl DbOpts {
    pub fn new(nodes: usize, bin: PathBuf) -> Self {
        DbOpts {
            nodes,
            bin,
            planted: None,
            secret: "jepsen-secret".into(),
            lease_timeout_ms: 2000,
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            request_timeout_ms: 2000,
            ack_timeout_ms: 3000,
            admin_token: random_token("admin"),
            worker_token: random_token("worker"),
            disk: DiskOpts::default(),
            snapshot_every: None,
            logs_to_keep: None,
        }
    }
}

/// Adds the run's worker token (`authorization: Bearer`) to every work-queue call.
#[derive(Clone)]
pub struct WorkerToken(MetadataValue<Ascii>);

impl tonic::service::Interceptor for WorkerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A work-queue client that sends the worker token.
pub type QueueClient = WorkQueueClient<InterceptedService<Channel, WorkerToken>>;

pub struct Slot {
    pub slot: usize,
    /// `n1`, `n2`, ...: the slot's name in the history.
    pub name: String,
    /// The Raft node id living in this slot now.
    pub id: u64,
    /// Public listener: webhooks, /health, /ready.
    pub http: SocketAddr,
    /// Workers' gRPC listener.
    pub grpc: SocketAddr,
    /// API listener: /v1/*, /metrics.
    pub api: SocketAddr,
    /// Peer listener: Raft, forwarding (mutual TLS).
    pub peer: SocketAddr,
    pub ns: Option<String>,
    pub dir: PathBuf,
    /// Where the data dirs are: on the slot's disk ([`SlotDisk::root`]).
    pub data_root: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    pub starts: u32,
}

impl Slot {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    fn data_dir(&self) -> PathBuf {
        self.data_root.join(format!("data-{}", self.id))
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.yaml", self.id))
    }
}

pub struct Db {
    pub run: String,
    pub opts: DbOpts,
    /// The cluster CA and node certificates (`aofctl certs init --dir`).
    certs: PathBuf,
    /// Node ids `1..=certified` have certificates.
    certified: Mutex<u64>,
    pub net: Option<Arc<Net>>,
    pub dialer: Dialer,
    slots: Mutex<Vec<Slot>>,
    next_id: Mutex<u64>,
    /// One per slot (declared after `slots`: dropped, i.e. unmounted, after the
    /// nodes are killed in `Drop`).
    disks: Mutex<Vec<SlotDisk>>,
}

use aof_contract::ports::free_port;

impl Db {
    /// Lay out the slots under `dir` (one subdirectory per slot) and write the
    /// first nodes' configs. Nothing is started yet.
    pub fn new(run: &str, opts: DbOpts, dir: &Path, net: Option<Arc<Net>>) -> Result<Arc<Db>> {
        let mut slots = Vec::new();
        let mut disks = Vec::new();
        for i in 0..opts.nodes {
            let (ip, ports, ns) = match &net {
                Some(n) => (
                    net::slot_ip(i),
                    [HTTP_PORT, GRPC_PORT, API_PORT, PEER_PORT],
                    Some(n.nodes[i].clone()),
                ),
                None => (
                    Ipv4Addr::LOCALHOST,
                    [free_port(), free_port(), free_port(), free_port()],
                    None,
                ),
            };
            let addr = |port| SocketAddr::new(ip.into(), port);
            let [http, grpc, api, peer] = ports.map(addr);
            let sdir = dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&sdir)?;
            let disk = SlotDisk::create(&sdir, &opts.disk)?;
            let data_root = disk.root().to_path_buf();
            disks.push(disk);
            slots.push(Slot {
                slot: i,
                name: format!("n{}", i + 1),
                id: i as u64 + 1,
                http,
                grpc,
                api,
                peer,
                ns,
                log: dir.join(format!("n{}.log", i + 1)),
                dir: sdir,
                data_root,
                child: None,
                paused: false,
                starts: 0,
            });
        }
        let dialer = net
            .as_ref()
            .map(|n| n.dialer())
            .unwrap_or_else(Dialer::host);
        let db = Db {
            run: run.to_string(),
            next_id: Mutex::new(opts.nodes as u64 + 1),
            certs: dir.join("certs"),
            certified: Mutex::new(0),
            opts,
            net,
            dialer,
            slots: Mutex::new(slots),
            disks: Mutex::new(disks),
        };
        db.certify(db.opts.nodes as u64)?;
        let members: Vec<Member> = db.slots.lock().unwrap().iter().map(Member::of).collect();
        for s in db.slots.lock().unwrap().iter() {
            db.write_config(s, Some(&members))?;
        }
        Ok(Arc::new(db))
    }

    /// Issues node certificates (from the run's CA, created first) for ids up to
    /// `up_to`, with `aofctl certs init` as an operator would.
    fn certify(&self, up_to: u64) -> Result<()> {
        let mut done = self.certified.lock().unwrap();
        if up_to <= *done {
            return Ok(());
        }
        let out = Command::new(&self.opts.bin)
            .args(["certs", "init", "--dir"])
            .arg(&self.certs)
            .args(["--nodes", &up_to.to_string()])
            .env_remove("AOF_PLANTED_BUG")
            .output()
            .with_context(|| format!("running {} certs init", self.opts.bin.display()))?;
        if !out.status.success() {
            bail!(
                "aofctl certs init --dir {} --nodes {up_to}: {}",
                self.certs.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        *done = up_to;
        Ok(())
    }

    /// Writes a node's DaemonConfig: its four listeners, the default tokens (read
    /// from the environment [`Db::start`] gives it) and peer TLS with the run's
    /// certificates.
    fn write_config(&self, s: &Slot, members: Option<&[Member]>) -> Result<()> {
        let o = &self.opts;
        let mut y = format!(
            "apiVersion: aof.dev/v1\nkind: DaemonConfig\nmetadata:\n  name: jepsen-{name}-{id}\nspec:\n  server:\n    host: {host}\n    port: {port}\n  platforms:\n    github:\n      enabled: true\n      webhook_secret: \"{secret}\"\n  gateway:\n    ack_timeout_ms: {ack}\n  queue:\n    lease_timeout_ms: {lease}\n    max_retries: 1000\n    retry_delay_ms: 100\n    max_retry_delay_ms: 500\n  auth:\n    tokens:\n      - {{ name: admin, role: admin, env: AOF_ADMIN_TOKEN }}\n      - {{ name: worker, role: worker, env: AOF_WORKER_TOKEN }}\n  cluster:\n    node_id: {id}\n    api_addr: \"{api}\"\n    grpc_addr: \"{grpc}\"\n    peer_addr: \"{peer}\"\n    peer_tls:\n      ca_file: \"{certs}/ca.crt\"\n      cert_file: \"{certs}/node{{node_id}}.crt\"\n      key_file: \"{certs}/node{{node_id}}.key\"\n    data_dir: {data}\n    raft:\n      heartbeat_interval_ms: {hb}\n      election_timeout_min_ms: {emin}\n      election_timeout_max_ms: {emax}\n      request_timeout_ms: {rt}\n{snap}    storage:\n      cache_capacity_mb: 8\n",
            name = s.name,
            id = s.id,
            host = s.http.ip(),
            port = s.http.port(),
            secret = self.opts.secret,
            ack = o.ack_timeout_ms,
            lease = o.lease_timeout_ms,
            grpc = s.grpc,
            api = s.api,
            peer = s.peer,
            certs = self.certs.display(),
            data = s.data_dir().display(),
            hb = o.heartbeat_ms,
            emin = o.election_min_ms,
            emax = o.election_max_ms,
            rt = o.request_timeout_ms,
            snap = snapshot_tuning(o),
        );
        if let Some(members) = members {
            y.push_str("    initial_members:\n");
            for m in members {
                y.push_str(&format!(
                    "      - {{ id: {}, peer_addr: \"{}\", grpc_addr: \"{}\", api_addr: \"{}\", http_addr: \"{}\" }}\n",
                    m.id, m.peer, m.grpc, m.api, m.http
                ));
            }
        }
        std::fs::write(s.config_path(), y)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.opts.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.opts.nodes == 0
    }

    pub fn name(&self, slot: usize) -> String {
        format!("n{}", slot + 1)
    }

    pub fn http_addr(&self, slot: usize) -> SocketAddr {
        self.slots.lock().unwrap()[slot].http
    }

    pub fn grpc_addr(&self, slot: usize) -> SocketAddr {
        self.slots.lock().unwrap()[slot].grpc
    }

    pub fn api_addr(&self, slot: usize) -> SocketAddr {
        self.slots.lock().unwrap()[slot].api
    }

    /// A work-queue client over `channel` that sends the run's worker token.
    pub fn queue_client(&self, channel: Channel) -> QueueClient {
        let token = format!("Bearer {}", self.opts.worker_token)
            .parse()
            .expect("a hex token is valid metadata");
        WorkQueueClient::with_interceptor(channel, WorkerToken(token))
    }

    pub fn node_id(&self, slot: usize) -> u64 {
        self.slots.lock().unwrap()[slot].id
    }

    pub fn slot_of_id(&self, id: u64) -> Option<usize> {
        self.slots.lock().unwrap().iter().position(|s| s.id == id)
    }

    pub fn is_running(&self, slot: usize) -> bool {
        self.slots.lock().unwrap()[slot].running()
    }

    pub fn is_paused(&self, slot: usize) -> bool {
        self.slots.lock().unwrap()[slot].paused
    }

    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.log.clone())
            .collect()
    }

    fn note(&self, slot: usize, msg: &str) {
        let log = self.slots.lock().unwrap()[slot].log.clone();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            use std::io::Write;
            let _ = writeln!(f, "==== jepsen: {msg}");
        }
    }

    /// Start the node of `slot` (no-op if running).
    pub fn start(&self, slot: usize) -> Result<()> {
        let mut g = self.slots.lock().unwrap();
        let s = &mut g[slot];
        if s.child.is_some() {
            return Ok(());
        }
        s.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        {
            use std::io::Write;
            let mut l = &log;
            let _ = writeln!(
                l,
                "==== jepsen: start #{} of node {} (slot {})",
                s.starts, s.id, s.name
            );
        }
        let mut cmd = Command::new(&self.opts.bin);
        cmd.args(["serve", "--config"])
            .arg(s.config_path())
            .current_dir(&s.dir)
            .env(
                "RUST_LOG",
                std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env("AOF_ADMIN_TOKEN", &self.opts.admin_token)
            .env("AOF_WORKER_TOKEN", &self.opts.worker_token)
            .env_remove("AOF_READ_TOKEN")
            .env_remove("AOF_PLANTED_BUG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if let Some(bug) = &self.opts.planted {
            cmd.env("AOF_PLANTED_BUG", bug);
        }
        let ns_file = match &s.ns {
            Some(ns) => Some(
                std::fs::File::open(format!("/run/netns/{ns}"))
                    .with_context(|| format!("namespace {ns}"))?,
            ),
            None => None,
        };
        if let Some(f) = &ns_file {
            let fd = f.as_raw_fd();
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.opts.bin.display()))?;
        cleanup::register_pid(&self.run, child.id());
        s.child = Some(child);
        s.paused = false;
        Ok(())
    }

    /// SIGKILL the node of `slot` and reap it.
    pub fn kill(&self, slot: usize) {
        let child = {
            let mut g = self.slots.lock().unwrap();
            g[slot].paused = false;
            g[slot].child.take()
        };
        if let Some(mut c) = child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
            cleanup::unregister_pid(&self.run, c.id());
            self.note(slot, "killed (SIGKILL)");
        }
    }

    fn signal(&self, slot: usize, sig: i32) -> bool {
        let mut g = self.slots.lock().unwrap();
        let s = &mut g[slot];
        let Some(c) = &s.child else { return false };
        let r = unsafe { libc::kill(c.id() as i32, sig) } == 0;
        if r {
            s.paused = sig == libc::SIGSTOP;
        }
        r
    }

    pub fn pause(&self, slot: usize) -> bool {
        let r = self.signal(slot, libc::SIGSTOP);
        if r {
            self.note(slot, "paused (SIGSTOP)");
        }
        r
    }

    pub fn resume(&self, slot: usize) -> bool {
        if !self.is_paused(slot) {
            return false;
        }
        let r = self.signal(slot, libc::SIGCONT);
        if r {
            self.note(slot, "resumed (SIGCONT)");
        }
        r
    }

    pub fn start_all(&self) -> Result<()> {
        for i in 0..self.len() {
            self.start(i)?;
        }
        Ok(())
    }

    pub fn kill_all(&self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }

    /// One HTTP request to the node of `slot`, on the listener that serves `path`:
    /// the public one for webhooks and health probes, else the API one, with the
    /// admin token (and, for a change without a body type, `Content-Type:
    /// application/json`, which the API requires).
    pub async fn http(
        &self,
        slot: usize,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, http::Error> {
        if is_public_path(path) {
            let addr = self.http_addr(slot);
            return http::request(&self.dialer, addr, method, path, headers, body, timeout).await;
        }
        let mut h: Vec<(&str, String)> = headers.to_vec();
        let has = |h: &[(&str, String)], k: &str| h.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
        if !has(&h, "authorization") {
            h.push(("authorization", format!("Bearer {}", self.opts.admin_token)));
        }
        if !matches!(method, "GET" | "HEAD" | "DELETE") && !has(&h, "content-type") {
            h.push(("content-type", "application/json".into()));
        }
        let addr = self.api_addr(slot);
        http::request(&self.dialer, addr, method, path, &h, body, timeout).await
    }

    async fn get_json(&self, slot: usize, path: &str, timeout: Duration) -> Option<Value> {
        match self.http(slot, "GET", path, &[], b"", timeout).await {
            Ok(r) if r.status == 200 => Some(r.json()),
            _ => None,
        }
    }

    /// The leader's slot, by the answer of the node with the highest term.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None;
        for i in 0..self.len() {
            if !self.is_running(i) || self.is_paused(i) {
                continue;
            }
            if let Some(v) = self
                .get_json(
                    i,
                    "/v1/cluster?consistency=stale",
                    Duration::from_millis(800),
                )
                .await
            {
                if let (Some(term), Some(leader)) = (v["term"].as_u64(), v["leader_id"].as_u64()) {
                    if best.is_none_or(|(t, _)| term > t) {
                        best = Some((term, leader));
                    }
                }
            }
        }
        best.and_then(|(_, id)| self.slot_of_id(id))
    }

    /// Current membership as seen by a linearizable `GET /v1/cluster` (any node).
    pub async fn members(&self) -> Option<Vec<(u64, String)>> {
        for i in 0..self.len() {
            if !self.is_running(i) || self.is_paused(i) {
                continue;
            }
            if let Some(v) = self
                .get_json(i, "/v1/cluster", Duration::from_secs(3))
                .await
            {
                let m = v["members"]
                    .as_array()?
                    .iter()
                    .filter_map(|m| Some((m["id"].as_u64()?, m["role"].as_str()?.to_string())))
                    .collect();
                return Some(m);
            }
        }
        None
    }

    /// Whether the node of `slot` answers `/ready` with 200.
    pub async fn ready(&self, slot: usize) -> bool {
        self.get_json(slot, "/ready", Duration::from_secs(2))
            .await
            .is_some()
    }

    /// Whether every running slot answers `/ready` and a linearizable cluster read.
    pub async fn all_ready(&self) -> bool {
        for i in 0..self.len() {
            if !self.is_running(i) {
                return false;
            }
            if self
                .get_json(i, "/ready", Duration::from_secs(2))
                .await
                .is_none()
            {
                return false;
            }
            if self
                .get_json(i, "/v1/cluster", Duration::from_secs(3))
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Wait (bounded) until [`Db::all_ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.all_ready().await {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the cluster was not ready within {timeout:?}")
    }

    /// PUT a trigger through any node, retrying (bounded) until it is acknowledged.
    pub async fn put_trigger(&self, name: &str, yaml: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        let mut i = 0;
        while start.elapsed() < timeout {
            let slot = i % self.len();
            i += 1;
            match self
                .http(
                    slot,
                    "PUT",
                    &format!("/v1/triggers/{name}"),
                    &[("content-type", "application/yaml".into())],
                    yaml.as_bytes(),
                    Duration::from_secs(5),
                )
                .await
            {
                Ok(r) if r.status == 200 || r.status == 201 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("PUT /v1/triggers/{name}: {last}")
    }

    /// The data dir of the node now in `slot`.
    pub fn data_dir(&self, slot: usize) -> PathBuf {
        self.slots.lock().unwrap()[slot].data_dir()
    }

    pub fn has_faultfs(&self, slot: usize) -> bool {
        self.disks.lock().unwrap()[slot].has_faultfs()
    }

    pub fn has_tmpfs(&self, slot: usize) -> bool {
        self.disks.lock().unwrap()[slot].has_tmpfs()
    }

    /// Power loss of `slot`: SIGKILL the node, then its disk loses everything
    /// not fsynced (faultfs) and is mounted again. The node stays down.
    pub fn power_loss(&self, slot: usize) -> Result<Value> {
        self.kill(slot);
        let lost = self.disks.lock().unwrap()[slot].lose_unsynced()?;
        self.note(
            slot,
            &format!("power loss: the disk dropped what was not fsynced ({lost})"),
        );
        Ok(lost)
    }

    /// Fill the tmpfs of `slot` (every free byte; call again to eat what the
    /// node freed meanwhile). Returns the bytes taken and the bytes left.
    pub fn fill_disk(&self, slot: usize) -> Result<(u64, u64)> {
        let mut g = self.disks.lock().unwrap();
        let taken = g[slot].fill()?;
        let left = g[slot].free_now().unwrap_or(0);
        drop(g);
        self.note(
            slot,
            &format!("disk filled ({taken} bytes taken, {left} left)"),
        );
        Ok((taken, left))
    }

    /// Delete the filler files of `slot`; returns the free bytes now.
    pub fn free_disk(&self, slot: usize) -> Result<u64> {
        let free = self.disks.lock().unwrap()[slot].free()?;
        self.note(slot, &format!("disk space freed ({free} bytes free)"));
        Ok(free)
    }

    /// Flip bytes in a WAL segment or snapshot file of the stopped node of `slot`.
    pub fn corrupt(&self, slot: usize, rng: &mut impl rand::Rng) -> Result<Option<Value>> {
        let data = self.data_dir(slot);
        let done = SlotDisk::corrupt(&data, rng, 4)?;
        if let Some(d) = &done {
            self.note(slot, &format!("corrupted while stopped: {d}"));
        }
        Ok(done)
    }

    /// If the node of `slot` has exited on its own: reap it and say how.
    pub fn exited(&self, slot: usize) -> Option<String> {
        let mut g = self.slots.lock().unwrap();
        let s = &mut g[slot];
        let c = s.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                let pid = c.id();
                s.child = None;
                s.paused = false;
                drop(g);
                cleanup::unregister_pid(&self.run, pid);
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// The last `n` lines of the slot's log that are not the harness's markers.
    pub fn log_tail(&self, slot: usize, n: usize) -> Vec<String> {
        let log = self.slots.lock().unwrap()[slot].log.clone();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut v: Vec<String> = text
            .lines()
            .rev()
            .filter(|l| !l.starts_with("==== jepsen:"))
            .take(n)
            .map(str::to_string)
            .collect();
        v.reverse();
        v
    }

    /// Kill the nodes and unmount their disks; with `keep`, the tmpfs contents
    /// are copied to the slot's directory first (faultfs disks keep theirs in
    /// `backing/` anyway).
    pub fn teardown_disks(&self, keep: bool) {
        self.kill_all();
        let dirs: Vec<PathBuf> = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.dir.clone())
            .collect();
        for (d, disk) in dirs.iter().zip(self.disks.lock().unwrap().iter_mut()) {
            let dest = d.join("kept");
            disk.teardown(keep.then_some(dest.as_path()));
        }
    }

    /// Membership: remove the node of `slot` from the cluster, stop it, wipe its
    /// data and start a fresh node with a new id in the same slot (not yet a
    /// member). Returns (old id, new id). Fails — changing nothing locally — if the
    /// removal cannot be confirmed.
    pub async fn leave(&self, slot: usize, timeout: Duration) -> Result<(u64, u64)> {
        let old = self.node_id(slot);
        let start = Instant::now();
        let mut confirmed = false;
        let mut last = String::new();
        let mut k = slot + 1;
        while start.elapsed() < timeout && !confirmed {
            // Ask through another node (the one leaving may be the leader: fine too).
            let via = k % self.len();
            k += 1;
            if !self.is_running(via) || self.is_paused(via) {
                continue;
            }
            match self
                .http(
                    via,
                    "DELETE",
                    &format!("/v1/cluster/members/{old}"),
                    &[],
                    b"",
                    Duration::from_secs(5),
                )
                .await
            {
                Ok(r) if r.status == 200 => confirmed = true,
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            if !confirmed {
                if let Some(m) = self.members().await {
                    confirmed = !m.iter().any(|(id, _)| *id == old);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if !confirmed {
            bail!("removing node {old}: {last}");
        }
        self.kill(slot);
        let new = {
            let mut n = self.next_id.lock().unwrap();
            let v = *n;
            *n += 1;
            v
        };
        self.certify(new)?;
        {
            let mut g = self.slots.lock().unwrap();
            let s = &mut g[slot];
            let _ = std::fs::remove_dir_all(s.data_dir());
            s.id = new;
        }
        {
            let g = self.slots.lock().unwrap();
            self.write_config(&g[slot], None)?;
        }
        self.note(
            slot,
            &format!("node {old} removed from the cluster; slot reused by new node {new}"),
        );
        self.start(slot)?;
        Ok((old, new))
    }

    /// Membership: add the node of `slot` as a learner, wait until it has caught
    /// up, promote it to voter.
    pub async fn join(&self, slot: usize, timeout: Duration) -> Result<()> {
        let m = Member::of(&self.slots.lock().unwrap()[slot]);
        let id = m.id;
        let start = Instant::now();
        let body = json!({
            "node_id": id,
            "peer_addr": m.peer.to_string(),
            "grpc_addr": m.grpc.to_string(),
            "api_addr": m.api.to_string(),
            "http_addr": m.http.to_string(),
        })
        .to_string();
        let mut step = 0;
        let mut last = String::new();
        let mut k = slot + 1;
        while start.elapsed() < timeout {
            let via = k % self.len();
            k += 1;
            if via == slot || !self.is_running(via) || self.is_paused(via) {
                continue;
            }
            let members = self.members().await.unwrap_or_default();
            let role = members
                .iter()
                .find(|(m, _)| *m == id)
                .map(|(_, r)| r.clone());
            match (step, role.as_deref()) {
                (_, Some("voter")) => return Ok(()),
                (0, None) => match self
                    .http(
                        via,
                        "POST",
                        "/v1/cluster/learners",
                        &[("content-type", "application/json".into())],
                        body.as_bytes(),
                        Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => step = 1,
                    Ok(r) => last = format!("add learner: {} {}", r.status, r.text()),
                    Err(e) => last = format!("add learner: {e}"),
                },
                (_, Some(_)) => {
                    step = 1;
                    // Caught up?
                    if self
                        .get_json(slot, "/ready", Duration::from_secs(2))
                        .await
                        .is_some()
                    {
                        match self
                            .http(
                                via,
                                "POST",
                                &format!("/v1/cluster/voters/{id}"),
                                &[],
                                b"",
                                Duration::from_secs(5),
                            )
                            .await
                        {
                            Ok(r) if r.status == 200 => return Ok(()),
                            Ok(r) => last = format!("promote: {} {}", r.status, r.text()),
                            Err(e) => last = format!("promote: {e}"),
                        }
                    } else {
                        last = "learner not caught up".into();
                    }
                }
                (_, None) => step = 0,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("joining node {id}: {last}")
    }

    /// Voters that are not in a slot any more, or slots whose node is not a voter.
    pub async fn membership_drift(&self) -> Option<String> {
        let m = self.members().await?;
        let ids: Vec<u64> = (0..self.len()).map(|i| self.node_id(i)).collect();
        let voters: Vec<u64> = m
            .iter()
            .filter(|(_, r)| r == "voter")
            .map(|(i, _)| *i)
            .collect();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| !voters.contains(i))
            .collect();
        let extra: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|i| !ids.contains(i))
            .collect();
        if missing.is_empty() && extra.is_empty() {
            None
        } else {
            Some(format!(
                "slots' nodes not voters: {missing:?}; voters without a slot: {extra:?}"
            ))
        }
    }
}

/// A node's id and its four addresses, as in `initial_members` and the join body.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub id: u64,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub api: SocketAddr,
    pub peer: SocketAddr,
}

impl Member {
    fn of(s: &Slot) -> Member {
        Member {
            id: s.id,
            http: s.http,
            grpc: s.grpc,
            api: s.api,
            peer: s.peer,
        }
    }
}

/// The `raft:` lines for [`DbOpts::snapshot_every`] and [`DbOpts::logs_to_keep`].
fn snapshot_tuning(o: &DbOpts) -> String {
    let mut y = String::new();
    if let Some(n) = o.snapshot_every {
        y.push_str(&format!(
            "      snapshot_every: {n}\n      snapshot_log_percent: 0\n"
        ));
    }
    if let Some(n) = o.logs_to_keep {
        y.push_str(&format!("      logs_to_keep_after_snapshot: {n}\n"));
    }
    y
}

/// Paths served by a node's public listener (everything else is the API's).
fn is_public_path(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or(path);
    p.starts_with("/webhook/") || p == "/health" || p == "/ready"
}

impl Drop for Db {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_and_probes_go_to_the_public_listener_the_rest_to_the_api() {
        assert!(is_public_path("/webhook/github"));
        assert!(is_public_path("/ready"));
        assert!(is_public_path("/health?x=1"));
        assert!(!is_public_path("/v1/cluster?consistency=stale"));
        assert!(!is_public_path("/v1/triggers/ready"));
        assert!(!is_public_path("/metrics"));
    }

    #[test]
    fn tokens_are_random_and_valid_metadata() {
        let (a, b) = (DbOpts::new(3, "x".into()), DbOpts::new(3, "x".into()));
        assert_ne!(a.admin_token, b.admin_token);
        assert_ne!(a.admin_token, a.worker_token);
        let v: Result<MetadataValue<Ascii>, _> = format!("Bearer {}", a.worker_token).parse();
        assert!(v.is_ok());
    }
}
