//! `aofctl worker -- COMMAND [ARGS...]`: run a command for each job of the
//! cluster's work queue.
//!
//! The worker opens a claim stream to a node's gRPC endpoint (`--endpoint`,
//! `AOF_GRPC_ENDPOINT`; not the HTTP endpoint of the other commands) and runs
//! COMMAND once per leased job, at most `--concurrency` at once. Each run gets the
//! webhook payload on stdin and the job in `AOF_*` environment variables (see
//! [`job_env`]). While it runs, the lease is extended in the background.
//!
//! - exit 0 → Complete, with stdout (first 64 KiB) as the job's result;
//! - non-zero exit → Fail (retryable) with the exit status and the tail of stderr;
//! - still running after `--task-timeout` → the command's process group is killed,
//!   Fail (retryable);
//! - lease lost (it expired and the job went to another worker) → the command is
//!   killed and nothing is reported.
//!
//! SIGINT/SIGTERM: stop claiming, let running commands finish for at most
//! `--drain-timeout` (then kill them and report them failed, retryable), give
//! back leases not started yet (failed, retryable), exit 0. A second signal
//! ends the drain at once.
//!
//! Commands run in their own process group (a Ctrl-C in the terminal reaches only
//! `aofctl worker`, which then drains) and, on Linux, get SIGKILL if the worker
//! itself dies.

use std::collections::BTreeMap;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aof_client::{FailOutcome, Lease, Worker, WorkerError};
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::output::human_age;
use crate::signals::Shutdown;
use crate::{parse_duration, GlobalArgs};

/// Most of a command's stdout kept as the job's result.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Most of a command's stderr quoted in a failure.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// How long to wait for a command's output pipes to close after it exited (a
/// background grandchild may keep them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);
/// Warn when no node could be reached for this long.
const UNREACHABLE_HINT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
#[command(
    after_help = "Endpoints: the worker talks gRPC to the nodes' spec.cluster.grpc_addr \
(grpc://127.0.0.1:4001 for `aofctl dev`), not to their HTTP port. It takes the first of: \
--grpc-endpoint; --endpoint given on the command line (for this subcommand it names gRPC \
endpoints); $AOF_GRPC_ENDPOINT; grpc://127.0.0.1:4001. $AOF_ENDPOINT (HTTP) is not used."
)]
pub struct WorkerArgs {
    /// Node gRPC endpoints (comma-separated). `--endpoint URL[,URL...]` works too
    /// (see below); on connection loss the worker moves to the next one.
    #[arg(
        long = "grpc-endpoint",
        id = "grpc_endpoint",
        env = "AOF_GRPC_ENDPOINT",
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    pub grpc_endpoint: Vec<String>,

    /// Whether `--grpc-endpoint` was given on the command line (set by the parser).
    #[arg(skip)]
    pub grpc_endpoint_given: bool,

    /// Take only jobs for this target (agent, fleet or flow name); repeat for
    /// several. Default: every target.
    #[arg(long = "target", value_name = "NAME", value_delimiter = ',')]
    pub targets: Vec<String>,

    /// Commands run at once (and leases held at once), 1-1024.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Shown in each job's history. Default: <hostname>-<pid>.
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,

    /// Kill a command still running after this long and report the job failed
    /// (retryable), like AOF's `task_timeout_secs`.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub task_timeout: Duration,

    /// On SIGINT/SIGTERM, wait this long for running commands before killing them.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// The command to run for each job, after `--`; it gets the webhook payload
    /// on stdin and the job in AOF_* environment variables.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The gRPC endpoints when none is given.
pub const DEFAULT_GRPC_ENDPOINT: &str = "grpc://127.0.0.1:4001";

impl WorkerArgs {
    /// The gRPC endpoints to use: `--grpc-endpoint`, else an explicit
    /// `--endpoint`, else `$AOF_GRPC_ENDPOINT`, else [`DEFAULT_GRPC_ENDPOINT`].
    pub fn endpoints(&self, global: &GlobalArgs) -> Vec<String> {
        if self.grpc_endpoint_given {
            self.grpc_endpoint.clone()
        } else if global.endpoint_given {
            global.endpoint.clone()
        } else if !self.grpc_endpoint.is_empty() {
            self.grpc_endpoint.clone()
        } else {
            vec![DEFAULT_GRPC_ENDPOINT.to_string()]
        }
    }
}

/// Where the worker is in its life; commands watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// No new commands; running ones may finish.
    Draining,
    /// Kill running commands.
    Abort,
}

