//! Running one node: open the store, start Raft, serve gRPC and HTTP, bootstrap,
//! and stop gracefully.
//!
//! [`run_with_listeners`] takes already-bound listeners so tests can bind port 0;
//! shutdown is broadcast to every task through a `watch` channel.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use std::net::SocketAddr;

use crate::auth::{Principal, Tokens, WorkerAuth};
use crate::config::{DaemonConfig, NodeAddrs, TlsConfig};
use crate::grpc::{PeerGate, Services};
use crate::http::serve::ServeOptions;
use crate::network::{Channels, Network};
use crate::node::{LeaderOp, LeaderReply, Node, NodeParts, Timeouts};
use crate::store::{Store, StoreError};
use crate::tls::{PeerTls, ServerIdentity};
use crate::types::{Member, NodeId, Raft};

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
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Tls(String),
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A channel to this node's own work queue that never leaves the process: the
/// built-in workers' (they act as an internal admin principal, so no token is needed
/// and nothing listens on a socket for them).
fn in_process_queue(
    queue: crate::queue_service::QueueService,
    stop: watch::Receiver<bool>,
) -> (tonic::transport::Channel, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<tokio::io::DuplexStream>();
    let internal = |mut req: tonic::Request<()>| {
        req.extensions_mut().insert(Principal::internal("built-in workers"));
        Ok(req)
    };
    let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(queue.server(), internal))
            .serve_with_incoming_shutdown(incoming, stopped(stop)),
    );
    let channel = tonic::transport::Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_: axum::http::Uri| {
            let (client, server) = tokio::io::duplex(1 << 20);
            let sent = tx.send(server);
            async move {
                sent.map_err(|_| std::io::Error::other("the node is stopping"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }),
    );
    (channel, task)
}

/// Accepted gRPC connections, with TCP_NODELAY.
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    incoming.map(|r| r.inspect(crate::http::serve::set_no_delay))
}

/// The four sockets of a node. **Architecture Invariant**: each serves only its own
/// role (see `docs/SECURITY.md`):
///
/// | listener | config | serves |
/// |---|---|---|
/// | `public` | `spec.server.host/port` | `POST /webhook/github`, `/health`, `/ready` |
/// | `api` | `spec.cluster.api_addr` | `/v1/*`, `/metrics` (bearer tokens) |
/// | `grpc` | `spec.cluster.grpc_addr` | `aof.v1.WorkQueue`, gRPC health (worker tokens) |
/// | `peer` | `spec.cluster.peer_addr` | Raft, forwarding, node info (mutual TLS, members only) |
pub struct Listeners {
    pub public: TcpListener,
    pub api: TcpListener,
    pub grpc: TcpListener,
    pub peer: TcpListener,
}

impl Listeners {
    /// Bind the configured addresses.
    pub async fn bind(cfg: &DaemonConfig) -> Result<Listeners, ServerError> {
        let a = cfg.bind_addrs();
        let bind = |addr: String, what: &'static str| async move {
            TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, what, source })
        };
        Ok(Listeners {
            public: bind(a.http_addr, "public, spec.server").await?,
            api: bind(a.api_addr, "API, spec.cluster.api_addr").await?,
            grpc: bind(a.grpc_addr, "workers' gRPC, spec.cluster.grpc_addr").await?,
            peer: bind(a.peer_addr, "peers, spec.cluster.peer_addr").await?,
        })
    }

    fn local_addrs(&self) -> std::io::Result<NodeAddrs<SocketAddr>> {
        Ok(NodeAddrs {
            http_addr: self.public.local_addr()?,
            api_addr: self.api.local_addr()?,
            grpc_addr: self.grpc.local_addr()?,
            peer_addr: self.peer.local_addr()?,
        })
    }
}

/// Credentials of a node, loaded at start: tokens and certificates.
struct Security {
    tokens: Arc<Tokens>,
    peer: Option<Arc<PeerTls>>,
    public: Option<ServerIdentity>,
    api: Option<ServerIdentity>,
    grpc: Option<ServerIdentity>,
}

