//! Delivery recovery on the API listener: `GET /v1/github/recovery` (read token: the
//! configured hooks and their replicated checkpoints) and `POST /v1/github/recover`
//! (admin token: sweep now, `{"since": "2h", "dry_run": true}`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult, ReadParams};
use crate::github::recovery::{Recovery, SweepOptions};
use crate::node::Node;

fn configured(recovery: Option<Arc<Recovery>>) -> ApiResult<Arc<Recovery>> {
    recovery.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "recovery_not_configured",
            "delivery recovery is not configured on this node: list the hooks under spec.platforms.github.recovery.hooks (see docs/WEBHOOKS.md)",
        )
    })
}

pub async fn status(
    State(node): State<Arc<Node>>,
    State(recovery): State<Option<Arc<Recovery>>>,
    Query(p): Query<ReadParams>,
) -> ApiResult<Json<Value>> {
    let rec = configured(recovery)?;
    let s = rec.status(&node, p.consistency()?).await?;
    Ok(Json(serde_json::to_value(s).unwrap_or(Value::Null)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// How far back to look (`2h`); default: the configured `since`.
    since: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

pub async fn recover(
    State(node): State<Arc<Node>>,
    State(recovery): State<Option<Arc<Recovery>>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let rec = configured(recovery)?;
    let b: RecoverBody = serde_json::from_slice(if body.is_empty() { b"{}" } else { &body })
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("expected {{\"since\": \"2h\", \"dry_run\": true}}: {e}"),
            )
        })?;
    let since = match b.since.as_deref() {
        None => rec.since,
        Some(s) => crate::config::parse_duration(s)
            .map_err(|m| ApiError::bad_request("invalid_since", m))?,
    };
    if since.is_zero() || since > std::time::Duration::from_secs(7 * 86_400) {
        return Err(ApiError::bad_request(
            "invalid_since",
            "since must be more than 0 and at most 7d (GitHub keeps deliveries for 3 days)",
        ));
    }
    let report = rec
        .sweep(
            &node,
            SweepOptions {
                since: Some(since),
                dry_run: b.dry_run,
            },
        )
        .await;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}
