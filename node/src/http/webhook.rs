//! `POST /webhook/github`: the GitHub webhook intake every node serves.
//!
//! Order of checks (each failure is logged with the delivery id, counted in
//! [`Metrics`], answered with a JSON error, and stores nothing):
//! 1. in-flight limit (`spec.gateway.max_in_flight`) → 503 + `Retry-After`;
//! 2. `X-GitHub-Event` / `X-GitHub-Delivery` present and sane → 400;
//! 3. body size (`spec.gateway.max_body_bytes`, checked on `Content-Length` before
//!    reading and again while reading) → 413; a body that does not arrive within
//!    `spec.server.timeout_secs` → 408 (its in-flight permit is freed);
//! 4. `X-Hub-Signature-256` against every candidate secret (daemon secrets, every
//!    organisation's secrets, enabled triggers' `webhook_secret`) over the raw bytes,
//!    **before** the body is parsed → 401; the secret that matched sets the scope;
//! 5. back-pressure (`spec.queue.max_ready`): while the jobs waiting for a worker
//!    (ready or delayed, counted on this node's applied state: no Raft round trip)
//!    reach the limit → 503 `queue_full` + `Retry-After`, except for a `ping` and
//!    for a delivery id this node's state already holds (a replay goes on and gets
//!    its original answer). See [`Backlog`];
//! 6. body is JSON → 400; a scope the delivery is outside of (an organisation's
//!    secret on another owner's repository) → 401; `ping` → 200 pong, not stored;
//! 7. pack the payload (LZ4, or zstd with `spec.gateway.payload_compression`, once, here: the forward hop, the log and
//!    every replica carry and store these bytes), propose it (`IngestPacked`) through
//!    Raft and answer **202** once it is committed, or
//!    200 with `"duplicate": true` for a delivery id seen before. No commit within
//!    `spec.gateway.ack_timeout_ms` → 503 + `Retry-After` (a retry is safe: dedup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::config::DaemonConfig;
use crate::github::{facts, secrets, signature};
use crate::metrics::{Metrics, WebhookOutcome};
use crate::node::{Node, NodeError};
use crate::types::{Command, Delivery, EventStatus, SignedBy};

/// Webhook secrets known from the node's configuration, read once at start.
#[derive(Default)]
pub struct Secrets {
    global: Vec<Vec<u8>>,
    orgs: Vec<(String, Vec<u8>)>,
}

impl Secrets {
    /// Resolve `spec.platforms.github` secrets from the environment. Missing variables
    /// are reported (returned as warnings), not fatal: triggers may carry secrets.
    pub fn from_config(cfg: &DaemonConfig) -> (Secrets, Vec<String>) {
        let mut s = Secrets::default();
        let mut warnings = Vec::new();
        let Some(gh) = cfg.github() else { return (s, warnings) };
        if let Some(inline) = &gh.webhook_secret {
            s.global.push(inline.expose().as_bytes().to_vec());
        }
        for name in gh.secret_env_names() {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => s.global.push(v.into_bytes()),
                _ => warnings.push(format!(
                    "environment variable {name} (spec.platforms.github) is not set; webhooks signed with it will get 401"
                )),
            }
        }
        for (org, oc) in &gh.orgs {
            if let Some(name) = &oc.webhook_secret_env {
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => s.orgs.push((org.to_ascii_lowercase(), v.into_bytes())),
                    _ => warnings.push(format!(
                        "environment variable {name} (spec.platforms.github.orgs.{org}) is not set; webhooks for {org} signed with it will get 401"
                    )),
                }
            }
        }
        (s, warnings)
    }

    /// A secrets set for tests and embedding.
    pub fn new(global: Vec<Vec<u8>>, orgs: Vec<(String, Vec<u8>)>) -> Self {
        Secrets { global, orgs: orgs.into_iter().map(|(o, s)| (o.to_ascii_lowercase(), s)).collect() }
    }
}

/// The intake's settings and shared state.
pub struct Gateway {
    pub secrets: Secrets,
    pub max_body_bytes: usize,
    pub ack_timeout: Duration,
    /// Bound of reading one request body (`spec.server.timeout_secs`).
    pub body_timeout: Duration,
    pub retention_ms: u64,
    /// `spec.gateway.payload_compression`.
    pub payload_compression: crate::sm::payload::Compression,
    pub in_flight: Semaphore,
    /// Back-pressure on the queue's backlog (`spec.queue.max_ready`).
    pub backlog: Backlog,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn from_config(cfg: &DaemonConfig, secrets: Secrets, metrics: Arc<Metrics>) -> Self {
        let g = &cfg.spec.gateway;
        metrics.queue_max_ready.set(i64::try_from(cfg.spec.queue.max_ready).unwrap_or(i64::MAX));
        Gateway {
            secrets,
            // The replicated state refuses payloads past `MAX_RAW_BYTES` (the same on
            // every node): a larger body is refused here, before it is packed. Config
            // validation refuses a larger limit; the `min` guards unvalidated configs.
            max_body_bytes: g.max_body_bytes.min(crate::sm::payload::MAX_RAW_BYTES),
            ack_timeout: Duration::from_millis(g.ack_timeout_ms),
            body_timeout: Duration::from_secs(cfg.spec.server.timeout_secs.max(1)),
            retention_ms: cfg.spec.queue.retention_secs.saturating_mul(1000),
            payload_compression: g.payload_compression,
            in_flight: Semaphore::new(g.max_in_flight),
            backlog: Backlog::new(cfg.spec.queue.max_ready),
            metrics,
        }
    }
}

