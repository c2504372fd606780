//! The test network: one Linux network namespace per node, all attached by veth
//! pairs to a bridge in a hub namespace, and one namespace for the clients. Every
//! namespace is created by the run and named with its unique prefix
//! (`jt-<pid>-<hex>-…`); nothing is added to the host's namespace, so no packet of
//! the test can leave the machine, and deleting the namespaces removes every
//! interface, address, iptables rule and qdisc the run created.
//!
//! Faults:
//! - partitions are *grudges* (node → peers whose packets it drops), applied with
//!   `iptables -A INPUT -s PEER -j DROP` inside the node's namespace, or — when
//!   `iptables` is not installed — with blackhole routes in the peer's namespace
//!   (silent drop too, but new connections fail at once instead of timing out);
//! - slow links: `tc netem` delay/loss where the kernel has it, else a `tbf` rate
//!   limit plus random loss (`iptables -m statistic`).
//!
//! Clients (HTTP and gRPC) run in this process: their sockets are created by a
//! helper thread that has entered the client namespace ([`Dialer`]).
//!
//! Without root or `ip netns`, [`Net`] is not used and the nodes run on loopback
//! (see `cluster.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cleanup;

/// The /24 used inside the run's namespaces (never reachable from the host).
pub const SUBNET: [u8; 3] = [192, 168, 77];
const CLIENT_HOST: u8 = 200;

/// Address of node slot `i` (0-based) inside the test network.
pub fn slot_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 11 + i as u8)
}

/// How partitions are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    Iptables,
    BlackholeRoutes,
}

/// Run a command, returning stdout; an error names the command and its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command inside a namespace.
pub fn ns_sh(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Can this process create network namespaces? (root, `ip` present, kernel support.)
pub fn namespaces_available() -> std::result::Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    if !have("ip") {
        return Err("`ip` (iproute2) is not installed".into());
    }
    let probe = format!("jtprobe-{}", std::process::id());
    match sh(&["ip", "netns", "add", &probe]) {
        Ok(_) => {
            let _ = sh(&["ip", "netns", "del", &probe]);
            Ok(())
        }
        Err(e) => Err(format!("`ip netns add` failed: {e}")),
    }
}

/// Where runs keep their liveness locks (`<prefix>.lock`, flock held while the
/// run lives; the kernel drops it when the process dies, even by SIGKILL).
fn lock_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("jepsen-tests-locks")
}

/// Take the liveness lock of run `prefix`; keep the file open for the run's life.
pub fn lock_run(prefix: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(lock_dir())?;
    let f = std::fs::File::create(lock_dir().join(format!("{prefix}.lock")))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("run {prefix} is locked by another process");
    }
    Ok(f)
}

/// Is the run that created namespace prefix `prefix` (`jt-<pid>-<hex>`) gone?
fn run_is_dead(prefix: &str, pid: i32) -> bool {
    let path = lock_dir().join(format!("{prefix}.lock"));
    if let Ok(f) = std::fs::File::open(&path) {
        let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if free {
            let _ = std::fs::remove_file(&path);
        }
        return free;
    }
    // No lock file: is <pid> still a live process (not a reused thread id)?
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .map(|v| v.trim().parse::<i32>().unwrap_or(0));
    tgid != Some(pid)
}

