//! One test run, Jepsen's order: set up the network and the cluster, run the
//! workloads with the nemesis for the time limit, heal everything and wait for
//! recovery, final reads and drain, check, report, tear down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::checkers::{linearizable, queue as qcheck, status as scheck};
use crate::cleanup;
use crate::cluster::{Db, DbOpts, CATCH_ALL, TARGET};
use crate::disk::DiskOpts;
use crate::history::{Kind, Recorder, NEMESIS};
use crate::nemesis::{self, Fault, Nemesis};
use crate::net::{self, Net};
use crate::report::{Results, Verdict};
use crate::workloads::queue::{Queue, QueueOpts};
use crate::workloads::register::{Register, RegisterOpts};
use crate::workloads::Ctx;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Register,
    /// Deliveries, workers and status reads.
    Queue,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Queue => "queue",
        }
    }
    pub fn parse_list(s: &str) -> Result<Vec<Workload>> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let w = match p {
                "register" => vec![Workload::Register],
                "queue" | "status" => vec![Workload::Queue],
                "all" => vec![Workload::Register, Workload::Queue],
                other => bail!("unknown workload {other:?}; use register, queue (includes status reads) or all"),
            };
            for x in w {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
        }
        if out.is_empty() {
            bail!("no workload given");
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// Namespaces if possible, else loopback with a loud warning.
    Auto,
    /// Loopback only (crash and pause nemeses).
    Loopback,
    /// Namespaces or fail.
    Require,
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub workloads: Vec<Workload>,
    pub nemesis: Vec<Fault>,
    pub time_limit: Duration,
    /// Operations per second per workload.
    pub rate: f64,
    pub seed: u64,
    pub nodes: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub planted: Option<String>,
    pub bin: PathBuf,
    pub store: PathBuf,
    pub net: NetMode,
    pub interval: Duration,
    pub hold: Duration,
    pub zombie_rate: f64,
    pub crash_rate: f64,
    pub fail_rate: f64,
    pub status_reads: f64,
    pub lease_timeout_ms: u64,
    pub recovery_timeout: Duration,
    /// The drain gives up when the backlog has not shrunk for this long.
    pub drain_timeout: Duration,
    pub keep_data: bool,
    pub ops_per_key: usize,
    /// Size of each node's tmpfs (`disk-full`), MiB.
    pub disk_mib: u64,
    /// `snapshot_every` of the nodes; with `kill-snapshot` or `corrupt` 200 when not given.
    pub snapshot_every: Option<u64>,
    /// The `aof-faultfs` binary (`lose-unsynced`); built with cargo when `None`.
    pub faultfs_bin: Option<PathBuf>,
}

impl Opts {
    pub fn new(bin: PathBuf) -> Self {
        Opts {
            workloads: vec![Workload::Register, Workload::Queue],
            nemesis: Vec::new(),
            time_limit: Duration::from_secs(30),
            rate: 40.0,
            seed: 1,
            nodes: 3,
            concurrency: 6,
            workers: 3,
            planted: None,
            bin,
            store: default_store(),
            net: NetMode::Auto,
            interval: Duration::from_secs(3),
            hold: Duration::from_secs(4),
            zombie_rate: 0.03,
            crash_rate: 0.02,
            fail_rate: 0.05,
            status_reads: 0.5,
            lease_timeout_ms: 2000,
            recovery_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(60),
            keep_data: false,
            ops_per_key: 150,
            disk_mib: 256,
            snapshot_every: None,
            faultfs_bin: None,
        }
    }
}

/// `jepsen-tests/store`.
pub fn default_store() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("store")
}

/// UTC `YYYYMMDDTHHMMSS` of now.
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What a run produced.
pub struct Outcome {
    pub dir: PathBuf,
    pub results: Results,
}

fn say(msg: &str) {
    eprintln!("jepsen: {msg}");
}

const LOUD: &str =
    "################################################################################";

