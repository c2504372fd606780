//! `GET /metrics`: Prometheus / OpenMetrics text.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

pub async fn metrics(State(s): State<AppState>) -> Response {
    s.node.refresh_metrics(&s.store).await;
    let mut resp = s.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
