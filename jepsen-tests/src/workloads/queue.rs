//! The queue workload.
//!
//! *Producers* post signed GitHub `push` deliveries with unique ids to random
//! nodes (`post`: 202/200-duplicate → ok, 503/timeout/cut → info, refused or 4xx →
//! fail), redeliver some indeterminate ones later (as GitHub's "Redeliver" does),
//! and after each 202 read the delivery back on another node (`status-read`).
//!
//! *Workers* are gRPC clients of `aof.v1.WorkQueue` (tonic, over the client
//! namespace): a Claim stream on a random node, re-opened elsewhere when it breaks
//! or stays idle. Each lease is recorded (`lease`) and handled by one of:
//! - normal: hold a while (extending every third of the lease timeout), `complete`;
//! - fail: `fail-job` (retryable) — the job is retried;
//! - crash: the worker drops the lease and its stream (restarts as a new
//!   incarnation) — the lease expires and the job is retried;
//! - zombie: the worker "pauses" past its lease: it waits until a linearizable
//!   read shows the job granted again under a newer token, then calls `extend`
//!   and `complete` with its old token. Correct fencing rejects both.
//!
//! During the drain (after the faults are healed) workers complete every lease at
//! once until the queue is empty.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use aof_contract::signature::sign;
use aof_proto::v1 as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

use super::{status, Ctx};
use crate::checkers::queue::FinalState;
use crate::cluster::{QueueClient, TARGET};
use crate::history::Kind;
use crate::net::Dialer;

#[derive(Clone, Debug)]
pub struct QueueOpts {
    pub producers: usize,
    /// Deliveries per second, all producers together.
    pub rate: f64,
    pub workers: usize,
    /// Probability of a status read after each 202.
    pub status_reads: f64,
    pub zombie_rate: f64,
    pub crash_rate: f64,
    pub fail_rate: f64,
    /// Longest normal hold of a lease.
    pub hold_max_ms: u64,
    /// Leases one worker holds at once (`ClaimRequest.max_in_flight`).
    pub max_in_flight: u32,
    pub lease_timeout_ms: u64,
}

impl Default for QueueOpts {
    fn default() -> Self {
        QueueOpts {
            producers: 4,
            rate: 30.0,
            workers: 3,
            status_reads: 0.5,
            zombie_rate: 0.03,
            crash_rate: 0.02,
            fail_rate: 0.05,
            hold_max_ms: 1000,
            max_in_flight: 4,
            lease_timeout_ms: 2000,
        }
    }
}

/// tonic connector: dials through the [`Dialer`] (the client namespace).
#[derive(Clone)]
struct Connector {
    dialer: Dialer,
    addr: SocketAddr,
}

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let (d, a) = (self.dialer.clone(), self.addr);
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(d.connect(a).await?)) })
    }
}

/// A lazily connecting gRPC channel to `addr`.
pub fn channel(dialer: &Dialer, addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(Connector {
            dialer: dialer.clone(),
            addr,
        })
}

pub struct Queue {
    ctx: Ctx,
    opts: QueueOpts,
    channels: Vec<Channel>,
    deliveries: AtomicU64,
    processes: AtomicU64,
    draining: AtomicBool,
    workers_stop: AtomicBool,
    redeliver: Mutex<Vec<String>>,
    handlers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Outcome of a gRPC call for the history: FAILED_PRECONDITION / NOT_FOUND /
/// INVALID_ARGUMENT are definite refusals; the rest may have been applied.
fn grpc_kind(s: &tonic::Status) -> Kind {
    match s.code() {
        tonic::Code::FailedPrecondition | tonic::Code::NotFound | tonic::Code::InvalidArgument => {
            Kind::Fail
        }
        _ => Kind::Info,
    }
}

impl Queue {
    pub fn new(ctx: Ctx, opts: QueueOpts) -> Arc<Self> {
        let channels = (0..ctx.db.len())
            .map(|i| channel(&ctx.db.dialer, ctx.db.grpc_addr(i)))
            .collect();
        Arc::new(Queue {
            ctx,
            opts,
            channels,
            deliveries: AtomicU64::new(0),
            processes: AtomicU64::new(super::LEASE_PROCESSES),
            draining: AtomicBool::new(false),
            workers_stop: AtomicBool::new(false),
            redeliver: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
        })
    }