/// What every job task needs.
struct Ctx {
    command: Vec<String>,
    worker_id: String,
    task_timeout: Duration,
    slots: Semaphore,
}

/// A name safe for the environment: `pr_number` → `PR_NUMBER`.
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Environment values cannot hold NUL bytes.
fn env_value(v: &str) -> String {
    v.replace('\0', "")
}

/// The environment of a job's command: `AOF_EVENT`, `AOF_ACTION`, `AOF_REPO`,
/// `AOF_DELIVERY_ID`, `AOF_EVENT_ID`, `AOF_JOB_ID`, `AOF_ATTEMPT`, `AOF_TARGET`,
/// `AOF_TARGET_KIND`, `AOF_TRIGGER`, `AOF_PARAMS` (JSON), `AOF_WORKER_ID`,
/// `AOF_FENCING_TOKEN`, `TRACEPARENT` (when known) and `AOF_CTX_<NAME>` for each
/// context variable (lists as JSON arrays).
#[allow(clippy::too_many_arguments)]
pub fn job_env(
    job_id: &str,
    event_id: u64,
    delivery_id: &str,
    event: &str,
    trigger: &str,
    target_kind: &str,
    target_name: &str,
    params_json: &str,
    context: &BTreeMap<String, String>,
    attempt: u32,
    fencing_token: u64,
    traceparent: &str,
    worker_id: &str,
) -> Vec<(String, String)> {
    let ctx = |k: &str| context.get(k).cloned().unwrap_or_default();
    let params = if params_json.trim().is_empty() {
        "null"
    } else {
        params_json
    };
    let mut env: Vec<(String, String)> = vec![
        ("AOF_EVENT".into(), event.into()),
        ("AOF_ACTION".into(), ctx("action")),
        ("AOF_REPO".into(), ctx("repo_full_name")),
        ("AOF_DELIVERY_ID".into(), delivery_id.into()),
        ("AOF_EVENT_ID".into(), event_id.to_string()),
        ("AOF_JOB_ID".into(), job_id.into()),
        ("AOF_ATTEMPT".into(), attempt.to_string()),
        ("AOF_TARGET".into(), target_name.into()),
        ("AOF_TARGET_KIND".into(), target_kind.into()),
        ("AOF_TRIGGER".into(), trigger.into()),
        ("AOF_PARAMS".into(), params.into()),
        ("AOF_WORKER_ID".into(), worker_id.into()),
        ("AOF_FENCING_TOKEN".into(), fencing_token.to_string()),
    ];
    if !traceparent.is_empty() {
        env.push(("TRACEPARENT".into(), traceparent.into()));
    }
    env.extend(
        context
            .iter()
            .map(|(k, v)| (format!("AOF_CTX_{}", env_name(k)), v.clone())),
    );
    env.into_iter().map(|(k, v)| (k, env_value(&v))).collect()
}

fn lease_env(lease: &Lease, worker_id: &str) -> Vec<(String, String)> {
    job_env(
        lease.job_id(),
        lease.event_id(),
        lease.delivery_id(),
        lease.event(),
        lease.trigger(),
        &lease.target().kind,
        &lease.target().name,
        lease.params_json(),
        lease.context(),
        lease.attempt(),
        lease.fencing_token(),
        lease.traceparent(),
        worker_id,
    )
}

