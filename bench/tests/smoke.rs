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
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut child = Command::new(BENCH)
        .args(["--smoke", "--append-doc", "--doc"])
        .arg(&doc)
        .arg("--aofctl")
        .arg(aofctl())
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn aof-bench");
    // Bounded: smoke mode takes well under a minute; allow slow CI machines.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aof-bench --smoke did not finish in 300 s; stderr:\n{}", std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.success(), "aof-bench --smoke failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}");

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
