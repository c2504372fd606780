//! [`ClientError`]: what can go wrong when talking to the cluster.
//!
//! Four cases, kept apart because callers react to them differently:
//! - [`ClientError::Api`]: a node answered with an error status (4xx/5xx). Its
//!   `Display` is the server's own `message`, which already says what to do.
//! - [`ClientError::Unreachable`]: no endpoint gave an HTTP answer (connection
//!   refused, timeout, ...).
//! - [`ClientError::Decode`]: a node answered with success but the body did not
//!   match the API contract (version skew, or not an aof-cluster node at all).
//! - [`ClientError::Config`]: the client's own configuration cannot work (an
//!   unreadable CA file, ...); nothing was sent.
//!
//! A refused token is an [`ClientError::Api`] error with status 401
//! ([`ClientError::is_unauthenticated`]) or 403 ([`ClientError::is_forbidden`]);
//! its message is the node's, followed by what to change on the client side.
//!
//! [`WorkerError`] is the same for the gRPC work queue ([`crate::Worker`] and
//! [`crate::Lease`]); its [`WorkerError::StaleLease`] is the one a worker must
//! handle: the lease is gone and its result no longer counts.

use serde::Deserialize;

/// An error from [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an error status and (usually) a JSON error body
    /// `{"error": "<code>", "message": "<text>"}`.
    #[error("{message}")]
    Api {
        /// HTTP status code, e.g. 404.
        status: u16,
        /// The machine-readable `error` field, e.g. `not_found`, `revision_mismatch`.
        /// `http_<status>` when the body was not a JSON error object.
        code: String,
        /// The human-readable `message` field (what to do about it).
        message: String,
        /// The raw response body, for fields beyond `error`/`message`
        /// (e.g. `current_revision` of a 412); see [`ClientError::current_revision`].
        body: String,
    },
    /// No endpoint could be reached (connection error or timeout on every one tried).
    #[error("{}", unreachable_message(endpoints, last_error))]
    Unreachable {
        /// The base URLs that were tried, in order.
        endpoints: Vec<String>,
        /// The error of the last attempt, e.g. `connection refused`.
        last_error: String,
    },
    /// A successful response whose body could not be decoded.
    #[error("unexpected response from {endpoint}: {message}")]
    Decode {
        /// The base URL that answered.
        endpoint: String,
        /// What was wrong with the body.
        message: String,
    },
    /// The client's configuration cannot work (an unreadable CA file, a token
    /// that cannot be sent); nothing was sent.
    #[error("{0}")]
    Config(String),
}

/// What the client knows about a failed request, to explain auth errors.
pub(crate) struct Hints<'a> {
    /// Whether the request carried a bearer token.
    pub token_sent: bool,
    /// Whether the path is one of the API listener's (`/v1/*`, `/metrics`).
    pub api_path: bool,
    /// The endpoint that answered.
    pub endpoint: &'a str,
}