/// Remove namespaces left by earlier runs of this harness that are gone (e.g.
/// killed with SIGKILL). Only names `jt-<pid>-<hex>-…` whose run no longer holds
/// its liveness lock are touched.
pub fn sweep_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = name.splitn(4, '-').collect();
        if parts.len() < 4 || parts[0] != "jt" {
            continue;
        }
        let Ok(pid) = parts[1].parse::<i32>() else {
            continue;
        };
        let prefix = format!("jt-{}-{}", parts[1], parts[2]);
        if run_is_dead(&prefix, pid) {
            eprintln!("jepsen: removing namespace {name} left by dead run {prefix}");
            cleanup::kill_namespace_pids(name);
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// Current faults, so that heal undoes exactly what was done.
#[derive(Default)]
struct Faults {
    /// node slot -> slots whose packets it drops
    grudge: BTreeMap<usize, BTreeSet<usize>>,
    slow: bool,
    slow_tbf: bool,
}

pub struct Net {
    pub prefix: String,
    pub hub: String,
    pub client: String,
    pub nodes: Vec<String>,
    pub backend: Backend,
    faults: Mutex<Faults>,
    dialer: Dialer,
    _lock: std::fs::File,
}

impl Net {
    /// Create the namespaces, the bridge and the links for `n` node slots.
    pub fn create(prefix: &str, n: usize) -> Result<Arc<Net>> {
        let lock = lock_run(prefix)?;
        let hub = format!("{prefix}-hub");
        let client = format!("{prefix}-cl");
        let nodes: Vec<String> = (1..=n).map(|i| format!("{prefix}-n{i}")).collect();
        for ns in std::iter::once(&hub)
            .chain(std::iter::once(&client))
            .chain(nodes.iter())
        {
            sh(&["ip", "netns", "add", ns])?;
            cleanup::register_namespace(prefix, ns);
            ns_sh(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        ns_sh(&hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        ns_sh(&hub, &["ip", "link", "set", "br0", "up"])?;
        let attach = |port: &str, ns: &str, ip: Ipv4Addr| -> Result<()> {
            ns_sh(
                &hub,
                &[
                    "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            ns_sh(&hub, &["ip", "link", "set", port, "master", "br0", "up"])?;
            ns_sh(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            ns_sh(ns, &["ip", "link", "set", "eth0", "up"])?;
            Ok(())
        };
        for (i, ns) in nodes.iter().enumerate() {
            attach(&format!("s{}", i + 1), ns, slot_ip(i))?;
        }
        attach(
            "c0",
            &client,
            Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], CLIENT_HOST),
        )?;
        // JEPSEN_PARTITIONS=routes forces the fallback (to test it where iptables exists).
        let forced_routes = std::env::var("JEPSEN_PARTITIONS").is_ok_and(|v| v == "routes");
        let backend = if !forced_routes
            && have("iptables")
            && ns_sh(&nodes[0], &["iptables", "-w", "-L", "INPUT", "-n"]).is_ok()
        {
            Backend::Iptables
        } else {
            eprintln!(
                "jepsen: `iptables` is not available; partitions use blackhole routes (install iptables for DROP semantics)"
            );
            Backend::BlackholeRoutes
        };
        let dialer = Dialer::in_namespace(&client)?;
        Ok(Arc::new(Net {
            prefix: prefix.to_string(),
            hub,
            client,
            nodes,
            backend,
            faults: Mutex::new(Faults::default()),
            dialer,
            _lock: lock,
        }))
    }

    pub fn dialer(&self) -> Dialer {
        self.dialer.clone()
    }

    /// Apply a grudge: `grudge[a]` = slots whose packets slot `a` drops. Replaces
    /// any current partition.
    pub fn partition(&self, grudge: &BTreeMap<usize, BTreeSet<usize>>) -> Result<()> {
        self.heal_partition()?;
        let mut f = self.faults.lock().unwrap();
        for (&a, peers) in grudge {
            for &b in peers {
                match self.backend {
                    Backend::Iptables => {
                        ns_sh(
                            &self.nodes[a],
                            &[
                                "iptables",
                                "-w",
                                "-A",
                                "INPUT",
                                "-s",
                                &slot_ip(b).to_string(),
                                "-j",
                                "DROP",
                            ],
                        )?;
                    }
                    Backend::BlackholeRoutes => {
                        // a drops what b sends: b cannot route to a.
                        let _ = ns_sh(
                            &self.nodes[b],
                            &[
                                "ip",
                                "route",
                                "add",
                                "blackhole",
                                &format!("{}/32", slot_ip(a)),
                            ],
                        );
                    }
                }
            }
        }
        f.grudge = grudge.clone();
        Ok(())
    }

    pub fn heal_partition(&self) -> Result<()> {
        let mut f = self.faults.lock().unwrap();
        if f.grudge.is_empty() {
            return Ok(());
        }
        let mut errs = Vec::new();
        match self.backend {
            Backend::Iptables => {
                for ns in &self.nodes {
                    if let Err(e) = ns_sh(ns, &["iptables", "-w", "-F", "INPUT"]) {
                        errs.push(e.to_string());
                    }
                }
            }
            Backend::BlackholeRoutes => {
                for (&a, peers) in &f.grudge {
                    for &b in peers {
                        let _ = ns_sh(
                            &self.nodes[b],
                            &[
                                "ip",
                                "route",
                                "del",
                                "blackhole",
                                &format!("{}/32", slot_ip(a)),
                            ],
                        );
                    }
                }
            }
        }
        f.grudge.clear();
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("healing the partition: {}", errs.join("; "))
        }
    }

    /// Slow, lossy links on the given slots: netem delay + loss if the kernel has
    /// netem, else a tbf rate limit + random loss.
    pub fn slow(&self, slots: &[usize], delay_ms: u32, loss_pct: u32) -> Result<String> {
        self.heal_slow()?;
        let mut f = self.faults.lock().unwrap();
        f.slow = true;
        let mut how = String::new();
        for &s in slots {
            let ns = &self.nodes[s];
            let netem = ns_sh(
                ns,
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    &format!("{delay_ms}ms"),
                    &format!("{}ms", delay_ms / 2),
                    "loss",
                    &format!("{loss_pct}%"),
                ],
            );
            if netem.is_ok() {
                how = format!(
                    "netem delay {delay_ms}ms±{}ms loss {loss_pct}%",
                    delay_ms / 2
                );
                continue;
            }
            ns_sh(
                ns,
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    "256kbit",
                    "burst",
                    "4kb",
                    "latency",
                    &format!("{}ms", delay_ms.max(50) * 4),
                ],
            )?;
            f.slow_tbf = true;
            how = "tbf 256kbit (no netem in this kernel)".to_string();
            if self.backend == Backend::Iptables && loss_pct > 0 {
                let p = format!("{:.3}", loss_pct as f64 / 100.0);
                ns_sh(
                    ns,
                    &[
                        "iptables",
                        "-w",
                        "-A",
                        "OUTPUT",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )?;
                how.push_str(&format!(" + random loss {loss_pct}%"));
            }
        }
        Ok(how)
    }

    pub fn heal_slow(&self) -> Result<()> {
        let mut f = self.faults.lock().unwrap();
        if !f.slow {
            return Ok(());
        }
        for ns in &self.nodes {
            let _ = ns_sh(ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
            if f.slow_tbf && self.backend == Backend::Iptables {
                let _ = ns_sh(ns, &["iptables", "-w", "-F", "OUTPUT"]);
            }
        }
        f.slow = false;
        f.slow_tbf = false;
        Ok(())
    }

    pub fn heal(&self) -> Result<()> {
        let a = self.heal_partition();
        let b = self.heal_slow();
        a.and(b)
    }

    /// Describe the current faults (for the log).
    pub fn describe(&self) -> String {
        let f = self.faults.lock().unwrap();
        format!("grudge {:?} slow {}", f.grudge, f.slow)
    }

    /// Delete the namespaces (the processes in them must be gone).
    pub fn destroy(&self) {
        for ns in std::iter::once(&self.client)
            .chain(self.nodes.iter())
            .chain(std::iter::once(&self.hub))
        {
            cleanup::kill_namespace_pids(ns);
            let _ = sh(&["ip", "netns", "del", ns]);
            cleanup::unregister_namespace(&self.prefix, ns);
        }
        let _ = std::fs::remove_file(lock_dir().join(format!("{}.lock", self.prefix)));
    }
}

type SocketRequest = tokio::sync::oneshot::Sender<std::io::Result<OwnedFd>>;

/// Creates client sockets: in the client namespace (a helper thread that entered
/// it makes them), or plain ones on loopback.
#[derive(Clone)]
pub struct Dialer {
    tx: Option<Arc<Mutex<mpsc::Sender<SocketRequest>>>>,
    pub connect_timeout: Duration,
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer {
            tx: None,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl Dialer {
    /// Sockets from the host's namespace (loopback mode).
    pub fn host() -> Self {
        Dialer::default()
    }

    pub fn in_namespace(ns: &str) -> Result<Self> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = mpsc::channel::<SocketRequest>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("dialer-{ns}"))
            .spawn(move || {
                // Network namespaces are per thread: only this thread enters it.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while let Ok(reply) = rx.recv() {
                    let fd = unsafe {
                        libc::socket(
                            libc::AF_INET,
                            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            0,
                        )
                    };
                    let res = if fd < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                    };
                    let _ = reply.send(res);
                }
            })
            .context("spawning the dialer thread")?;
        ready_rx
            .recv()
            .context("dialer thread")?
            .context("setns into the client namespace")?;
        Ok(Dialer {
            tx: Some(Arc::new(Mutex::new(tx))),
            connect_timeout: Duration::from_secs(2),
        })
    }

    /// Connect to `addr` (bounded by `connect_timeout`).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = match &self.tx {
            None => tokio::net::TcpSocket::new_v4()?,
            Some(tx) => {
                let (rtx, rrx) = tokio::sync::oneshot::channel();
                tx.lock()
                    .unwrap()
                    .send(rtx)
                    .map_err(|_| std::io::Error::other("dialer thread gone"))?;
                let fd = rrx
                    .await
                    .map_err(|_| std::io::Error::other("dialer thread gone"))??;
                use std::os::fd::IntoRawFd;
                unsafe { tokio::net::TcpSocket::from_raw_fd(fd.into_raw_fd()) }
            }
        };
        let _ = socket.set_nodelay(true);
        match tokio::time::timeout(self.connect_timeout, socket.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        }
    }
}
