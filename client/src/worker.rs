//! [`Worker`]: receive jobs from the cluster's work queue over gRPC
//! (`aof.v1.WorkQueue`), as a stream of [`Lease`] handles.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aof_client::WorkerError> {
//! use aof_client::Worker;
//! let mut worker = Worker::builder(["grpc://127.0.0.1:4001", "grpc://127.0.0.1:4002"])
//!     .worker_id("build-host-1")
//!     .targets(["code-reviewer"])
//!     .max_in_flight(4)
//!     .start()?;
//! while let Some(lease) = worker.next().await {
//!     println!("job {} for {}: {} bytes", lease.job_id(), lease.target(), lease.payload().len());
//!     lease.complete("done").await?;
//! }
//! # Ok(()) }
//! ```
//!
//! **Connection.** The worker keeps one `Claim` stream open to one node of its
//! endpoint list; any node serves it (grants are forwarded to the leader). When
//! the stream cannot be opened, fails (node down, network) or is ended by the
//! node, the worker moves to the next endpoint after a pause that doubles on each
//! consecutive failure, from 100 ms up to 5 s by default, and is short again once
//! a connection proved healthy (a lease arrived or it stayed up 10 s). It never
//! gives up; [`Worker::connected_endpoint`] tells whether a stream is open.
//!
//! **Flow control.** The cluster sends at most `max_in_flight` unfinished leases
//! to a stream. Leases still held from a previous stream (before a reconnect) do
//! not count against the new one, so right after a failover the worker can hold
//! up to `2 × max_in_flight - 1` leases; the worker waits to reconnect until it
//! holds fewer than `max_in_flight`. Callers that need a strict bound on
//! concurrent work (like `aofctl worker`) also bound it themselves; leases
//! waiting for their turn keep being extended.
//!
//! **Credentials.** [`WorkerBuilder::token`] sends `authorization: Bearer
//! <token>` with every call: a `worker` token of the cluster (possibly limited to
//! some targets) or an `admin` token. `grpcs://` endpoints use TLS, verified
//! against the system's roots or the CA of [`WorkerBuilder::ca_file`]. When every
//! endpoint in turn refuses the token (`UNAUTHENTICATED` / `PERMISSION_DENIED`),
//! retrying cannot help: the worker stops, [`Worker::next`] returns `None` and
//! [`Worker::error`] says why.
//!
//! **Stopping.** [`Worker::stop`] closes the stream; leases already received
//! are still returned by [`Worker::next`], which then returns `None`. Leases in
//! hand stay valid (their calls do not need the stream). Dropping the `Worker`
//! stops it too.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aof_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::WorkerError;
use crate::lease::{Held, Lease, LeaseOptions};
use crate::pool::{describe_status, Auth, Backoff, Pool, PoolOptions, Rotation};

/// Most leases one claim stream may hold (the nodes' limit).
pub const MAX_IN_FLIGHT: u32 = 1024;
/// Longest accepted worker id (the nodes' limit), bytes.
pub const MAX_WORKER_ID_BYTES: usize = 256;
/// A stream open this long counts as healthy (the backoff starts over).
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Configures a [`Worker`]; see [`Worker::builder`].
#[derive(Clone)]
pub struct WorkerBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca: Option<CaSource>,
    worker_id: Option<String>,
    targets: Vec<String>,
    max_in_flight: u32,
    connect_timeout: Duration,
    call_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    extend_by: Duration,
    finish_retry_for: Duration,
}

/// Where the CA of `grpcs://` endpoints comes from.
#[derive(Clone, Debug)]
enum CaSource {
    File(std::path::PathBuf),
    Pem(Vec<u8>),
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .field("worker_id", &self.worker_id)
            .field("targets", &self.targets)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// The default worker id: `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

impl WorkerBuilder {
    /// The token sent with every call (`authorization: Bearer <token>` metadata):
    /// a `worker` token of the cluster (the nodes' `AOF_WORKER_TOKEN` in the local
    /// configs) or an `admin` token. An empty string means no token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let t: String = token.into();
        self.token = Some(t.trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    /// Verify `grpcs://` endpoints against the CA certificate(s) in this PEM file
    /// (instead of the system's roots).
    pub fn ca_file(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.ca = Some(CaSource::File(path.as_ref().to_path_buf()));
        self
    }

    /// Like [`WorkerBuilder::ca_file`], with the PEM text itself.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(CaSource::Pem(pem.into()));
        self
    }