fn unreachable_message(endpoints: &[String], last_error: &str) -> String {
    match endpoints {
        [] => "no endpoint configured".to_string(),
        [one] => format!("could not reach {one}: {last_error}"),
        many => format!(
            "could not reach any of {}: last error: {last_error}",
            many.join(", ")
        ),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: Option<String>,
}

impl ClientError {
    /// Builds an [`ClientError::Api`] from an error response's status and body.
    /// Bodies that are not the JSON error object still give a readable message.
    pub(crate) fn from_response(
        status: u16,
        reason: Option<&str>,
        endpoint: &str,
        body: String,
    ) -> Self {
        let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => {
                let message = match e.message {
                    Some(m) if !m.trim().is_empty() => m,
                    _ => format!("{} (HTTP {status} from {endpoint})", e.error),
                };
                (e.error, message)
            }
            Err(_) => {
                let text = body.trim();
                let reason = reason.unwrap_or("error");
                let message = if text.is_empty() {
                    format!("HTTP {status} {reason} from {endpoint}")
                } else {
                    let text: String = text.chars().take(300).collect();
                    format!("HTTP {status} {reason} from {endpoint}: {text}")
                };
                (format!("http_{status}"), message)
            }
        };
        ClientError::Api {
            status,
            code,
            message,
            body,
        }
    }

    /// Appends what to do on the client side to the message of a 401 / 403 / 415,
    /// and of a 404 that did not come from the API (the public listener answers
    /// every `/v1/*` path with a bare 404).
    pub(crate) fn with_hint(self, h: &Hints<'_>) -> Self {
        let ClientError::Api { status, code, message, body } = self else {
            return self;
        };
        let hint = match status {
            401 if !h.token_sent => Some(
                "no token was sent: give the client a token of the cluster (ClientBuilder::token; \
                 aofctl: --token, $AOF_TOKEN or a context with `aofctl config set-context`)"
                    .to_string(),
            ),
            401 => Some(
                "the token was refused: it must be one of the nodes' spec.auth.tokens (e.g. the \
                 value of AOF_ADMIN_TOKEN or AOF_READ_TOKEN on the nodes)"
                    .to_string(),
            ),
            403 => Some(
                "use a token whose role allows this: admin for changes, read or admin for reads \
                 (aofctl: --token, $AOF_TOKEN or the context's token)"
                    .to_string(),
            ),
            415 => Some("changes must be sent as application/json or application/yaml".to_string()),
            404 if h.api_path && code == "http_404" => Some(format!(
                "{} does not serve the API: point the client at a node's API listener \
                 (spec.cluster.api_addr, e.g. http://127.0.0.1:5001), not at its public \
                 listener (spec.server, webhooks and health only)",
                h.endpoint
            )),
            _ => None,
        };
        let message = match hint {
            Some(hint) if !message.contains(&hint) => format!("{message}; {hint}"),
            _ => message,
        };
        ClientError::Api { status, code, message, body }
    }

    /// True for a 401: no token, or one the node does not accept.
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == Some(401)
    }

    /// True for a 403: the token's role does not allow the request.
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `error` code of an [`ClientError::Api`] error, e.g. `"not_found"`.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for a 404 (no such trigger / not a member).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for a 412 compare-and-set failure (`If-Match` did not match).
    pub fn is_revision_mismatch(&self) -> bool {
        self.status() == Some(412) || self.code() == Some("revision_mismatch")
    }

    /// The trigger's current revision reported with a `revision_mismatch` error.
    pub fn current_revision(&self) -> Option<u64> {
        match self {
            ClientError::Api { body, .. } => serde_json::from_str::<serde_json::Value>(body)
                .ok()?
                .get("current_revision")?
                .as_u64(),
            _ => None,
        }
    }
}

/// An error from the gRPC work queue ([`crate::Worker`], [`crate::Lease`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The lease is no longer valid (gRPC `FAILED_PRECONDITION`): it expired and the
    /// job was leased again, or the job was already completed, failed or
    /// dead-lettered. Nothing was changed; stop working on the job.
    #[error("lease no longer valid: {reason}")]
    StaleLease {
        /// The cluster's explanation, e.g. `... leased under token 41, not 17 ...`.
        reason: String,
    },
    /// The job does not exist any more (gRPC `NOT_FOUND`: finished long ago and
    /// removed after its retention, or never existed). Also a lost lease.
    #[error("{message}")]
    JobNotFound {
        /// The cluster's message.
        message: String,
    },
    /// No endpoint gave an answer in time (connection errors, `UNAVAILABLE`,
    /// timeouts), over all endpoints and retries.
    #[error("{}; check that the nodes are up and that these are their gRPC addresses (spec.cluster.grpc_addr)", unreachable_message(endpoints, last_error))]
    Unavailable {
        /// The gRPC endpoints, as configured.
        endpoints: Vec<String>,
        /// The error of the last attempt.
        last_error: String,
    },
    /// The cluster refused the call for another reason (invalid argument, internal
    /// error, ...); retrying the same call will not help.
    #[error("{message} (gRPC {code})")]
    Rejected {
        /// The gRPC status code, e.g. `InvalidArgument`.
        code: String,
        /// The cluster's message.
        message: String,
    },
    /// The worker's configuration is unusable (no endpoint, a bad URL, ...).
    #[error("{0}")]
    Config(String),
    /// The node did not accept the worker's token (gRPC `UNAUTHENTICATED`): none
    /// was sent, or it is not one of the cluster's tokens.
    #[error("{message} (gRPC Unauthenticated); {}", if *token_sent {
        "the token was refused: give the worker one of the cluster's worker or admin tokens (the value of AOF_WORKER_TOKEN on the nodes)"
    } else {
        "no token was sent: give the worker a worker or admin token (WorkerBuilder::token; aofctl worker: --token or $AOF_WORKER_TOKEN)"
    })]
    Unauthenticated {
        /// The node's message.
        message: String,
        /// Whether the worker sent a token.
        token_sent: bool,
    },
    /// The token is valid but may not do this (gRPC `PERMISSION_DENIED`): a
    /// `read` token, or a worker token limited to other targets.
    #[error("{message} (gRPC PermissionDenied); use a worker token allowed to serve these targets, or an admin token")]
    PermissionDenied {
        /// The node's message.
        message: String,
    },
}

