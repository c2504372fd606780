//! `aof-bench`: throughput and latency of aof-cluster (three real `aofctl serve`
//! nodes, and one) against a three-node NATS JetStream cluster (R3 work-queue
//! stream) on the same machine, with the same payloads and rates.
//!
//! ```sh
//! cargo build --release -p aofctl
//! cargo run --release -p aof-bench                 # full run, prints the tables
//! cargo run --release -p aof-bench -- --append-doc # ... and appends them to docs/BENCHMARKS.md
//! cargo run -p aof-bench -- --smoke                # a few seconds; what CI runs
//! cargo run --release -p aof-bench -- --retained 100000 --concurrency 64  # what a node costs at that size
//! ```
//!
//! Per system: closed loop at each `--concurrency` (max sustained throughput), then an
//! open loop at `--rates` fractions of aof-cluster ×3's maximum (the same absolute
//! rates for every system), latency from the intended send time. See
//! docs/BENCHMARKS.md for the method.

mod cluster;
mod load;
mod nats;
mod report;
mod retained;
mod sys;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::load::{Lat, Payloads, Phase, Phases, Sender};
use crate::report::{Load, Row, System};

/// Webhook secret the nodes are started with and the payloads are signed with.
const SECRET: &str = "aof-bench-secret";

#[derive(Parser, Debug, Clone)]
#[command(name = "aof-bench", about = "Throughput/latency of aof-cluster against NATS JetStream R3 on this machine")]
struct Args {
    /// A few seconds in total at small rates, three-node aof-cluster (JetStream too
    /// if nats-server is installed): the CI check that the benchmark still runs.
    #[arg(long)]
    smoke: bool,
    /// Append the results (with date, commit and machine) to --doc.
    #[arg(long)]
    append_doc: bool,
    /// The results document.
    #[arg(long, default_value_os_t = workspace_root().join("docs/BENCHMARKS.md"))]
    doc: PathBuf,
    /// The `aofctl` binary (default: target/<profile>/aofctl of this workspace, built
    /// with `cargo build [--release] -p aofctl` if missing).
    #[arg(long, env = "AOFCTL_BIN")]
    aofctl: Option<PathBuf>,
    /// The `nats-server` binary (default: on PATH).
    #[arg(long, env = "NATS_SERVER_BIN")]
    nats_server: Option<PathBuf>,
    /// Systems to run, in order: aof3, nats, aof1 (aof3 sets the open-loop rates).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["aof3".to_string(), "nats".to_string(), "aof1".to_string()])]
    systems: Vec<String>,
    /// Closed-loop sender counts tried to find the maximum.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16usize, 64, 256])]
    concurrency: Vec<usize>,
    /// Open-loop rates, as fractions of aof-cluster ×3's maximum.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.1f64, 0.5, 0.9])]
    rates: Vec<f64>,
    /// Fixed open-loop reference rate (events/s) instead of aof-cluster ×3's measured maximum.
    #[arg(long)]
    reference_rate: Option<f64>,
    /// Measured seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds at the start of each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait after a phase for its deliveries to complete.
    #[arg(long, default_value_t = 15.0)]
    drain: f64,
    /// Workers (gRPC Claim streams / JetStream pull subscriptions), spread over the nodes.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// Leases (unacked messages) each worker may hold.
    #[arg(long, default_value_t = 64)]
    max_in_flight: u32,
    /// RUST_LOG of the nodes.
    #[arg(long, default_value = "warn")]
    node_log: String,
    /// spec.cluster.raft.snapshot_every of the nodes (default: the product default).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// spec.queue.retention_secs of the nodes (default: the product default, 7 days).
    #[arg(long)]
    retention_secs: Option<u64>,
    /// spec.cluster.storage.cache_capacity_mb of the nodes (sled's page cache).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// Webhook fixtures (default: AOF_FIXTURES_DIR, or shared/fixtures/github-webhooks beside the repository).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Where clusters keep their data (default: a new directory under the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work dir (data dirs, configs, node logs) afterwards.
    #[arg(long)]
    keep: bool,
    /// A note to print under the tables (repeatable), e.g. which build was measured.
    #[arg(long)]
    note: Vec<String>,
    /// Instead of the throughput phases: load N events into a three-node aof-cluster
    /// (closed loop at the first --concurrency value, workers completing the jobs),
    /// then report per node RSS, data dir, bytes written per event, a forced snapshot's
    /// size and build time, and a follower's restart to ready (issue #15).
    #[arg(long, value_name = "N")]
    retained: Option<u64>,
    /// --retained: longest time for sending the N events, and again for their jobs to
    /// complete, seconds.
    #[arg(long, default_value_t = 3600.0)]
    retained_wait: f64,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is inside the workspace").to_path_buf()
}