    /// Shown in each job's history (`leased to ...`). Default `<hostname>-<pid>`.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// The target names (agents, fleets, flows) to take jobs for; none (the
    /// default) = every target.
    pub fn targets<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.targets = names.into_iter().map(Into::into).collect();
        self
    }

    /// Unfinished leases the cluster sends this worker at once (1 to 1024,
    /// default 1).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Time allowed to open a TCP connection to one node (default 3 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Time allowed for one call to one node before trying the next (default
    /// 10 s; the nodes answer within their `request_timeout_ms`).
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }

    /// Pause before reconnecting: `min`, doubled on each consecutive failure, up
    /// to `max` (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// How far each heartbeat pushes the deadline; zero (the default) = the
    /// cluster's `spec.queue.lease_timeout_ms`.
    pub fn extend_by(mut self, d: Duration) -> Self {
        self.extend_by = d;
        self
    }

    /// How long [`Lease::complete`] and [`Lease::fail`] retry through transient
    /// failures (no leader, node down) before giving up (default 30 s).
    pub fn finish_retry_for(mut self, d: Duration) -> Self {
        self.finish_retry_for = d;
        self
    }

    /// Starts claiming in a background task. Must be called inside a Tokio
    /// runtime. Fails only on an unusable configuration; unreachable nodes are
    /// retried forever (see the module docs).
    pub fn start(self) -> Result<Worker, WorkerError> {
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(WorkerError::Config(format!(
                "max_in_flight must be between 1 and {MAX_IN_FLIGHT}, not {}",
                self.max_in_flight
            )));
        }
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        if worker_id.len() > MAX_WORKER_ID_BYTES {
            return Err(WorkerError::Config(format!(
                "worker id is {} bytes; at most {MAX_WORKER_ID_BYTES} are allowed",
                worker_id.len()
            )));
        }
        let ca_pem = match self.ca {
            None => None,
            Some(CaSource::Pem(pem)) => Some(pem),
            Some(CaSource::File(path)) => Some(std::fs::read(&path).map_err(|e| {
                WorkerError::Config(format!("cannot read the CA file {}: {e}", path.display()))
            })?),
        };
        let pool = Arc::new(Pool::new(
            &self.endpoints,
            PoolOptions {
                connect_timeout: self.connect_timeout,
                call_timeout: self.call_timeout,
                backoff_min: self.backoff_min,
                backoff_max: self.backoff_max,
                auth: Auth::new(self.token.as_deref())?,
                ca_pem,
            },
        )?);
        let (tx, rx) = mpsc::channel(self.max_in_flight as usize);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(None);
        let (error_tx, error) = watch::channel(None);
        let claim = Claim {
            pool,
            request: pb::ClaimRequest {
                worker_id: worker_id.clone(),
                targets: self.targets,
                max_in_flight: self.max_in_flight,
            },
            lease_opts: LeaseOptions {
                extend_ms: self.extend_by.as_millis() as u64,
                finish_retry_for: self.finish_retry_for,
            },
            held: Arc::new(Held::default()),
            tx,
            stop: stop_rx,
            connected: connected_tx,
            error: error_tx,
        };
        let task = tokio::spawn(claim.run());
        Ok(Worker {
            rx,
            stop: stop_tx,
            task,
            connected,
            error,
            worker_id,
        })
    }
}

/// A worker of the cluster's work queue: a stream of [`Lease`]s (see the module
/// docs). Implements [`futures::Stream`].
#[derive(Debug)]
pub struct Worker {
    rx: mpsc::Receiver<Lease>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    connected: watch::Receiver<Option<String>>,
    error: watch::Receiver<Option<WorkerError>>,
    worker_id: String,
}

