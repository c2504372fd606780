//! Health, readiness, cluster status and membership changes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::config::HostPort;
use crate::node::Node;
use crate::types::{Member, NodeId};

/// `/health`: the process serves, and its Raft core runs. A core stopped by a
/// storage error never recovers in this process, so it answers 503 and a liveness
/// probe restarts the node. A raised storage alarm (full disk) is reported but is not
/// unhealthy: it clears by itself once space is freed (`/ready` is 503 meanwhile).
pub async fn health(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    if let Err(fatal) = &node.raft().metrics().borrow().running_state {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "raft_stopped",
            format!("raft stopped: {fatal}; restart this node"),
        ));
    }
    Ok(Json(json!({ "status": "ok", "node_id": node.id(), "storage_alarm": node.state_machine().disk_alarm() })))
}

pub async fn ready(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    match node.readiness() {
        Ok(leader) => Ok(Json(json!({ "ready": true, "node_id": node.id(), "leader_id": leader }))),
        Err(reason) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)),
    }
}

pub async fn cluster_status(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let status = node.cluster_status(p.consistency()?).await?;
    Ok(Json(serde_json::to_value(status).expect("status serializes")))
}

/// `POST /v1/cluster/learners`: the new member's id and the four addresses it
/// advertises (`host:port`, a DNS name or an IP).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLearner {
    node_id: NodeId,
    peer_addr: String,
    grpc_addr: String,
    api_addr: String,
    http_addr: String,
}

fn check_addr(field: &str, addr: &str) -> ApiResult<()> {
    match HostPort::parse(addr) {
        Ok(hp) if !hp.is_unspecified() && hp.port != 0 => Ok(()),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_member",
            format!("{field}: {addr:?} is not an address other members can dial (no 0.0.0.0, no port 0)"),
        )),
        Err(e) => Err(ApiError::bad_request("invalid_member", format!("{field}: {e} (e.g. 127.0.0.1:6004 or aof-3.aof:6000)"))),
    }
}

pub async fn add_learner(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: AddLearner = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_member",
            format!("expected {{\"node_id\", \"peer_addr\", \"grpc_addr\", \"api_addr\", \"http_addr\"}}: {e}"),
        )
    })?;
    if req.node_id == 0 {
        return Err(ApiError::bad_request("invalid_member", "node_id must be 1 or more"));
    }
    for (field, value) in [("peer_addr", &req.peer_addr), ("grpc_addr", &req.grpc_addr), ("api_addr", &req.api_addr), ("http_addr", &req.http_addr)] {
        check_addr(field, value)?;
    }
    let member = Member { peer_addr: req.peer_addr, grpc_addr: req.grpc_addr, api_addr: req.api_addr, http_addr: req.http_addr };
    let log_index = node.add_learner(req.node_id, member).await?;
    Ok(Json(json!({ "node_id": req.node_id, "log_index": log_index })))
}

pub async fn promote(State(node): State<Arc<Node>>, Path(id): Path<NodeId>) -> ApiResult<Json<Value>> {
    let log_index = node.promote(id).await?;
    Ok(Json(json!({ "node_id": id, "log_index": log_index })))
}

pub async fn remove_member(State(node): State<Arc<Node>>, Path(id): Path<NodeId>) -> ApiResult<Json<Value>> {
    let log_index = node.remove(id).await?;
    Ok(Json(json!({ "node_id": id, "log_index": log_index })))
}


/// `GET /v1/snapshot` (admin): a backup file of the whole replicated state including
/// every write acknowledged before the request (see [`crate::backup`]). Its SHA-256
/// (also the file's last 32 bytes) is in `X-Aof-Snapshot-Sha256`.
pub async fn snapshot(State(node): State<Arc<Node>>) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let file = crate::backup::save(&node, wall_clock_ms()).await.map_err(|e| match e {
        crate::backup::BackupError::Node(n) => ApiError::from(n),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", other.to_string()),
    })?;
    let sum = crate::backup::checksum(&file).unwrap_or_default();
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::HeaderName::from_static("x-aof-snapshot-sha256"), sum),
        ],
        file,
    )
        .into_response())
}

/// This node's wall clock, for the informational `created_at_ms` of a backup file.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
