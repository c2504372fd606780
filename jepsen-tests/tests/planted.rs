//! Proof that the checkers catch real bugs: short runs against real `aofctl
//! serve` processes (built with `--features planted-bugs`), each with one planted
//! bug switched on by `AOF_PLANTED_BUG`, must be reported by the matching checker;
//! and a clean run under partitions and kills must pass.
//!
//! The runs are serialized (one cluster at a time on 2 cores) and each is bounded:
//! ~15 s of workload, plus start, recovery, drain and checking.
//!
//! With root and `ip netns` (CI) the faults are real network partitions; without,
//! the harness falls back to loopback with crash/pause faults only (printed loudly)
//! and the partition-based assertions are relaxed as noted.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use jepsen_tests::nemesis::Fault;
use jepsen_tests::report::Verdict;
use jepsen_tests::run::{self, NetMode, Opts, Outcome, Workload};

static SERIAL: Mutex<()> = Mutex::new(());
static BIN: OnceLock<PathBuf> = OnceLock::new();

/// `aofctl` built with `--features planted-bugs` (also used, bug switched off, for
/// the clean run). `JEPSEN_AOFCTL=PATH` uses a prebuilt one instead.
fn bin() -> PathBuf {
    BIN.get_or_init(|| match std::env::var_os("JEPSEN_AOFCTL") {
        Some(p) => PathBuf::from(p),
        None => run::build_aofctl(true, false).expect("building aofctl --features planted-bugs"),
    })
    .clone()
}

fn namespaces() -> bool {
    jepsen_tests::net::namespaces_available().is_ok()
}

fn short(workloads: &[Workload], nemesis: &[Fault], seed: u64) -> Opts {
    let mut o = Opts::new(bin());
    o.workloads = workloads.to_vec();
    o.nemesis = nemesis.to_vec();
    o.seed = seed;
    o.time_limit = Duration::from_secs(15);
    o.rate = 30.0;
    o.concurrency = 4;
    o.workers = 2;
    o.interval = Duration::from_millis(1500);
    o.hold = Duration::from_secs(3);
    o.recovery_timeout = Duration::from_secs(45);
    o.drain_timeout = Duration::from_secs(45);
    o.store = std::env::temp_dir().join("aof-jepsen-tests");
    o.net = NetMode::Auto;
    o
}

/// The run's store directory is kept only if the test fails.
fn passed(out: Outcome) {
    let _ = std::fs::remove_dir_all(&out.dir);
}

fn go(o: Opts) -> Outcome {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(run::run(o)).expect("the run itself works");
    eprintln!("{}\n{}", out.results.table(), out.results.anomalies(5));
    out
}

#[test]
fn clean_run_under_partitions_and_kills_is_valid() {
    let o = short(
        &[Workload::Register, Workload::Queue],
        &[
            Fault::PartitionHalves,
            Fault::PartitionLeader,
            Fault::KillLeader,
            Fault::PauseOne,
        ],
        101,
    );
    let out = go(o);
    let r = &out.results;
    assert!(r.nemesis_events >= 2, "the nemesis ran: {}", r.table());
    let q = r.queue.as_ref().unwrap();
    assert!(
        q.acked > 50 && q.completed >= q.acked,
        "work flowed: {}",
        r.table()
    );
    assert_eq!(
        r.register.as_ref().unwrap().valid(),
        Some(true),
        "{}",
        r.anomalies(10)
    );
    assert_eq!(
        r.verdict,
        Verdict::Valid,
        "{}\n{}",
        r.table(),
        r.anomalies(10)
    );
    passed(out);
}

#[test]
fn stale_reads_are_caught_by_the_status_and_register_checkers() {
    let mut o = short(
        &[Workload::Register, Workload::Queue],
        &[Fault::PartitionNode],
        102,
    );
    o.planted = Some("stale-reads".into());
    o.interval = Duration::from_millis(1000);
    o.hold = Duration::from_secs(4);
    let out = go(o);
    let r = &out.results;
    assert_eq!(r.verdict, Verdict::Invalid, "{}", r.table());
    let register_caught = r.register.as_ref().unwrap().valid() == Some(false);
    let status_caught = r.stale_reads() > 0;
    if namespaces() {
        // An isolated node answers reads from its own, old state: both see it.
        assert!(
            register_caught && status_caught,
            "register {register_caught}, status {status_caught}: {}",
            r.table()
        );
    } else {
        assert!(register_caught || status_caught, "{}", r.table());
    }
    passed(out);
}

