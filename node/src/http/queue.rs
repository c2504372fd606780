//! HTTP endpoints of the work queue: depth statistics and the dead-letter queue.
//! `GET /v1/queue/stats`, `GET /v1/dlq`, `POST /v1/dlq/redrive`, `POST /v1/dlq/purge`
//! (body `{"job_id": ID}` or `{"all": true}`). Reads are linearizable by default.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::node::Node;
use crate::sm::queue;
use crate::types::Command;
use aof_core::answers::NotInDlq;

pub async fn stats(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let now = crate::node::leader_clock_ms();
    let depths = node.read(p.consistency()?, queue::stats).await?;
    let items: Vec<Value> = depths
        .into_iter()
        .map(|d| {
            json!({
                "target_kind": d.target_kind, "target": d.target, "priority": d.priority,
                "ready": d.ready, "delayed": d.delayed, "leased": d.leased, "dead": d.dead,
                "oldest_ready_age_ms": d.oldest_ready_ms.map(|t| now.saturating_sub(t)),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
pub struct DlqParams {
    consistency: Option<String>,
    limit: Option<usize>,
}

pub async fn list_dlq(State(node): State<Arc<Node>>, Query(p): Query<DlqParams>) -> ApiResult<Json<Value>> {
    let c = ReadParams { consistency: p.consistency }.consistency()?;
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    let items = node
        .read(c, |kv| {
            queue::list_dead(kv, limit)
                .into_iter()
                .map(|j| {
                    json!({
                        "job_id": j.job_id, "event_id": j.event_id, "delivery_id": j.delivery_id,
                        "target": { "kind": format!("{:?}", j.route.kind).to_lowercase(), "name": j.route.name },
                        "trigger": j.trigger, "attempts": j.attempts, "last_error": j.last_error,
                        "dead_since_ms": j.history.last().map(|h| h.at_ms),
                    })
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
pub struct Selector {
    job_id: Option<String>,
    #[serde(default)]
    all: bool,
}

fn selector(body: &[u8]) -> ApiResult<Option<String>> {
    let s: Selector = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_selector", format!("expected {{\"job_id\": ID}} or {{\"all\": true}}: {e}")))?;
    match (s.job_id, s.all) {
        (Some(id), false) => Ok(Some(id)),
        (None, true) => Ok(None),
        _ => Err(ApiError::bad_request("invalid_selector", "give exactly one of job_id or all: true")),
    }
}

async fn dlq_op(node: &Node, body: &[u8], redrive: bool) -> ApiResult<Json<Value>> {
    let job_id = selector(body)?;
    let answer = if redrive {
        node.propose(Command::redrive(job_id)).await?.map(|r| r.jobs)
    } else {
        node.propose(Command::purge(job_id)).await?.map(|p| p.jobs)
    };
    match answer {
        Ok(jobs) => Ok(Json(json!({ "jobs": jobs }))),
        Err(NotInDlq { job_id }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {job_id} is not in the dead-letter queue (see `aofctl dlq list`)"),
        )),
    }
}

pub async fn redrive(State(node): State<Arc<Node>>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    dlq_op(&node, &body, true).await
}

pub async fn purge(State(node): State<Arc<Node>>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    dlq_op(&node, &body, false).await
}