/// `Retry-After` of a `queue_full` answer, seconds: a backlog drains in seconds to
/// minutes, not in the one second of the other 503s.
pub const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 30;

/// The queue's backlog as the intake sees it: jobs ready or delayed (waiting for a
/// retry) in this node's applied state, read from the counter the state machine
/// keeps in apply (`aof_core::sm::queue::backlog`: one key, no scan, no lock), so
/// the check costs the same at any queue depth. Leased jobs are not counted: a
/// worker holds them, and they leave the queue by completing (never back to the
/// backlog) or by failing or expiring (then they are delayed, and counted again).
///
/// A **soft** limit: the count is of this node's applied state (a follower's lags
/// the leader's by its replication delay), and the deliveries being accepted at once
/// when the limit is reached (up to `spec.gateway.max_in_flight` per node, each with
/// its jobs) all get through.
pub struct Backlog {
    /// `spec.queue.max_ready`; 0 = no limit.
    pub limit: usize,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog { limit }
    }

    /// `Some(backlog)` when the backlog has reached the limit (counted up to it).
    pub fn full(&self, node: &Arc<Node>) -> Option<usize> {
        if self.limit == 0 {
            return None;
        }
        let n = node.read_local(|kv| crate::sm::queue::backlog(kv, self.limit));
        (n >= self.limit).then_some(n)
    }
}

struct Reject {
    outcome: WebhookOutcome,
    err: ApiError,
}

fn reject(outcome: WebhookOutcome, status: StatusCode, code: &'static str, message: impl Into<String>) -> Reject {
    Reject { outcome, err: ApiError::new(status, code, message) }
}