impl Security {
    fn load(cfg: &DaemonConfig) -> Result<Security, ServerError> {
        let auth = cfg.spec.auth.resolve().map_err(|e| ServerError::Auth(e.to_string()))?;
        for w in &auth.warnings {
            tracing::warn!("{w}");
        }
        let tokens = Tokens::new(auth);
        let c = &cfg.spec.cluster;
        let peer = match &c.peer_tls {
            Some(t) => {
                let tls = PeerTls::load(&t.ca_file, &t.cert_file, &t.key_file).map_err(|e| ServerError::Tls(e.to_string()))?;
                tls.ensure_node_id(c.node_id).map_err(|e| ServerError::Tls(e.to_string()))?;
                Some(Arc::new(tls))
            }
            None => None,
        };
        if cfg.spec.auth.insecure {
            tracing::warn!(
                "spec.auth.insecure is true: {}{}; never expose this node beyond a throwaway setup",
                if tokens.is_open() { "the API and the work queue accept every caller" } else { "some tokens are optional" },
                if peer.is_none() { ", and peers talk without TLS" } else { "" }
            );
        }
        let identity = |t: &Option<TlsConfig>| -> Result<Option<ServerIdentity>, ServerError> {
            t.as_ref()
                .map(|t| ServerIdentity::load(&t.cert_file, &t.key_file).map_err(|e| ServerError::Tls(e.to_string())))
                .transpose()
        };
        Ok(Security {
            tokens: Arc::new(tokens),
            peer,
            public: identity(&cfg.spec.server.tls)?,
            api: identity(&c.api_tls)?,
            grpc: identity(&c.grpc_tls)?,
        })
    }
}

/// Bind the configured addresses and run the node until `shutdown` resolves.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    let listeners = Listeners::bind(&cfg).await?;
    run_with_listeners(cfg, listeners, shutdown).await
}

