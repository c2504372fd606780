//! Completion callbacks: the replicated outbox (`GET /v1/callbacks`).

use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, Consistency, Request};

/// A notice in the outbox (pending or dead; delivered ones leave it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackNotice {
    pub id: String,
    /// `pending` or `dead`.
    pub state: String,
    /// `completed` or `dead`: how the job ended.
    pub outcome: String,
    #[serde(default)]
    pub trigger: String,
    pub event_id: u64,
    #[serde(default)]
    pub delivery_id: String,
    pub job_id: String,
    pub url: String,
    #[serde(default)]
    pub secret_env: String,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub attempts: u32,
    /// When the job finished, ms since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub last_attempt_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub dead_ms: Option<u64>,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// The JSON body it sends.
    #[serde(default)]
    pub notice: serde_json::Value,
}

/// `GET /v1/callbacks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackList {
    #[serde(default)]
    pub items: Vec<CallbackNotice>,
    /// Notices waiting to be delivered, in all.
    #[serde(default)]
    pub pending: u64,
}

impl Client {
    /// `GET /v1/callbacks[?state=pending|dead]`: notices in the outbox, oldest first.
    pub async fn list_callbacks(
        &self,
        state: Option<&str>,
        limit: Option<usize>,
        consistency: Consistency,
    ) -> Result<CallbackList, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = state {
            query.push(("state", s.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        self.json(Request {
            consistency,
            query,
            ..Request::get(&["v1", "callbacks"])
        })
        .await
    }
}
