//! Built-in workers: every node with `spec.runtime.executors` runs up to
//! `spec.runtime.max_concurrent_tasks` jobs at once for those targets. They claim
//! through the same `aof.v1.WorkQueue` gRPC API as external workers, over a
//! connection to their own node, so they follow exactly the same lease and fencing
//! rules.
//!
//! On shutdown they stop claiming and let running jobs finish for up to the drain
//! timeout; a job still running then is abandoned, and its lease expires and is
//! retried elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aof_contract::jobenv::EnvPolicy;
use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::config::{DaemonConfig, ExecutorConfig};
use crate::executor::github::{GithubActions, GithubExecutor, TriggerLookup};
use crate::executor::aof::{AofExecutor, DEFAULT_AOF_CLI};
use crate::executor::{command, ExecError, JobInput};
use crate::network::MAX_MESSAGE_BYTES;

/// How a target's jobs are run on this node.
#[derive(Clone)]
pub enum Executor {
    Command { argv: Vec<String>, timeout: Duration, env: Arc<EnvPolicy> },
    Github { actions: GithubActions, client: Result<GithubExecutor, String> },
    Aof { aof: AofExecutor, env: Arc<EnvPolicy> },
}

impl Executor {
    async fn run(&self, job: &JobInput) -> Result<String, ExecError> {
        match self {
            Executor::Command { argv, timeout, env } => command::run(argv, job, *timeout, env).await,
            Executor::Github { actions, client } => match client {
                Ok(c) => c.run(actions, job).await,
                Err(e) => Err(ExecError::retryable(e.clone())),
            },
            Executor::Aof { aof, env } => aof.run(job, env).await,
        }
    }
}

/// The environment policy of command jobs: the shared allow-list plus
/// `spec.runtime.pass_env`, never the variables this node reads its GitHub
/// tokens and webhook secrets from.
pub fn env_policy(cfg: &DaemonConfig) -> EnvPolicy {
    let policy = EnvPolicy::new(&cfg.spec.runtime.pass_env).unwrap_or_else(|e| {
        // Validation refuses such configs; keep to the default list if one gets here.
        tracing::error!("spec.runtime.pass_env: {e}; passing only the default variables to jobs");
        EnvPolicy::default()
    });
    policy.deny(cfg.secret_env_names())
}

/// The executors configured for this node, by target name. `triggers` looks up
/// the registry for the `github` executor's scope check.
pub fn from_config(cfg: &DaemonConfig, triggers: TriggerLookup) -> BTreeMap<String, Executor> {
    let rt = &cfg.spec.runtime;
    let env = Arc::new(env_policy(cfg));
    let github_client = || -> Result<GithubExecutor, String> {
        let gh = cfg.github().ok_or("a github executor needs spec.platforms.github")?;
        let token = match (&gh.token, &gh.token_env) {
            (Some(t), _) => t.expose().to_string(),
            (None, Some(env)) => std::env::var(env).map_err(|_| format!("environment variable {env} (spec.platforms.github.token_env) is not set"))?,
            (None, None) => return Err("a github executor needs spec.platforms.github.token_env".into()),
        };
        GithubExecutor::new(&gh.api_url, &token, triggers.clone())
    };
    rt.executors
        .iter()
        .map(|(target, e)| {
            let ex = match e {
                ExecutorConfig::Command { command, timeout_secs } => Executor::Command {
                    argv: command.clone(),
                    timeout: Duration::from_secs(timeout_secs.unwrap_or(rt.task_timeout_secs)),
                    env: env.clone(),
                },
                ExecutorConfig::Github { comment, labels, check_run } => {
                    let client = github_client();
                    if let Err(e) = &client {
                        tracing::warn!("executor for {target}: {e}; its jobs will fail and be retried");
                    }
                    Executor::Github {
                        actions: GithubActions { comment: comment.clone(), labels: labels.clone(), check_run: check_run.clone() },
                        client,
                    }
                }
                ExecutorConfig::Aof { aof_cli, output, timeout_secs } => {
                    let dirs = [("agent", &cfg.spec.agents), ("fleet", &cfg.spec.fleets), ("flow", &cfg.spec.flows)]
                        .into_iter()
                        .filter_map(|(kind, d)| d.directory.clone().map(|dir| (kind.to_string(), dir)))
                        .collect();
                    Executor::Aof {
                        aof: AofExecutor {
                            cli: aof_cli.clone().unwrap_or_else(|| DEFAULT_AOF_CLI.to_string()),
                            dirs,
                            output: output.clone(),
                            timeout: Duration::from_secs(timeout_secs.unwrap_or(rt.task_timeout_secs)),
                        },
                        env: env.clone(),
                    }
                }
            };
            (target.clone(), ex)
        })
        .collect()
}

