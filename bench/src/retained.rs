//! `--retained N`: what a node costs once it holds N events (issue #15).
//!
//! Starts the three-node aof-cluster as the throughput phases do (workers completing
//! every job), sends N signed webhooks with distinct delivery ids in a closed loop at
//! the first `--concurrency` value, waits (bounded) until all are completed, then
//! reports per node:
//!
//! - RSS (`VmRSS`, and its peak `VmHWM`) of the node process;
//! - the data dir: its growth per event, and the total split as the store lays it
//!   out (`wal/` = the Raft log, `snapshots/`, the `reserved-space` file, and
//!   everything else = sled's files);
//! - bytes written per event: `write_bytes` of `/proc/<pid>/io` from the cluster's
//!   start to the end of the wait, over the accepted events;
//! - a forced snapshot: one more webhook (so the commit index is past any snapshot a
//!   node already has), then `GET /v1/snapshot` on that node, which makes it build a
//!   Raft snapshot at the read index; the build time is from the request to the
//!   node's `snapshot_index` (`GET /v1/cluster?consistency=stale`, polled every
//!   20 ms) moving, the size is the node's `snapshots/*.snap` file;
//! - one follower stopped gracefully (SIGTERM) and started again: time from the
//!   start to its `/ready` answering 200.
//!
//! The table is printed (and appended to docs/BENCHMARKS.md with `--append-doc`)
//! beside the targets of #15, which are stated for 1 000 000 retained events.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::{AofCluster, NodeTuning};
use crate::load::{self, Lat, Outcome, Payloads, Phase, Phases, Sender};
use crate::report::f;
use crate::{sys, workers, Args};

/// How often the snapshot index is polled while a forced snapshot is built.
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for a forced snapshot (build and download of the backup file).
const SNAPSHOT_WITHIN: Duration = Duration::from_secs(600);
/// Longest wait for a gracefully stopped node to exit.
const STOP_WITHIN: Duration = Duration::from_secs(60);
/// Longest wait for a restarted node to be ready.
const READY_WITHIN: Duration = Duration::from_secs(600);
/// Longest wait for a 4th member to join and catch up.
const JOIN_WITHIN: Duration = Duration::from_secs(600);

/// Bytes of a data dir, split as the store lays it out (`node/src/store/mod.rs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct DirSizes {
    pub total: u64,
    /// `wal/`: the Raft log's segment files.
    pub wal: u64,
    /// `snapshots/`: the current snapshot's file (and any being written).
    pub snapshots: u64,
    /// `reserved-space`: space held for a full disk (a constant).
    pub reserve: u64,
    /// Everything else: sled's files (`db`, `conf`, `blobs/`, `snap.*`).
    pub sled: u64,
}

impl DirSizes {
    pub fn of(dir: &Path) -> DirSizes {
        use std::os::unix::fs::MetadataExt;
        let total = sys::disk_bytes(dir);
        let wal = sys::disk_bytes(&dir.join("wal"));
        let snapshots = sys::disk_bytes(&dir.join("snapshots"));
        let reserve = std::fs::metadata(dir.join("reserved-space")).map_or(0, |m| m.blocks() * 512);
        DirSizes {
            total,
            wal,
            snapshots,
            reserve,
            sled: total.saturating_sub(wal + snapshots + reserve),
        }
    }
}

/// What one node costs (NaN: could not be measured).
#[derive(Clone, Debug)]
pub struct NodeCost {
    pub id: u64,
    pub leader: bool,
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub dir: DirSizes,
    /// Growth of the data dir from the cluster's start, per accepted event, bytes.
    pub dir_bytes_per_event: f64,
    /// `write_bytes` from the cluster's start, per accepted event, bytes.
    pub written_bytes_per_event: f64,
    /// The forced snapshot's file, bytes.
    pub snapshot_bytes: f64,
    /// From the request to the node's snapshot index moving, seconds.
    pub snapshot_build_s: f64,
    /// The follower restarted: (seconds to exit after SIGTERM, seconds from start to ready).
    pub restart: Option<(f64, f64)>,
}

