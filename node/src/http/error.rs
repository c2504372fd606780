//! The API's error answer and the shared request parameters: every handler speaks
//! these, none imports the router.
//!
//! Errors are JSON `{"error": CODE, "message": ...}` with a matching status code;
//! `503`s carry `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::node::{Consistency, NodeError};

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

