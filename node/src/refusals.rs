//! Counting refused requests on the API and workers' gRPC listeners
//! (`aof_requests_refused_total{listener, reason}`).
//!
//! **Architecture Invariant**: bad input stores nothing and every refusal is
//! counted — webhook rejections under `aof_webhook_requests_total`, the API
//! listener's 4xx answers and the WorkQueue's client-fault gRPC statuses here. Both
//! are counted at the outermost layer of their listener, so refusals by the token
//! check count too, and no handler can forget to count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{Metrics, RefusalLabels};

/// The `reason` of an API answer with a 4xx `status` (`None` for other statuses).
pub fn http_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        400 | 422 => "invalid",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        412 => "revision_mismatch",
        413 => "too_large",
        415 => "unsupported_media_type",
        429 => "too_many_requests",
        400..=499 => "other",
        _ => return None,
    })
}

/// The `reason` of a gRPC status `code` that refuses the caller's request (bad
/// argument, token, scope, stale fencing token...); `None` for success and for
/// the server's own trouble (`unavailable`, `internal`, ...).
pub fn grpc_reason(code: tonic::Code) -> Option<&'static str> {
    use tonic::Code::*;
    Some(match code {
        InvalidArgument => "invalid_argument",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        OutOfRange => "out_of_range",
        Unauthenticated => "unauthenticated",
        _ => return None,
    })
}

fn count(metrics: &Metrics, listener: &str, reason: &str) {
    metrics
        .requests_refused
        .get_or_create(&RefusalLabels {
            listener: listener.into(),
            reason: reason.into(),
        })
        .inc();
}

/// Axum middleware of the API listener (outermost, around the token check).
pub async fn count_api(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if let Some(reason) = http_reason(resp.status().as_u16()) {
        count(&metrics, "api", reason);
    }
    resp
}

/// Tower layer of the workers' gRPC server: counts answers whose `grpc-status`
/// header (a trailers-only answer: an error before any message, as unary errors
/// and interceptor refusals are) is a refusal.
#[derive(Clone)]
pub struct CountGrpcLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for CountGrpcLayer {
    type Service = CountGrpc<S>;

    fn layer(&self, inner: S) -> CountGrpc<S> {
        CountGrpc {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountGrpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<axum::http::Request<B>> for CountGrpc<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let resp = fut.await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from_i32);
            if let Some(reason) = code.and_then(grpc_reason) {
                count(&metrics, "grpc", reason);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(http_reason(200), None);
        assert_eq!(http_reason(503), None);
        assert_eq!(http_reason(401), Some("unauthenticated"));
        assert_eq!(http_reason(418), Some("other"));
        assert_eq!(grpc_reason(tonic::Code::Ok), None);
        assert_eq!(grpc_reason(tonic::Code::Unavailable), None);
        assert_eq!(
            grpc_reason(tonic::Code::FailedPrecondition),
            Some("failed_precondition")
        );
    }
}