/// Everything one `--retained` run measured.
pub struct Retained {
    pub n: u64,
    pub concurrency: usize,
    pub accepted: u64,
    pub completed: u64,
    pub errors: u64,
    pub not_done: u64,
    pub load_s: f64,
    pub wait_s: f64,
    pub http: Lat,
    pub nodes: Vec<NodeCost>,
    /// A 4th member: from its start until `aofctl cluster join` made it a voter, seconds.
    pub join_s: f64,
    /// The 4th member's peak RSS (VmHWM) once it joined, MiB: what installing the
    /// snapshot cost it.
    pub join_peak_rss_mib: f64,
    /// Why the join was not measured.
    pub join_error: Option<String>,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// The newest `*.snap` file in `dir/snapshots`, bytes.
fn snapshot_file_bytes(data_dir: &Path) -> Option<u64> {
    let rd = std::fs::read_dir(data_dir.join("snapshots")).ok()?;
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .filter_map(|e| e.metadata().ok())
        .max_by_key(|m| m.modified().ok())
        .map(|m| m.len())
}

/// Force a snapshot on node `i`: (file bytes, build seconds), NaN where not seen.
async fn force_snapshot(c: &AofCluster, i: usize) -> anyhow::Result<(f64, f64)> {
    let before = c.snapshot_index(i).await?;
    let t0 = Instant::now();
    let fetch = c.fetch_backup(i, SNAPSHOT_WITHIN);
    tokio::pin!(fetch);
    let mut built: Option<f64> = None;
    let fetched = loop {
        tokio::select! {
            r = &mut fetch => break r,
            _ = tokio::time::sleep(POLL), if built.is_none() => {
                if let Ok(now) = c.snapshot_index(i).await {
                    if now > before {
                        built = Some(t0.elapsed().as_secs_f64());
                    }
                }
            }
        }
    };
    let backup_bytes =
        fetched.with_context(|| format!("forcing a snapshot on node {}", c.nodes[i].id))?;
    if built.is_none() && c.snapshot_index(i).await? > before {
        // Built between the last poll and the end of the download: an upper bound.
        built = Some(t0.elapsed().as_secs_f64());
    }
    let file = snapshot_file_bytes(&c.nodes[i].data_dir);
    eprintln!(
        "aof-bench:   node {}: snapshot {} bytes (backup file {backup_bytes} bytes), built in {} s",
        c.nodes[i].id,
        file.map_or("?".into(), |b| b.to_string()),
        built.map_or("?".into(), |s| format!("{s:.2}"))
    );
    Ok((
        file.map_or(f64::NAN, |b| b as f64),
        built.unwrap_or(f64::NAN),
    ))
}

/// Run the `--retained N` mode against a new three-node cluster in `work_dir`.
pub async fn run(
    args: &Args,
    n: u64,
    aofctl: &Path,
    payloads: Arc<Payloads>,
    run_id: &str,
    work_dir: &Path,
) -> anyhow::Result<Retained> {
    if n == 0 {
        bail!("--retained needs at least 1 event");
    }
    let concurrency = args.concurrency.first().copied().unwrap_or(64).max(1);
    let tuning = NodeTuning {
        log_level: args.node_log.clone(),
        snapshot_every: args.snapshot_every,
        retention_secs: args.retention_secs,
        cache_mb: args.cache_mb,
    };
    let dir: PathBuf = work_dir.join("retained");
    eprintln!("aof-bench: starting aof-cluster ×3 ({})", dir.display());
    let mut c = AofCluster::start(aofctl, 3, &dir, crate::SECRET, &tuning).await?;
    let phases = Arc::new(Phases::default());
    let workers = workers::start_aof(
        &c.grpc_urls(),
        &c.worker_token,
        args.workers,
        args.max_in_flight,
        phases.clone(),
    );
    let sender = Sender::Http(Arc::new(load::HttpSender {
        client: load::http_client(),
        uris: c
            .http_urls()
            .iter()
            .map(|u| format!("{u}/webhook/github").parse().expect("valid uri"))
            .collect(),
        payloads,
    }));
    let pids = c.pids();
    let dir0: Vec<u64> = c.data_dirs().iter().map(|d| sys::disk_bytes(d)).collect();
    let written0: Vec<Option<u64>> = pids.iter().map(|p| sys::write_bytes(*p)).collect();

    let phase = Phase::new(format!("{run_id}-ret-"), n);
    phases.add(phase.clone());
    eprintln!("aof-bench: sending {n} webhooks, closed loop C={concurrency} ...");
    let load_s = load::fill(
        sender.clone(),
        phase.clone(),
        concurrency,
        Duration::from_secs_f64(args.retained_wait),
    )
    .await;
    let accepted = phase.accepted.load(Ordering::Relaxed);
    eprintln!("aof-bench:   {accepted} accepted in {load_s:.1} s ({:.0}/s); waiting for their jobs to complete", accepted as f64 / load_s);
    let t_wait = Instant::now();
    let not_done = load::drain(&phase, Duration::from_secs_f64(args.retained_wait)).await;
    let wait_s = t_wait.elapsed().as_secs_f64();
    let completed = phase.completed.load(Ordering::Relaxed);
    eprintln!("aof-bench:   {completed} completed ({not_done} not done after {wait_s:.1} s more)");

    let per_event = |bytes: f64| {
        if accepted > 0 {
            bytes / accepted as f64
        } else {
            f64::NAN
        }
    };
    let leader = c.leader_index().await;
    let mut nodes: Vec<NodeCost> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (rss, hwm) =
                sys::rss_bytes(pids[i]).map_or((f64::NAN, f64::NAN), |(r, h)| (mib(r), mib(h)));
            let d = DirSizes::of(&node.data_dir);
            let written = match (written0[i], sys::write_bytes(pids[i])) {
                (Some(a), Some(b)) => per_event(b.saturating_sub(a) as f64),
                _ => f64::NAN,
            };
            NodeCost {
                id: node.id,
                leader: leader == Some(i),
                rss_mib: rss,
                hwm_mib: hwm,
                dir: d,
                dir_bytes_per_event: per_event(d.total.saturating_sub(dir0[i]) as f64),
                written_bytes_per_event: written,
                snapshot_bytes: f64::NAN,
                snapshot_build_s: f64::NAN,
                restart: None,
            }
        })
        .collect();

    // One more webhook per node before its snapshot, so the read index is past any
    // snapshot the node built on its own: the request always builds a new one.
    let nudge = Phase::new(format!("{run_id}-nudge-"), c.nodes.len() as u64);
    phases.add(nudge.clone());
    eprintln!("aof-bench: forcing a snapshot on each node ...");
    for (i, cost) in nodes.iter_mut().enumerate() {
        match sender.send(i as u64, &nudge.delivery_id(i as u64)).await {
            Outcome::Accepted => {}
            Outcome::Status(code, body) => bail!(
                "the webhook before node {}'s snapshot got HTTP {code}: {body}",
                cost.id
            ),
            Outcome::Error(e) => {
                bail!("the webhook before node {}'s snapshot failed: {e}", cost.id)
            }
        }
        let (bytes, secs) = force_snapshot(&c, i).await?;
        cost.snapshot_bytes = bytes;
        cost.snapshot_build_s = secs;
    }

    // Restart a follower.
    let leader = c.leader_index().await;
    let f = (0..c.nodes.len())
        .find(|i| Some(*i) != leader)
        .expect("three nodes have a follower");
    eprintln!(
        "aof-bench: restarting node {} (a follower) ...",
        c.nodes[f].id
    );
    let stop_s = c.stop_node(f, STOP_WITHIN).await?.as_secs_f64();
    let ready_s = c.restart_node(f, READY_WITHIN).await?.as_secs_f64();
    eprintln!("aof-bench:   stopped in {stop_s:.2} s, ready {ready_s:.2} s after its start");
    nodes[f].restart = Some((stop_s, ready_s));

    // A 4th member joins (learner, caught up, promoted).
    eprintln!("aof-bench: a 4th node joins (aofctl cluster join) ...");
    let (join_s, join_error) = match c.join_node(JOIN_WITHIN).await {
        Ok(d) => {
            eprintln!(
                "aof-bench:   joined as voter {:.2} s after its start",
                d.as_secs_f64()
            );
            (d.as_secs_f64(), None)
        }
        Err(e) => {
            eprintln!("aof-bench:   join failed: {e:#}");
            (f64::NAN, Some(format!("{e:#}")))
        }
    };

    let join_peak_rss_mib = c.nodes.last().and_then(|n| sys::rss_bytes(n.pid())).map_or(f64::NAN, |(_, peak)| peak as f64 / (1u64 << 20) as f64);
    let stats = workers.stats.clone();
    workers.stop().await;
    c.stop();
    let errors = phase.errors.load(Ordering::Relaxed) + phase.rejected.load(Ordering::Relaxed);
    let worker_errors = stats.errors.load(Ordering::Relaxed);
    if worker_errors > 0 {
        eprintln!("aof-bench: workers saw {worker_errors} stream breaks or failed completions (the restart breaks some streams)");
    }
    let http = Lat::of(&phase.http.lock().unwrap());
    Ok(Retained {
        n,
        concurrency,
        accepted,
        completed,
        errors,
        not_done,
        load_s,
        wait_s,
        http,
        nodes,
        join_s,
        join_peak_rss_mib,
        join_error,
    })
}

fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

/// The per-node table and the targets of #15, as Markdown.
pub fn render(r: &Retained, header: &str, notes: &[String]) -> String {
    let mut s = String::new();
    s.push_str(header);
    s.push_str("\n\n");
    let _ = writeln!(
        s,
        "{} webhooks sent in a closed loop at C={}: {} accepted in {:.1} s ({:.0}/s; 202 p50 / p99 {} / {} ms), {} completed, {} refused or failed attempts (retried), {} not completed after {:.1} s more.\n",
        r.n,
        r.concurrency,
        r.accepted,
        r.load_s,
        r.accepted as f64 / r.load_s,
        f(r.http.p50),
        f(r.http.p99),
        r.completed,
        r.errors,
        r.not_done,
        r.wait_s
    );
    s.push_str("| node | RSS MiB (peak) | data dir MiB | wal / sled / snapshots / reserve MiB | data dir KiB / event | written KiB / event | snapshot MiB | snapshot build s | restart: stop / to ready s |\n");
    s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for n in &r.nodes {
        let _ = writeln!(
            s,
            "| {}{} | {} ({}) | {} | {} / {} / {} / {} | {} | {} | {} | {} | {} |",
            n.id,
            if n.leader { " (leader)" } else { "" },
            f(n.rss_mib),
            f(n.hwm_mib),
            f(mib(n.dir.total)),
            f(mib(n.dir.wal)),
            f(mib(n.dir.sled)),
            f(mib(n.dir.snapshots)),
            f(mib(n.dir.reserve)),
            f(kib(n.dir_bytes_per_event)),
            f(kib(n.written_bytes_per_event)),
            f(n.snapshot_bytes / 1048576.0),
            f(n.snapshot_build_s),
            n.restart.map_or("–".into(), |(stop, ready)| format!(
                "{} / {}",
                f(stop),
                f(ready)
            )),
        );
    }
    match &r.join_error {
        None => {
            let _ = writeln!(
                s,
                "\nA 4th member (`aofctl cluster join`: learner, caught up, promoted) was a voter {} s after its start; its peak RSS was {} MiB.",
                f(r.join_s),
                f(r.join_peak_rss_mib)
            );
        }
        Some(e) => {
            let _ = writeln!(s, "\nA 4th member could not join: {e}");
        }
    }
    s.push('\n');
    s.push_str(&targets(r));
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The targets of #15 (stated at 1 000 000 retained events, in decimal units) beside
/// what this run measured.
pub fn targets(r: &Retained) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| target (#15, at 1 000 000 retained events) | measured at {} events, per node | verdict |", r.n);
    s.push_str("|---|---|---|\n");
    let row = |s: &mut String, target: &str, xs: Vec<f64>, unit: &str, limit: f64| {
        let shown = xs.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ");
        let ok = !xs.is_empty() && xs.iter().all(|x| !x.is_nan() && *x <= limit);
        let verdict = if ok { "met" } else { "**not met**" };
        let _ = writeln!(s, "| {target} | {shown} {unit} | {verdict} |");
    };
    let mb = |b: f64| b / 1e6;
    let kb = |b: f64| b / 1e3;
    row(
        &mut s,
        "RSS ≤ 100 MB",
        r.nodes
            .iter()
            .map(|n| n.rss_mib * 1048576.0 / 1e6)
            .collect(),
        "MB",
        100.0,
    );
    row(
        &mut s,
        "data dir ≤ 5 KB per retained event",
        r.nodes.iter().map(|n| kb(n.dir_bytes_per_event)).collect(),
        "KB",
        5.0,
    );
    row(
        &mut s,
        "disk written ≤ 6 KB per event",
        r.nodes
            .iter()
            .map(|n| kb(n.written_bytes_per_event))
            .collect(),
        "KB",
        6.0,
    );
    row(
        &mut s,
        "snapshot ≤ 32 MB",
        r.nodes.iter().map(|n| mb(n.snapshot_bytes)).collect(),
        "MB",
        32.0,
    );
    row(
        &mut s,
        "snapshot built in ≤ 2 s",
        r.nodes.iter().map(|n| n.snapshot_build_s).collect(),
        "s",
        2.0,
    );
    row(
        &mut s,
        "node restart to ready ≤ 5 s",
        r.nodes
            .iter()
            .filter_map(|n| n.restart.map(|(_, ready)| ready))
            .collect(),
        "s",
        5.0,
    );
    row(
        &mut s,
        "a 4th member joins and is caught up in ≤ 60 s",
        vec![r.join_s],
        "s",
        60.0,
    );
    s
}

/// One line for scripts (the smoke test reads it); NaN where nothing was measured.
pub fn result_line(r: &Retained) -> String {
    let list = |xs: Vec<f64>| {
        xs.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "RETAINED n={} accepted={} completed={} not_done={} rss_mib={} dir_bytes_per_event={} written_bytes_per_event={} snapshot_bytes={} snapshot_build_s={} restart_ready_s={} join_s={} join_peak_rss_mib={}",
        r.n,
        r.accepted,
        r.completed,
        r.not_done,
        list(r.nodes.iter().map(|n| n.rss_mib).collect()),
        list(r.nodes.iter().map(|n| n.dir_bytes_per_event).collect()),
        list(r.nodes.iter().map(|n| n.written_bytes_per_event).collect()),
        list(r.nodes.iter().map(|n| n.snapshot_bytes).collect()),
        list(r.nodes.iter().map(|n| n.snapshot_build_s).collect()),
        list(r.nodes.iter().filter_map(|n| n.restart.map(|(_, ready)| ready)).collect()),
        r.join_s,
        r.join_peak_rss_mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_sizes_split_wal_snapshots_reserve_and_sled() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("wal")).unwrap();
        std::fs::create_dir(d.path().join("snapshots")).unwrap();
        std::fs::write(
            d.path().join("wal/00000000000000000001.wal"),
            vec![1u8; 64 << 10],
        )
        .unwrap();
        std::fs::write(d.path().join("snapshots/a.snap"), vec![2u8; 32 << 10]).unwrap();
        std::fs::write(d.path().join("reserved-space"), vec![3u8; 16 << 10]).unwrap();
        std::fs::write(d.path().join("db"), vec![4u8; 8 << 10]).unwrap();
        let s = DirSizes::of(d.path());
        assert_eq!(
            (s.wal, s.snapshots, s.reserve, s.sled),
            (64 << 10, 32 << 10, 16 << 10, 8 << 10),
            "{s:?}"
        );
        assert_eq!(s.total, s.wal + s.snapshots + s.reserve + s.sled);
        assert_eq!(snapshot_file_bytes(d.path()), Some(32 << 10));
    }
}