/// The aofctl to run: --aofctl, else target/<this profile>/aofctl (built if missing).
fn find_aofctl(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--aofctl {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let release = !cfg!(debug_assertions);
    let profile = if release { "release" } else { "debug" };
    // Beside this binary (target/<profile>/aof-bench), else the workspace target dir.
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("aofctl")));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let in_target = target.join(profile).join("aofctl");
    for c in beside.iter().chain([&in_target]) {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("aof-bench: {} not found; running cargo build{} -p aofctl", in_target.display(), if release { " --release" } else { "" });
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "-p", "aofctl"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().context("running cargo build -p aofctl")?;
    if !st.success() || !in_target.is_file() {
        bail!("could not build aofctl ({st}); build it with `cargo build{} -p aofctl` or pass --aofctl", if release { " --release" } else { "" });
    }
    Ok(in_target)
}

/// Everything a phase needs.
struct Bench {
    args: Args,
    payloads: Arc<Payloads>,
    phases: Arc<Phases>,
    run_id: String,
    next_phase: u32,
    work_dir: PathBuf,
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// The system under load during a phase: how to reach and observe it.
enum Target<'a> {
    Aof(&'a cluster::AofCluster),
    Nats(&'a nats::NatsCluster),
}

impl Target<'_> {
    fn pids(&self) -> Vec<u32> {
        match self {
            Target::Aof(c) => c.pids(),
            Target::Nats(c) => c.pids(),
        }
    }
    fn data_dirs(&self) -> Vec<PathBuf> {
        match self {
            Target::Aof(c) => c.data_dirs(),
            Target::Nats(c) => c.data_dirs(),
        }
    }
}

const RAFT_METRICS: [&str; 3] = ["aof_log_flushes_total", "aof_log_entries_flushed_total", "aof_raft_commit_index"];

impl Bench {
    fn secs(x: f64) -> Duration {
        Duration::from_secs_f64(x.max(0.0))
    }

