//! `aofctl worker -- COMMAND [ARGS...]`: run a command for each job of the
//! cluster's work queue.
//!
//! The worker opens a claim stream to a node's workers' gRPC listener
//! (`--grpc-endpoint`, `AOF_GRPC_ENDPOINT` or the context's; not the API endpoint of
//! the other commands), sending its worker token (`--token`, `AOF_WORKER_TOKEN` or
//! the context's), and runs
//! COMMAND once per leased job, at most `--concurrency` at once. Each run gets the
//! webhook payload on stdin and the job in `AOF_*` environment variables, in an
//! environment cleared but for a short allow-list (`--pass-env` adds names): the
//! shared rules of [`aof_contract::jobenv`] and [`aof_contract::process`], the same
//! as the node's built-in `command` executor. While it runs, the lease is extended
//! in the background.
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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aof_client::{FailOutcome, Lease, Worker, WorkerError};
use aof_contract::jobenv::{EnvPolicy, Job};
use aof_contract::process::{
    self, describe_exit, failure_message, Ended, Finished, Spec, MAX_RESULT_BYTES,
};
use clap::Args;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::output::human_age;
use crate::signals::Shutdown;
use crate::{parse_duration, GlobalArgs};

/// Warn when no node could be reached for this long.
const UNREACHABLE_HINT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
#[command(
    after_help = "Endpoints: the worker talks gRPC to the nodes' spec.cluster.grpc_addr \
(grpc://127.0.0.1:4001-4003 for `aofctl dev`; grpcs:// for TLS, verified with --ca-file), \
not to their API. It takes the first of: --grpc-endpoint; --endpoint given on the command \
line (for this subcommand it names gRPC endpoints); $AOF_GRPC_ENDPOINT; the context's gRPC \
endpoints; grpc://127.0.0.1:4001,4002,4003. $AOF_ENDPOINT (the API) is not used.\n\n\
Token: a worker (or admin) token of the cluster: --token, else $AOF_WORKER_TOKEN, else the \
context's worker token (or its API token). $AOF_TOKEN is not used."
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

    /// Also pass these variables of the worker's environment to commands (names,
    /// or prefixes ending in `*`; repeat or comma-separate). Commands otherwise see
    /// only PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ and TMPDIR
    /// (plus the job's AOF_* variables); tokens and webhook secrets are refused.
    #[arg(long = "pass-env", value_name = "NAME", value_delimiter = ',')]
    pub pass_env: Vec<String>,

    /// On SIGINT/SIGTERM, wait this long for running commands before killing them.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// The command to run for each job, after `--`; it gets the webhook payload
    /// on stdin and the job in AOF_* environment variables.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
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
    env: EnvPolicy,
    slots: Semaphore,
}

/// The job of `lease` as the `AOF_*` environment contract sees it.
fn lease_job<'a>(lease: &'a Lease, worker_id: &'a str) -> Job<'a> {
    let target = lease.target();
    Job {
        event: lease.event(),
        delivery_id: lease.delivery_id(),
        event_id: lease.event_id(),
        job_id: lease.job_id(),
        attempt: lease.attempt(),
        target: &target.name,
        target_kind: &target.kind,
        trigger: lease.trigger(),
        params_json: lease.params_json(),
        worker_id,
        fencing_token: lease.fencing_token(),
        traceparent: lease.traceparent(),
        context: lease.context(),
    }
}

/// How a run ended, from the worker's point of view.
enum Outcome {
    Finished(Finished),
    LeaseLost(String),
    Aborted(Finished),
}

