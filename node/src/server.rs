//! Running one node: open the store, start Raft, serve gRPC and HTTP, bootstrap,
//! and stop gracefully.
//!
//! [`run_with_listeners`] takes already-bound listeners so tests can bind port 0;
//! shutdown is broadcast to every task through a `watch` channel.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::config::DaemonConfig;
use crate::grpc::Services;
use crate::network::Network;
use crate::node::{LeaderOp, LeaderReply, Node, Timeouts};
use crate::store::{Store, StoreError};
use crate::types::Raft;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}; is another node already running there? Change the address in the config or stop the other process")]
    Bind { addr: String, what: &'static str, source: std::io::Error },
    #[error("cannot create the data dir {path}: {source}; check spec.cluster.data_dir / --data-dir and permissions")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid Raft settings in spec.cluster.raft: {0}")]
    RaftConfig(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
}

/// Accepted gRPC connections, with [`set_no_delay`].
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    incoming.map(|r| r.inspect(crate::http::serve::set_no_delay))
}

/// Bind the configured addresses and run the node until `shutdown` resolves.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    let http_addr = cfg.http_addr();
    let http = TcpListener::bind(&http_addr)
        .await
        .map_err(|source| ServerError::Bind { addr: http_addr.clone(), what: "HTTP, spec.server", source })?;
    let grpc_addr = cfg.spec.cluster.grpc_addr.clone();
    let grpc = TcpListener::bind(&grpc_addr)
        .await
        .map_err(|source| ServerError::Bind { addr: grpc_addr, what: "gRPC, spec.cluster.grpc_addr", source })?;
    run_with_listeners(cfg, http, grpc, shutdown).await
}

/// Run a node on the given listeners until `shutdown` resolves.
pub async fn run_with_listeners(
    cfg: DaemonConfig,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let c = &cfg.spec.cluster;
    let id = c.node_id;
    std::fs::create_dir_all(&c.data_dir)
        .map_err(|source| ServerError::DataDir { path: c.data_dir.display().to_string(), source })?;
    let store = Store::open(&c.data_dir, c.storage.cache_capacity_bytes())?;
    store.check_identity(id)?;
    let pristine = store.is_pristine()?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let raft_cfg = c.raft.openraft_config("aof-cluster").map_err(|e| ServerError::RaftConfig(e.to_string()))?;
    let network = Network::default();
    let raft = Raft::new(id, Arc::new(raft_cfg), network.clone(), store.log_store(), store.state_machine())
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let node = Arc::new(Node {
        id,
        raft: raft.clone(),
        sm: store.state_machine(),
        channels: network.channels.clone(),
        timeouts: Timeouts { request: c.raft.request_timeout() },
        startup_index: OnceLock::new(),
        queue_policy: crate::types::QueuePolicy {
            lease_timeout_ms: cfg.spec.queue.lease_timeout_ms,
            max_retries: cfg.spec.queue.max_retries,
            retry_delay_ms: cfg.spec.queue.retry_delay_ms,
            max_retry_delay_ms: cfg.spec.queue.max_retry_delay_ms,
        },
        draining: Default::default(),
        metrics: metrics.clone(),
        proposer: crate::proposer::Proposer::spawn(raft.clone(), c.raft.request_timeout(), metrics.clone()),
    });
    tracing::info!(
        node_id = id,
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        grpc = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %c.data_dir.display(),
        "node starting ({})",
        if pristine { "new data dir" } else { "existing data, resuming" }
    );

    let (stop_tx, stop_rx) = watch::channel(false);

    let services = Services::new(node.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<aof_proto::v1::raft_service_server::RaftServiceServer<Services>>().await;
    health_reporter
        .set_serving::<aof_proto::v1::work_queue_server::WorkQueueServer<crate::queue_service::QueueService>>()
        .await;
    // Built-in workers reach this node's gRPC server on the address it listens on.
    let grpc_local = grpc.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| c.grpc_addr.clone());
    let grpc_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(services.raft())
                .add_service(services.cluster())
                .add_service(crate::queue_service::QueueService::new(node.clone()).server())
                .serve_with_incoming_shutdown(no_delay(TcpListenerStream::new(grpc)), async move {
                    let _ = rx.wait_for(|s| *s).await;
                }),
        )
    };
    let (secrets, warnings) = crate::http::webhook::Secrets::from_config(&cfg);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let gateway = Arc::new(crate::http::webhook::Gateway::from_config(&cfg, secrets, metrics.clone()));
    let http_task = {
        let state = crate::http::AppState { node: node.clone(), gateway, metrics, store: store.clone() };
        // One listener serves the intake and the API until the listeners are split.
        let app = crate::http::routes::api(state.clone()).merge(crate::http::routes::intake(state));
        let opts = crate::http::serve::ServeOptions::with_timeout(Duration::from_secs(cfg.spec.server.timeout_secs.max(1)));
        tokio::spawn(crate::http::serve::run(http, app, opts, stop_rx.clone()))
    };
    // Tasks that hold the node (and so the store) until `stop_rx` fires; awaited at
    // shutdown so the data dir is free once this function returns.
    let mut background = tokio::task::JoinSet::new();
    if pristine {
        background.spawn(crate::bootstrap::run(node.clone(), c.initial_members.clone(), stop_rx.clone()));
    }
    background.spawn(learn_startup_index(node.clone(), stop_rx.clone()));
    background.spawn(propose_ticks(node.clone(), stop_rx.clone()));
    let snapshot_policy = crate::snapshot_trigger::Policy {
        every_entries: c.raft.snapshot_every,
        log_percent: c.raft.snapshot_log_percent,
        stagger_percent: crate::snapshot_trigger::stagger_percent(id),
    };
    background.spawn(crate::snapshot_trigger::run(node.clone(), store.clone(), snapshot_policy, stop_rx.clone()));
    let (stop_workers_tx, stop_workers_rx) = watch::channel(false);
    let drain_timeout = Duration::from_secs(cfg.spec.runtime.drain_timeout_secs);
    let workers_task = tokio::spawn(crate::workers::run(
        crate::workers::Pool {
            node_id: id,
            grpc_addr: grpc_local.clone(),
            concurrency: cfg.spec.runtime.max_concurrent_tasks.clamp(1, 1024) as u32,
            lease_timeout: Duration::from_millis(cfg.spec.queue.lease_timeout_ms),
            drain_timeout,
            executors: crate::workers::from_config(&cfg, trigger_lookup(&node)),
            metrics: node.metrics.clone(),
        },
        stop_workers_rx,
    ));
    if let Some(dir) = cfg.spec.triggers.directory.clone() {
        background.spawn(crate::trigger_dir::run(node.clone(), dir, cfg.spec.triggers.watch, stop_rx.clone()));
    }

    shutdown.await;
    // Drain: refuse new webhooks and report not-ready, let local jobs finish, then stop.
    node.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(node_id = id, "draining");
    let _ = stop_workers_tx.send(true);
    if tokio::time::timeout(drain_timeout + Duration::from_secs(1), workers_task).await.is_err() {
        tracing::warn!("built-in workers did not stop in time");
    }
    if node.current_leader() == Some(id) {
        // openraft 0.9 has no leadership transfer: the other voters elect a new
        // leader within the election timeout after this node stops.
        tracing::info!(node_id = id, "this node is the leader; the remaining voters will elect a new one");
    }
    tracing::info!(node_id = id, "shutting down");
    let _ = stop_tx.send(true);
    let http_res = http_task.await;
    // A log append waiting for disk space (storage alarm) would hold Raft's core
    // forever; give it up, so the node can stop.
    store.stop_waiting_for_disk();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    let grpc_res = grpc_task.await;
    let waited = tokio::time::timeout(BACKGROUND_STOP_TIMEOUT, async { while background.join_next().await.is_some() {} }).await;
    if waited.is_err() {
        tracing::warn!("background tasks did not stop within {BACKGROUND_STOP_TIMEOUT:?}; aborting them");
        background.shutdown().await;
    }
    // openraft's state-machine worker and a snapshot build still running release
    // their store handles shortly after Raft stops; the data dir stays locked until
    // the last one is gone, so wait for that (bounded) before reporting "stopped".
    drop((services, node, raft));
    if !store.wait_until_last_handle(BACKGROUND_STOP_TIMEOUT).await {
        tracing::warn!("the store is still in use {BACKGROUND_STOP_TIMEOUT:?} after stopping; the data dir stays locked until that work ends");
    }
    match http_res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServerError::Serve { what: "HTTP", message: e.to_string() }),
        Err(e) => return Err(ServerError::Serve { what: "HTTP", message: e.to_string() }),
    }
    match grpc_res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServerError::Serve { what: "gRPC", message: e.to_string() }),
        Err(e) => return Err(ServerError::Serve { what: "gRPC", message: e.to_string() }),
    }
    tracing::info!(node_id = id, "stopped");
    Ok(())
}

