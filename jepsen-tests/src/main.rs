//! `jepsen-tests`: run one fault-injection test against a fresh aof-cluster and
//! check its history. See docs/JEPSEN.md.
//!
//! Exit code: 0 valid, 1 anomalies found, 2 undecided (search bound, incomplete
//! final read, no recovery), 3 the harness itself failed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use jepsen_tests::nemesis;
use jepsen_tests::run::{self, NetMode, Opts, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "jepsen-tests",
    about = "Jepsen-style fault injection for aof-cluster: partitions, crashes, pauses, membership changes; linearizability and queue checkers"
)]
struct Cli {
    /// Workloads: register, queue (deliveries + workers + status reads), all.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Nemeses, comma-separated: all, none, partition, kill, pause, disk,
    /// membership, slow, or single faults (partition-halves, partition-leader,
    /// partition-node, partition-ring, partition-bridge, kill-one, kill-leader,
    /// kill-minority, kill-all, pause-one, pause-leader, disk-full, lose-unsynced,
    /// lose-unsynced-all, corrupt, kill-snapshot). The disk faults need root
    /// (tmpfs, and /dev/fuse for lose-unsynced).
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Operations per second, per workload.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Seed of every random choice (schedule, picks, operations).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Client processes per workload.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Worker clients of the queue.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 3.0)]
    nemesis_interval: f64,
    /// Mean seconds a fault is held.
    #[arg(long, default_value_t = 4.0)]
    nemesis_hold: f64,
    /// Share of leases held by a "zombie" worker that outlives its lease and then
    /// completes with its old token.
    #[arg(long, default_value_t = 0.03)]
    zombie_rate: f64,
    /// Share of leases whose worker crashes mid-lease.
    #[arg(long, default_value_t = 0.02)]
    crash_rate: f64,
    /// Share of leases failed (retryable) by the worker.
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Lease timeout of the nodes' queue, ms.
    #[arg(long, default_value_t = 2000)]
    lease_timeout_ms: u64,
    /// Run nodes with this planted bug (builds aofctl with --features planted-bugs):
    /// ack-before-commit, stale-reads, skip-fencing, ack-before-fsync.
    #[arg(long)]
    planted_bug: Option<String>,
    /// The aofctl binary (default: built with cargo).
    #[arg(long, env = "AOFCTL_BIN")]
    aofctl: Option<PathBuf>,
    /// Build aofctl in release mode (when --aofctl is not given).
    #[arg(long)]
    release_nodes: bool,
    /// Store directory (default jepsen-tests/store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Never use network namespaces (crash and pause nemeses only).
    #[arg(long, conflicts_with = "require_netns")]
    no_netns: bool,
    /// Fail instead of falling back to loopback.
    #[arg(long)]
    require_netns: bool,
    /// Keep the nodes' data directories in the store.
    #[arg(long)]
    keep_data: bool,
    /// Seconds to wait for recovery after healing.
    #[arg(long, default_value_t = 60)]
    recovery_timeout: u64,
    /// Re-check a stored run directory (history.jsonl, final.json) instead of
    /// running a test.
    #[arg(long, value_name = "DIR")]
    analyze: Option<PathBuf>,
    /// Seconds without progress after which the drain gives up.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// Size of each node's tmpfs for disk-full, MiB (the node keeps 32 MiB in
    /// reserve and raises its alarm below 32 MiB free).
    #[arg(long, default_value_t = 256)]
    disk_mib: u64,
    /// The nodes' snapshot_every (default: the node's own, 200 with kill-snapshot or corrupt).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// The aof-faultfs binary for lose-unsynced (default: built with cargo).
    #[arg(long, env = "AOF_FAULTFS_BIN")]
    faultfs: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let code = match real_main(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jepsen: error: {e:#}");
            3
        }
    };
    std::process::exit(code);
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    if let Some(dir) = &cli.analyze {
        let r = run::analyze(dir)?;
        println!("{}\n{}", r.table(), r.anomalies(10));
        return Ok(r.verdict.exit_code());
    }
    let workloads = Workload::parse_list(&cli.workload)?;
    let faults = nemesis::parse_list(&cli.nemesis)?;
    if let Some(b) = &cli.planted_bug {
        if !matches!(
            b.as_str(),
            "ack-before-commit" | "stale-reads" | "skip-fencing" | "ack-before-fsync"
        ) {
            anyhow::bail!(
                "unknown planted bug {b:?}; use ack-before-commit, stale-reads, skip-fencing or ack-before-fsync"
            );
        }
    }
    let bin = match &cli.aofctl {
        Some(b) => b.clone(),
        None => run::build_aofctl(cli.planted_bug.is_some(), cli.release_nodes)?,
    };
    let seed = cli.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let mut o = Opts::new(bin);
    o.workloads = workloads;
    o.nemesis = faults;
    o.time_limit = Duration::from_secs(cli.time_limit);
    o.rate = cli.rate;
    o.seed = seed;
    o.nodes = cli.nodes.max(1);
    o.concurrency = cli.concurrency.max(1);
    o.workers = cli.workers.max(1);
    o.planted = cli.planted_bug.clone();
    if let Some(s) = cli.store {
        o.store = s;
    }
    o.net = if cli.no_netns {
        NetMode::Loopback
    } else if cli.require_netns {
        NetMode::Require
    } else {
        NetMode::Auto
    };
    o.interval = Duration::from_secs_f64(cli.nemesis_interval.max(0.1));
    o.hold = Duration::from_secs_f64(cli.nemesis_hold.max(0.1));
    o.zombie_rate = cli.zombie_rate;
    o.crash_rate = cli.crash_rate;
    o.fail_rate = cli.fail_rate;
    o.lease_timeout_ms = cli.lease_timeout_ms.max(100);
    o.keep_data = cli.keep_data;
    o.recovery_timeout = Duration::from_secs(cli.recovery_timeout);
    o.drain_timeout = Duration::from_secs(cli.drain_timeout);
    o.disk_mib = cli.disk_mib.max(128);
    o.snapshot_every = cli.snapshot_every.map(|n| n.max(1));
    o.faultfs_bin = cli.faultfs.clone();
    eprintln!("jepsen: seed {seed} (re-run the same schedule with --seed {seed})");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async move {
        jepsen_tests::cleanup::install_signal_handler();
        run::run(o).await
    })?;
    eprintln!("jepsen: results in {}", outcome.dir.display());
    Ok(outcome.results.verdict.exit_code())
}