/// The handler of `POST /webhook/github`.
pub async fn webhook(State(node): State<Arc<Node>>, State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let gw = &gw;
    let started = Instant::now();
    let delivery = header_str(req.headers(), "x-github-delivery").unwrap_or("-").to_string();
    let event = header_str(req.headers(), "x-github-event").unwrap_or("-").to_string();
    match intake(&node, gw, req).await {
        Ok((outcome, status, body)) => {
            gw.metrics.count(outcome);
            gw.metrics.webhook_ack_seconds.observe(started.elapsed().as_secs_f64());
            tracing::info!(delivery_id = %delivery, event = %event, outcome = ?outcome, event_id = ?body.get("event_id"), "webhook");
            (status, Json(body)).into_response()
        }
        Err(r) => {
            gw.metrics.count(r.outcome);
            tracing::warn!(delivery_id = %delivery, event = %event, outcome = ?r.outcome, "webhook rejected: {}", r.err.message);
            let queue_full = r.outcome == WebhookOutcome::queue_full;
            let mut resp = r.err.into_response();
            if queue_full {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(QUEUE_FULL_RETRY_AFTER_SECS));
            }
            resp
        }
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

#[tracing::instrument(name = "webhook", skip_all, fields(delivery_id, event))]
async fn intake(node: &Arc<Node>, gw: &Gateway, req: Request) -> Result<(WebhookOutcome, StatusCode, Value), Reject> {
    let _permit = gw.in_flight.try_acquire().map_err(|_| {
        reject(
            WebhookOutcome::unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node is at its in-flight webhook limit (spec.gateway.max_in_flight); retry shortly or send to another node",
        )
    })?;
    if node.is_draining() {
        return Err(reject(
            WebhookOutcome::unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down; send to another node (GitHub's redelivery is safe: deliveries are deduplicated)",
        ));
    }
    let headers = req.headers().clone();
    let invalid = |m: String| reject(WebhookOutcome::invalid, StatusCode::BAD_REQUEST, "invalid_request", m);
    let event = header_str(&headers, "x-github-event").ok_or_else(|| invalid("missing X-GitHub-Event header (GitHub always sends it; is this a GitHub webhook?)".into()))?.to_string();
    let delivery_id = header_str(&headers, "x-github-delivery").ok_or_else(|| invalid("missing X-GitHub-Delivery header (GitHub always sends it; is this a GitHub webhook?)".into()))?.to_string();
    if event.len() > 64 || !event.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(invalid(format!("X-GitHub-Event {event:?} is not a GitHub event name")));
    }
    if delivery_id.len() > 128 || !delivery_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("X-GitHub-Delivery must be 1-128 printable characters".into()));
    }
    tracing::Span::current().record("delivery_id", delivery_id.as_str()).record("event", event.as_str());
    let too_large = || {
        reject(
            WebhookOutcome::too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds spec.gateway.max_body_bytes ({} bytes)", gw.max_body_bytes),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > gw.max_body_bytes as u64) {
        return Err(too_large());
    }
    // The in-flight permit is held while the body arrives, so the read is bounded in
    // time (`spec.server.timeout_secs`): a sender that stalls mid-body frees it.
    let read = axum::body::to_bytes(Body::new(req.into_body()), gw.max_body_bytes);
    let body = match tokio::time::timeout(gw.body_timeout, read).await {
        Ok(r) => r.map_err(|e| body_error(e, gw))?,
        Err(_) => return Err(body_timeout(gw)),
    };

    // Authenticate before anything looks at the body: one HMAC per candidate secret,
    // no JSON parse for a delivery that is not signed with one of ours.
    let mut candidates = candidate_secrets(node, gw);
    let refs: Vec<&[u8]> = candidates.iter().map(|(s, _)| s.as_slice()).collect();
    let signed_by = match signature::verify(&refs, &body, header_str(&headers, "x-hub-signature-256")) {
        Ok(i) => candidates.swap_remove(i).1,
        Err(e) => return Err(reject(WebhookOutcome::bad_signature, StatusCode::UNAUTHORIZED, "bad_signature", e.to_string())),
    };
    if event != "ping" {
        if let Some(backlog) = gw.backlog.full(node) {
            // A replay of a delivery this node already holds goes on: dedup gives it
            // its original answer and stores nothing new. One key read, when full only.
            let seen = node.read_local(|kv| crate::sm::events::event_by_delivery(kv, &delivery_id).is_some());
            if !seen {
                return Err(queue_full(gw, backlog));
            }
        }
    }
    gw.metrics.webhook_json_parses.inc();
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not JSON ({e}); set the webhook's content type to application/json")))?;
    if let Err(m) = check_scope(&signed_by, &payload) {
        return Err(reject(WebhookOutcome::bad_signature, StatusCode::UNAUTHORIZED, "bad_signature", m));
    }
    if event == "ping" {
        let zen = payload.get("zen").and_then(Value::as_str).unwrap_or("Keep it logically awesome.");
        return Ok((WebhookOutcome::ping, StatusCode::OK, json!({ "pong": true, "zen": zen, "hook_id": payload.get("hook_id"), "node_id": node.id() })));
    }
    let facts = facts::extract(&event, &payload);
    let proposal = Command::ingest_with(Delivery {
        delivery_id: delivery_id.clone(),
        facts,
        payload: body.to_vec(),
        received_by: node.id(),
        retention_ms: gw.retention_ms,
        traceparent: crate::telemetry::current_traceparent(),
        signed_by,
    }, gw.payload_compression);
    let unavailable = |m: String| reject(WebhookOutcome::unavailable, StatusCode::SERVICE_UNAVAILABLE, "unavailable", m);
    if crate::planted::active(crate::planted::Bug::AckBeforeCommit) {
        // Planted bug: acknowledge before the quorum commit.
        tokio::spawn({
            let raft = node.raft().clone();
            let cmd = proposal.into_command();
            async move {
                let _ = raft.client_write(crate::types::Request { time_ms: crate::node::leader_clock_ms(), cmd }).await;
            }
        });
        let body = json!({ "event_id": 0, "delivery_id": delivery_id, "status": "queued", "trigger": null, "jobs": [], "duplicate": false });
        return Ok((WebhookOutcome::accepted, StatusCode::ACCEPTED, body));
    }
    let res = tokio::time::timeout(gw.ack_timeout, node.propose(proposal)).await.map_err(|_| {
        unavailable(format!(
            "not committed by a quorum within spec.gateway.ack_timeout_ms ({} ms); retry later — delivery {delivery_id} is deduplicated",
            gw.ack_timeout.as_millis()
        ))
    })?;
    let r = res.map_err(|e| match e {
        NodeError::Unavailable(m) | NodeError::Internal(m) => unavailable(m),
        other => unavailable(other.to_string()),
    })?;
    let outcome = match (r.duplicate, r.status) {
        (true, _) => WebhookOutcome::duplicate,
        (false, EventStatus::Unmatched) => WebhookOutcome::unmatched,
        (false, EventStatus::NoRoute) => WebhookOutcome::no_route,
        (false, _) => WebhookOutcome::accepted,
    };
    gw.metrics.last_webhook_timestamp_seconds.set(crate::node::leader_clock_ms() as f64 / 1000.0);
    let status = if r.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((
        outcome,
        status,
        json!({
            "event_id": r.event_id,
            "delivery_id": r.delivery_id,
            "status": r.status.as_str(),
            "trigger": r.trigger,
            "jobs": r.jobs,
            "duplicate": r.duplicate,
        }),
    ))
}