impl Worker {
    /// A builder for a worker of the nodes at `endpoints` (`grpc://host:port`,
    /// `http://host:port` or `host:port`: the nodes' `spec.cluster.grpc_addr`).
    pub fn builder<I, S>(endpoints: I) -> WorkerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WorkerBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            token: None,
            ca: None,
            worker_id: None,
            targets: Vec::new(),
            max_in_flight: 1,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            extend_by: Duration::ZERO,
            finish_retry_for: Duration::from_secs(30),
        }
    }

    /// The next lease; `None` once stopped and every received lease was returned.
    pub async fn next(&mut self) -> Option<Lease> {
        self.rx.recv().await
    }

    /// Stops claiming (see the module docs). Idempotent.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The worker id sent to the cluster.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The endpoint whose claim stream is open, if any.
    pub fn connected_endpoint(&self) -> Option<String> {
        self.connected.borrow().clone()
    }

    /// Why the worker stopped by itself: every endpoint refused its token
    /// ([`WorkerError::Unauthenticated`] / [`WorkerError::PermissionDenied`]).
    /// `None` while it runs or after [`Worker::stop`].
    pub fn error(&self) -> Option<WorkerError> {
        self.error.borrow().clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures::Stream for Worker {
    type Item = Lease;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Lease>> {
        self.rx.poll_recv(cx)
    }
}

/// The background claim loop of one worker.
struct Claim {
    pool: Arc<Pool>,
    request: pb::ClaimRequest,
    lease_opts: LeaseOptions,
    held: Arc<Held>,
    tx: mpsc::Sender<Lease>,
    stop: watch::Receiver<bool>,
    connected: watch::Sender<Option<String>>,
    /// Set when the worker gives up (credentials refused everywhere).
    error: watch::Sender<Option<WorkerError>>,
}

/// Why the claim loop paused.
enum Lost {
    /// Stop requested, or nobody receives the leases any more.
    Stopped,
    /// The stream could not be opened or broke; the reason.
    Connection(String),
    /// The node refused the worker's credentials.
    Refused(WorkerError),
}

impl Claim {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.tx.is_closed()
    }

    async fn run(mut self) {
        let mut rotation = Rotation::new(
            self.pool.len(),
            Backoff::new(self.pool.opts.backoff_min, self.pool.opts.backoff_max),
        );
        // Consecutive endpoints that refused the credentials.
        let mut refused = 0;
        loop {
            if !self.wait_for_room().await {
                return;
            }
            let i = rotation.current();
            let opened_at = Instant::now();
            let why = match self.stream_from(i, &mut rotation).await {
                Lost::Stopped => return,
                Lost::Connection(why) => {
                    refused = 0;
                    why
                }
                Lost::Refused(e) => {
                    refused += 1;
                    if refused >= self.pool.len() {
                        tracing::error!("every endpoint refused the worker's credentials; stopping: {e}");
                        self.error.send_replace(Some(e));
                        return;
                    }
                    e.to_string()
                }
            };
            self.connected.send_replace(None);
            if opened_at.elapsed() >= STABLE_AFTER {
                rotation.healthy();
            }
            let pause = rotation.failed();
            tracing::warn!(
                endpoint = %self.pool.display(i),
                next = %self.pool.display(rotation.current()),
                "claim stream lost ({why}); reconnecting in {} ms",
                pause.as_millis()
            );
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Waits until fewer than `max_in_flight` leases are held; false = stop.
    async fn wait_for_room(&mut self) -> bool {
        loop {
            if self.stopping() {
                return false;
            }
            let freed = self.held.freed.notified();
            if self.held.get() < self.request.max_in_flight as usize {
                return true;
            }
            tokio::select! {
                _ = freed => {}
                _ = self.stop.changed() => {}
                _ = self.tx.closed() => return false,
            }
        }
    }

    /// Opens a claim stream to endpoint `i` and forwards its leases until it ends.
    async fn stream_from(&mut self, i: usize, rotation: &mut Rotation) -> Lost {
        let endpoint = self.pool.display(i).to_string();
        let mut client = self.pool.client(i);
        let call_timeout = self.pool.opts.call_timeout;
        let opened = tokio::select! {
            r = tokio::time::timeout(call_timeout, client.claim(self.request.clone())) => r,
            _ = self.stop.changed() => return Lost::Stopped,
            _ = self.tx.closed() => return Lost::Stopped,
        };
        let mut stream = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                return Lost::Refused(WorkerError::from_status(&status, self.pool.token_sent()))
            }
            Ok(Err(status)) => return Lost::Connection(describe_status(&status)),
            Err(_) => {
                return Lost::Connection(format!(
                    "no answer within {} ms",
                    call_timeout.as_millis()
                ))
            }
        };
        tracing::info!(endpoint = %endpoint, worker_id = %self.request.worker_id, "claiming jobs");
        self.connected.send_replace(Some(endpoint));
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(l)) => {
                        rotation.healthy();
                        let lease = Lease::start(l, self.pool.clone(), self.lease_opts, Some(self.held.clone()));
                        if self.tx.send(lease).await.is_err() {
                            return Lost::Stopped;
                        }
                    }
                    Ok(None) => return Lost::Connection("the node ended the stream".into()),
                    Err(status) => return Lost::Connection(describe_status(&status)),
                },
                _ = self.stop.changed() => return Lost::Stopped,
                _ = self.tx.closed() => return Lost::Stopped,
            }
        }
    }
}

#[cfg(test)]
mod tests;
