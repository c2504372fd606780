//! Who may call what: bearer tokens on the API listener and the workers' gRPC
//! listener.
//!
//! | caller presents | API reads (`GET /v1/*`) | API writes | `/metrics` | WorkQueue |
//! |---|---|---|---|---|
//! | admin token | yes | yes | yes | yes (every target) |
//! | read token | yes | 403 | yes | `PERMISSION_DENIED` |
//! | worker token | 403 | 403 | 403 | yes, its `targets` only (empty = all) |
//! | nothing / unknown | 401 | 401 | 401 unless `spec.auth.metrics_public` | `UNAUTHENTICATED` |
//!
//! The status page's static assets (`GET /ui`, `/ui/app.js`, `/ui/app.css`) need no
//! token: they hold no state; the page sends a token on each `/v1/*` call, its live
//! feed `/v1/watch` too.
//!
//! A mutating API request must also carry `Content-Type: application/json` or
//! `application/yaml` (415 otherwise), so no cross-site "simple" request — which can
//! carry neither an `Authorization` header nor those types — can reach a write.
//! Tokens are compared by SHA-256 digest in constant time. The peer listener is
//! guarded by mutual TLS instead (see `crate::tls` and `crate::grpc`).
//!
//! **Architecture Invariant**: nothing reaches state without the right credential:
//! every route of the API router and every WorkQueue call passes through
//! [`require_api`] / [`WorkerAuth`]; the only exception is `spec.auth.insecure: true`
//! with no tokens configured, which logs a warning at every start.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use crate::config::ResolvedAuth;
use crate::http::ApiError;

pub use crate::config::Role;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name in `spec.auth.tokens` (for logs; never the token).
    pub name: String,
    pub role: Role,
    /// Worker tokens: the targets whose jobs it may claim and settle (empty = all).
    pub targets: Vec<String>,
}

impl Principal {
    /// Whether this caller may claim or settle a job of `target`.
    pub fn may_work_on(&self, target: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Worker => self.targets.is_empty() || self.targets.iter().any(|t| t == target),
            Role::Read => false,
        }
    }

    /// The caller of an unauthenticated node (`spec.auth.insecure` without tokens),
    /// and of the built-in workers, which reach their node in-process.
    pub fn internal(name: &str) -> Principal {
        Principal { name: name.into(), role: Role::Admin, targets: Vec::new() }
    }
}

/// The tokens a node accepts (`spec.auth`, resolved at start: SHA-256 digests,
/// compared in constant time by [`ResolvedAuth::check`]).
#[derive(Clone, Debug)]
pub struct Tokens {
    /// `None`: `spec.auth.insecure` with no token at all — every caller is admin.
    resolved: Option<ResolvedAuth>,
    metrics_public: bool,
}

impl Tokens {
    pub fn new(resolved: ResolvedAuth) -> Tokens {
        let open = resolved.insecure && resolved.names().is_empty();
        let metrics_public = resolved.metrics_public || open;
        Tokens { resolved: (!open).then_some(resolved), metrics_public }
    }

    /// Whether this node lets every caller in (`spec.auth.insecure`, no tokens).
    pub fn is_open(&self) -> bool {
        self.resolved.is_none()
    }

    /// The principal of an `Authorization: Bearer <token>` header value.
    pub fn check_header(&self, value: Option<&str>) -> Result<Principal, AuthError> {
        let Some(resolved) = &self.resolved else {
            return Ok(Principal::internal("anonymous (spec.auth.insecure)"));
        };
        let v = value.ok_or(AuthError::Missing)?;
        let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).ok_or(AuthError::NotBearer)?;
        let m = resolved.check(token.trim()).ok_or(AuthError::Unknown)?;
        Ok(Principal { name: m.name.to_string(), role: m.role, targets: m.targets.to_vec() })
    }
}

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header: send `Authorization: Bearer <token>` (aofctl: --token or $AOF_TOKEN)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token is not one this node accepts (check spec.auth.tokens and the token's environment variable on the node)")]
    Unknown,
}

