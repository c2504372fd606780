//! The status page of a node: `GET /ui` (static HTML, CSS and JavaScript embedded in
//! the binary) and its live feed `GET /v1/watch` (Server-Sent Events), both on the
//! API listener only.
//!
//! The page holds no state and no secret: it asks for a read or admin token, keeps
//! it in the tab's `sessionStorage`, and calls the JSON API with
//! `Authorization: Bearer`. So the assets are served without a token (see
//! `crate::auth`), while `/v1/watch` needs a read token like every `/v1/*` read. The
//! page reads the stream with `fetch()` (not `EventSource`, which cannot send a
//! header), so tokens never appear in a URL.
//!
//! The feed is bounded: at most [`MAX_STREAMS`] at once per node (more are refused
//! with 429 and counted in `aof_ui_stream_refusals_total`), one snapshot every
//! `interval_ms` (default 1000, clamped to [`MIN_INTERVAL`]..=[`MAX_INTERVAL`]), each
//! stream ends after [`MAX_STREAM_LIFETIME`] (the page reconnects) and when the node
//! starts draining. A snapshot is built from one linearizable read; when no leader
//! can serve it, the snapshot carries `error` and this node's own (stale) view, and
//! the page keeps showing the last good data with its age.
//!
//! Every asset answer carries `Content-Security-Policy: default-src 'self'` (no
//! inline script or style: the JavaScript is its own asset, and it renders data with
//! `textContent` only), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`
//! and `Referrer-Policy: no-referrer`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::events::event_view;
use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::node::{Consistency, Node};
use crate::sm::events::{self, EventFilter};
use crate::sm::{queue, KvRead};

/// Most live feeds one node serves at once.
pub const MAX_STREAMS: usize = 16;
/// Fastest snapshot interval a client may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Slowest snapshot interval (also bounds how long a feed outlives a drain).
pub const MAX_INTERVAL: Duration = Duration::from_secs(5);
/// A feed ends after this long; the page opens a new one.
pub const MAX_STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Events in a snapshot's `events` (the newest).
pub const RECENT_EVENTS: usize = 25;
/// Dead-lettered jobs in a snapshot's `dlq` (the first, in dead-letter order).
pub const SNAPSHOT_DLQ: usize = 100;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The paths of the static assets: the only ones of the API listener served without
/// a token (see `crate::auth`); every other `/ui/*` path needs one like `/v1/*`.
pub const ASSET_PATHS: [&str; 4] = ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"];

/// The Content-Security-Policy of every asset.
pub const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The live feeds of one node: the concurrency cap.
pub struct Streams {
    permits: Arc<Semaphore>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /ui`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`.
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Deserialize)]
pub struct WatchParams {
    interval_ms: Option<u64>,
}

/// Holds a feed's slot; frees it (and the gauge) when the response body is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.ui_streams.dec();
    }
}