/// Every secret a delivery may be signed with, each with the scope it authenticates:
/// the daemon's (rotation list: any delivery), each organisation's (that
/// organisation's deliveries only) and each enabled trigger's `webhook_secret` (what
/// that trigger would match only; read from the local registry copy, `${ENV}`
/// expanded here, at the edge). A secret listed under several scopes counts for the
/// widest.
fn candidate_secrets(node: &Node, gw: &Gateway) -> Vec<(Vec<u8>, SignedBy)> {
    let mut out: Vec<(Vec<u8>, SignedBy)> = gw.secrets.global.iter().map(|s| (s.clone(), SignedBy::Daemon)).collect();
    let push = |out: &mut Vec<(Vec<u8>, SignedBy)>, secret: Vec<u8>, scope: SignedBy| {
        if !out.iter().any(|(o, _)| *o == secret) {
            out.push((secret, scope));
        }
    };
    for (org, secret) in &gw.secrets.orgs {
        push(&mut out, secret.clone(), SignedBy::Org(org.clone()));
    }
    let trigger_secrets: Vec<(String, String)> = node.read_local(|kv| {
        node.state_machine().trigger_cache().compiled(kv)
            .iter()
            .filter(|t| t.enabled)
            .filter_map(|t| t.webhook_secret.clone().map(|s| (t.name.clone(), s)))
            .collect()
    });
    for (name, raw) in trigger_secrets {
        match secrets::expand_env(&raw) {
            Ok(s) if !s.is_empty() => push(&mut out, s.into_bytes(), SignedBy::Trigger(name)),
            Ok(_) => {}
            Err(e) => tracing::debug!("trigger webhook_secret not usable on this node: {e}"),
        }
    }
    out
}

/// A secret authenticates only its own scope: an organisation's secret only
/// deliveries of that organisation's repositories (`repository.owner.login`, or
/// `organization.login` for deliveries without a repository). A trigger's secret is
/// checked in `apply`, which then matches the delivery against that trigger alone.
pub(crate) fn check_scope(signed_by: &SignedBy, payload: &Value) -> Result<(), String> {
    let SignedBy::Org(org) = signed_by else { return Ok(()) };
    let owner = match payload.get("repository") {
        Some(repo) if !repo.is_null() => repo.pointer("/owner/login"),
        _ => payload.pointer("/organization/login"),
    }
    .and_then(Value::as_str);
    match owner {
        Some(o) if o.eq_ignore_ascii_case(org) => Ok(()),
        Some(o) => Err(format!(
            "signed with the secret of organisation {org:?}, but the delivery belongs to {o:?}: an organisation's secret authenticates only its own repositories"
        )),
        None => Err(format!(
            "signed with the secret of organisation {org:?}, but the delivery names no repository owner or organisation"
        )),
    }
}

/// The answer while the backlog is at `spec.queue.max_ready`.
fn queue_full(gw: &Gateway, backlog: usize) -> Reject {
    let limit = gw.backlog.limit;
    let mut r = reject(
        WebhookOutcome::queue_full,
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_full",
        format!(
            "the queue is full: at least {backlog} jobs wait for a worker (spec.queue.max_ready = {limit}) and nothing was stored; \
             add workers (or raise their max_in_flight) so the backlog drains, or raise spec.queue.max_ready; \
             then redeliver this delivery (GitHub: Recent Deliveries → Redeliver; delivery recovery picks it up when configured)"
        ),
    );
    r.err.extra = Some(json!({ "backlog": backlog, "max_ready": limit, "retry_after_secs": QUEUE_FULL_RETRY_AFTER_SECS }));
    r
}

/// The answer for a body that could not be read: too large, or broken off.
fn body_error(e: axum::Error, gw: &Gateway) -> Reject {
    if e.into_inner().is::<http_body_util::LengthLimitError>() {
        reject(
            WebhookOutcome::too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds spec.gateway.max_body_bytes ({} bytes)", gw.max_body_bytes),
        )
    } else {
        body_timeout(gw)
    }
}

fn body_timeout(gw: &Gateway) -> Reject {
    reject(
        WebhookOutcome::invalid,
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive in full within {} s (spec.server.timeout_secs); send the whole body at once",
            gw.body_timeout.as_secs()
        ),
    )
}