    fn next_process(&self) -> u64 {
        self.processes.fetch_add(1, Ordering::SeqCst)
    }

    /// Producers, until the context is stopped.
    pub async fn run_producers(self: Arc<Self>) {
        let n = self.opts.producers.max(1);
        let interval = Duration::from_secs_f64(n as f64 / self.opts.rate.max(0.1));
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..n {
            let me = self.clone();
            tasks.spawn(async move {
                me.producer(super::PRODUCER_PROCESSES + p as u64, n as u64, interval)
                    .await
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Workers, until [`Queue::stop_workers`].
    pub async fn run_workers(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..self.opts.workers.max(1) {
            let me = self.clone();
            tasks.spawn(async move { me.worker(w).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn producer(&self, first: u64, stride: u64, interval: Duration) {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.ctx.seed ^ (0x7072_6f00 + 100 + first - super::PRODUCER_PROCESSES),
        );
        let mut process = first;
        let mut next = Instant::now()
            + Duration::from_millis(rng.random_range(0..=interval.as_millis() as u64));
        let n = self.ctx.db.len();
        while !self.ctx.stopped() {
            self.ctx.pace(&mut next, interval).await;
            if self.ctx.stopped() {
                break;
            }
            let redelivery = if rng.random_bool(0.3) {
                self.redeliver.lock().unwrap().pop()
            } else {
                None
            };
            let (delivery, again) = match redelivery {
                Some(d) => (d, true),
                None => (
                    format!(
                        "{}-d{}",
                        self.ctx.run,
                        self.deliveries.fetch_add(1, Ordering::SeqCst)
                    ),
                    false,
                ),
            };
            let slot = rng.random_range(0..n);
            let kind = self.post(process, &delivery, slot).await;
            match kind {
                Kind::Info => {
                    if !again {
                        self.redeliver.lock().unwrap().push(delivery.clone());
                    }
                    process += stride;
                }
                Kind::Ok if n > 1 && rng.random_bool(self.opts.status_reads.clamp(0.0, 1.0)) => {
                    let other = (slot + rng.random_range(1..n)) % n;
                    status::status_read(&self.ctx, process, &delivery, other).await;
                }
                _ => {}
            }
        }
    }

    /// Post one delivery, recorded.
    pub async fn post(&self, process: u64, delivery: &str, slot: usize) -> Kind {
        let body = json!({
            "ref": "refs/heads/main",
            "repository": { "full_name": "jepsen/queue", "name": "queue", "owner": { "login": "jepsen" } },
            "sender": { "login": "jepsen" },
            "jepsen_delivery": delivery,
        })
        .to_string();
        let headers = [
            ("content-type", "application/json".to_string()),
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", delivery.to_string()),
            (
                "x-hub-signature-256",
                sign(self.ctx.db.opts.secret.as_bytes(), body.as_bytes()),
            ),
        ];
        let node = self.ctx.db.name(slot);
        let inv = self.ctx.rec.invoke(
            process,
            "post",
            None,
            json!({ "delivery": delivery }),
            Some(&node),
        );
        let res = self
            .ctx
            .db
            .http(
                slot,
                "POST",
                "/webhook/github",
                &headers,
                body.as_bytes(),
                self.ctx.timeout,
            )
            .await;
        let (kind, value, err) = match res {
            Ok(r) if r.status == 202 || r.status == 200 => {
                let b = r.json();
                let jobs: Vec<Value> = b["jobs"].as_array().cloned().unwrap_or_default();
                (
                    Kind::Ok,
                    json!({ "delivery": delivery, "code": r.status, "event_id": b["event_id"], "status": b["status"], "duplicate": b["duplicate"], "jobs": jobs }),
                    None,
                )
            }
            Ok(r) if r.status >= 500 => (
                Kind::Info,
                Value::Null,
                Some(format!(
                    "{} {}",
                    r.status,
                    super::register::short(&r.text())
                )),
            ),
            Ok(r) => (
                Kind::Fail,
                Value::Null,
                Some(format!(
                    "{} {}",
                    r.status,
                    super::register::short(&r.text())
                )),
            ),
            Err(e) if e.is_connect() => (Kind::Fail, Value::Null, Some(e.to_string())),
            Err(e) => (Kind::Info, Value::Null, Some(e.to_string())),
        };
        self.ctx.rec.complete(&inv, kind, value, err);
        kind
    }

    fn workers_stopped(&self) -> bool {
        self.workers_stop.load(Ordering::SeqCst)
    }

    async fn worker(self: Arc<Self>, idx: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.ctx.seed ^ (0x776f_726b_0000 + idx as u64));
        let n = self.ctx.db.len();
        let mut incarnation = 0u32;
        let idle = Duration::from_millis(self.opts.lease_timeout_ms.max(1000) * 2);
        while !self.workers_stopped() {
            let slot = rng.random_range(0..n);
            let mut client = self.ctx.db.queue_client(self.channels[slot].clone());
            let worker_id = format!("{}-w{idx}.{incarnation}", self.ctx.run);
            incarnation += 1;
            let req = pb::ClaimRequest {
                worker_id: worker_id.clone(),
                targets: vec![TARGET.to_string()],
                max_in_flight: self.opts.max_in_flight,
            };
            let mut stream = match tokio::time::timeout(self.ctx.timeout, client.claim(req)).await {
                Ok(Ok(r)) => r.into_inner(),
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                if self.workers_stopped() {
                    return;
                }
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(idle) => break, // idle: this node may be cut off
                };
                let lease = match msg {
                    Ok(Some(l)) => l,
                    _ => break,
                };
                let p = self.next_process();
                self.record_lease(p, &lease, &worker_id, slot);
                let draining = self.draining.load(Ordering::SeqCst);
                let r: f64 = rng.random();
                let o = &self.opts;
                if !draining && r < o.crash_rate {
                    // Crash: drop the lease and the stream; come back as a new incarnation.
                    self.ctx.rec.nemesis("worker-crash", json!({ "worker": worker_id, "job": lease.job_id, "token": lease.fencing_token }));
                    break;
                }
                let mode = if draining {
                    Mode::Now
                } else if r < o.crash_rate + o.zombie_rate {
                    Mode::Zombie
                } else if r < o.crash_rate + o.zombie_rate + o.fail_rate {
                    Mode::Fail
                } else {
                    Mode::Hold(rng.random_range(0..=o.hold_max_ms))
                };
                let me = self.clone();
                let seed = rng.random();
                let h = tokio::spawn(async move { me.handle(p, lease, mode, seed).await });
                let mut hs = self.handlers.lock().unwrap();
                hs.retain(|h| !h.is_finished());
                hs.push(h);
            }
        }
    }

    fn record_lease(&self, p: u64, l: &pb::Lease, worker: &str, slot: usize) {
        let node = self.ctx.db.name(slot);
        let v = json!({
            "job": l.job_id, "token": l.fencing_token, "delivery": l.delivery_id,
            "attempt": l.attempt, "deadline_ms": l.deadline_ms, "worker": worker,
        });
        let inv = self
            .ctx
            .rec
            .invoke(p, "lease", None, v.clone(), Some(&node));
        self.ctx.rec.complete(&inv, Kind::Ok, v, None);
    }

    fn client(&self, rng: &mut ChaCha8Rng) -> (usize, QueueClient) {
        let slot = rng.random_range(0..self.channels.len());
        (slot, self.ctx.db.queue_client(self.channels[slot].clone()))
    }

    /// A recorded Extend. Returns the outcome.
    async fn extend(
        &self,
        p: u64,
        rng: &mut ChaCha8Rng,
        l: &pb::Lease,
        seen_grant: Option<u64>,
    ) -> Kind {
        let (slot, mut c) = self.client(rng);
        let node = self.ctx.db.name(slot);
        let v = json!({ "job": l.job_id, "token": l.fencing_token, "delivery": l.delivery_id, "seen_grant": seen_grant });
        let inv = self.ctx.rec.invoke(p, "extend", None, v, Some(&node));
        let req = pb::ExtendRequest {
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            extend_ms: 0,
        };
        let (kind, value, err) = match tokio::time::timeout(self.ctx.timeout, c.extend(req)).await {
            Ok(Ok(r)) => (
                Kind::Ok,
                json!({ "deadline_ms": r.into_inner().deadline_ms }),
                None,
            ),
            Ok(Err(s)) => (
                grpc_kind(&s),
                Value::Null,
                Some(format!("{:?}: {}", s.code(), s.message())),
            ),
            Err(_) => (Kind::Info, Value::Null, Some("timed out".into())),
        };
        self.ctx.rec.complete(&inv, kind, value, err);
        kind
    }

    /// A recorded Complete, retried (bounded) while the outcome is unknown.
    async fn complete(
        &self,
        mut p: u64,
        rng: &mut ChaCha8Rng,
        l: &pb::Lease,
        seen_grant: Option<u64>,
    ) -> Kind {
        for attempt in 0..3 {
            let (slot, mut c) = self.client(rng);
            let node = self.ctx.db.name(slot);
            let v = json!({ "job": l.job_id, "token": l.fencing_token, "delivery": l.delivery_id, "seen_grant": seen_grant, "attempt": attempt });
            let inv = self.ctx.rec.invoke(p, "complete", None, v, Some(&node));
            let req = pb::CompleteRequest {
                job_id: l.job_id.clone(),
                fencing_token: l.fencing_token,
                result: "jepsen".into(),
            };
            let (kind, err) = match tokio::time::timeout(self.ctx.timeout, c.complete(req)).await {
                Ok(Ok(_)) => (Kind::Ok, None),
                Ok(Err(s)) => (
                    grpc_kind(&s),
                    Some(format!("{:?}: {}", s.code(), s.message())),
                ),
                Err(_) => (Kind::Info, Some("timed out".into())),
            };
            self.ctx.rec.complete(&inv, kind, Value::Null, err);
            if kind != Kind::Info {
                return kind;
            }
            // Crashed process; a new one retries.
            p = self.next_process();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Kind::Info
    }

    async fn fail_job(&self, p: u64, rng: &mut ChaCha8Rng, l: &pb::Lease) -> Kind {
        let (slot, mut c) = self.client(rng);
        let node = self.ctx.db.name(slot);
        let v = json!({ "job": l.job_id, "token": l.fencing_token, "delivery": l.delivery_id });
        let inv = self.ctx.rec.invoke(p, "fail-job", None, v, Some(&node));
        let req = pb::FailRequest {
            job_id: l.job_id.clone(),
            fencing_token: l.fencing_token,
            error: "jepsen: injected failure".into(),
            retryable: true,
            delay_ms: 0,
        };
        let (kind, value, err) = match tokio::time::timeout(self.ctx.timeout, c.fail(req)).await {
            Ok(Ok(r)) => (Kind::Ok, json!({ "outcome": r.into_inner().outcome }), None),
            Ok(Err(s)) => (
                grpc_kind(&s),
                Value::Null,
                Some(format!("{:?}: {}", s.code(), s.message())),
            ),
            Err(_) => (Kind::Info, Value::Null, Some("timed out".into())),
        };
        self.ctx.rec.complete(&inv, kind, value, err);
        kind
    }

    async fn handle(&self, p: u64, l: pb::Lease, mode: Mode, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match mode {
            Mode::Now => {
                self.complete(p, &mut rng, &l, None).await;
            }
            Mode::Fail => {
                self.fail_job(p, &mut rng, &l).await;
            }
            Mode::Hold(ms) => {
                let every = Duration::from_millis((self.opts.lease_timeout_ms / 3).max(100));
                let until = Instant::now() + Duration::from_millis(ms);
                let mut p = p;
                while Instant::now() + every < until && !self.workers_stopped() {
                    tokio::time::sleep(every).await;
                    match self.extend(p, &mut rng, &l, None).await {
                        Kind::Ok => {}
                        Kind::Fail => return, // lease lost: drop the work
                        _ => p = self.next_process(),
                    }
                }
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                self.complete(p, &mut rng, &l, None).await;
            }
            Mode::Zombie => {
                let seen = self.wait_for_regrant(&mut rng, &l).await;
                // Wake up, as if from a long GC pause, and carry on with the old token.
                self.ctx.rec.nemesis(
                    "zombie-wakes",
                    json!({ "job": l.job_id, "token": l.fencing_token, "newer_grant_seen": seen }),
                );
                let p2 = match self.extend(p, &mut rng, &l, seen).await {
                    Kind::Info => self.next_process(),
                    _ => p,
                };
                self.complete(p2, &mut rng, &l, seen).await;
            }
        }
    }

    /// Hold the lease without extending until a linearizable read shows the job
    /// granted under a newer token (or finished). Bounded in time. Returns the
    /// newest grant index seen.
    async fn wait_for_regrant(&self, rng: &mut ChaCha8Rng, l: &pb::Lease) -> Option<u64> {
        let limit = Instant::now() + Duration::from_millis(self.opts.lease_timeout_ms * 4 + 5000);
        while Instant::now() < limit && !self.workers_stopped() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let slot = rng.random_range(0..self.ctx.db.len());
            let Some(Some(ev)) = status::delivery(&self.ctx, &l.delivery_id, slot).await else {
                continue;
            };
            let Some(job) = ev["jobs"]
                .as_array()
                .and_then(|js| js.iter().find(|j| j["job_id"] == l.job_id.as_str()))
            else {
                continue;
            };
            let newest = job["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["state"] == "leased")
                .filter_map(|h| h["index"].as_u64())
                .max();
            if let Some(g) = newest.filter(|g| *g > l.fencing_token) {
                // Give the new holder's stream a moment to deliver it.
                tokio::time::sleep(Duration::from_millis(150)).await;
                return Some(g);
            }
            if matches!(job["state"].as_str(), Some("completed") | Some("dead")) {
                return None;
            }
        }
        None
    }

    /// Drain: workers complete at once; wait until nothing is ready, delayed or
    /// leased for the target. Gives up when the backlog has not shrunk for
    /// `stall` (or after 10 × `stall` in all).
    pub async fn drain(&self, stall: Duration) -> Result<Duration, String> {
        self.draining.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let mut empty_in_a_row = 0;
        let mut last = String::new();
        let mut best = u64::MAX;
        let mut progress_at = Instant::now();
        let mut k = 0;
        while progress_at.elapsed() < stall && start.elapsed() < stall * 10 {
            let slot = k % self.ctx.db.len();
            k += 1;
            match self
                .ctx
                .db
                .http(slot, "GET", "/v1/queue/stats", &[], b"", self.ctx.timeout)
                .await
            {
                Ok(r) if r.status == 200 => {
                    let b = r.json();
                    let pending: u64 = b["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| i["target"] == TARGET)
                        .map(|i| {
                            i["ready"].as_u64().unwrap_or(0)
                                + i["delayed"].as_u64().unwrap_or(0)
                                + i["leased"].as_u64().unwrap_or(0)
                        })
                        .sum();
                    last = format!("{pending} jobs pending");
                    if pending < best {
                        best = pending;
                        progress_at = Instant::now();
                    }
                    if pending == 0 {
                        empty_in_a_row += 1;
                        if empty_in_a_row >= 2 {
                            return Ok(start.elapsed());
                        }
                    } else {
                        empty_in_a_row = 0;
                    }
                }
                Ok(r) => last = format!("{} {}", r.status, super::register::short(&r.text())),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!(
            "queue not drained: no progress for {stall:?} (after {:.0}s): {last}",
            start.elapsed().as_secs_f64()
        ))
    }

    /// Stop the workers and their lease handlers (bounded).
    pub async fn stop_workers(&self) {
        self.workers_stop.store(true, Ordering::SeqCst);
        let handles: Vec<_> = std::mem::take(&mut *self.handlers.lock().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in handles {
            let left = deadline.saturating_duration_since(Instant::now());
            let abort = h.abort_handle();
            if tokio::time::timeout(left, h).await.is_err() {
                abort.abort();
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Now,
    Hold(u64),
    Fail,
    Zombie,
}

/// Read every event in the cluster (linearizable `GET /v1/events`, all pages),
/// retrying on other nodes, within `timeout`.
pub async fn final_state(ctx: &Ctx, timeout: Duration) -> FinalState {
    let start = Instant::now();
    let mut fin = FinalState::default();
    let mut after: Option<u64> = None;
    let mut k = 0;
    while start.elapsed() < timeout {
        let slot = k % ctx.db.len();
        let path = match after {
            Some(a) => format!("/v1/events?limit=500&after={a}"),
            None => "/v1/events?limit=500".to_string(),
        };
        match ctx
            .db
            .http(slot, "GET", &path, &[], b"", Duration::from_secs(10))
            .await
        {
            Ok(r) if r.status == 200 => {
                let b = r.json();
                fin.push_items(b["items"].as_array().map(Vec::as_slice).unwrap_or_default());
                match b["next_after"].as_u64() {
                    Some(n) => after = Some(n),
                    None => {
                        fin.complete = true;
                        return fin;
                    }
                }
            }
            _ => {
                k += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    fin
}