impl WorkerError {
    /// True when the lease is definitely gone ([`WorkerError::StaleLease`] or
    /// [`WorkerError::JobNotFound`]): stop working on the job, another worker may
    /// have it.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            WorkerError::StaleLease { .. } | WorkerError::JobNotFound { .. }
        )
    }

    /// True when the cluster refused the worker's credentials
    /// ([`WorkerError::Unauthenticated`], [`WorkerError::PermissionDenied`]).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            WorkerError::Unauthenticated { .. } | WorkerError::PermissionDenied { .. }
        )
    }

    /// Maps a definitive gRPC status (one not worth retrying elsewhere).
    /// `token_sent`: whether the call carried a token.
    pub(crate) fn from_status(status: &tonic::Status, token_sent: bool) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::FailedPrecondition => WorkerError::StaleLease { reason: message },
            tonic::Code::NotFound => WorkerError::JobNotFound { message },
            tonic::Code::Unauthenticated => WorkerError::Unauthenticated { message, token_sent },
            tonic::Code::PermissionDenied => WorkerError::PermissionDenied { message },
            code => WorkerError::Rejected {
                code: format!("{code:?}"),
                message: if message.is_empty() {
                    code.description().to_string()
                } else {
                    message
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_map_to_worker_errors() {
        let e = WorkerError::from_status(&tonic::Status::failed_precondition(
            "stale fencing token for job 7-0: the job is completed and holds no lease",
        ), true);
        assert_eq!(
            e,
            WorkerError::StaleLease {
                reason: "stale fencing token for job 7-0: the job is completed and holds no lease"
                    .into()
            }
        );
        assert!(e.is_lease_lost());
        assert!(e
            .to_string()
            .starts_with("lease no longer valid: stale fencing token"));
        let e = WorkerError::from_status(&tonic::Status::not_found("no job 7-0"), true);
        assert!(e.is_lease_lost());
        let e = WorkerError::from_status(&tonic::Status::invalid_argument("worker_id: too long"), true);
        assert_eq!(e.to_string(), "worker_id: too long (gRPC InvalidArgument)");
        assert!(!e.is_lease_lost());
        let e = WorkerError::Unavailable {
            endpoints: vec!["grpc://127.0.0.1:4001".into()],
            last_error: "connection refused".into(),
        };
        assert!(e
            .to_string()
            .starts_with("could not reach grpc://127.0.0.1:4001: connection refused; check"));
    }

    #[test]
    fn api_error_displays_the_server_message() {
        let body = r#"{"error":"revision_mismatch","message":"trigger x is at revision 16; re-read it and retry","current_revision":16}"#;
        let e = ClientError::from_response(
            412,
            Some("Precondition Failed"),
            "http://n1",
            body.to_string(),
        );
        assert_eq!(
            e.to_string(),
            "trigger x is at revision 16; re-read it and retry"
        );
        assert_eq!(e.code(), Some("revision_mismatch"));
        assert!(e.is_revision_mismatch());
        assert_eq!(e.current_revision(), Some(16));
    }

    #[test]
    fn non_json_error_body_still_reads_well() {
        let e = ClientError::from_response(404, Some("Not Found"), "http://n1", String::new());
        assert_eq!(e.to_string(), "HTTP 404 Not Found from http://n1");
        assert_eq!(e.code(), Some("http_404"));
        assert!(e.is_not_found());
        let e = ClientError::from_response(
            502,
            Some("Bad Gateway"),
            "http://n1",
            "upstream down\n".into(),
        );
        assert_eq!(
            e.to_string(),
            "HTTP 502 Bad Gateway from http://n1: upstream down"
        );
    }

    #[test]
    fn error_without_message_names_the_code() {
        let e = ClientError::from_response(
            404,
            Some("Not Found"),
            "http://n1",
            r#"{"error":"not_found"}"#.into(),
        );
        assert_eq!(e.to_string(), "not_found (HTTP 404 from http://n1)");
    }

    #[test]
    fn unreachable_names_the_endpoints() {
        let e = ClientError::Unreachable {
            endpoints: vec!["http://a".into()],
            last_error: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "could not reach http://a: connection refused"
        );
        let e = ClientError::Unreachable {
            endpoints: vec!["http://a".into(), "http://b".into()],
            last_error: "timed out".into(),
        };
        assert_eq!(
            e.to_string(),
            "could not reach any of http://a, http://b: last error: timed out"
        );
    }
}