/// Run a node on the given listeners until `shutdown` resolves.
pub async fn run_with_listeners(
    cfg: DaemonConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let c = &cfg.spec.cluster;
    let id = c.node_id;
    let security = Security::load(&cfg)?;
    let bound = listeners.local_addrs().map_err(|source| ServerError::Bind { addr: "?".into(), what: "listeners", source })?;
    let advertised = cfg.self_member_bound(&bound);
    std::fs::create_dir_all(&c.data_dir)
        .map_err(|source| ServerError::DataDir { path: c.data_dir.display().to_string(), source })?;
    let store = Store::open(&c.data_dir, c.storage.cache_capacity_bytes())?;
    store.check_identity(id)?;
    let pristine = store.is_pristine()?;
    let metrics = Arc::new(crate::metrics::Metrics::for_store(&store));
    let raft_cfg = c.raft.openraft_config("aof-cluster").map_err(|e| ServerError::RaftConfig(e.to_string()))?;
    // One state-machine handle, cloned: the clones share its compiled-trigger cache, so
    // the applies, the gateway and the executors compile each trigger once.
    let sm = store.state_machine();
    let network = Network { channels: Channels::new(security.peer.clone()), state: Some(sm.clone()) };
    let raft = Raft::new(id, Arc::new(raft_cfg), network.clone(), store.log_store(), sm.clone())
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let node = Arc::new(Node::new(NodeParts {
        id,
        raft: raft.clone(),
        sm,
        channels: network.channels.clone(),
        timeouts: Timeouts { request: c.raft.request_timeout() },
        queue_policy: crate::types::QueuePolicy {
            lease_timeout_ms: cfg.spec.queue.lease_timeout_ms,
            max_retries: cfg.spec.queue.max_retries,
            retry_delay_ms: cfg.spec.queue.retry_delay_ms,
            max_retry_delay_ms: cfg.spec.queue.max_retry_delay_ms,
        },
        metrics: metrics.clone(),
        advertised: Member::from(advertised.clone()),
    }));
    tracing::info!(
        node_id = id,
        public = %bound.http_addr,
        api = %bound.api_addr,
        grpc = %bound.grpc_addr,
        peer = %bound.peer_addr,
        advertised = %Member::from(advertised.clone()),
        peer_tls = security.peer.is_some(),
        data_dir = %c.data_dir.display(),
        "node starting ({})",
        if pristine { "new data dir" } else { "existing data, resuming" }
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let timeout = Duration::from_secs(cfg.spec.server.timeout_secs.max(1));

    // Peers: Raft, forwarding, node info — mutual TLS, and only members may call.
    let services = Services::new(node.clone());
    let peer_task = {
        let initial: Vec<NodeId> = c.initial_members.iter().map(|m| m.id).collect();
        let gate = PeerGate { node: node.clone(), initial, tls: security.peer.is_some(), members_only: true };
        // Non-members may ask to join and for node info; `Forward` checks membership itself.
        let open_gate = PeerGate { members_only: false, ..gate.clone() };
        let mut builder = tonic::transport::Server::builder().timeout(c.raft.request_timeout().max(Duration::from_secs(30)));
        if let Some(tls) = &security.peer {
            builder = builder.tls_config(tls.server_config()).map_err(|e| ServerError::Tls(e.to_string()))?;
        }
        let router = builder
            .add_service(tonic::service::interceptor::InterceptedService::new(services.raft(), gate.clone()))
            .add_service(tonic::service::interceptor::InterceptedService::new(services.cluster(), open_gate));
        tokio::spawn(router.serve_with_incoming_shutdown(no_delay(TcpListenerStream::new(listeners.peer)), stopped(stop_rx.clone())))
    };

    // Workers: the work queue and gRPC health, behind worker tokens.
    let queue = crate::queue_service::QueueService::new(node.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<aof_proto::v1::work_queue_server::WorkQueueServer<crate::queue_service::QueueService>>()
        .await;
    let grpc_task = {
        let mut builder = tonic::transport::Server::builder();
        if let Some(id) = &security.grpc {
            builder = builder.tls_config(id.grpc_server_config()).map_err(|e| ServerError::Tls(e.to_string()))?;
        }
        let auth = WorkerAuth { tokens: security.tokens.clone() };
        let router = builder
            .layer(crate::refusals::CountGrpcLayer(metrics.clone()))
            .add_service(health_service)
            .add_service(tonic::service::interceptor::InterceptedService::new(queue.clone().server(), auth));
        tokio::spawn(router.serve_with_incoming_shutdown(no_delay(TcpListenerStream::new(listeners.grpc)), stopped(stop_rx.clone())))
    };
    // Built-in workers reach this node's work queue in process, never over a socket.
    let (in_process, in_process_task) = in_process_queue(queue, stop_rx.clone());

    let (secrets, warnings) = crate::http::webhook::Secrets::from_config(&cfg);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let gateway = Arc::new(crate::http::webhook::Gateway::from_config(&cfg, secrets, metrics.clone()));
    let recovery = crate::github::recovery::Recovery::from_config(&cfg, metrics.clone()).map(Arc::new);
    let state = crate::http::AppState { node: node.clone(), gateway, metrics, store: store.clone(), recovery: recovery.clone(), ui: Default::default() };
    let public_task = {
        let opts = ServeOptions { tls: security.public.as_ref().map(ServerIdentity::acceptor), ..ServeOptions::with_timeout(timeout) };
        tokio::spawn(crate::http::serve::run(listeners.public, crate::http::routes::public(state.clone()), opts, stop_rx.clone()))
    };
    let api_task = {
        let refusals = state.metrics.clone();
        let app = crate::http::routes::api(state)
            .layer(axum::middleware::from_fn_with_state(security.tokens.clone(), crate::auth::require_api))
            .layer(axum::middleware::from_fn_with_state(refusals, crate::refusals::count_api));
        let opts = ServeOptions { tls: security.api.as_ref().map(ServerIdentity::acceptor), ..ServeOptions::with_timeout(timeout) };
        tokio::spawn(crate::http::serve::run(listeners.api, app, opts, stop_rx.clone()))
    };
    // Tasks that hold the node (and so the store) until `stop_rx` fires; awaited at
    // shutdown so the data dir is free once this function returns.
    let mut background = tokio::task::JoinSet::new();
    match &c.discovery {
        Some(discovery) => {
            let d = crate::membership::Discovery { config: discovery.clone(), hostname: cfg.hostname(), tls: security.peer.clone() };
            background.spawn(crate::membership::run(node.clone(), d, stop_rx.clone()));
        }
        None if pristine => {
            background.spawn(crate::bootstrap::run(node.clone(), c.initial_members.clone(), stop_rx.clone()));
        }
        None => {}
    }
    background.spawn(learn_startup_index(node.clone(), stop_rx.clone()));
    background.spawn(propose_ticks(node.clone(), stop_rx.clone()));
    if let Some(rec) = recovery {
        background.spawn(crate::github::recovery::run(rec, node.clone(), stop_rx.clone()));
    }
    background.spawn(crate::callbacks::run(node.clone(), cfg.spec.callbacks.clone(), stop_rx.clone()));
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
            channel: in_process,
            concurrency: cfg.spec.runtime.max_concurrent_tasks.clamp(1, 1024) as u32,
            lease_timeout: Duration::from_millis(cfg.spec.queue.lease_timeout_ms),
            drain_timeout,
            executors: crate::workers::from_config(&cfg, trigger_lookup(&node)),
            metrics: node.metrics().clone(),
        },
        stop_workers_rx,
    ));
    if let Some(dir) = cfg.spec.triggers.directory.clone() {
        background.spawn(crate::trigger_dir::run(node.clone(), dir, cfg.spec.triggers.watch, stop_rx.clone()));
    }

    shutdown.await;
    // Drain: refuse new webhooks and report not-ready, let local jobs finish, then stop.
    node.begin_draining();
    tracing::info!(node_id = id, "draining");
    let _ = stop_workers_tx.send(true);
    if tokio::time::timeout(drain_timeout + Duration::from_secs(1), workers_task).await.is_err() {
        tracing::warn!("built-in workers did not stop in time");
    }
    if c.leave_on_shutdown {
        leave(&node).await;
    } else if node.current_leader() == Some(id) {
        // openraft 0.9 has no leadership transfer: the other voters elect a new
        // leader within the election timeout after this node stops.
        tracing::info!(node_id = id, "this node is the leader; the remaining voters will elect a new one");
    }
    tracing::info!(node_id = id, "shutting down");
    let _ = stop_tx.send(true);
    let http_res = (public_task.await, api_task.await);
    // A log append waiting for disk space (storage alarm) would hold Raft's core
    // forever; give it up, so the node can stop.
    store.stop_waiting_for_disk();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    let grpc_res = (grpc_task.await, peer_task.await, in_process_task.await);
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
    for (what, res) in [("public HTTP", http_res.0), ("API HTTP", http_res.1)] {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServerError::Serve { what, message: e.to_string() }),
            Err(e) => return Err(ServerError::Serve { what, message: e.to_string() }),
        }
    }
    for (what, res) in [("workers' gRPC", grpc_res.0), ("peer gRPC", grpc_res.1), ("in-process gRPC", grpc_res.2)] {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServerError::Serve { what, message: e.to_string() }),
            Err(e) => return Err(ServerError::Serve { what, message: e.to_string() }),
        }
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
                node.state_machine().trigger_cache().compiled(kv).into_iter().find(|t| t.name == name)
            })
            .await
            .map_err(|e| e.to_string())
        })
    })
}

