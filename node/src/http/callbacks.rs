//! Completion callbacks on the API listener: `GET /v1/callbacks?state=pending|dead&limit=`
//! (read token) lists the notices in the replicated outbox (`sm::outbox`), oldest
//! first; linearizable unless `consistency=stale`. A delivered notice leaves the
//! outbox, so it is not listed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::node::Node;
use crate::sm::outbox::{self, NoticeRecord, NoticeState};

/// Largest page.
pub const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    consistency: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

/// The JSON view of a notice (the body it sends under `notice`).
pub fn notice_view(n: &NoticeRecord) -> Value {
    json!({
        "id": n.id,
        "state": n.state.as_str(),
        "outcome": n.outcome,
        "trigger": n.trigger,
        "event_id": n.event_id,
        "delivery_id": n.delivery_id,
        "job_id": n.job_id,
        "url": n.url,
        "secret_env": n.secret_env,
        "idempotency_key": n.idempotency_key,
        "attempts": n.attempts,
        "created_ms": n.created_ms,
        "last_attempt_ms": n.last_attempt_ms,
        "last_error": n.last_error,
        "dead_ms": n.dead_ms,
        "expires_ms": n.expires_ms,
        "notice": serde_json::from_str::<Value>(&n.body).unwrap_or(Value::Null),
    })
}

pub async fn list_callbacks(
    State(node): State<Arc<Node>>,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let consistency = ReadParams {
        consistency: p.consistency.clone(),
    }
    .consistency()?;
    let state = match p.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(NoticeState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_state",
                format!("state={s:?}; use pending or dead (delivered notices leave the outbox)"),
            )
        })?),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let (items, pending) = node
        .read(consistency, |kv| {
            (
                outbox::list(kv, state, limit)
                    .iter()
                    .map(notice_view)
                    .collect::<Vec<_>>(),
                outbox::pending_count(kv),
            )
        })
        .await?;
    Ok(Json(json!({ "items": items, "pending": pending })))
}
