//! Running commands: real processes (`sh`), checked from the outside.

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use aof_contract::process::{self, Ended, Killer, Spec, MAX_RESULT_BYTES, STDERR_TAIL_BYTES};

fn sh(script: &str, env: Vec<(OsString, OsString)>, stdin: &[u8], timeout: Duration) -> Spec {
    Spec::new(
        vec!["sh".into(), "-c".into(), script.into()],
        env,
        stdin.to_vec(),
        timeout,
    )
}

fn path_only() -> Vec<(OsString, OsString)> {
    vec![(
        "PATH".into(),
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
    )]
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Wait (bounded) for `cond`; false if it never held.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn read_pid(file: &Path) -> u32 {
    assert!(
        eventually(10, || std::fs::read_to_string(file)
            .is_ok_and(|s| s.ends_with('\n'))),
        "no pid in {}",
        file.display()
    );
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: the future is awaited on this thread, without any runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the future did not finish in 60 s"
        );
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn payload_on_stdin_exactly_the_given_environment_and_stdout() {
    let mut env = path_only();
    env.push(("AOF_JOB_ID".into(), "7-0".into()));
    let f = process::run(
        &sh(
            "cat; echo; env",
            env,
            b"{\"hello\":1}",
            Duration::from_secs(30),
        ),
        &Killer::new(),
    )
    .unwrap();
    assert!(f.success(), "{f:?}");
    let out = f.result_text();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("{\"hello\":1}"));
    let vars: Vec<&str> = lines
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(
        vars.contains(&"AOF_JOB_ID") && vars.contains(&"PATH"),
        "{vars:?}"
    );
    // cargo runs tests with CARGO_* variables set: the command must not see them.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(
        !vars.iter().any(|v| v.starts_with("CARGO")),
        "the runner's environment leaked: {vars:?}"
    );
}

#[test]
fn exit_status_and_the_stderr_tail() {
    let f = process::run(
        &sh(
            "echo boom >&2; exit 3",
            path_only(),
            b"",
            Duration::from_secs(30),
        ),
        &Killer::new(),
    )
    .unwrap();
    assert_eq!(
        f.ended,
        Ended::Exited(std::os::unix::process::ExitStatusExt::from_raw(3 << 8))
    );
    assert!(!f.success());
    assert_eq!(
        process::failure_message("exit status 3", &f.stderr),
        "exit status 3; stderr: boom"
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    // The command starts a grandchild in its group, then waits for it.
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let f = process::run(
        &sh(&script, path_only(), b"", Duration::from_millis(500)),
        &Killer::new(),
    )
    .unwrap();
    assert_eq!(f.ended, Ended::TimedOut);
    let grandchild = read_pid(&pidfile);
    assert!(
        eventually(10, || dead(grandchild)),
        "the grandchild {grandchild} survived the timeout"
    );
}

#[test]
fn ten_mib_of_stderr_and_stdout_are_counted_not_kept() {
    const TEN_MIB: u64 = 10 << 20;
    let script = format!("head -c {TEN_MIB} /dev/zero | tr '\\0' e >&2; head -c {TEN_MIB} /dev/zero | tr '\\0' o; echo >&2 last");
    let f = process::run(
        &sh(&script, path_only(), b"", Duration::from_secs(120)),
        &Killer::new(),
    )
    .unwrap();
    assert!(f.success(), "{:?}", f.ended);
    assert_eq!(f.stderr.total, TEN_MIB + 5);
    assert_eq!(f.stderr.bytes.len(), STDERR_TAIL_BYTES);
    assert!(f.stderr.bytes.ends_with(b"eeelast\n"), "the tail is kept");
    assert_eq!(f.stdout.total, TEN_MIB);
    assert_eq!(f.stdout.bytes.len(), MAX_RESULT_BYTES);
    assert!(f.stdout.bytes.iter().all(|b| *b == b'o'));
}

#[test]
fn a_command_that_ignores_a_large_stdin_is_fine() {
    let payload = vec![b'x'; 4 << 20];
    let f = process::run(
        &sh("echo ok", path_only(), &payload, Duration::from_secs(30)),
        &Killer::new(),
    )
    .unwrap();
    assert!(f.success() && f.result_text() == "ok\n", "{f:?}");
    let f = process::run(
        &sh("wc -c", path_only(), &payload, Duration::from_secs(30)),
        &Killer::new(),
    )
    .unwrap();
    assert_eq!(f.result_text().trim(), (4 << 20).to_string());
}

#[test]
fn the_killer_and_dropping_the_future_kill_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("killed");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let running = process::start(sh(&script, path_only(), b"", Duration::from_secs(300))).unwrap();
    let killer = running.killer();
    let grandchild = read_pid(&pidfile);
    killer.kill();
    let f = block_on(running).unwrap();
    assert_eq!(f.ended, Ended::Killed);
    assert!(
        eventually(10, || dead(grandchild)),
        "{grandchild} survived the killer"
    );

    let pidfile = dir.path().join("dropped");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let running = process::start(sh(&script, path_only(), b"", Duration::from_secs(300))).unwrap();
    let grandchild = read_pid(&pidfile);
    drop(running);
    assert!(
        eventually(10, || dead(grandchild)),
        "{grandchild} survived dropping the run"
    );

    // Killed before it started: it never starts.
    let k = Killer::new();
    k.kill();
    let f = process::run(
        &sh(
            &format!("touch {}", dir.path().join("started").display()),
            path_only(),
            b"",
            Duration::from_secs(5),
        ),
        &k,
    )
    .unwrap();
    assert_eq!(f.ended, Ended::Killed);
    assert!(!dir.path().join("started").exists());
}

#[test]
fn commands_that_cannot_start_are_errors() {
    let e = process::run(
        &Spec::new(
            vec!["/nonexistent/prog".into()],
            path_only(),
            vec![],
            Duration::from_secs(1),
        ),
        &Killer::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    let e = process::run(
        &Spec::new(vec![], path_only(), vec![], Duration::from_secs(1)),
        &Killer::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}