    async fn phase(&mut self, system: System, target: &Target<'_>, sender: &Sender, load: Load) -> anyhow::Result<()> {
        let (warmup, duration) = (Self::secs(self.args.warmup), Self::secs(self.args.duration));
        let total = (warmup + duration).as_secs_f64();
        let cap = match load {
            Load::Closed { .. } => (total * 40_000.0).clamp(10_000.0, 4_000_000.0) as u64,
            Load::Open { rate, .. } => (rate * total).ceil() as u64 + 16,
        };
        let phase = Phase::new(format!("{}-{}{}-", self.run_id, system.short(), self.next_phase), cap);
        self.next_phase += 1;
        self.phases.add(phase.clone());

        let pids = target.pids();
        let dirs = target.data_dirs();
        let disk0: u64 = dirs.iter().map(|d| sys::disk_bytes(d)).sum();
        let written0: Vec<Option<u64>> = pids.iter().map(|p| sys::write_bytes(*p)).collect();
        let m0 = match target {
            Target::Aof(c) => Some((c.metrics(&RAFT_METRICS).await, c.leader_index().await)),
            Target::Nats(_) => None,
        };
        let mut all_pids = pids.clone();
        all_pids.push(std::process::id());
        let probe = sys::CpuProbe::start(&all_pids);
        eprintln!("aof-bench: {} {} ...", system.label(), load.label());
        let window = match load {
            Load::Closed { concurrency } => load::closed_loop(sender.clone(), phase.clone(), concurrency, warmup, duration).await,
            Load::Open { rate, .. } => load::open_loop(sender.clone(), phase.clone(), rate, warmup, duration).await,
        };
        let (mut cpu, machine_cpu) = probe.finish();
        let bench_cpu = cpu.pop().unwrap_or(f64::NAN);
        // Whatever else ran on the machine meanwhile (other builds, tests): it skews the numbers.
        let other_cpu = (machine_cpu - cpu.iter().filter(|c| !c.is_nan()).sum::<f64>() - bench_cpu).max(0.0);
        let not_done = load::drain(&phase, Self::secs(self.args.drain)).await;
        let disk1: u64 = dirs.iter().map(|d| sys::disk_bytes(d)).sum();
        let accepted_total = phase.accepted.load(Ordering::Relaxed);
        let disk_kib_per_1k = if accepted_total > 0 {
            (disk1 as f64 - disk0 as f64) / dirs.len() as f64 / 1024.0 / accepted_total as f64 * 1000.0
        } else {
            f64::NAN
        };
        // Written by each node from the start of the phase to the end of its drain,
        // per accepted event (unreadable: NaN).
        let write_kib_per_1k = pids
            .iter()
            .zip(&written0)
            .map(|(p, w0)| match (w0, sys::write_bytes(*p)) {
                (Some(a), Some(b)) if accepted_total > 0 => (b.saturating_sub(*a)) as f64 / 1024.0 / accepted_total as f64 * 1000.0,
                _ => f64::NAN,
            })
            .collect();
        let rss_mib = pids.iter().map(|p| sys::rss_bytes(*p).map_or(f64::NAN, |(r, _)| r as f64 / 1048576.0)).collect();
        let (mut leader_entries_per_flush, mut entries_per_event) = (None, None);
        if let (Target::Aof(c), Some((before, leader))) = (target, m0) {
            let after = c.metrics(&RAFT_METRICS).await;
            let li = leader.unwrap_or(0).min(after.len().saturating_sub(1));
            let d = |n: usize, m: usize| after[n][m] - before[n][m];
            let per_flush = |n: usize| if d(n, 0) > 0.0 { d(n, 1) / d(n, 0) } else { f64::NAN };
            let followers: Vec<f64> = (0..after.len()).filter(|n| *n != li).map(per_flush).filter(|x| !x.is_nan()).collect();
            let fol = if followers.is_empty() { f64::NAN } else { followers.iter().sum::<f64>() / followers.len() as f64 };
            leader_entries_per_flush = Some((per_flush(li), fol));
            if accepted_total > 0 {
                entries_per_event = Some(d(li, 2) / accepted_total as f64);
            }
        }
        let row = Row {
            system,
            load,
            window,
            http: Lat::of(&phase.http.lock().unwrap()),
            claim: Lat::of(&phase.claim.lock().unwrap()),
            complete: Lat::of(&phase.complete.lock().unwrap()),
            rejected: phase.rejected.load(Ordering::Relaxed),
            errors: phase.errors.load(Ordering::Relaxed),
            not_done,
            cpu,
            rss_mib,
            bench_cpu,
            other_cpu,
            disk_kib_per_1k,
            write_kib_per_1k,
            leader_entries_per_flush,
            entries_per_event,
            error_samples: phase.error_samples(),
        };
        eprintln!(
            "aof-bench:   accepted {:.0}/s, completed {:.0}/s, 202 p50 {:.2} ms p99 {:.2} ms, claim p99 {:.2} ms, errors {}, not done {}, other CPU {:.0}%{}",
            row.window.accepted_rate(),
            row.window.completed_rate(),
            row.http.p50,
            row.http.p99,
            row.claim.p99,
            row.rejected + row.errors,
            row.not_done,
            row.other_cpu,
            row.error_samples.first().map(|e| format!(" (e.g. {e})")).unwrap_or_default()
        );
        self.rows.push(row);
        Ok(())
    }

