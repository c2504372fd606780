//! The work queue over HTTP: depths (`GET /v1/queue/stats`) and the dead-letter
//! queue (`GET /v1/dlq`, `POST /v1/dlq/redrive`, `POST /v1/dlq/purge`).
//! Workers themselves use gRPC ([`crate::Worker`]).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::lease::Target;
use crate::{Client, ClientError, Consistency, Request};

/// Jobs of one (target, priority) by state: an item of `GET /v1/queue/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// `agent`, `fleet` or `flow`.
    pub target_kind: String,
    pub target: String,
    pub priority: String,
    #[serde(default)]
    pub ready: u64,
    #[serde(default)]
    pub delayed: u64,
    #[serde(default)]
    pub leased: u64,
    #[serde(default)]
    pub dead: u64,
    /// Age of the oldest ready job, ms (`None` if none is ready).
    #[serde(default)]
    pub oldest_ready_age_ms: Option<u64>,
}

/// `GET /v1/queue/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    #[serde(default)]
    pub items: Vec<QueueDepth>,
}

/// A job in the dead-letter queue: an item of `GET /v1/dlq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadJob {
    pub job_id: String,
    pub event_id: u64,
    pub delivery_id: String,
    pub target: Target,
    #[serde(default)]
    pub trigger: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it was dead-lettered, ms since the Unix epoch.
    #[serde(default)]
    pub dead_since_ms: Option<u64>,
}

/// `GET /v1/dlq`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadJobList {
    #[serde(default)]
    pub items: Vec<DeadJob>,
}

/// Which dead-lettered jobs a redrive or purge acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlqSelector {
    Job(String),
    All,
}

impl DlqSelector {
    fn body(&self) -> Vec<u8> {
        let v = match self {
            DlqSelector::Job(id) => serde_json::json!({ "job_id": id }),
            DlqSelector::All => serde_json::json!({ "all": true }),
        };
        serde_json::to_vec(&v).expect("JSON of a string serializes")
    }
}

/// The jobs a redrive or purge acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqResult {
    #[serde(default)]
    pub jobs: Vec<String>,
}

impl Client {
    /// `GET /v1/queue/stats`: depth per (target, priority) with live jobs.
    pub async fn queue_stats(&self, consistency: Consistency) -> Result<QueueStats, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "queue", "stats"])
        })
        .await
    }

    /// `GET /v1/dlq`: dead-lettered jobs, oldest first (at most `limit`; the
    /// server's default is 100).
    pub async fn list_dlq(
        &self,
        limit: Option<usize>,
        consistency: Consistency,
    ) -> Result<DeadJobList, ClientError> {
        self.json(Request {
            consistency,
            query: limit
                .map(|l| vec![("limit", l.to_string())])
                .unwrap_or_default(),
            ..Request::get(&["v1", "dlq"])
        })
        .await
    }

    /// `POST /v1/dlq/redrive`: make dead jobs ready again (attempts start over).
    /// A named job that is not dead is a 404 [`ClientError::Api`].
    pub async fn redrive_dlq(&self, which: &DlqSelector) -> Result<DlqResult, ClientError> {
        self.dlq_op("redrive", which).await
    }

    /// `POST /v1/dlq/purge`: drop dead jobs for good (their events stay, `failed`).
    pub async fn purge_dlq(&self, which: &DlqSelector) -> Result<DlqResult, ClientError> {
        self.dlq_op("purge", which).await
    }

    async fn dlq_op(&self, op: &str, which: &DlqSelector) -> Result<DlqResult, ClientError> {
        self.json(Request {
            body: Some((which.body(), "application/json")),
            ..Request::write(Method::POST, &["v1", "dlq", op])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_the_documented_bodies() {
        assert_eq!(
            DlqSelector::Job("7-0".into()).body(),
            br#"{"job_id":"7-0"}"#
        );
        assert_eq!(DlqSelector::All.body(), br#"{"all":true}"#);
    }

    #[test]
    fn stats_and_dead_jobs_decode() {
        let s: QueueStats = serde_json::from_str(
            r#"{"items":[{"target_kind":"agent","target":"helper","priority":"high","ready":2,"delayed":0,"leased":1,"dead":3,"oldest_ready_age_ms":null}]}"#,
        )
        .unwrap();
        assert_eq!(s.items[0].dead, 3);
        assert_eq!(s.items[0].oldest_ready_age_ms, None);
        let d: DeadJobList = serde_json::from_str(
            r#"{"items":[{"job_id":"7-0","event_id":7,"delivery_id":"d","target":{"kind":"flow","name":"deploy"},"trigger":"t","attempts":2,"last_error":"exit status 3","dead_since_ms":5}]}"#,
        )
        .unwrap();
        assert_eq!(d.items[0].target.to_string(), "flow/deploy");
        assert_eq!(d.items[0].last_error.as_deref(), Some("exit status 3"));
    }
}
