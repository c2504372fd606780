//! CI keeps the benchmark from rotting: `aof-bench --smoke` must start a real
//! three-node aof-cluster, push signed webhooks through it, have workers complete
//! the jobs, and print (and append) its results table.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_aof-bench");

/// The debug `aofctl` beside `aof-bench` in the target dir; built with
/// `$CARGO build -p aofctl` when missing (CI builds the workspace first).
fn aofctl() -> PathBuf {
    let dir = PathBuf::from(BENCH).parent().expect("target dir").to_path_buf();
    let bin = dir.join("aofctl");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "-p", "aofctl"])
            .status()
            .expect("run cargo build -p aofctl");
        assert!(st.success(), "cargo build -p aofctl failed");
    }
    assert!(bin.is_file(), "no aofctl at {}", bin.display());
    bin
}

#[test]
fn smoke_run_prints_a_table_with_accepted_and_completed_events() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("BENCHMARKS.md");
    // Bounded: smoke mode takes well under a minute; allow slow CI machines.
    let (stdout, stderr) =
        run_bench(tmp.path(), &["--smoke", "--append-doc", "--doc", doc.to_str().unwrap()], Duration::from_secs(300));

    // The table has the three-node rows: the closed loop and the three open-loop rates.
    assert!(stdout.contains("| system | load | accepted/s | completed/s |"), "no results table:\n{stdout}");
    for load in ["closed C=4", "open 10%", "open 50%", "open 90%"] {
        assert!(stdout.contains(&format!("| aof-cluster ×3 | {load}")), "no aof-cluster ×3 {load} row:\n{stdout}");
    }
    let line = stdout.lines().find(|l| l.starts_with("RESULT system=aof3 ")).unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(field("accepted") > 0.0, "no webhook accepted: {line}\n{stdout}\n{stderr}");
    assert!(field("completed") > 0.0, "no job completed: {line}\n{stdout}\n{stderr}");

    // --append-doc wrote the same table, with date, commit and machine.
    let written = std::fs::read_to_string(&doc).unwrap();
    assert!(written.contains("| aof-cluster ×3 | closed C=4"), "{written}");
    assert!(written.contains("commit `") && written.contains("cores"), "{written}");
}

/// Run aof-bench with `args` (and `--aofctl`, `--work-dir` in `tmp`), bounded by
/// `within`; returns (stdout, stderr) after asserting it succeeded.
fn run_bench(tmp: &std::path::Path, args: &[&str], within: Duration) -> (String, String) {
    let out_path = tmp.join("stdout");
    let err_path = tmp.join("stderr");
    let mut child = Command::new(BENCH)
        .args(args)
        .arg("--aofctl")
        .arg(aofctl())
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn aof-bench");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aof-bench {args:?} did not finish in {within:?}; stderr:\n{}", std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "aof-bench {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn retained_mode_measures_every_number_it_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("BENCHMARKS.md");
    let doc_arg = doc.to_str().unwrap().to_string();
    let (stdout, stderr) = run_bench(
        tmp.path(),
        &["--retained", "300", "--concurrency", "8", "--workers", "3", "--max-in-flight", "16", "--retained-wait", "120", "--append-doc", "--doc", &doc_arg],
        Duration::from_secs(400),
    );
    let line = stdout.lines().find(|l| l.starts_with("RETAINED ")).unwrap_or_else(|| panic!("no RETAINED line:\n{stdout}\n{stderr}"));
    let field = |name: &str| -> Vec<f64> {
        let v = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        v.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().unwrap_or_else(|_| panic!("{name}: {x:?} is not a number"))).collect()
    };
    assert_eq!(field("accepted"), vec![300.0], "every event accepted: {line}\n{stderr}");
    assert_eq!(field("completed"), vec![300.0], "every job completed: {line}\n{stderr}");
    assert_eq!(field("not_done"), vec![0.0], "{line}");
    // Every per-node number was measured: present for each of the three nodes, a
    // number (not NaN) and above zero.
    for name in ["rss_mib", "dir_bytes_per_event", "written_bytes_per_event", "snapshot_bytes", "snapshot_build_s"] {
        let xs = field(name);
        assert_eq!(xs.len(), 3, "{name}: one value per node: {line}");
        assert!(xs.iter().all(|x| x.is_finite() && *x > 0.0), "{name} not measured on every node: {line}\n{stderr}");
    }
    let restart = field("restart_ready_s");
    assert_eq!(restart.len(), 1, "one follower restarted: {line}\n{stderr}");
    assert!(restart[0].is_finite() && restart[0] > 0.0, "restart to ready not measured: {line}");
    let join = field("join_s");
    assert!(join.len() == 1 && join[0].is_finite() && join[0] > 0.0, "the 4th member's join not measured: {line}\n{stderr}");
    let join_rss = field("join_peak_rss_mib");
    assert!(join_rss.len() == 1 && join_rss[0].is_finite() && join_rss[0] > 0.0, "the 4th member's peak RSS not measured: {line}");

    // The table, and --append-doc wrote it with date, commit, machine and the targets.
    assert!(stdout.contains("| node | RSS MiB (peak) |"), "no table:\n{stdout}");
    let written = std::fs::read_to_string(&doc).unwrap();
    assert!(written.contains("— retained 300") && written.contains("commit `") && written.contains("cores"), "{written}");
    assert!(written.contains("| RSS ≤ 100 MB |") && written.contains("| node restart to ready ≤ 5 s |"), "{written}");
}