/// The built-in workers' id in claims, job histories and `AOF_WORKER_ID`.
fn worker_id(node_id: u64) -> String {
    format!("node{node_id}-builtin")
}

/// Settings of the built-in worker pool.
pub struct Pool {
    pub node_id: u64,
    /// A channel to this node's own work queue (in process, see `server.rs`).
    pub channel: tonic::transport::Channel,
    pub concurrency: u32,
    pub lease_timeout: Duration,
    pub drain_timeout: Duration,
    pub executors: BTreeMap<String, Executor>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How long a stopping pool waits for leases already granted to it to arrive.
const LATE_LEASE_GRACE: Duration = Duration::from_millis(100);

/// Run the pool until `stop` fires, then drain.
pub async fn run(pool: Pool, mut stop: watch::Receiver<bool>) {
    if pool.executors.is_empty() {
        return;
    }
    let pool = Arc::new(pool);
    let mut running: JoinSet<()> = JoinSet::new();
    let targets: Vec<String> = pool.executors.keys().cloned().collect();
    tracing::info!(targets = ?targets, concurrency = pool.concurrency, "built-in workers starting");
    'outer: loop {
        let channel = pool.channel.clone();
        let mut client = WorkQueueClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = pb::ClaimRequest { worker_id: worker_id(pool.node_id), targets: targets.clone(), max_in_flight: pool.concurrency };
        let stream = tokio::select! {
            r = client.claim(req) => r,
            _ = stop.wait_for(|s| *s) => break 'outer,
        };
        match stream {
            Ok(resp) => {
                let mut leases = resp.into_inner();
                loop {
                    tokio::select! {
                        msg = leases.message() => match msg {
                            Ok(Some(lease)) => {
                                let (pool, client) = (pool.clone(), client.clone());
                                running.spawn(async move { handle(pool, client, lease).await });
                            }
                            Ok(None) | Err(_) => break,
                        },
                        Some(_) = running.join_next(), if !running.is_empty() => {}
                        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                            // Leases the leader granted us just before the stop may still be
                            // on the wire: take them and run them within the drain rather
                            // than leave them to expire. Stops at the first quiet gap.
                            while let Ok(Ok(Some(lease))) = tokio::time::timeout(LATE_LEASE_GRACE, leases.message()).await {
                                let (pool, client) = (pool.clone(), client.clone());
                                running.spawn(async move { handle(pool, client, lease).await });
                            }
                            break 'outer;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("built-in workers: claim failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Drain: no new claims (the stream is dropped); let running jobs finish.
    let n = running.len();
    if n > 0 {
        tracing::info!("draining {n} running job(s), up to {} s", pool.drain_timeout.as_secs());
        let drained = tokio::time::timeout(pool.drain_timeout, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("drain timeout: abandoning {} job(s); their leases expire and they are retried elsewhere", running.len());
            running.abort_all();
        }
    }
}

/// Run one lease: heartbeat while the executor works, then complete or fail.
async fn handle(pool: Arc<Pool>, client: WorkQueueClient<Channel>, lease: pb::Lease) {
    use tracing::Instrument as _;
    let span = tracing::info_span!("job", job_id = %lease.job_id, delivery_id = %lease.delivery_id, event_id = lease.event_id);
    crate::telemetry::set_parent(&span, &lease.traceparent);
    run_lease(pool, client, lease).instrument(span).await
}

async fn run_lease(pool: Arc<Pool>, mut client: WorkQueueClient<Channel>, lease: pb::Lease) {
    let mut job = JobInput::from(&lease);
    job.worker_id = worker_id(pool.node_id);
    let Some(executor) = pool.executors.get(&job.target).cloned() else {
        return; // not ours (cannot happen: we claim our targets only); the lease expires
    };
    let token = lease.fencing_token;
    let mut heartbeat = {
        let mut client = client.clone();
        let job_id = job.job_id.clone();
        let every = (pool.lease_timeout / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = client.extend(pb::ExtendRequest { job_id: job_id.clone(), fencing_token: token, extend_ms: 0 }).await;
                if let Err(s) = r {
                    if s.code() == tonic::Code::FailedPrecondition {
                        tracing::warn!(job_id = %job_id, "lease lost: {}", s.message());
                        return;
                    }
                }
            }
        })
    };
    let started = std::time::Instant::now();
    // The heartbeat ends only when the lease is lost (another worker may hold the
    // job now, and this one could not report anyway): stop the executor then —
    // dropping its future kills a command's process group.
    let result = tokio::select! {
        r = executor.run(&job) => r,
        _ = &mut heartbeat => {
            tracing::warn!(job_id = %job.job_id, "abandoning the job: its lease was lost");
            return;
        }
    };
    pool.metrics.job_duration_seconds.observe(started.elapsed().as_secs_f64());
    heartbeat.abort();
    let outcome = match result {
        Ok(out) => client.complete(pb::CompleteRequest { job_id: job.job_id.clone(), fencing_token: token, result: out }).await.map(|_| "completed"),
        Err(e) => client
            .fail(pb::FailRequest { job_id: job.job_id.clone(), fencing_token: token, error: e.message.clone(), retryable: e.retryable, delay_ms: 0 })
            .await
            .map(|_| "failed"),
    };
    match outcome {
        Ok(what) => tracing::info!(job_id = %job.job_id, delivery_id = %job.delivery_id, target = %job.target, "job {what}"),
        Err(s) => tracing::warn!(job_id = %job.job_id, "could not report the job's outcome: {}", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;

    use aof_proto::v1::work_queue_server::{WorkQueue, WorkQueueServer};
    use futures::Stream;
    use tonic::{Request, Response, Status};

    use super::*;

    /// A work queue that grants one lease, then refuses every heartbeat as a lost
    /// lease, and records completions and failures.
    #[derive(Default)]
    struct LosingQueue {
        granted: Mutex<bool>,
        settled: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl WorkQueue for LosingQueue {
        type ClaimStream = Pin<Box<dyn Stream<Item = Result<pb::Lease, Status>> + Send>>;

        async fn claim(&self, _req: Request<pb::ClaimRequest>) -> Result<Response<Self::ClaimStream>, Status> {
            let first = !std::mem::replace(&mut *self.granted.lock().unwrap(), true);
            let lease = pb::Lease {
                job_id: "1-0".into(),
                event_id: 1,
                delivery_id: "d-1".into(),
                event: "push".into(),
                target: Some(pb::Target { kind: "agent".into(), name: "slow".into() }),
                attempt: 1,
                fencing_token: 7,
                ..Default::default()
            };
            let leases: Vec<Result<pb::Lease, Status>> = if first { vec![Ok(lease)] } else { vec![] };
            Ok(Response::new(Box::pin(futures::stream::iter(leases).chain(futures::stream::pending()))))
        }
        async fn extend(&self, _req: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendReply>, Status> {
            Err(Status::failed_precondition("lease of job 1-0 is held by another worker (token 8)"))
        }
        async fn complete(&self, r: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteReply>, Status> {
            self.settled.lock().unwrap().push(format!("complete {}", r.into_inner().job_id));
            Ok(Response::new(Default::default()))
        }
        async fn fail(&self, r: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
            self.settled.lock().unwrap().push(format!("fail {}", r.into_inner().job_id));
            Ok(Response::new(Default::default()))
        }
        async fn stats(&self, _req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsReply>, Status> {
            Ok(Response::new(Default::default()))
        }
    }

    use futures::StreamExt as _;

    /// A lost lease stops the job: the command's whole process group is killed
    /// long before its own end, and the worker reports nothing for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_kills_the_running_command() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let queue = LosingQueue::default();
        let settled = queue.settled.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(WorkQueueServer::new(queue))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let executor = Executor::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            timeout: Duration::from_secs(600),
            env: Arc::new(EnvPolicy::default()),
        };
        let pool = Pool {
            node_id: 1,
            channel,
            concurrency: 1,
            lease_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(5),
            executors: [("slow".to_string(), executor)].into(),
            metrics: Arc::new(crate::metrics::Metrics::default()),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = tokio::spawn(run(pool, stop_rx));

        let mut pid = None;
        for _ in 0..500 {
            pid = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok());
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = pid.expect("the command starts");
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        };
        for _ in 0..500 {
            if gone() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(), "the command's child {pid} still runs after its lease was lost");
        assert!(settled.lock().unwrap().is_empty(), "a lost job is not reported: {:?}", settled.lock().unwrap());
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), workers).await.expect("the pool stops").unwrap();
        server.abort();
    }
}