#[test]
fn ack_before_commit_loses_acknowledged_deliveries() {
    let mut o = short(&[Workload::Queue], &[Fault::KillLeader], 103);
    o.planted = Some("ack-before-commit".into());
    let out = go(o);
    let r = &out.results;
    let q = r.queue.as_ref().unwrap();
    assert!(q.lost() > 0, "{}", r.table());
    assert!(!q.missing.is_empty());
    assert_eq!(r.verdict, Verdict::Invalid);
    passed(out);
}

#[test]
fn skip_fencing_lets_a_zombie_worker_complete_with_a_stale_token() {
    let mut o = short(&[Workload::Queue], &[], 104);
    o.planted = Some("skip-fencing".into());
    // Many workers outlive their lease, wait until the job is leased again, then
    // extend and complete with the old token.
    o.zombie_rate = 0.25;
    let out = go(o);
    let r = &out.results;
    let q = r.queue.as_ref().unwrap();
    assert!(!q.stale_token_accepted.is_empty(), "{}", r.table());
    assert_eq!(r.verdict, Verdict::Invalid);
    passed(out);
}

/// The disk faults need root (tmpfs, FUSE) and /dev/fuse; CI has both.
fn require_disk_faults() {
    if let Err(why) = jepsen_tests::disk::mounts_available(true) {
        panic!("the disk-fault tests need root and /dev/fuse: {why}");
    }
}

#[test]
fn ack_before_fsync_loses_acknowledged_deliveries_on_power_loss() {
    require_disk_faults();
    let mut o = short(&[Workload::Queue], &[Fault::LoseUnsyncedAll], 105);
    o.planted = Some("ack-before-fsync".into());
    let out = go(o);
    let r = &out.results;
    assert!(r.nemesis_events >= 2, "the nemesis ran: {}", r.table());
    let q = r.queue.as_ref().unwrap();
    // Every node forgets its last second of acknowledged writes: acknowledged
    // deliveries go missing (when the final read can be made), and acknowledged
    // `Complete`s are forgotten, so the job is granted and completed again
    // (duplicated completions, old tokens accepted after a newer grant).
    let lost_acked = q.lost() + q.duplicated.len() + q.stale_token_accepted.len();
    assert!(lost_acked > 0, "{}\n{}", r.table(), r.anomalies(10));
    assert_eq!(r.verdict, Verdict::Invalid, "{}", r.table());
    passed(out);
}

#[test]
fn clean_run_under_power_loss_is_valid() {
    require_disk_faults();
    // The same schedule as the planted run above, without the bug.
    let o = short(&[Workload::Queue], &[Fault::LoseUnsyncedAll], 105);
    let out = go(o);
    let r = &out.results;
    assert!(r.nemesis_events >= 2, "the nemesis ran: {}", r.table());
    let q = r.queue.as_ref().unwrap();
    assert!(q.acked > 50, "work flowed: {}", r.table());
    assert_eq!(
        r.verdict,
        Verdict::Valid,
        "{}\n{}",
        r.table(),
        r.anomalies(10)
    );
    passed(out);
}

#[test]
fn clean_run_under_every_disk_fault_is_valid() {
    require_disk_faults();
    let mut o = short(
        &[Workload::Queue],
        &[
            Fault::DiskFull,
            Fault::LoseUnsynced,
            Fault::Corrupt,
            Fault::KillSnapshot,
        ],
        106,
    );
    o.time_limit = Duration::from_secs(25);
    let out = go(o);
    let r = &out.results;
    assert!(r.nemesis_events >= 4, "the nemesis ran: {}", r.table());
    assert!(r.recovered, "{}", r.table());
    assert_eq!(
        r.verdict,
        Verdict::Valid,
        "{}\n{}",
        r.table(),
        r.anomalies(10)
    );
    passed(out);
}

/// Finding F1 (docs/JEPSEN.md), fixed: after every node lost its unsynced
/// writes at once and restarted, the old leader came back as leader of its old
/// term (its vote was stored committed) with a read index below writes it had
/// acknowledged, and linearizable reads returned older values (seed 8: 8 keys
/// not linearizable in 60 s, here 2 in 30 s). The store now reads a vote back
/// uncommitted, so a restarted node must win an election first.
#[test]
fn reads_after_a_coordinated_power_loss_are_linearizable() {
    require_disk_faults();
    let mut o = short(&[Workload::Register], &[Fault::LoseUnsyncedAll], 8);
    o.time_limit = Duration::from_secs(30);
    let out = go(o);
    let r = &out.results;
    assert!(r.nemesis_events >= 2, "the nemesis ran: {}", r.table());
    assert_eq!(
        r.register.as_ref().unwrap().valid(),
        Some(true),
        "{}",
        r.anomalies(10)
    );
    assert_eq!(r.verdict, Verdict::Valid, "{}", r.table());
    passed(out);
}