    /// Closed loops, then open loops at `reference × fractions` (or, without a
    /// reference, at fractions of this system's own maximum). Returns the maximum.
    async fn phases_for(&mut self, system: System, target: &Target<'_>, sender: &Sender, reference: Option<f64>) -> anyhow::Result<f64> {
        for c in self.args.concurrency.clone() {
            self.phase(system, target, sender, Load::Closed { concurrency: c }).await?;
        }
        let max = report::best_closed(&self.rows, system).map_or(0.0, Row::sustained);
        let reference = reference.unwrap_or(max);
        if reference < 1.0 {
            self.notes.push(format!("{}: no sustained throughput measured; open-loop phases skipped", system.label()));
            return Ok(max);
        }
        for fr in self.args.rates.clone() {
            let rate = (reference * fr).max(1.0);
            self.phase(system, target, sender, Load::Open { fraction: fr, rate }).await?;
        }
        Ok(max)
    }

    async fn run_aof(&mut self, system: System, aofctl: &Path, reference: Option<f64>) -> anyhow::Result<f64> {
        let n = if system == System::Aof3 { 3 } else { 1 };
        let tuning = cluster::NodeTuning {
            log_level: self.args.node_log.clone(),
            snapshot_every: self.args.snapshot_every,
            retention_secs: self.args.retention_secs,
            cache_mb: self.args.cache_mb,
        };
        let dir = self.work_dir.join(system.short());
        eprintln!("aof-bench: starting {} ({})", system.label(), dir.display());
        let mut c = cluster::AofCluster::start(aofctl, n, &dir, SECRET, &tuning).await?;
        let workers = workers::start_aof(&c.grpc_urls(), &c.worker_token, self.args.workers, self.args.max_in_flight, self.phases.clone());
        let sender = Sender::Http(Arc::new(load::HttpSender {
            client: load::http_client(),
            uris: c.http_urls().iter().map(|u| format!("{u}/webhook/github").parse().expect("valid uri")).collect(),
            payloads: self.payloads.clone(),
        }));
        let res = self.phases_for(system, &Target::Aof(&c), &sender, reference).await;
        let stats = workers.stats.clone();
        workers.stop().await;
        let errs = stats.errors.load(Ordering::Relaxed);
        if errs > 0 {
            self.notes.push(format!("{}: workers saw {errs} stream breaks or failed completions", system.label()));
        }
        c.stop();
        res
    }