/// `spec.cluster.leave_on_shutdown`: remove this node from the membership (through
/// the leader, which may be this node) before it stops; bounded, and logged either way.
async fn leave(node: &Node) {
    let id = node.id();
    let member = node.raft().metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if !member {
        return;
    }
    tracing::info!(node_id = id, "leaving the cluster (spec.cluster.leave_on_shutdown)");
    for attempt in 1..=5 {
        match node.remove(id).await {
            Ok(index) => {
                tracing::info!(node_id = id, log_index = index, "left the cluster");
                return;
            }
            Err(e) => {
                tracing::warn!(node_id = id, attempt, "could not leave the cluster yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::error!(node_id = id, "did not leave the cluster; remove it with `aofctl cluster leave --node-id {id}`");
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
        if node.current_leader() != Some(node.id()) {
            continue;
        }
        let due = node.read_local(|kv| {
            [crate::sm::events::next_expiry(kv), crate::sm::queue::next_due(kv)].into_iter().flatten().min()
        });
        let now = crate::node::leader_clock_ms();
        if due.is_some_and(|d| d <= now) {
            match node.propose(crate::types::Command::tick(node.queue_policy())).await {
                Ok(t) => {
                    node.metrics().lease_expiries.inc_by(t.expired_leases);
                }
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
                node.set_startup_index(index);
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
