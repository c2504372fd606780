//! The load: real GitHub webhook payloads, signed, each with a unique delivery id,
//! sent to aof-cluster over keep-alive HTTP/1.1 (or published to JetStream with an
//! ack), in a closed loop (C senders back to back) or an open loop (a fixed rate,
//! latency measured from each request's *intended* send time, so a stalled system
//! is not hidden by the load generator waiting for it — no coordinated omission).
//!
//! Every delivery id is `<phase prefix><seq>`; the [`Phase`] keeps the intended send
//! time of each seq so the workers can measure event→lease and event→complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aof_contract::signature::sign;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::Semaphore;

/// One request may take this long before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: requests outstanding at once at most; beyond, dispatch waits (and
/// the wait counts in the latency, which is measured from the intended time).
pub const MAX_OUTSTANDING: usize = 4096;

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// A fixture: event name, body, and its `X-Hub-Signature-256`.
pub struct Payload {
    pub event: String,
    pub body: Bytes,
    pub signature: String,
}

pub struct Payloads {
    pub items: Vec<Payload>,
}


/// Where the fixtures are: `AOF_FIXTURES_DIR`, else `shared/` beside the repository
/// (`../../shared/...` from this crate), else `../shared/...`.
pub fn fixtures_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("AOF_FIXTURES_DIR") {
        return Ok(PathBuf::from(p));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in ["../../shared/fixtures/github-webhooks", "../shared/fixtures/github-webhooks"] {
        let p = manifest.join(rel);
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!("no webhook fixtures found: set AOF_FIXTURES_DIR or put shared/fixtures/github-webhooks beside the repository")
}

impl Payloads {
    /// Every `<event>/<NN-action>.json` under `dir`, except `ping` (never stored),
    /// sorted by path so runs are repeatable; each signed with `secret`.
    pub fn load(dir: &Path, secret: &[u8]) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        for ev in std::fs::read_dir(dir).with_context(|| format!("reading fixtures dir {}", dir.display()))? {
            let ev = ev?;
            if !ev.file_type()?.is_dir() || ev.file_name() == "ping" {
                continue;
            }
            for f in std::fs::read_dir(ev.path())? {
                let p = f?.path();
                if p.extension().is_some_and(|e| e == "json") {
                    files.push((ev.file_name().to_string_lossy().to_string(), p));
                }
            }
        }
        files.sort_by(|a, b| a.1.cmp(&b.1));
        let mut items = Vec::with_capacity(files.len());
        for (event, path) in files {
            let body = Bytes::from(std::fs::read(&path)?);
            if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                continue;
            }
            let signature = sign(secret, &body);
            items.push(Payload { event, body, signature });
        }
        if items.is_empty() {
            bail!("no JSON fixtures under {}", dir.display());
        }
        Ok(Payloads { items })
    }

    /// The payload of request `seq`. A stride co-prime with the count spreads sizes
    /// and event types evenly over time and over nodes.
    pub fn get(&self, seq: u64) -> &Payload {
        &self.items[(seq.wrapping_mul(7919) % self.items.len() as u64) as usize]
    }

    /// "N payloads of M event types, sizes min/median/mean/max".
    pub fn describe(&self) -> String {
        let mut sizes: Vec<usize> = self.items.iter().map(|p| p.body.len()).collect();
        sizes.sort_unstable();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        let mut events: Vec<&str> = self.items.iter().map(|p| p.event.as_str()).collect();
        events.sort_unstable();
        events.dedup();
        format!(
            "{} payloads of {} event types, {:.1} / {:.1} / {:.1} / {:.1} KiB (min / median / mean / max)",
            sizes.len(),
            events.len(),
            sizes[0] as f64 / 1024.0,
            sizes[sizes.len() / 2] as f64 / 1024.0,
            mean / 1024.0,
            sizes[sizes.len() - 1] as f64 / 1024.0
        )
    }
}

