//! The database under test: `aofctl serve` processes, one per slot, each in its
//! own network namespace (or on loopback ports in fallback mode), started from
//! generated DaemonConfig YAML files, killed with SIGKILL, paused with SIGSTOP,
//! removed from and joined back into the cluster.
//!
//! A *slot* is a machine: its namespace, address, data directory and log. The
//! node id in a slot changes when the membership nemesis removes it and joins it
//! back (a removed node's id is never reused, as the node docs require).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cleanup;
use crate::http::{self, Response};
use crate::net::{self, Dialer, Net};

/// The API or peer address that goes with a node's HTTP or gRPC address: distinct
/// from every other address of the cluster, as the config requires (127.0.0.2 on
/// loopback; the port + 2000 on a slot's own IP). Until those listeners are served
/// on their own sockets, the API answers on the HTTP port and peers on the gRPC port.
fn sibling(a: SocketAddr) -> SocketAddr {
    if a.ip().is_loopback() {
        SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), a.port())
    } else {
        SocketAddr::new(a.ip(), a.port().wrapping_add(2000))
    }
}

pub const HTTP_PORT: u16 = 3000;
pub const GRPC_PORT: u16 = 4000;
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
        }
    }
}

pub struct Slot {
    pub slot: usize,
    /// `n1`, `n2`, ...: the slot's name in the history.
    pub name: String,
    /// The Raft node id living in this slot now.
    pub id: u64,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ns: Option<String>,
    pub dir: PathBuf,
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
        self.dir.join(format!("data-{}", self.id))
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.yaml", self.id))
    }
}

pub struct Db {
    pub run: String,
    pub opts: DbOpts,
    pub net: Option<Arc<Net>>,
    pub dialer: Dialer,
    slots: Mutex<Vec<Slot>>,
    next_id: Mutex<u64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Db {
    /// Lay out the slots under `dir` (one subdirectory per slot) and write the
    /// first nodes' configs. Nothing is started yet.
    pub fn new(run: &str, opts: DbOpts, dir: &Path, net: Option<Arc<Net>>) -> Result<Arc<Db>> {
        let mut slots = Vec::new();
        for i in 0..opts.nodes {
            let (http, grpc, ns) = match &net {
                Some(n) => (
                    SocketAddr::new(net::slot_ip(i).into(), HTTP_PORT),
                    SocketAddr::new(net::slot_ip(i).into(), GRPC_PORT),
                    Some(n.nodes[i].clone()),
                ),
                None => (
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port()),
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port()),
                    None,
                ),
            };
            let sdir = dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&sdir)?;
            slots.push(Slot {
                slot: i,
                name: format!("n{}", i + 1),
                id: i as u64 + 1,
                http,
                grpc,
                ns,
                log: dir.join(format!("n{}.log", i + 1)),
                dir: sdir,
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
            opts,
            net,
            dialer,
            slots: Mutex::new(slots),
        };
        let members: Vec<(u64, SocketAddr, SocketAddr)> = db
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.id, s.grpc, s.http))
            .collect();
        for s in db.slots.lock().unwrap().iter() {
            db.write_config(s, Some(&members))?;
        }
        Ok(Arc::new(db))
    }

    /// Writes a node's DaemonConfig: no tokens or TLS (`auth.insecure`); the API and
    /// peer addresses are [`sibling`]s of the HTTP and gRPC ones.
    fn write_config(
        &self,
        s: &Slot,
        members: Option<&[(u64, SocketAddr, SocketAddr)]>,
    ) -> Result<()> {
        let o = &self.opts;
        let mut y = format!(
            "apiVersion: aof.dev/v1\nkind: DaemonConfig\nmetadata:\n  name: jepsen-{name}-{id}\nspec:\n  server:\n    host: {host}\n    port: {port}\n  platforms:\n    github:\n      enabled: true\n      webhook_secret: \"{secret}\"\n  gateway:\n    ack_timeout_ms: {ack}\n  queue:\n    lease_timeout_ms: {lease}\n    max_retries: 1000\n    retry_delay_ms: 100\n    max_retry_delay_ms: 500\n  auth:\n    insecure: true\n  cluster:\n    node_id: {id}\n    api_addr: \"{api}\"\n    grpc_addr: {grpc}\n    peer_addr: \"{peer}\"\n    data_dir: {data}\n    raft:\n      heartbeat_interval_ms: {hb}\n      election_timeout_min_ms: {emin}\n      election_timeout_max_ms: {emax}\n      request_timeout_ms: {rt}\n    storage:\n      cache_capacity_mb: 8\n",
            name = s.name,
            id = s.id,
            host = s.http.ip(),
            port = s.http.port(),
            secret = self.opts.secret,
            ack = o.ack_timeout_ms,
            lease = o.lease_timeout_ms,
            grpc = s.grpc,
            api = sibling(s.http),
            peer = sibling(s.grpc),
            data = s.data_dir().display(),
            hb = o.heartbeat_ms,
            emin = o.election_min_ms,
            emax = o.election_max_ms,
            rt = o.request_timeout_ms,
        );
        if let Some(members) = members {
            y.push_str("    initial_members:\n");
            for (id, g, h) in members {
                y.push_str(&format!(
                    "      - {{ id: {id}, peer_addr: \"{}\", grpc_addr: \"{g}\", api_addr: \"{}\", http_addr: \"{h}\" }}\n",
                    sibling(*g),
                    sibling(*h)
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
            .env("RUST_LOG", "info,openraft=warn")
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

    /// One HTTP request to the node of `slot`.
    pub async fn http(
        &self,
        slot: usize,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, http::Error> {
        let addr = self.http_addr(slot);
        http::request(&self.dialer, addr, method, path, headers, body, timeout).await
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
        let (id, grpc, http) = {
            let g = self.slots.lock().unwrap();
            (g[slot].id, g[slot].grpc, g[slot].http)
        };
        let start = Instant::now();
        let body =
            json!({ "node_id": id, "grpc_addr": grpc.to_string(), "http_addr": http.to_string() })
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

impl Drop for Db {
    fn drop(&mut self) {
        self.kill_all();
    }
}