    async fn run_nats(&mut self, bin: &Path, reference: Option<f64>) -> anyhow::Result<f64> {
        let dir = self.work_dir.join("nats");
        eprintln!("aof-bench: starting JetStream R3 ({})", dir.display());
        let max_ack_pending = (self.args.workers as i64 * i64::from(self.args.max_in_flight)).max(1);
        let mut c = nats::NatsCluster::start(bin, &dir, max_ack_pending).await?;
        self.notes.push(format!(
            "JetStream: {}, work-queue stream R3 on file storage, publish with ack and Nats-Msg-Id dedup, durable pull consumer with explicit confirmed acks (AckSync); \
             nats-server acknowledges after a quorum has the message in memory and fsyncs on a timer (2 min default; this version has no sync_interval: always), \
             aof-cluster fsyncs on a quorum before every 202 and every Complete",
            c.version
        ));
        let worker_clients = {
            let mut v = Vec::new();
            for i in 0..self.args.workers.max(1) {
                v.push(nats::connect(&c.urls()[i % 3]).await?);
            }
            v
        };
        let workers = workers::start_nats(&worker_clients, nats::STREAM, nats::CONSUMER, self.args.workers, self.args.max_in_flight, self.phases.clone());
        let pub_clients = c.connect_all().await?;
        let sender = Sender::Nats(Arc::new(load::NatsSender {
            contexts: pub_clients.into_iter().map(async_nats::jetstream::new).collect(),
            payloads: self.payloads.clone(),
        }));
        let res = self.phases_for(System::Nats, &Target::Nats(&c), &sender, reference).await;
        workers.stop().await;
        c.stop();
        res
    }
}

fn settings(args: &Args, payloads: &Payloads) -> String {
    format!(
        "{}; phases: {} s warm-up + {} s measured, closed loop C = {:?}, open loop at {:?} of aof-cluster ×3's max; {} workers × max_in_flight {}; \
         nodes: fsync on, RUST_LOG={}, snapshot_every {}, retention {}",
        payloads.describe(),
        args.warmup,
        args.duration,
        args.concurrency,
        args.rates,
        args.workers,
        args.max_in_flight,
        args.node_log,
        args.snapshot_every.map_or("default (10000)".into(), |s| s.to_string()),
        args.retention_secs.map_or("default (7 d)".into(), |s| format!("{s} s")),
    )
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.concurrency = vec![4];
        args.warmup = 0.5;
        args.duration = 1.5;
        args.drain = 10.0;
        args.workers = 3;
        args.max_in_flight = 16;
        if args.reference_rate.is_none() {
            args.reference_rate = Some(100.0);
        }
        args.systems.retain(|s| s == "aof3" || s == "nats");
    }
    let started = Instant::now();
    let fixtures = load::fixtures_dir(args.fixtures.as_deref())?;
    let payloads = Arc::new(Payloads::load(&fixtures, SECRET.as_bytes())?);
    let aofctl = if args.systems.iter().any(|s| s.starts_with("aof")) { Some(find_aofctl(args.aofctl.as_deref())?) } else { None };
    let nats_bin = nats::find_server(args.nats_server.as_deref());
    let run_id = format!("{:x}", (std::process::id() as u64) << 20 ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64 & 0xfffff));
    let (work_dir, _tmp_guard) = match &args.work_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("aof-bench-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let machine = sys::Machine::detect();
    let load_at_start = sys::loadavg();
    eprintln!("aof-bench: {}; {}", machine.describe(), payloads.describe());
    let mut b = Bench {
        args: args.clone(),
        payloads: payloads.clone(),
        phases: Arc::new(Phases::default()),
        run_id,
        next_phase: 0,
        work_dir: work_dir.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    b.notes.extend(args.note.iter().cloned());
    if let Some(a) = &aofctl {
        b.notes.push(format!("aofctl: {}", a.display()));
    }
    if let Some(n) = args.retained {
        let aofctl = match &aofctl {
            Some(a) => a.clone(),
            None => find_aofctl(args.aofctl.as_deref())?,
        };
        let r = retained::run(&args, n, &aofctl, payloads.clone(), &b.run_id, &work_dir).await?;
        b.notes.push(format!(
            "method: RSS = VmRSS (peak = VmHWM) after the jobs completed; data dir per event = its growth from the cluster's start over the accepted events \
             (wal/ = Raft log, snapshots/, reserved-space = space held for a full disk, sled = the rest); written = /proc/<pid>/io write_bytes from the cluster's start \
             over the accepted events; snapshot: one more webhook, then GET /v1/snapshot on that node (it builds a Raft snapshot at the read index), \
             build time = request until the node's snapshot_index moves (polled every 20 ms), size = its snapshots/*.snap file; restart: SIGTERM to a follower, \
             start again, time until its /ready answers 200; join: a 4th node started empty, time from its start until `aofctl cluster join` reports it a voter, and its VmHWM then"
        ));
        if n < 1_000_000 {
            b.notes.push(format!("the targets are for 1 000 000 retained events; this run holds {n}: sizes that grow with the state (RSS, snapshot, build and restart times) are lower bounds of those at 1 000 000"));
        }
        b.notes.push(format!(
            "run took {:.0} s; load average {load_at_start:.1} at the start, {:.1} at the end",
            started.elapsed().as_secs_f64(),
            sys::loadavg()
        ));
        let header = format!(
            "### {} — commit `{}` — {} — retained {n}\n\n{}; {} workers × max_in_flight {}; nodes: fsync on, RUST_LOG={}, snapshot_every {}, retention {}, sled cache {} MiB",
            sys::utc_now(),
            sys::git_commit(&workspace_root()),
            machine.describe(),
            payloads.describe(),
            args.workers,
            args.max_in_flight,
            args.node_log,
            args.snapshot_every.map_or("default (10000)".into(), |s| s.to_string()),
            args.retention_secs.map_or("default (7 d)".into(), |s| format!("{s} s")),
            args.cache_mb,
        );
        let text = retained::render(&r, &header, &b.notes);
        println!("{text}");
        println!("{}", retained::result_line(&r));
        if args.append_doc {
            report::append_doc(&args.doc, &text)?;
            eprintln!("aof-bench: appended to {}", args.doc.display());
        }
        if args.keep {
            if let Some(t) = _tmp_guard {
                eprintln!("aof-bench: kept {}", t.keep().display());
            }
        }
        return Ok(());
    }
    let mut reference = args.reference_rate;
    for s in &args.systems {
        match s.as_str() {
            "aof3" | "aof1" => {
                let system = if s == "aof3" { System::Aof3 } else { System::Aof1 };
                let max = b.run_aof(system, aofctl.as_deref().expect("found above"), reference).await?;
                if system == System::Aof3 && reference.is_none() {
                    reference = Some(max);
                }
            }
            "nats" => match &nats_bin {
                None => b.notes.push("JetStream skipped: nats-server is not installed (`apt-get install nats-server`)".into()),
                Some(bin) => {
                    if let Err(e) = b.run_nats(bin, reference).await {
                        if args.smoke {
                            b.notes.push(format!("JetStream failed in smoke mode (not fatal): {e:#}"));
                        } else {
                            return Err(e);
                        }
                    }
                }
            },
            other => bail!("unknown system {other:?} (aof3, nats, aof1)"),
        }
    }
    if let Some(r) = reference {
        b.notes.insert(0, format!("open-loop reference (100 %): {r:.0} events/s{}", if args.reference_rate.is_some() { " (fixed)" } else { " = aof-cluster ×3's max" }));
    }
    b.notes.push(format!(
        "run took {:.0} s; load average {load_at_start:.1} at the start, {:.1} at the end (\"other CPU %\" is what the rest of the machine used during each phase)",
        started.elapsed().as_secs_f64(),
        sys::loadavg()
    ));
    let header = format!(
        "### {} — commit `{}` — {}{}\n\n{}",
        sys::utc_now(),
        sys::git_commit(&workspace_root()),
        machine.describe(),
        if args.smoke { " — smoke" } else { "" },
        settings(&args, &payloads)
    );
    let text = report::render(&b.rows, &args.rates, &header, &b.notes);
    println!("{text}");
    for r in &b.rows {
        if !r.error_samples.is_empty() {
            eprintln!("aof-bench: {} {}: sample errors: {:?}", r.system.label(), r.load.label(), r.error_samples);
        }
    }
    // A summary line per system for scripts (the smoke test reads it).
    for sys in [System::Aof3, System::Nats, System::Aof1] {
        let rows: Vec<&Row> = b.rows.iter().filter(|r| r.system == sys).collect();
        if rows.is_empty() {
            continue;
        }
        let ph = |r: &&Row| r.window.accepted as f64;
        println!(
            "RESULT system={} phases={} accepted={} completed={}",
            sys.short(),
            rows.len(),
            rows.iter().map(ph).sum::<f64>(),
            rows.iter().map(|r| r.window.completed).sum::<u64>()
        );
    }
    if args.append_doc {
        report::append_doc(&args.doc, &text)?;
        eprintln!("aof-bench: appended to {}", args.doc.display());
    }
    if args.keep {
        if let Some(t) = _tmp_guard {
            let kept = t.keep();
            eprintln!("aof-bench: kept {}", kept.display());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}
