//! `GET /metrics`: Prometheus / OpenMetrics text.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::Store;

pub async fn metrics(
    State(node): State<Arc<Node>>,
    State(store): State<Store>,
    State(metrics): State<Arc<Metrics>>,
) -> Response {
    node.refresh_metrics(&store).await;
    let mut resp = metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
