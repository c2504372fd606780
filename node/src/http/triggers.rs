//! The replicated trigger registry: `PUT/GET/DELETE /v1/triggers/{name}`,
//! `GET /v1/triggers`; `If-Match` for compare-and-set.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::node::Node;
use crate::registry::{self, TriggerView};
use crate::sm::triggers;
use crate::types::{Command, Response as SmResponse};

fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim().trim_matches('"');
    s.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request("invalid_if_match", format!("If-Match: {s:?} is not a revision number (use the revision from GET, or 0 for create-only)"))
    })
}

fn revision_mismatch(name: &str, expected: u64, actual: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "revision_mismatch",
        format!("trigger {name:?} is at revision {actual}, not {expected}; fetch it again and retry with If-Match: {actual}"),
    );
    e.extra = Some(json!({ "current_revision": actual }));
    e
}

pub async fn put_trigger(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let if_match = if_match(&headers)?;
    let doc_json = registry::canonical_trigger(&name, &body).map_err(|m| ApiError::bad_request("invalid_trigger", m))?;
    let (resp, _) = node.write(Command::PutTrigger { name: name.clone(), doc_json, if_match }).await?;
    match resp {
        SmResponse::TriggerPut { name, revision, created, unchanged } => {
            let result = if created { "created" } else if unchanged { "unchanged" } else { "configured" };
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(json!({ "name": name, "revision": revision, "result": result })))
                .into_response())
        }
        SmResponse::RevisionMismatch { name, expected, actual } => Err(revision_mismatch(&name, expected, actual)),
        other => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected result {other:?}"))),
    }
}

pub async fn get_trigger(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(p): Query<ReadParams>,
) -> ApiResult<Response> {
    let rec = node.read(p.consistency()?, |kv| triggers::get(kv, &name)).await?;
    let Some(rec) = rec else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("trigger {name:?} does not exist")));
    };
    let etag = format!("\"{}\"", rec.revision);
    let mut resp = Json(TriggerView::from(rec)).into_response();
    resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).expect("digits are a valid header"));
    Ok(resp)
}

pub async fn list_triggers(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let items: Vec<TriggerView> =
        node.read(p.consistency()?, |kv| triggers::list(kv).into_iter().map(TriggerView::from).collect()).await?;
    Ok(Json(json!({ "items": items })))
}

pub async fn delete_trigger(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let if_match = if_match(&headers)?;
    registry::validate_name(&name).map_err(|m| ApiError::bad_request("invalid_trigger", m))?;
    let (resp, _) = node.write(Command::DeleteTrigger { name: name.clone(), if_match }).await?;
    match resp {
        SmResponse::TriggerDeleted { name, revision } => Ok(Json(json!({ "name": name, "revision": revision }))),
        SmResponse::NotFound { name } => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("trigger {name:?} does not exist")))
        }
        SmResponse::RevisionMismatch { name, expected, actual } => Err(revision_mismatch(&name, expected, actual)),
        other => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected result {other:?}"))),
    }
}
