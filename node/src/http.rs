//! The HTTP API served by every node (axum): health, readiness, cluster status and
//! membership, and the trigger registry. Errors are JSON
//! `{"error": CODE, "message": ...}` with a matching status code.
//!
//! **API Boundary**: the routes and JSON shapes here are the public REST API used by
//! `aofctl` and the `aof-client` crate.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::node::{Consistency, Node, NodeError};
use crate::registry::{self, TriggerView};
use crate::sm::triggers;
use crate::types::{Command, Member, NodeId, Response as SmResponse};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub gateway: Arc<crate::gateway::Gateway>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: crate::store::Store,
}

impl FromRef<AppState> for Arc<Node> {
    fn from_ref(s: &AppState) -> Arc<Node> {
        s.node.clone()
    }
}

/// Build the router for one node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook/github", post(crate::gateway::webhook))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(crate::events_api::list_events))
        .route("/v1/events/{id}", get(crate::events_api::get_event))
        .route("/v1/deliveries/{delivery_id}", get(crate::events_api::get_delivery))
        .route("/v1/queue/stats", get(crate::queue_api::stats))
        .route("/v1/dlq", get(crate::queue_api::list_dlq))
        .route("/v1/dlq/redrive", post(crate::queue_api::redrive))
        .route("/v1/dlq/purge", post(crate::queue_api::purge))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters/{id}", post(promote))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/triggers", get(list_triggers))
        .route("/v1/triggers/{name}", get(get_trigger).put(put_trigger).delete(delete_trigger))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.refresh(&s.node, &s.store).await;
    let mut resp = s.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// An API error: status, machine-readable code, human message (+ extra fields).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), extra: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { .. } | NodeError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            NodeError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            NodeError::Invalid(m) => ApiError::bad_request("invalid", m),
            NodeError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, status = %self.status, "{}", self.message);
        } else {
            tracing::info!(code = self.code, status = %self.status, "rejected request: {}", self.message);
        }
        let mut body = json!({ "error": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.extend(extra);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
pub struct ReadParams {
    pub consistency: Option<String>,
}

impl ReadParams {
    pub fn consistency(&self) -> ApiResult<Consistency> {
        match self.consistency.as_deref() {
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("stale") => Ok(Consistency::Stale),
            Some(other) => Err(ApiError::bad_request(
                "invalid_consistency",
                format!("consistency={other:?} is not supported; use \"linearizable\" (default) or \"stale\""),
            )),
        }
    }
}

/// `/health`: the process serves, and its Raft core runs. A core stopped by a
/// storage error never recovers in this process, so it answers 503 and a liveness
/// probe restarts the node. A raised storage alarm (full disk) is reported but is not
/// unhealthy: it clears by itself once space is freed (`/ready` is 503 meanwhile).
async fn health(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    if let Err(fatal) = &node.raft.metrics().borrow().running_state {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "raft_stopped",
            format!("raft stopped: {fatal}; restart this node"),
        ));
    }
    Ok(Json(json!({ "status": "ok", "node_id": node.id, "storage_alarm": node.sm.disk_alarm() })))
}

async fn ready(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    match node.readiness() {
        Ok(leader) => Ok(Json(json!({ "ready": true, "node_id": node.id, "leader_id": leader }))),
        Err(reason) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)),
    }
}

async fn cluster_status(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let status = node.cluster_status(p.consistency()?).await?;
    Ok(Json(serde_json::to_value(status).expect("status serializes")))
}

#[derive(Deserialize)]
struct AddLearner {
    node_id: NodeId,
    grpc_addr: String,
    http_addr: String,
}

fn check_addr(field: &str, addr: &str) -> ApiResult<()> {
    addr.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
        ApiError::bad_request("invalid_member", format!("{field}: {addr:?} is not an IP:port address (e.g. 127.0.0.1:4004)"))
    })
}

async fn add_learner(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: AddLearner = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_member", format!("expected {{\"node_id\", \"grpc_addr\", \"http_addr\"}}: {e}"))
    })?;
    if req.node_id == 0 {
        return Err(ApiError::bad_request("invalid_member", "node_id must be 1 or more"));
    }
    check_addr("grpc_addr", &req.grpc_addr)?;
    check_addr("http_addr", &req.http_addr)?;
    let member = Member { grpc_addr: req.grpc_addr, http_addr: req.http_addr };
    let log_index = node.add_learner(req.node_id, member).await?;
    Ok(Json(json!({ "node_id": req.node_id, "log_index": log_index })))
}

async fn promote(State(node): State<Arc<Node>>, Path(id): Path<NodeId>) -> ApiResult<Json<Value>> {
    let log_index = node.promote(id).await?;
    Ok(Json(json!({ "node_id": id, "log_index": log_index })))
}

async fn remove_member(State(node): State<Arc<Node>>, Path(id): Path<NodeId>) -> ApiResult<Json<Value>> {
    let log_index = node.remove(id).await?;
    Ok(Json(json!({ "node_id": id, "log_index": log_index })))
}

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

async fn put_trigger(
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

async fn get_trigger(
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

async fn list_triggers(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let items: Vec<TriggerView> =
        node.read(p.consistency()?, |kv| triggers::list(kv).into_iter().map(TriggerView::from).collect()).await?;
    Ok(Json(json!({ "items": items })))
}

async fn delete_trigger(
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
