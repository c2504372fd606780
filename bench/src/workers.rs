//! Workers that finish every job at once, so the queue path (lease / message
//! delivery, completion / ack) is measured without any job work in it.
//!
//! - aof-cluster: `aof.v1.WorkQueue` over gRPC. Each worker opens a `Claim` stream
//!   with `max_in_flight` to one node (workers spread over all nodes) and calls
//!   `Complete` for each lease as soon as it arrives.
//! - JetStream: each worker pulls from the shared durable work-queue consumer over its
//!   own connection (spread over all servers) and acks each message with a
//!   confirmed ack (`AckSync`, the analogue of a committed `Complete`).
//!
//! Both record event→claim and event→complete in the [`Phases`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tonic::metadata::{Ascii, MetadataValue};
use tokio::task::JoinHandle;

use crate::load::Phases;

/// Errors the workers met (stream breaks, failed completions), for the report.
#[derive(Default)]
pub struct WorkerStats {
    pub leases: AtomicU64,
    pub completes: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Workers {
    pub stats: Arc<WorkerStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// `n` gRPC workers; worker i talks to `grpc_urls[i % len]`, sending `token`
/// (`authorization: Bearer` metadata) with every call.
pub fn start_aof(grpc_urls: &[String], token: &str, n: usize, max_in_flight: u32, phases: Arc<Phases>) -> Workers {
    let (stop, stop_rx) = watch::channel(false);
    let stats = Arc::new(WorkerStats::default());
    let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse().expect("a hex token is valid metadata");
    let tasks = (0..n)
        .map(|i| {
            let url = grpc_urls[i % grpc_urls.len()].clone();
            tokio::spawn(aof_worker(i, url, auth.clone(), max_in_flight, phases.clone(), stats.clone(), stop_rx.clone()))
        })
        .collect();
    Workers { stats, stop, tasks }
}

async fn aof_worker(
    i: usize,
    url: String,
    auth: MetadataValue<Ascii>,
    max_in_flight: u32,
    phases: Arc<Phases>,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    // Reconnects (bounded by `stop`) when the stream or the connection breaks.
    while !*stop.borrow() {
        let channel = match tonic::transport::Endpoint::from_shared(url.clone()).expect("valid url").tcp_nodelay(true).connect().await {
            Ok(c) => c,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let token = auth.clone();
        let with_token = move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", token.clone());
            Ok(req)
        };
        let mut client = WorkQueueClient::with_interceptor(channel, with_token).max_decoding_message_size(64 * 1024 * 1024);
        let req = pb::ClaimRequest { worker_id: format!("aof-bench-{i}"), targets: vec![], max_in_flight };
        let mut stream = match client.claim(req).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return,
            };
            let lease = match msg {
                Ok(Some(l)) => l,
                Ok(None) | Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            let now = Instant::now();
            stats.leases.fetch_add(1, Ordering::Relaxed);
            phases.on_claim(&lease.delivery_id, now);
            let (mut c, phases, stats) = (client.clone(), phases.clone(), stats.clone());
            tokio::spawn(async move {
                let req = pb::CompleteRequest { job_id: lease.job_id, fencing_token: lease.fencing_token, result: String::new() };
                match tokio::time::timeout(Duration::from_secs(10), c.complete(req)).await {
                    Ok(Ok(_)) => {
                        stats.completes.fetch_add(1, Ordering::Relaxed);
                        phases.on_complete(&lease.delivery_id, Instant::now());
                    }
                    _ => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` JetStream pull workers on the durable consumer `consumer` of `stream`;
/// worker i uses `clients[i % len]`.
pub fn start_nats(
    clients: &[async_nats::Client],
    stream: &str,
    consumer: &str,
    n: usize,
    max_in_flight: u32,
    phases: Arc<Phases>,
) -> Workers {
    let (stop, stop_rx) = watch::channel(false);
    let stats = Arc::new(WorkerStats::default());
    let tasks = (0..n)
        .map(|i| {
            let js = async_nats::jetstream::new(clients[i % clients.len()].clone());
            tokio::spawn(nats_worker(js, stream.to_string(), consumer.to_string(), max_in_flight, phases.clone(), stats.clone(), stop_rx.clone()))
        })
        .collect();
    Workers { stats, stop, tasks }
}

async fn nats_worker(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
    max_in_flight: u32,
    phases: Arc<Phases>,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    use async_nats::jetstream::consumer::PullConsumer;
    // Like max_in_flight on a Claim stream: at most this many unacked messages here.
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    while !*stop.borrow() {
        let consumer: PullConsumer = match async {
            js.get_stream(&stream).await.map_err(|e| e.to_string())?.get_consumer(&consumer).await.map_err(|e| e.to_string())
        }
        .await
        {
            Ok(c) => c,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut messages = match consumer.stream().max_messages_per_batch(max_in_flight as usize).messages().await {
            Ok(m) => m,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => p.expect("semaphore open"),
                _ = stop.changed() => return,
            };
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = stop.changed() => return,
            };
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            let now = Instant::now();
            stats.leases.fetch_add(1, Ordering::Relaxed);
            let id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
            phases.on_claim(&id, now);
            let (phases, stats) = (phases.clone(), stats.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), msg.double_ack()).await {
                    Ok(Ok(())) => {
                        stats.completes.fetch_add(1, Ordering::Relaxed);
                        phases.on_complete(&id, Instant::now());
                    }
                    _ => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
