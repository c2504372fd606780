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
use crate::types::{Command, TriggerRecord};
use aof_core::answers::{TriggerDelete, TriggerPut};

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

/// Query of `PUT /v1/triggers/{name}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PutParams {
    /// `true`: validate and answer what the PUT would do, change nothing.
    pub dry_run: Option<String>,
}

impl PutParams {
    fn dry_run(&self) -> ApiResult<bool> {
        match self.dry_run.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(
                "invalid_dry_run",
                format!("dry_run={other:?} is not a boolean; use dry_run=true or leave it out"),
            )),
        }
    }
}

/// What a PUT of `doc_json` would do to `current`, decided as the state machine's
/// `triggers::put` decides it: a revision mismatch, unchanged, configured or created.
fn dry_run_outcome(name: &str, current: Option<&TriggerRecord>, doc_json: &str, if_match: Option<u64>) -> ApiResult<&'static str> {
    let actual = current.map_or(0, |r| r.revision);
    if let Some(expected) = if_match {
        if expected != actual {
            return Err(revision_mismatch(name, expected, actual));
        }
    }
    Ok(match current {
        None => "created",
        Some(cur) if cur.doc_json == doc_json => "unchanged",
        Some(_) => "configured",
    })
}

/// `PUT /v1/triggers/{name}?dry_run=true`: everything a PUT checks (the document,
/// If-Match against the current revision, read linearizably), nothing proposed.
/// Answers the result, the current revision and both documents (redacted as GET
/// shows them) so the caller can show a diff.
async fn put_dry_run(node: &Node, name: String, doc_json: String, if_match: Option<u64>) -> ApiResult<Response> {
    let current = node.read(crate::node::Consistency::Linearizable, |kv| triggers::get(kv, &name)).await?;
    let result = dry_run_outcome(&name, current.as_ref(), &doc_json, if_match)?;
    let proposed = TriggerView::from(TriggerRecord {
        name: name.clone(),
        revision: 0,
        created_revision: 0,
        updated_ms: 0,
        doc_json,
    })
    .trigger;
    let revision = current.as_ref().map_or(0, |r| r.revision);
    let current = current.map(|r| TriggerView::from(r).trigger);
    Ok(Json(json!({
        "name": name, "revision": revision, "result": result, "dry_run": true,
        "current": current, "proposed": proposed,
    }))
    .into_response())
}

pub async fn put_trigger(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(params): Query<PutParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let if_match = if_match(&headers)?;
    let doc_json = registry::canonical_trigger(&name, &body).map_err(|m| ApiError::bad_request("invalid_trigger", m))?;
    if params.dry_run()? {
        return put_dry_run(&node, name, doc_json, if_match).await;
    }
    match node.propose(Command::put_trigger(name.clone(), doc_json, if_match)).await? {
        TriggerPut::Put { name, revision, created, unchanged } => {
            let result = if created { "created" } else if unchanged { "unchanged" } else { "configured" };
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(json!({ "name": name, "revision": revision, "result": result })))
                .into_response())
        }
        TriggerPut::RevisionMismatch { name, expected, actual } => Err(revision_mismatch(&name, expected, actual)),
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
    match node.propose(Command::delete_trigger(name.clone(), if_match)).await? {
        TriggerDelete::Deleted { name, revision } => Ok(Json(json!({ "name": name, "revision": revision }))),
        TriggerDelete::NotFound { name } => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("trigger {name:?} does not exist")))
        }
        TriggerDelete::RevisionMismatch { name, expected, actual } => Err(revision_mismatch(&name, expected, actual)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(revision: u64, doc: &str) -> TriggerRecord {
        TriggerRecord { name: "t".into(), revision, created_revision: 1, updated_ms: 0, doc_json: doc.into() }
    }

    #[test]
    fn a_dry_run_decides_as_the_state_machine_does() {
        assert_eq!(dry_run_outcome("t", None, "{}", None).unwrap(), "created");
        assert_eq!(dry_run_outcome("t", None, "{}", Some(0)).unwrap(), "created");
        assert_eq!(dry_run_outcome("t", Some(&rec(5, "{}")), "{}", None).unwrap(), "unchanged");
        assert_eq!(dry_run_outcome("t", Some(&rec(5, "{}")), "{\"a\":1}", Some(5)).unwrap(), "configured");
        let e = dry_run_outcome("t", Some(&rec(5, "{}")), "{}", Some(4)).unwrap_err();
        assert_eq!(e.status, StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn dry_run_takes_a_boolean() {
        let p = |v: Option<&str>| PutParams { dry_run: v.map(String::from) }.dry_run().map_err(|e| e.status);
        assert_eq!((p(None), p(Some("true")), p(Some("false"))), (Ok(false), Ok(true), Ok(false)));
        assert_eq!(p(Some("maybe")), Err(StatusCode::BAD_REQUEST));
    }
}