/// Run one test.
pub async fn run(mut opts: Opts) -> Result<Outcome> {
    let suffix: u16 = rand::random();
    let prefix = format!("jt-{}-{suffix:04x}", std::process::id());
    let _guard = cleanup::Guard(prefix.clone());
    let dir = opts.store.join(format!("{}-{}", timestamp(), &prefix[3..]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    say(&format!("run {prefix}, store {}", dir.display()));

    // --- network ---
    let net: Option<Arc<Net>> = match opts.net {
        NetMode::Loopback => None,
        mode => match net::namespaces_available() {
            Ok(()) => {
                net::sweep_stale();
                Some(Net::create(&prefix, opts.nodes)?)
            }
            Err(why) if mode == NetMode::Require => {
                bail!("network namespaces are required but unavailable: {why}")
            }
            Err(why) => {
                eprintln!("{LOUD}\n## WARNING: network namespaces unavailable ({why}).\n## Falling back to loopback processes: ONLY crash and pause nemeses run;\n## partition and slow-link faults are SKIPPED.\n{LOUD}");
                None
            }
        },
    };
    let mut problems = Vec::new();
    if net.is_none() {
        let skipped: Vec<&str> = opts
            .nemesis
            .iter()
            .filter(|f| f.needs_network())
            .map(|f| f.name())
            .collect();
        if !skipped.is_empty() {
            eprintln!(
                "{LOUD}\n## WARNING: skipping nemeses that need network namespaces: {}\n{LOUD}",
                skipped.join(", ")
            );
            problems.push(format!("skipped (no namespaces): {}", skipped.join(", ")));
        }
        opts.nemesis.retain(|f| !f.needs_network());
    }
    // --- disks ---
    let wants = |p: fn(Fault) -> bool| opts.nemesis.iter().any(|&f| p(f));
    let (want_tmpfs, want_faultfs) = (wants(Fault::needs_tmpfs), wants(Fault::needs_faultfs));
    let mut disk = DiskOpts::default();
    if want_tmpfs || want_faultfs {
        match crate::disk::mounts_available(want_faultfs) {
            Ok(()) => {
                disk.tmpfs_mib = want_tmpfs.then_some(opts.disk_mib);
                if want_faultfs {
                    disk.faultfs = Some(match &opts.faultfs_bin {
                        Some(p) => p.clone(),
                        None => build_faultfs()?,
                    });
                }
            }
            Err(why) => {
                let skipped: Vec<&str> = opts
                    .nemesis
                    .iter()
                    .filter(|f| f.needs_tmpfs() || f.needs_faultfs())
                    .map(|f| f.name())
                    .collect();
                eprintln!(
                    "{LOUD}\n## WARNING: {why}: skipping the disk nemeses {}\n{LOUD}",
                    skipped.join(", ")
                );
                problems.push(format!("skipped ({why}): {}", skipped.join(", ")));
                opts.nemesis
                    .retain(|f| !f.needs_tmpfs() && !f.needs_faultfs());
            }
        }
    }
    let snapshots = opts.snapshot_every.or_else(|| {
        opts.nemesis
            .iter()
            .any(|f| matches!(f, Fault::KillSnapshot | Fault::Corrupt))
            .then_some(200)
    });

    let network = match &net {
        Some(n) => format!("namespaces, partitions by {:?}", n.backend),
        None => "loopback (no partitions)".to_string(),
    };

    // --- cluster ---
    let bin = std::fs::canonicalize(&opts.bin)
        .with_context(|| format!("aofctl binary {}", opts.bin.display()))?;
    let mut dbo = DbOpts::new(opts.nodes, bin);
    dbo.planted = opts.planted.clone();
    dbo.lease_timeout_ms = opts.lease_timeout_ms;
    dbo.disk = disk;
    dbo.snapshot_every = snapshots;
    dbo.logs_to_keep = snapshots.map(|n| n / 4);
    let db = Db::new(&prefix, dbo, &dir, net.clone())?;
    db.start_all()?;
    if let Err(e) = db.wait_ready(Duration::from_secs(60)).await {
        dump_logs(&db);
        return Err(e.context("starting the cluster"));
    }
    say("cluster ready");
    let has = |w: Workload| opts.workloads.contains(&w);
    if has(Workload::Queue) {
        let doc = format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {{}}\n  default_agent: {TARGET}\n");
        db.put_trigger(CATCH_ALL, &doc, Duration::from_secs(30))
            .await?;
    }

    let rec = Recorder::new(Some(&dir.join("history.jsonl")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Ctx {
        db: db.clone(),
        rec: rec.clone(),
        run: prefix.clone(),
        seed: opts.seed,
        stop: stop.clone(),
        timeout: Duration::from_secs(5),
    };

    // --- schedule ---
    let steps = nemesis::schedule(
        &opts.nemesis,
        opts.seed,
        opts.time_limit,
        opts.interval,
        opts.hold,
    );
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&steps)?,
    )?;
    let nem = Arc::new(Nemesis::new(db.clone(), net.clone(), rec.clone()));

    // --- workloads + nemesis ---
    let start = Instant::now();
    let register = has(Workload::Register).then(|| {
        Register::new(
            ctx.clone(),
            RegisterOpts {
                concurrency: opts.concurrency,
                rate: opts.rate,
                active_keys: (opts.concurrency / 2).max(1),
                ops_per_key: opts.ops_per_key,
            },
        )
    });
    let queue = has(Workload::Queue).then(|| {
        Queue::new(
            ctx.clone(),
            QueueOpts {
                producers: opts.concurrency.div_ceil(2).max(1),
                rate: opts.rate,
                workers: opts.workers,
                status_reads: opts.status_reads,
                zombie_rate: opts.zombie_rate,
                crash_rate: opts.crash_rate,
                fail_rate: opts.fail_rate,
                hold_max_ms: opts.lease_timeout_ms / 2,
                max_in_flight: 4,
                lease_timeout_ms: opts.lease_timeout_ms,
            },
        )
    });
    let mut clients = Vec::new();
    if let Some(r) = &register {
        clients.push(tokio::spawn(r.clone().run()));
    }
    let mut workers = None;
    if let Some(q) = &queue {
        clients.push(tokio::spawn(q.clone().run_producers()));
        workers = Some(tokio::spawn(q.clone().run_workers()));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nem_task = {
        let nem = nem.clone();
        let steps = steps.clone();
        tokio::spawn(async move { nem.run(&steps, start, stop_rx).await })
    };
    say(&format!(
        "running for {:?} with nemeses [{}]",
        opts.time_limit,
        opts.nemesis
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(",")
    ));
    tokio::time::sleep(opts.time_limit).await;
    stop.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for c in clients {
        let abort = c.abort_handle();
        if tokio::time::timeout(ctx.timeout + Duration::from_secs(5), c)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let nemesis_events = match tokio::time::timeout(Duration::from_secs(60), nem_task).await {
        Ok(Ok(n)) => n,
        _ => {
            problems.push("the nemesis did not stop within 60 s".into());
            0
        }
    };
    say("fault phase over; healing");

    // --- heal and recover ---
    let heal_start = Instant::now();
    if let Err(e) = nem.heal_all(opts.recovery_timeout).await {
        problems.push(format!("heal: {e:#}"));
    }
    let left = opts
        .recovery_timeout
        .saturating_sub(heal_start.elapsed())
        .max(Duration::from_secs(5));
    let (recovered, recovery) = match db.wait_ready(left).await {
        Ok(_) => (
            true,
            format!(
                "all nodes ready {:.1}s after healing",
                heal_start.elapsed().as_secs_f64()
            ),
        ),
        Err(e) => {
            problems.push(format!("cluster did not recover: {e:#}"));
            (
                false,
                format!("NOT recovered within {:?}", opts.recovery_timeout),
            )
        }
    };
    if recovered {
        if let Some(d) = db.membership_drift().await {
            problems.push(format!("membership after healing: {d}"));
        }
    }
    say(&recovery);

    // --- final reads and drain ---
    if let Some(r) = &register {
        r.final_reads(crate::workloads::FINAL_READ_PROCESSES).await;
    }
    let mut drain = None;
    let mut fin = None;
    if let Some(q) = &queue {
        drain = Some(match q.drain(opts.drain_timeout).await {
            Ok(d) => format!(
                "queue empty {:.1}s after the drain started",
                d.as_secs_f64()
            ),
            Err(e) => {
                problems.push(e.clone());
                e
            }
        });
        q.stop_workers().await;
        if let Some(w) = workers.take() {
            w.abort();
        }
        let f = crate::workloads::queue::final_state(&ctx, Duration::from_secs(60)).await;
        std::fs::write(dir.join("final.json"), serde_json::to_string(&f)?)?;
        fin = Some(f);
    }
    rec.flush();

    // --- check ---
    let ops = rec.ops();
    let client_ops: Vec<_> = ops.iter().filter(|o| o.process != NEMESIS).collect();
    let count = |k: Kind| client_ops.iter().filter(|o| o.kind == k).count();
    let mut results = Results {
        run: prefix.clone(),
        dir: dir.display().to_string(),
        seed: opts.seed,
        workloads: opts
            .workloads
            .iter()
            .map(|w| w.name().to_string())
            .collect(),
        nemeses: opts.nemesis.iter().map(|f| f.name().to_string()).collect(),
        nodes: opts.nodes,
        network,
        planted_bug: opts.planted.clone(),
        time_limit_s: opts.time_limit.as_secs(),
        operations: count(Kind::Invoke),
        ok: count(Kind::Ok),
        fail: count(Kind::Fail),
        info: count(Kind::Info)
            + count(Kind::Invoke)
                .saturating_sub(count(Kind::Ok) + count(Kind::Fail) + count(Kind::Info)),
        nemesis_events,
        recovered,
        recovery,
        drain,
        register: register
            .as_ref()
            .map(|_| linearizable::check(&ops, linearizable::Limits::default())),
        queue: fin.as_ref().map(|f| qcheck::check(&ops, f)),
        status: queue.as_ref().map(|_| scheck::check(&ops)),
        problems,
        verdict: Verdict::Unknown,
        recovery_ms: crate::report::recovery_stats(&ops),
    };
    results.decide();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let table = results.table();
    let anomalies = results.anomalies(10);
    std::fs::write(dir.join("results.txt"), format!("{table}\n{anomalies}"))?;
    println!("{table}");
    if !anomalies.is_empty() {
        println!("{anomalies}");
    }

    // --- tear down ---
    db.teardown_disks(opts.keep_data);
    if let Some(n) = &net {
        n.destroy();
    }
    if !opts.keep_data {
        for s in 0..db.len() {
            let _ = std::fs::remove_dir_all(dir.join(db.name(s)).join("backing"));
            let _ = std::fs::remove_dir(dir.join(db.name(s)).join("mnt"));
            let _ = std::fs::remove_dir(dir.join(db.name(s)).join("tmpfs"));
        }
    }
    Ok(Outcome { dir, results })
}

/// Re-check a stored run (`history.jsonl`, `final.json`) without running anything:
/// Jepsen's `analyze`. Writes `results-reanalyzed.json`.
pub fn analyze(dir: &Path) -> Result<Results> {
    let ops = crate::history::read_jsonl(&dir.join("history.jsonl"))?;
    let has = |f: &[&str]| ops.iter().any(|o| f.contains(&o.f.as_str()));
    let fin: Option<qcheck::FinalState> = match std::fs::read_to_string(dir.join("final.json")) {
        Ok(t) => Some(serde_json::from_str(&t)?),
        Err(_) => None,
    };
    let old: serde_json::Value = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let client_ops: Vec<_> = ops.iter().filter(|o| o.process != NEMESIS).collect();
    let count = |k: Kind| client_ops.iter().filter(|o| o.kind == k).count();
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut results = Results {
        run: old["run"].as_str().unwrap_or("").to_string(),
        dir: dir.display().to_string(),
        seed: old["seed"].as_u64().unwrap_or(0),
        workloads: strs(&old["workloads"]),
        nemeses: strs(&old["nemeses"]),
        nodes: old["nodes"].as_u64().unwrap_or(0) as usize,
        network: old["network"].as_str().unwrap_or("").to_string(),
        planted_bug: old["planted_bug"].as_str().map(str::to_string),
        time_limit_s: old["time_limit_s"].as_u64().unwrap_or(0),
        operations: count(Kind::Invoke),
        ok: count(Kind::Ok),
        fail: count(Kind::Fail),
        info: count(Kind::Info),
        nemesis_events: ops
            .iter()
            .filter(|o| o.process == NEMESIS && o.f.starts_with("start-"))
            .count(),
        recovered: old["recovered"].as_bool().unwrap_or(true),
        recovery: old["recovery"].as_str().unwrap_or("").to_string(),
        drain: old["drain"].as_str().map(str::to_string),
        register: has(&["read", "write", "cas"])
            .then(|| linearizable::check(&ops, linearizable::Limits::default())),
        queue: fin.as_ref().map(|f| qcheck::check(&ops, f)),
        status: has(&["post"]).then(|| scheck::check(&ops)),
        problems: strs(&old["problems"]),
        verdict: Verdict::Unknown,
        recovery_ms: crate::report::recovery_stats(&ops),
    };
    results.decide();
    std::fs::write(
        dir.join("results-reanalyzed.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    Ok(results)
}

fn dump_logs(db: &Db) {
    for p in db.log_paths() {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!("---- tail of {} ----", p.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Build `aofctl` with cargo (honouring `$CARGO` and `$CARGO_TARGET_DIR`) and
/// return the binary.
///
/// With `planted`, the build enables `--features planted-bugs` in the same
/// target directory — only `aof-node`, `aof-client` and `aofctl` are compiled
/// again, the dependencies are shared — copies the binary to
/// `target/jepsen/aofctl-planted`, and builds the plain `aofctl` again (a cached
/// no-op) so `target/*/aofctl` stays the normal binary for everyone else.
pub fn build_aofctl(planted: bool, release: bool) -> Result<PathBuf> {
    let (root, target) = workspace();
    let profile = if release { "release" } else { "debug" };
    let build = |features: bool| -> Result<()> {
        let mut cmd = cargo_build(&root, "aofctl");
        if features {
            cmd.args(["--features", "planted-bugs"]);
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build -p aofctl")?;
        if !status.success() {
            bail!(
                "cargo build -p aofctl{} failed ({status})",
                if features {
                    " --features planted-bugs"
                } else {
                    ""
                }
            );
        }
        Ok(())
    };
    let built = target.join(profile).join("aofctl");
    if !planted {
        build(false)?;
        return Ok(built);
    }
    build(true)?;
    let dest_dir = target.join("jepsen");
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join(format!("aofctl-planted-{profile}"));
    let tmp = dest_dir.join(format!(".aofctl-planted-{}", std::process::id()));
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &dest)?;
    build(false)?;
    Ok(dest)
}

/// The workspace root and the target dir (`$CARGO_TARGET_DIR` or `target/`).
fn workspace() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    (root, target)
}

/// `cargo build -p PACKAGE` in the workspace (`$CARGO`), without the variables
/// cargo sets for the crate running it.
fn cargo_build(root: &Path, package: &str) -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root).args(["build", "-p", package]);
    // Inside `cargo test`, cargo has set the test crate's package variables;
    // build scripts that watch them (ring's `rerun-if-env-changed`) would
    // then rebuild, and rebuild again in every normal build. Drop them.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let set_by_cargo_for_us = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || k.starts_with("CARGO_CFG_")
            || matches!(
                k.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_by_cargo_for_us {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Build `aof-faultfs` (debug) with cargo and return the binary;
/// `$AOF_FAULTFS_BIN` when set.
pub fn build_faultfs() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AOF_FAULTFS_BIN") {
        return Ok(p.into());
    }
    let (root, target) = workspace();
    let status = cargo_build(&root, "aof-faultfs")
        .status()
        .context("running cargo build -p aof-faultfs")?;
    if !status.success() {
        bail!("cargo build -p aof-faultfs failed ({status})");
    }
    Ok(target.join("debug").join("aof-faultfs"))
}
