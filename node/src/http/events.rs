//! The event status API: "what happened to delivery X", from any node.
//!
//! `GET /v1/events/{event_id}`, `GET /v1/deliveries/{delivery_id}` and
//! `GET /v1/events?repo=&status=&event=&limit=&after=` — linearizable by default
//! (read-index), `?consistency=stale` for the local copy.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::node::Node;
use crate::sm::events::{self, EventFilter, EventRecord, JobRecord};
use crate::sm::KvRead;
use crate::types::EventStatus;

/// Largest page of `GET /v1/events`.
pub const MAX_PAGE: usize = 1000;

/// The JSON view of an event with its jobs and their state history.
pub fn event_view(e: &EventRecord, jobs: &[JobRecord]) -> Value {
    let context: serde_json::Map<String, Value> = e.context.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    json!({
        "event_id": e.event_id,
        "delivery_id": e.delivery_id,
        "event": e.event,
        "action": e.action,
        "repo": e.repo,
        "sender": e.sender,
        "status": e.status.as_str(),
        "trigger": e.trigger,
        "command": e.command,
        "received_ms": e.received_ms,
        "received_by": e.received_by,
        "finished_ms": e.finished_ms,
        "expires_ms": e.expires_ms,
        "payload_bytes": e.payload_bytes,
        "context": context,
        "jobs": jobs.iter().map(job_view).collect::<Vec<_>>(),
    })
}

/// The JSON view of one job (also used by `GET /v1/jobs`).
pub fn job_view(j: &JobRecord) -> Value {
    json!({
        "job_id": j.job_id,
        "target": { "kind": format!("{:?}", j.route.kind).to_lowercase(), "name": j.route.name },
        "params": serde_json::from_str::<Value>(&j.route.params_json).unwrap_or(Value::Null),
        "priority": format!("{:?}", j.priority).to_lowercase(),
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "result": j.result,
        "last_error": j.last_error,
        "history": j.history.iter().map(|h| json!({
            "state": h.state.as_str(), "at_ms": h.at_ms, "index": h.index, "note": h.note,
        })).collect::<Vec<_>>(),
    })
}

fn view_with_jobs(kv: &dyn KvRead, e: Option<EventRecord>) -> Option<Value> {
    e.map(|e| event_view(&e, &events::jobs_of(kv, &e)))
}

pub async fn get_event(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(p): Query<ReadParams>,
) -> ApiResult<Json<Value>> {
    let event_id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_event_id", format!("{id:?} is not an event id (a number, as returned by the webhook)")))?;
    let v = node.read(p.consistency()?, |kv| view_with_jobs(kv, events::get_event(kv, event_id))).await?;
    v.map(Json).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no event {event_id} (never received, or expired after its retention)"))
    })
}

pub async fn get_delivery(
    State(node): State<Arc<Node>>,
    Path(delivery_id): Path<String>,
    Query(p): Query<ReadParams>,
) -> ApiResult<Json<Value>> {
    let v = node.read(p.consistency()?, |kv| view_with_jobs(kv, events::event_by_delivery(kv, &delivery_id))).await?;
    v.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no delivery {delivery_id:?} (never accepted — check the webhook's Recent Deliveries in GitHub — or expired after its retention)"),
        )
    })
}

#[derive(Deserialize)]
pub struct ListParams {
    consistency: Option<String>,
    repo: Option<String>,
    status: Option<String>,
    event: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

pub async fn list_events(State(node): State<Arc<Node>>, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let consistency = ReadParams { consistency: p.consistency.clone() }.consistency()?;
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(EventStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_status", format!("status={s:?}; use queued, unmatched, no_route, completed or failed"))
        })?),
    };
    let filter = EventFilter {
        repo: p.repo,
        status,
        event: p.event,
        after: p.after,
        limit: p.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    };
    let (items, next) = node
        .read(consistency, |kv| {
            let page = events::list_events(kv, &filter);
            (page.items.iter().map(|e| event_view(e, &events::jobs_of(kv, e))).collect::<Vec<_>>(), page.next_after)
        })
        .await?;
    // `next_after` is the last event scanned, not returned: a filtered page that hit
    // the scan limit may be empty and still have a cursor to continue from.
    Ok(Json(json!({ "items": items, "next_after": next })))
}
