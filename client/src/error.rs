//! [`ClientError`]: what can go wrong when talking to the cluster.
//!
//! Three cases, kept apart because callers react to them differently:
//! - [`ClientError::Api`]: a node answered with an error status (4xx/5xx). Its
//!   `Display` is the server's own `message`, which already says what to do.
//! - [`ClientError::Unreachable`]: no endpoint gave an HTTP answer (connection
//!   refused, timeout, ...).
//! - [`ClientError::Decode`]: a node answered with success but the body did not
//!   match the API contract (version skew, or not an aof-cluster node at all).

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

#[cfg(test)]
mod tests {
    use super::*;

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