/// What a request on the API listener needs.
fn needed(method: &Method, path: &str) -> Option<Needs> {
    if path == "/health" || path == "/ready" {
        return None;
    }
    // The status page's static assets (`crate::http::ui`): the same bytes for every
    // caller, no state and no secret in them; the page asks for a token and sends it
    // on every `/v1/*` call (its live feed `/v1/watch` included). Served on this
    // listener only: the public one answers 404 to `/ui`.
    if matches!(*method, Method::GET | Method::HEAD) && crate::http::ui::ASSET_PATHS.contains(&path) {
        return None;
    }
    if path == "/metrics" {
        return Some(Needs::Metrics);
    }
    // A backup holds everything, trigger documents' secrets included.
    if path == "/v1/snapshot" {
        return Some(Needs::Admin);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Some(Needs::Read)
    } else {
        Some(Needs::Write)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Metrics,
    Read,
    Write,
    /// A read only an admin may make.
    Admin,
}

/// Media types a mutating request may carry.
fn is_accepted_body_type(v: Option<&HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else { return false };
    let essence = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml")
}

/// axum middleware of the API listener: authenticate, authorize by role, and refuse
/// mutating requests without a JSON/YAML content type. The principal is put into the
/// request's extensions for handlers that want it.
pub async fn require_api(State(tokens): State<Arc<Tokens>>, mut req: Request, next: Next) -> Response {
    let Some(needs) = needed(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if needs == Needs::Metrics && tokens.metrics_public {
        return next.run(req).await;
    }
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = match tokens.check_header(presented) {
        Ok(p) => p,
        Err(e) => {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()).into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"aof-cluster\""));
            return resp;
        }
    };
    let allowed = match (needs, principal.role) {
        (Needs::Write | Needs::Admin, role) => role.allows(Role::Admin),
        (Needs::Read | Needs::Metrics, role) => role.allows(Role::Read),
    };
    if !allowed {
        let what = match needs {
            Needs::Write => "changes need an admin token",
            Needs::Admin => "a snapshot holds every secret of the cluster and needs an admin token",
            Needs::Read | Needs::Metrics => "reads need a read or admin token",
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} has role {}; {what}", principal.name, principal.role.as_str()),
        )
        .into_response();
    }
    // DELETE carries no body and is never a cross-site "simple" request.
    if needs == Needs::Write && req.method() != Method::DELETE && !is_accepted_body_type(req.headers().get(header::CONTENT_TYPE)) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "changes must be sent with Content-Type: application/json or application/yaml",
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The workers' gRPC listener's authentication, as a tonic interceptor: the
/// `authorization: Bearer <token>` metadata must name an admin or worker token; the
/// principal goes into the request's extensions, where the WorkQueue service reads
/// its target scope.
#[derive(Clone)]
pub struct WorkerAuth {
    pub tokens: Arc<Tokens>,
}