/// The registry as the `github` executor reads it: this node's applied state (it
/// has applied the grant of every lease it runs, so the trigger as of then). Holds
/// the node weakly, so a job still running at shutdown keeps no store handle.
fn trigger_lookup(node: &Arc<Node>) -> crate::executor::github::TriggerLookup {
    let node = Arc::downgrade(node);
    Arc::new(move |name: &str| {
        let (node, name) = (node.clone(), name.to_string());
        Box::pin(async move {
            let node = node.upgrade().ok_or("the node is stopping")?;
            node.read(crate::node::Consistency::Stale, |kv| {
                crate::sm::triggers::compiled(kv).into_iter().find(|t| t.name == name)
            })
            .await
            .map_err(|e| e.to_string())
        })
    })
}

/// How long shutdown waits for background tasks (ticks, snapshot trigger, trigger
/// directory) after Raft has stopped; they only finish an in-flight call.
const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the leader checks for due leases, delayed jobs and expired records.
const TICK_INTERVAL: Duration = Duration::from_millis(200);

/// On the leader: propose `Tick` whenever a lease deadline, a retry time or a
/// retention end has passed, so they take effect even when no traffic arrives.
async fn propose_ticks(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if node.current_leader() != Some(node.id) {
            continue;
        }
        let due = node.sm.read(|kv| {
            [crate::sm::events::next_expiry(kv), crate::sm::queue::next_due(kv)].into_iter().flatten().min()
        });
        let now = crate::node::leader_clock_ms();
        if due.is_some_and(|d| d <= now) {
            match node.write(crate::types::Command::Tick { policy: node.queue_policy }).await {
                Ok((crate::types::Response::Ticked { expired_leases, .. }, _)) => {
                    node.metrics.lease_expiries.inc_by(expired_leases);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("tick not committed: {e}"),
            }
        }
    }
}

/// Ask the leader once for its read index after start; `/ready` waits until the
/// local state machine has applied it.
async fn learn_startup_index(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        if node.current_leader().is_some() {
            if let Ok(LeaderReply::ReadIndex { index }) = node.on_leader(LeaderOp::ReadIndex).await {
                let _ = node.startup_index.set(index);
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod no_delay_tests {
    use super::*;

    /// Accepted gRPC connections have Nagle's algorithm off.
    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut incoming = std::pin::pin!(no_delay(TcpListenerStream::new(grpc)));
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