/// The first [`MAX_RESULT_BYTES`] of stdout as text (cut at a character boundary).
pub fn result_text(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(&stdout[..stdout.len().min(MAX_RESULT_BYTES)]);
    let mut end = text.len().min(MAX_RESULT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `exit status 3` / `killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The error reported for a failed run: what happened, plus the tail of stderr.
pub fn failure_message(what: &str, stderr_tail: &[u8]) -> String {
    let tail = String::from_utf8_lossy(stderr_tail);
    let tail = tail.trim();
    if tail.is_empty() {
        format!("{what} (no stderr output)")
    } else {
        format!("{what}; stderr: {tail}")
    }
}

/// Output collected from a pipe: the head (stdout) or the tail (stderr).
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    total: u64,
}

/// Reads `pipe` to its end, keeping the first `limit` bytes (`keep_tail`: the
/// last ones) in `into`.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    into: Arc<Mutex<Captured>>,
    limit: usize,
    keep_tail: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut c = into.lock().expect("capture lock");
        c.total += n as u64;
        if keep_tail {
            c.bytes.extend_from_slice(&buf[..n]);
            let excess = c.bytes.len().saturating_sub(limit);
            c.bytes.drain(..excess);
        } else {
            let room = limit.saturating_sub(c.bytes.len());
            c.bytes.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// How a run ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    LeaseLost(String),
    Aborted,
}

/// Kills the command and everything in its process group.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on the process group our own child leads.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// Resolves once the worker reaches `phase` (never, if it is gone).
async fn until(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    if rx.wait_for(|p| *p >= phase).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the command for `lease`; returns how it ended, stdout (head) and stderr (tail).
async fn execute(
    lease: &Lease,
    ctx: &Ctx,
    phase: &mut watch::Receiver<Phase>,
) -> std::io::Result<(Ended, Captured, Captured)> {
    let mut cmd = tokio::process::Command::new(&ctx.command[0]);
    cmd.args(&ctx.command[1..]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AOF_CTX_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(lease_env(lease, &ctx.worker_id))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let mut pipes = JoinSet::new();
    if let Some(mut stdin) = child.stdin.take() {
        let payload = lease.payload().to_vec();
        // A command that does not read its stdin is fine (broken pipe ignored).
        pipes.spawn(async move {
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        });
    }
    let out = Arc::new(Mutex::new(Captured::default()));
    let err = Arc::new(Mutex::new(Captured::default()));
    if let Some(p) = child.stdout.take() {
        pipes.spawn(capture(p, out.clone(), MAX_RESULT_BYTES, false));
    }
    if let Some(p) = child.stderr.take() {
        pipes.spawn(capture(p, err.clone(), STDERR_TAIL_BYTES, true));
    }
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status?),
        _ = tokio::time::sleep(ctx.task_timeout) => Ended::TimedOut,
        reason = lease.lost() => Ended::LeaseLost(reason),
        _ = until(phase, Phase::Abort) => Ended::Aborted,
    };
    if !matches!(ended, Ended::Exited(_)) {
        kill_group(pid);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    // Output still in the pipes; bounded, as a background grandchild may hold them.
    let _ = tokio::time::timeout(PIPE_GRACE, async {
        while pipes.join_next().await.is_some() {}
    })
    .await;
    pipes.abort_all();
    let take = |c: &Arc<Mutex<Captured>>| std::mem::take(&mut *c.lock().expect("capture lock"));
    Ok((ended, take(&out), take(&err)))
}

/// One job: wait for a slot, run the command, report the outcome.
async fn run_job(lease: Lease, ctx: Arc<Ctx>, mut phase: watch::Receiver<Phase>) {
    let job = lease.job_id().to_string();
    let _slot = tokio::select! {
        biased;
        _ = until(&mut phase, Phase::Draining) => {
            give_back(lease, &ctx.worker_id).await;
            return;
        }
        slot = ctx.slots.acquire() => slot.expect("the semaphore is never closed"),
    };
    tracing::info!(
        job_id = %job,
        attempt = lease.attempt(),
        target = %lease.target(),
        event = %lease.event(),
        repo = %lease.context().get("repo_full_name").map_or("-", String::as_str),
        delivery_id = %lease.delivery_id(),
        "running the command"
    );
    let started = Instant::now();
    let (ended, out, err) = match execute(&lease, &ctx, &mut phase).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("cannot run {:?}: {e}", ctx.command[0]);
            tracing::error!(job_id = %job, "{msg}; check the command after `--` and the PATH");
            report_failure(lease, msg).await;
            return;
        }
    };
    let elapsed = took(started.elapsed());
    match ended {
        Ended::Exited(status) if status.success() => {
            let result = result_text(&out.bytes);
            if out.total > MAX_RESULT_BYTES as u64 {
                tracing::info!(job_id = %job, "stdout was {} bytes; the result keeps the first {MAX_RESULT_BYTES}", out.total);
            }
            match lease.complete(result).await {
                Ok(()) => {
                    tracing::info!(job_id = %job, "completed in {elapsed} ({} bytes of output)", out.total)
                }
                Err(e) => report_finish_error(&job, "completion", &e),
            }
        }
        Ended::Exited(status) => {
            let what = format!("{} after {elapsed}", describe_exit(status));
            report_failure(lease, failure_message(&what, &err.bytes)).await;
        }
        Ended::TimedOut => {
            let what = format!(
                "timed out after {} (--task-timeout); the command was killed",
                human_age(ctx.task_timeout)
            );
            report_failure(lease, failure_message(&what, &err.bytes)).await;
        }
        Ended::LeaseLost(reason) => {
            tracing::warn!(job_id = %job, "{reason}; the command was killed and its outcome is not reported (another worker may run the job)");
        }
        Ended::Aborted => {
            let what = format!(
                "the worker stopped (--drain-timeout) after {elapsed}; the command was killed"
            );
            report_failure(lease, failure_message(&what, &err.bytes)).await;
        }
    }
}

/// A run time: `85ms`, `2.4s`, then kubectl-style ages (`5m12s`).
pub fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        human_age(d)
    }
}

/// Fail(retryable) with `error`, and log the outcome.
async fn report_failure(lease: Lease, error: String) {
    let job = lease.job_id().to_string();
    match lease.fail(error.clone(), true, None).await {
        Ok(FailOutcome::Retrying { ready_at_ms }) => {
            let wait = ready_at_ms.saturating_sub(crate::output::now_ms());
            tracing::warn!(job_id = %job, "failed: {error}; retry in {}", human_age(Duration::from_millis(wait)));
        }
        Ok(FailOutcome::Dead) => {
            tracing::warn!(job_id = %job, "failed: {error}; retries used up, the job is in the dead-letter queue (`aofctl dlq list`)");
        }
        Err(e) => report_finish_error(&job, "failure", &e),
    }
}

fn report_finish_error(job: &str, what: &str, e: &WorkerError) {
    if e.is_lease_lost() {
        tracing::warn!(job_id = %job, "{what} not recorded: {e} (the command outlived its lease, or another worker finished the job)");
    } else {
        tracing::error!(job_id = %job, "{what} not recorded: {e}; the lease will expire and the job will be retried");
    }
}

/// A lease that was not started before the worker stopped: hand it back.
async fn give_back(lease: Lease, worker_id: &str) {
    let job = lease.job_id().to_string();
    match lease
        .fail(
            format!("worker {worker_id} stopped before starting the job"),
            true,
            None,
        )
        .await
    {
        Ok(_) => tracing::info!(job_id = %job, "not started; handed back to the queue"),
        Err(e) => report_finish_error(&job, "hand-back", &e),
    }
}

pub async fn run(args: WorkerArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Shutdown::new().context("installing SIGINT/SIGTERM handlers")?;
    let endpoints = args.endpoints(global);
    let mut builder = Worker::builder(endpoints.clone())
        .targets(args.targets.clone())
        .max_in_flight(args.concurrency);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let mut worker = builder.start().context(
        "cannot start the worker (check --endpoint / --grpc-endpoint / AOF_GRPC_ENDPOINT)",
    )?;
    let ctx = Arc::new(Ctx {
        command: args.command.clone(),
        worker_id: worker.worker_id().to_string(),
        task_timeout: args.task_timeout,
        slots: Semaphore::new(args.concurrency as usize),
    });
    tracing::info!(
        worker_id = %ctx.worker_id,
        endpoints = %endpoints.join(","),
        targets = %if args.targets.is_empty() { "(all)".to_string() } else { args.targets.join(",") },
        concurrency = args.concurrency,
        "waiting for jobs; command: {}",
        args.command.join(" ")
    );
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let mut jobs = JoinSet::new();
    let started = Instant::now();
    let mut hinted = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let name = loop {
        tokio::select! {
            name = signals.recv() => break name,
            lease = worker.next() => match lease {
                Some(lease) => {
                    jobs.spawn(run_job(lease, ctx.clone(), phase_rx.clone()));
                }
                None => break "the end of the lease stream",
            },
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("a job task failed: {e}");
                }
            }
            _ = tick.tick() => {
                if worker.connected_endpoint().is_some() {
                    hinted = true;
                } else if !hinted && started.elapsed() >= UNREACHABLE_HINT_AFTER {
                    hinted = true;
                    tracing::warn!(
                        "no node reachable at {} yet (still trying); is the cluster running? Point the worker at the nodes' gRPC addresses \
                         (spec.cluster.grpc_addr) with --endpoint or AOF_GRPC_ENDPOINT",
                        endpoints.join(",")
                    );
                }
            }
        }
    };

    // Drain: no new leases; give back those not started; let running commands end.
    worker.stop();
    phase_tx.send_replace(Phase::Draining);
    while let Ok(Some(lease)) = tokio::time::timeout(Duration::from_secs(2), worker.next()).await {
        let id = ctx.worker_id.clone();
        jobs.spawn(async move { give_back(lease, &id).await });
    }
    drop(worker);
    match jobs.len() {
        0 => tracing::info!("received {name}: no job running"),
        running => tracing::info!(
            "received {name}: no new jobs; waiting up to {} for {running} job(s) (signal again to stop them now)",
            human_age(args.drain_timeout)
        ),
    }
    let drained = tokio::select! {
        r = tokio::time::timeout(args.drain_timeout, async { while jobs.join_next().await.is_some() {} }) => r.is_ok(),
        name = signals.recv() => {
            tracing::warn!("received {name} again");
            false
        }
    };
    if !drained {
        tracing::warn!(
            "stopping {} running command(s); their jobs are reported failed and will be retried",
            jobs.len()
        );
        phase_tx.send_replace(Phase::Abort);
        // Bounded: each job kills its command, then reports (with its own retry bound).
        let _ = tokio::time::timeout(Duration::from_secs(40), async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
    }
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_become_environment_names() {
        assert_eq!(env_name("pr_number"), "PR_NUMBER");
        assert_eq!(env_name("a-b.c"), "A_B_C");
    }

    #[test]
    fn a_job_is_described_in_the_environment() {
        let ctx: BTreeMap<String, String> = [
            ("action", "opened"),
            ("repo_full_name", "acme/api"),
            ("issue_labels", "[\"bug\"]"),
            ("comment_body", "a\0b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env: BTreeMap<String, String> = job_env(
            "12-0", 12, "d-1", "issues", "all", "agent", "helper", "", &ctx, 2, 99, "", "w-1",
        )
        .into_iter()
        .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AOF_EVENT"), Some("issues"));
        assert_eq!(get("AOF_ACTION"), Some("opened"));
        assert_eq!(get("AOF_REPO"), Some("acme/api"));
        assert_eq!(get("AOF_DELIVERY_ID"), Some("d-1"));
        assert_eq!(get("AOF_EVENT_ID"), Some("12"));
        assert_eq!(get("AOF_JOB_ID"), Some("12-0"));
        assert_eq!(get("AOF_ATTEMPT"), Some("2"));
        assert_eq!(get("AOF_TARGET"), Some("helper"));
        assert_eq!(get("AOF_TARGET_KIND"), Some("agent"));
        assert_eq!(get("AOF_TRIGGER"), Some("all"));
        assert_eq!(get("AOF_PARAMS"), Some("null"));
        assert_eq!(get("AOF_FENCING_TOKEN"), Some("99"));
        assert_eq!(get("AOF_CTX_ISSUE_LABELS"), Some("[\"bug\"]"));
        assert_eq!(get("AOF_CTX_COMMENT_BODY"), Some("ab"));
        assert_eq!(get("TRACEPARENT"), None);
        // A push has no action: the variable is set, empty.
        let env = job_env(
            "1-0",
            1,
            "d",
            "push",
            "t",
            "flow",
            "f",
            "{\"a\":1}",
            &BTreeMap::new(),
            1,
            1,
            "00-x",
            "w",
        );
        assert!(env.contains(&("AOF_ACTION".into(), String::new())));
        assert!(env.contains(&("AOF_PARAMS".into(), "{\"a\":1}".into())));
        assert!(env.contains(&("TRACEPARENT".into(), "00-x".into())));
    }

    #[test]
    fn results_are_cut_at_64_kib_on_a_character_boundary() {
        assert_eq!(result_text(b"hello\n"), "hello\n");
        let big = "é".repeat(MAX_RESULT_BYTES); // 2 bytes each
        let r = result_text(big.as_bytes());
        assert!(
            r.len() <= MAX_RESULT_BYTES && r.len() >= MAX_RESULT_BYTES - 4,
            "{}",
            r.len()
        );
        assert!(r.chars().all(|c| c == 'é'));
    }

    #[test]
    fn run_times_read_well() {
        assert_eq!(took(Duration::from_millis(85)), "85ms");
        assert_eq!(took(Duration::from_millis(2440)), "2.4s");
        assert_eq!(took(Duration::from_secs(312)), "5m12s");
    }

    #[test]
    fn failures_quote_the_stderr_tail() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9");
        assert_eq!(
            failure_message("exit status 3", b"  boom\n"),
            "exit status 3; stderr: boom"
        );
        assert_eq!(
            failure_message("exit status 1", b""),
            "exit status 1 (no stderr output)"
        );
    }

    #[tokio::test]
    async fn capture_keeps_the_head_or_the_tail() {
        let data: Vec<u8> = (0..100u8).collect();
        let head = Arc::new(Mutex::new(Captured::default()));
        capture(&data[..], head.clone(), 10, false).await;
        let h = std::mem::take(&mut *head.lock().unwrap());
        assert_eq!((h.bytes, h.total), ((0..10).collect::<Vec<u8>>(), 100));
        let tail = Arc::new(Mutex::new(Captured::default()));
        capture(&data[..], tail.clone(), 10, true).await;
        assert_eq!(tail.lock().unwrap().bytes, (90..100).collect::<Vec<u8>>());
    }
}