impl tonic::service::Interceptor for WorkerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let principal = self.tokens.check_header(presented).map_err(|e| {
            let e = match e {
                AuthError::Missing => "no authorization metadata: send `authorization: Bearer <worker token>` (aofctl worker: --token or $AOF_WORKER_TOKEN)".to_string(),
                other => other.to_string(),
            };
            tonic::Status::unauthenticated(e)
        })?;
        if !matches!(principal.role, Role::Admin | Role::Worker) {
            return Err(tonic::Status::permission_denied(format!(
                "token {:?} has role {}; the work queue needs a worker or admin token",
                principal.name,
                principal.role.as_str()
            )));
        }
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, TokenConfig};

    fn tokens() -> Tokens {
        let t = |name: &str, role, env: &str, targets: &[&str]| TokenConfig {
            name: name.into(),
            role,
            env: Some(env.into()),
            file: None,
            token: None,
            optional: false,
            targets: targets.iter().map(|s| s.to_string()).collect(),
        };
        let cfg = AuthConfig {
            tokens: vec![
                t("admin", Role::Admin, "A", &[]),
                t("read", Role::Read, "R", &[]),
                t("ci", Role::Worker, "W", &["a"]),
            ],
            metrics_public: false,
            insecure: false,
        };
        let env = |k: &str| match k {
            "A" => Some("a-secret-0123456789abcdef".to_string()),
            "R" => Some("r-secret-0123456789abcdef".to_string()),
            "W" => Some("w-secret-0123456789abcdef".to_string()),
            _ => None,
        };
        Tokens::new(cfg.resolve_with(env).unwrap())
    }

    #[test]
    fn tokens_map_to_their_principal() {
        let t = tokens();
        let p = |tok: &str| t.check_header(Some(&format!("Bearer {tok}")));
        assert_eq!(p("a-secret-0123456789abcdef").unwrap().role, Role::Admin);
        assert_eq!(p("r-secret-0123456789abcdef").unwrap().role, Role::Read);
        assert_eq!(p("w-secret-0123456789abcdef").unwrap().targets, vec!["a".to_string()]);
        assert_eq!(p("nope"), Err(AuthError::Unknown));
        assert_eq!(t.check_header(None), Err(AuthError::Missing));
        assert_eq!(t.check_header(Some("Basic YTpi")), Err(AuthError::NotBearer));
        assert!(!t.is_open());
    }

    #[test]
    fn worker_scope() {
        let t = tokens();
        let w = t.check_header(Some("Bearer w-secret-0123456789abcdef")).unwrap();
        assert!(w.may_work_on("a"));
        assert!(!w.may_work_on("b"));
        assert!(t.check_header(Some("Bearer a-secret-0123456789abcdef")).unwrap().may_work_on("b"));
        assert!(!t.check_header(Some("Bearer r-secret-0123456789abcdef")).unwrap().may_work_on("a"));
    }

    #[test]
    fn insecure_without_tokens_is_open_and_with_tokens_is_not() {
        let open = AuthConfig { tokens: vec![], metrics_public: false, insecure: true };
        let t = Tokens::new(open.resolve_with(|_| None).unwrap());
        assert!(t.is_open());
        assert_eq!(t.check_header(None).unwrap().role, Role::Admin);
        assert!(!tokens().is_open());
    }

    #[test]
    fn what_each_route_needs() {
        assert_eq!(needed(&Method::GET, "/health"), None);
        assert_eq!(needed(&Method::GET, "/ui"), None);
        assert_eq!(needed(&Method::GET, "/ui/app.js"), None);
        assert_eq!(needed(&Method::GET, "/uix"), Some(Needs::Read));
        assert_eq!(needed(&Method::GET, "/ui/other"), Some(Needs::Read));
        assert_eq!(needed(&Method::POST, "/ui"), Some(Needs::Write));
        assert_eq!(needed(&Method::GET, "/v1/watch"), Some(Needs::Read));
        assert_eq!(needed(&Method::GET, "/metrics"), Some(Needs::Metrics));
        assert_eq!(needed(&Method::GET, "/v1/events"), Some(Needs::Read));
        assert_eq!(needed(&Method::PUT, "/v1/triggers/x"), Some(Needs::Write));
        assert_eq!(needed(&Method::POST, "/v1/dlq/purge"), Some(Needs::Write));
        assert_eq!(needed(&Method::DELETE, "/v1/cluster/members/3"), Some(Needs::Write));
    }

    #[test]
    fn only_json_and_yaml_bodies_may_change_state() {
        for ok in ["application/json", "application/json; charset=utf-8", "application/yaml", "Application/JSON"] {
            assert!(is_accepted_body_type(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert!(!is_accepted_body_type(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_accepted_body_type(None));
    }
}