/// Resolves once the worker reaches `phase` (never, if it is gone).
async fn until(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    if rx.wait_for(|p| *p >= phase).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the command for `lease` (the shared runner: own process group, cleared
/// environment, bounded output, group killed on timeout); a lost lease or the
/// end of a drain kills the group too.
async fn execute(
    lease: &Lease,
    ctx: &Ctx,
    phase: &mut watch::Receiver<Phase>,
) -> std::io::Result<Outcome> {
    let env = ctx.env.environment(&lease_job(lease, &ctx.worker_id));
    let spec = Spec::new(
        ctx.command.clone(),
        env,
        lease.payload().to_vec(),
        ctx.task_timeout,
    );
    let mut running = process::start(spec)?;
    let killer = running.killer();
    tokio::select! {
        finished = &mut running => Ok(Outcome::Finished(finished?)),
        reason = lease.lost() => {
            killer.kill();
            let _ = running.await;
            Ok(Outcome::LeaseLost(reason))
        }
        _ = until(phase, Phase::Abort) => {
            killer.kill();
            Ok(Outcome::Aborted(running.await?))
        }
    }
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
    let outcome = match execute(&lease, &ctx, &mut phase).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("cannot run {:?}: {e}", ctx.command[0]);
            tracing::error!(job_id = %job, "{msg}; check the command after `--` and the PATH");
            report_failure(lease, msg).await;
            return;
        }
    };
    let elapsed = took(started.elapsed());
    let run = match outcome {
        Outcome::Finished(run) => run,
        Outcome::LeaseLost(reason) => {
            tracing::warn!(job_id = %job, "{reason}; the command was killed and its outcome is not reported (another worker may run the job)");
            return;
        }
        Outcome::Aborted(run) => {
            let what = format!(
                "the worker stopped (--drain-timeout) after {elapsed}; the command was killed"
            );
            report_failure(lease, failure_message(&what, &run.stderr)).await;
            return;
        }
    };
    let (out, err) = (&run.stdout, &run.stderr);
    match run.ended {
        Ended::Exited(status) if status.success() => {
            if out.total > MAX_RESULT_BYTES as u64 {
                tracing::info!(job_id = %job, "stdout was {} bytes; the result keeps the first {MAX_RESULT_BYTES}", out.total);
            }
            match lease.complete(run.result_text()).await {
                Ok(()) => {
                    tracing::info!(job_id = %job, "completed in {elapsed} ({} bytes of output)", out.total)
                }
                Err(e) => report_finish_error(&job, "completion", &e),
            }
        }
        Ended::Exited(status) => {
            let what = format!("{} after {elapsed}", describe_exit(status));
            report_failure(lease, failure_message(&what, err)).await;
        }
        Ended::TimedOut => {
            let what = format!(
                "timed out after {} (--task-timeout); the command was killed",
                human_age(ctx.task_timeout)
            );
            report_failure(lease, failure_message(&what, err)).await;
        }
        Ended::Killed => {
            report_failure(
                lease,
                failure_message(&format!("the command was killed after {elapsed}"), err),
            )
            .await;
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
    let env = EnvPolicy::new(&args.pass_env).context("--pass-env")?;
    let mut signals = Shutdown::new().context("installing SIGINT/SIGTERM handlers")?;
    let endpoints = global.conn.grpc.clone();
    let mut builder = Worker::builder(endpoints.clone())
        .token(global.conn.worker_token.clone().unwrap_or_default())
        .targets(args.targets.clone())
        .max_in_flight(args.concurrency);
    if let Some(ca) = &global.conn.ca_file {
        builder = builder.ca_file(ca);
    }
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let mut worker = builder.start().context(
        "cannot start the worker (check --grpc-endpoint / AOF_GRPC_ENDPOINT / the context, and --ca-file)",
    )?;
    let ctx = Arc::new(Ctx {
        command: args.command.clone(),
        worker_id: worker.worker_id().to_string(),
        task_timeout: args.task_timeout,
        env,
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
    let mut refused: Option<WorkerError> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let name = loop {
        tokio::select! {
            name = signals.recv() => break name,
            lease = worker.next() => match lease {
                Some(lease) => {
                    jobs.spawn(run_job(lease, ctx.clone(), phase_rx.clone()));
                }
                None => match worker.error() {
                    // Every node refused the token: nothing to drain but the jobs in hand.
                    Some(e) => {
                        refused = Some(e);
                        break "a refused token";
                    }
                    None => break "the end of the lease stream",
                },
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
                         (spec.cluster.grpc_addr) with --grpc-endpoint, AOF_GRPC_ENDPOINT or a context",
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
    if let Some(e) = refused {
        return Err(anyhow::Error::new(e).context("the cluster refused the worker"));
    }
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_read_well() {
        assert_eq!(took(Duration::from_millis(85)), "85ms");
        assert_eq!(took(Duration::from_millis(2440)), "2.4s");
        assert_eq!(took(Duration::from_secs(312)), "5m12s");
    }
}