/// `GET /v1/watch[?interval_ms=N]` (read token): `text/event-stream` of `snapshot`
/// events, each one JSON object (see [`snapshot`]).
pub async fn watch(
    State(node): State<Arc<Node>>,
    State(metrics): State<Arc<Metrics>>,
    State(streams): State<Arc<Streams>>,
    principal: Option<Extension<Principal>>,
    Query(p): Query<WatchParams>,
) -> Response {
    let interval = p
        .interval_ms
        .map_or(Duration::from_secs(1), Duration::from_millis)
        .clamp(MIN_INTERVAL, MAX_INTERVAL);
    let Ok(permit) = streams.permits.clone().try_acquire_owned() else {
        metrics.ui_stream_refusals.inc();
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("this node already serves {MAX_STREAMS} live feeds; close other status pages or use another node"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    metrics.ui_streams.inc();
    let slot = Slot {
        _permit: permit,
        metrics: metrics.clone(),
    };
    let role = principal
        .map_or("admin", |Extension(p)| p.role.as_str())
        .to_string();
    // Weak: an open feed must not keep a stopping node's store alive.
    let node: Weak<Node> = Arc::downgrade(&node);
    let started = Instant::now();
    let feed = futures::stream::unfold((slot, node, 0u64), move |(slot, node, n)| {
        let role = role.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(interval).await;
            }
            let live = node.upgrade()?;
            if live.is_draining() || started.elapsed() >= MAX_STREAM_LIFETIME {
                return None;
            }
            let mut snap = snapshot(&live).await;
            drop(live);
            snap["role"] = role.into();
            snap["seq"] = n.into();
            snap["interval_ms"] = (interval.as_millis() as u64).into();
            let ev = Event::default().event("snapshot").data(snap.to_string());
            Some((Ok::<_, Infallible>(ev), (slot, node, n + 1)))
        }
    });
    let mut resp = Sse::new(feed)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// One compact view of the cluster as this node sees it:
/// `{node_id, at_ms, ready, not_ready, local, cluster, queue, dlq, events}` or, when
/// no leader could serve a linearizable read, `{node_id, at_ms, ready, not_ready,
/// local, error}` (`local`: this node's own Raft view, possibly stale).
pub async fn snapshot(node: &Node) -> Value {
    let local = node.local_status().await;
    let ready = node.readiness();
    let local_applied = local.last_applied;
    let mut snap = json!({
        "node_id": node.id(),
        "at_ms": crate::node::leader_clock_ms(),
        "ready": ready.is_ok(),
        "not_ready": ready.err(),
        "local": local,
    });
    let leader_view = async {
        let cluster = node.cluster_status(Consistency::Linearizable).await?;
        let last_applied = local_applied.max(cluster.last_applied);
        let data = node
            .read(Consistency::Linearizable, |kv| {
                let now = crate::node::leader_clock_ms();
                json!({
                    "queue": queue::stats(kv).into_iter().map(|d| json!({
                        "target_kind": d.target_kind, "target": d.target, "priority": d.priority,
                        "ready": d.ready, "delayed": d.delayed, "leased": d.leased, "dead": d.dead,
                        "oldest_ready_age_ms": d.oldest_ready_ms.map(|t| now.saturating_sub(t)),
                    })).collect::<Vec<_>>(),
                    "dlq": queue::list_dead(kv, SNAPSHOT_DLQ).into_iter().map(|j| json!({
                        "job_id": j.job_id, "event_id": j.event_id, "delivery_id": j.delivery_id,
                        "target": { "kind": format!("{:?}", j.route.kind).to_lowercase(), "name": j.route.name },
                        "trigger": j.trigger, "attempts": j.attempts, "last_error": j.last_error,
                        "dead_since_ms": j.history.last().map(|h| h.at_ms),
                    })).collect::<Vec<_>>(),
                    "events": recent_events(kv, last_applied, RECENT_EVENTS),
                })
            })
            .await?;
        Ok::<_, crate::node::NodeError>((cluster, data))
    };
    // Two leader round trips, each bounded by the request timeout; bound the pair too.
    let bound = node.request_timeout() * 2 + Duration::from_secs(1);
    let answer = tokio::time::timeout(bound, leader_view)
        .await
        .unwrap_or_else(|_| {
            Err(crate::node::NodeError::Unavailable(format!(
                "no leader answered within {} ms",
                bound.as_millis()
            )))
        });
    match answer {
        Ok((cluster, data)) => {
            snap["cluster"] = serde_json::to_value(cluster).unwrap_or(Value::Null);
            if let (Some(s), Value::Object(d)) = (snap.as_object_mut(), data) {
                s.extend(d);
            }
        }
        Err(e) => snap["error"] = e.to_string().into(),
    }
    snap
}

/// The newest `n` events (newest first), as `GET /v1/events` shows them minus the
/// job histories. Event ids are sequence numbers (`log index << 8 | position`), so
/// the scan starts a window of log entries below `last_applied` and widens it until
/// it holds `n` events or covers the whole log; every step is bounded.
fn recent_events(kv: &dyn KvRead, last_applied: u64, n: usize) -> Vec<Value> {
    let mut window = 64u64;
    let mut newest: VecDeque<events::EventRecord> = VecDeque::with_capacity(n + 1);
    for _widen in 0..16 {
        newest.clear();
        let from = last_applied.saturating_sub(window);
        let mut after = (from > 0).then(|| crate::types::seq(from, 0));
        for _page in 0..64 {
            let page = events::list_events(
                kv,
                &EventFilter {
                    repo: None,
                    status: None,
                    event: None,
                    after,
                    limit: 1000,
                },
            );
            for e in page.items {
                newest.push_back(e);
                if newest.len() > n {
                    newest.pop_front();
                }
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if newest.len() >= n || from == 0 {
            break;
        }
        window = window.saturating_mul(4);
    }
    newest
        .iter()
        .rev()
        .map(|e| {
            let mut v = event_view(e, &events::jobs_of(kv, e));
            if let Some(jobs) = v.get_mut("jobs").and_then(Value::as_array_mut) {
                for j in jobs {
                    if let Some(o) = j.as_object_mut() {
                        o.remove("history");
                        o.remove("params");
                        o.remove("result");
                    }
                }
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("context");
            }
            v
        })
        .collect()
}