// ---------------------------------------------------------------------------
// Phase: what happened to each delivery of one load run
// ---------------------------------------------------------------------------

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lat {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        if h.is_empty() {
            return Lat::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Lat {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

const CLAIMED: u8 = 1;
const COMPLETED: u8 = 2;

/// One load run. Delivery ids are `prefix + seq`, seq in `0..cap`.
pub struct Phase {
    pub prefix: String,
    t0: Instant,
    cap: u64,
    /// 0 = not sent; else `(offset_ns + 1) << 1 | measured`.
    sent: Vec<AtomicU64>,
    flags: Vec<AtomicU8>,
    /// Deliveries sent inside the measurement window (set by the load loop).
    pub http: Mutex<Histogram<u64>>,
    pub claim: Mutex<Histogram<u64>>,
    pub complete: Mutex<Histogram<u64>>,
    pub accepted: AtomicU64,
    pub measured_accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub claimed: AtomicU64,
    pub completed: AtomicU64,
    pub measured_completed: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

impl Phase {
    pub fn new(prefix: String, cap: u64) -> Arc<Phase> {
        Arc::new(Phase {
            prefix,
            t0: Instant::now(),
            cap,
            sent: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            flags: (0..cap).map(|_| AtomicU8::new(0)).collect(),
            http: Mutex::new(new_hist()),
            claim: Mutex::new(new_hist()),
            complete: Mutex::new(new_hist()),
            accepted: AtomicU64::new(0),
            measured_accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            measured_completed: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
        })
    }

    pub fn delivery_id(&self, seq: u64) -> String {
        format!("{}{seq}", self.prefix)
    }

    fn mark_sent(&self, seq: u64, intended: Instant, measured: bool) {
        let ns = intended.saturating_duration_since(self.t0).as_nanos() as u64;
        self.sent[seq as usize].store(((ns + 1) << 1) | u64::from(measured), Ordering::Release);
    }

    /// Intended send time of `seq` and whether it was sent in the window.
    fn sent_at(&self, seq: u64) -> Option<(Instant, bool)> {
        let v = self.sent.get(seq as usize)?.load(Ordering::Acquire);
        (v != 0).then(|| (self.t0 + Duration::from_nanos((v >> 1) - 1), v & 1 == 1))
    }

    fn record_response(&self, outcome: Outcome, intended: Instant, measured: bool) {
        let now = Instant::now();
        match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                if measured {
                    self.measured_accepted.fetch_add(1, Ordering::Relaxed);
                    let us = now.saturating_duration_since(intended).as_micros() as u64;
                    self.http.lock().unwrap().saturating_record(us.max(1));
                }
            }
            Outcome::Status(code, body) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.sample_error(format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()));
            }
            Outcome::Error(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.sample_error(e);
            }
        }
    }

    fn sample_error(&self, e: String) {
        let mut s = self.error_samples.lock().unwrap();
        if s.len() < 5 {
            s.push(e);
        }
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples.lock().unwrap().clone()
    }

    /// A worker got the lease / message of delivery `seq`.
    pub fn on_claim(&self, seq: u64, at: Instant) {
        let Some((sent, measured)) = self.sent_at(seq) else { return };
        if self.flags[seq as usize].fetch_or(CLAIMED, Ordering::AcqRel) & CLAIMED != 0 {
            return; // a redelivery: count the first claim only
        }
        self.claimed.fetch_add(1, Ordering::Relaxed);
        if measured {
            self.claim.lock().unwrap().saturating_record((at.saturating_duration_since(sent).as_micros() as u64).max(1));
        }
    }

    /// The completion of delivery `seq` was acknowledged (committed / acked).
    pub fn on_complete(&self, seq: u64, at: Instant) {
        let Some((sent, measured)) = self.sent_at(seq) else { return };
        if self.flags[seq as usize].fetch_or(COMPLETED, Ordering::AcqRel) & COMPLETED != 0 {
            return;
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        if measured {
            self.measured_completed.fetch_add(1, Ordering::Relaxed);
            self.complete.lock().unwrap().saturating_record((at.saturating_duration_since(sent).as_micros() as u64).max(1));
        }
    }
}

/// The phases a worker may see deliveries of, by prefix.
#[derive(Default)]
pub struct Phases {
    map: RwLock<HashMap<String, Arc<Phase>>>,
}

impl Phases {
    pub fn add(&self, p: Arc<Phase>) {
        self.map.write().unwrap().insert(p.prefix.clone(), p);
    }

    /// The phase and seq of a delivery id (`<prefix><seq>`, prefix ends with '-').
    pub fn lookup(&self, delivery_id: &str) -> Option<(Arc<Phase>, u64)> {
        let cut = delivery_id.rfind('-')? + 1;
        let seq = delivery_id[cut..].parse().ok()?;
        let p = self.map.read().unwrap().get(&delivery_id[..cut])?.clone();
        Some((p, seq))
    }

    pub fn on_claim(&self, delivery_id: &str, at: Instant) {
        if let Some((p, seq)) = self.lookup(delivery_id) {
            p.on_claim(seq, at);
        }
    }

    pub fn on_complete(&self, delivery_id: &str, at: Instant) {
        if let Some((p, seq)) = self.lookup(delivery_id) {
            p.on_complete(seq, at);
        }
    }
}

// ---------------------------------------------------------------------------
// Senders
// ---------------------------------------------------------------------------

pub enum Outcome {
    /// 202 from aof-cluster; a publish ack from JetStream.
    Accepted,
    Status(u16, String),
    Error(String),
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(MAX_OUTSTANDING)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// A simple request for setup calls: (status, body).
pub async fn http_call(
    client: &HttpClient,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, String)> {
    let mut b = hyper::Request::builder().method(method).uri(url);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let req = b.body(Full::new(body))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await.context("timed out")??;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await.context("timed out")??.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub struct HttpSender {
    pub client: HttpClient,
    /// `http://IP:port/webhook/github` of every node.
    pub uris: Vec<hyper::Uri>,
    pub payloads: Arc<Payloads>,
}

impl HttpSender {
    async fn send(&self, seq: u64, delivery_id: &str) -> Outcome {
        let p = self.payloads.get(seq);
        let uri = self.uris[(seq % self.uris.len() as u64) as usize].clone();
        let req = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/aof-bench")
            .header("x-github-event", p.event.as_str())
            .header("x-github-delivery", delivery_id)
            .header("x-hub-signature-256", p.signature.as_str())
            .body(Full::new(p.body.clone()))
            .expect("valid request");
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            // Read the body so the connection goes back to the pool.
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Outcome::Error("request timed out".into()),
            Ok(Err(e)) => Outcome::Error(e),
            Ok(Ok((202, _))) => Outcome::Accepted,
            Ok(Ok((code, body))) => Outcome::Status(code, String::from_utf8_lossy(&body).into_owned()),
        }
    }
}

pub struct NatsSender {
    /// One JetStream context per server connection; requests go round-robin.
    pub contexts: Vec<async_nats::jetstream::Context>,
    pub payloads: Arc<Payloads>,
}

impl NatsSender {
    async fn send(&self, seq: u64, delivery_id: &str) -> Outcome {
        let p = self.payloads.get(seq);
        let js = &self.contexts[(seq % self.contexts.len() as u64) as usize];
        let mut headers = async_nats::HeaderMap::new();
        // JetStream's dedup (like X-GitHub-Delivery in aof-cluster).
        headers.insert("Nats-Msg-Id", delivery_id);
        headers.insert("X-GitHub-Event", p.event.as_str());
        let call = async {
            let ack = js
                .publish_with_headers(format!("webhooks.{}", p.event), headers, p.body.clone())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Outcome::Error("publish timed out".into()),
            Ok(Err(e)) => Outcome::Error(e),
            Ok(Ok(ack)) if ack.duplicate => Outcome::Status(200, "duplicate".into()),
            Ok(Ok(_)) => Outcome::Accepted,
        }
    }
}

#[derive(Clone)]
pub enum Sender {
    Http(Arc<HttpSender>),
    Nats(Arc<NatsSender>),
}

impl Sender {
    pub async fn send(&self, seq: u64, delivery_id: &str) -> Outcome {
        match self {
            Sender::Http(h) => h.send(seq, delivery_id).await,
            Sender::Nats(n) => n.send(seq, delivery_id).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Loops
// ---------------------------------------------------------------------------

/// Counters over the measurement window of one loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub secs: f64,
    /// 202s (acks) received during the window.
    pub accepted: u64,
    /// Completions acknowledged during the window (any delivery of the phase).
    pub completed: u64,
    /// Requests that were sent in the window.
    pub sent: u64,
}

impl Window {
    pub fn accepted_rate(&self) -> f64 {
        self.accepted as f64 / self.secs
    }
    pub fn completed_rate(&self) -> f64 {
        self.completed as f64 / self.secs
    }
}

async fn measure_window(phase: &Phase, mstart: Instant, end: Instant) -> Window {
    tokio::time::sleep_until(mstart.into()).await;
    let (a0, c0) = (phase.accepted.load(Ordering::Relaxed), phase.completed.load(Ordering::Relaxed));
    tokio::time::sleep_until(end.into()).await;
    let (a1, c1) = (phase.accepted.load(Ordering::Relaxed), phase.completed.load(Ordering::Relaxed));
    Window { secs: end.duration_since(mstart).as_secs_f64(), accepted: a1 - a0, completed: c1 - c0, sent: 0 }
}

/// `concurrency` senders, each sending its next request as soon as the previous one
/// is answered, for `warmup + duration`; latencies of requests started after the
/// warm-up are recorded. Bounded by time and by the phase's capacity.
pub async fn closed_loop(sender: Sender, phase: Arc<Phase>, concurrency: usize, warmup: Duration, duration: Duration) -> Window {
    let start = Instant::now();
    let (mstart, end) = (start + warmup, start + warmup + duration);
    let next = Arc::new(AtomicU64::new(0));
    let sent_in_window = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (sender, phase, next, siw) = (sender.clone(), phase.clone(), next.clone(), sent_in_window.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= phase.cap {
                    break;
                }
                let measured = t >= mstart;
                if measured {
                    siw.fetch_add(1, Ordering::Relaxed);
                }
                phase.mark_sent(seq, t, measured);
                let outcome = sender.send(seq, &phase.delivery_id(seq)).await;
                let failed = !matches!(outcome, Outcome::Accepted);
                phase.record_response(outcome, t, measured);
                if failed {
                    // Don't spin on a refusing system.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let mut w = measure_window(&phase, mstart, end).await;
    for t in tasks {
        let _ = t.await;
    }
    w.sent = sent_in_window.load(Ordering::Relaxed);
    w
}

/// Requests at a fixed `rate` for `warmup + duration`, request i intended at
/// `start + i / rate`; latency counts from the intended time. At most
/// [`MAX_OUTSTANDING`] requests are in flight; beyond, sending waits (and the wait
/// shows in the latency).
pub async fn open_loop(sender: Sender, phase: Arc<Phase>, rate: f64, warmup: Duration, duration: Duration) -> Window {
    let start = Instant::now() + Duration::from_millis(20);
    let (mstart, end) = (start + warmup, start + warmup + duration);
    let total = ((rate * (warmup + duration).as_secs_f64()).ceil() as u64).min(phase.cap);
    let sem = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    let window = tokio::spawn({
        let phase = phase.clone();
        async move { measure_window(&phase, mstart, end).await }
    });
    let mut tasks = Vec::with_capacity(total as usize);
    let mut sent_in_window = 0;
    for seq in 0..total {
        let intended = start + Duration::from_secs_f64(seq as f64 / rate);
        if intended >= end {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let measured = intended >= mstart;
        sent_in_window += u64::from(measured);
        phase.mark_sent(seq, intended, measured);
        let (sender, phase) = (sender.clone(), phase.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = sender.send(seq, &phase.delivery_id(seq)).await;
            phase.record_response(outcome, intended, measured);
            drop(permit);
        }));
    }
    let mut w = window.await.unwrap_or_default();
    for t in tasks {
        let _ = t.await;
    }
    // Throughput of an open loop: what was accepted of what was sent in the window.
    w.accepted = phase.measured_accepted.load(Ordering::Relaxed);
    w.sent = sent_in_window;
    w
}

/// Deliveries `0..phase.cap` of `phase`, each sent until it is accepted: `concurrency`
/// senders back to back (a closed loop without a time window), every request
/// measured. A delivery that fails is sent again with the same delivery id (at most
/// `ATTEMPTS` times, 100 ms apart); a 200 `duplicate` to a retry means an earlier
/// attempt was accepted after all, and counts as accepted. Bounded by `within`.
/// Returns the seconds it took.
pub async fn fill(sender: Sender, phase: Arc<Phase>, concurrency: usize, within: Duration) -> f64 {
    const ATTEMPTS: u32 = 10;
    let start = Instant::now();
    let end = start + within;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (sender, phase, next) = (sender.clone(), phase.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= phase.cap || Instant::now() >= end {
                    break;
                }
                let id = phase.delivery_id(seq);
                for attempt in 0..ATTEMPTS {
                    let t = Instant::now();
                    if attempt == 0 {
                        phase.mark_sent(seq, t, true);
                    }
                    let outcome = match sender.send(seq, &id).await {
                        Outcome::Status(200, body) if attempt > 0 && body.contains("\"duplicate\":true") => Outcome::Accepted,
                        o => o,
                    };
                    let accepted = matches!(outcome, Outcome::Accepted);
                    phase.record_response(outcome, t, true);
                    if accepted || Instant::now() >= end {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    start.elapsed().as_secs_f64()
}

/// Wait (bounded) until every delivery accepted in the window has completed.
pub async fn drain(phase: &Phase, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let want = phase.measured_accepted.load(Ordering::Relaxed);
        let done = phase.measured_completed.load(Ordering::Relaxed);
        if done >= want || Instant::now() >= deadline {
            return want.saturating_sub(done);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_tracks_claims_once() {
        let phases = Phases::default();
        let p = Phase::new("r1-p0-".into(), 10);
        phases.add(p.clone());
        p.mark_sent(3, Instant::now(), true);
        phases.on_claim("r1-p0-3", Instant::now());
        phases.on_claim("r1-p0-3", Instant::now());
        phases.on_complete("r1-p0-3", Instant::now());
        phases.on_claim("other-p0-3", Instant::now());
        phases.on_claim("r1-p0-99", Instant::now());
        assert_eq!(p.claimed.load(Ordering::Relaxed), 1);
        assert_eq!(p.completed.load(Ordering::Relaxed), 1);
        assert_eq!(p.claim.lock().unwrap().len(), 1);
    }
}
