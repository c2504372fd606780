//! Delivery recovery over HTTP: `GET /v1/github/recovery` (the configured hooks and
//! their checkpoints) and `POST /v1/github/recover` (sweep now, or a dry run).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, Consistency, Request};

/// One hook of `GET /v1/github/recovery`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryHookStatus {
    /// `repo:<owner>/<name>/<hook_id>` or `org:<org>/<hook_id>`.
    pub source: String,
    /// Whether the answering node has a token for it.
    #[serde(default)]
    pub token: bool,
    #[serde(default)]
    pub checkpoint: Option<RecoveryCheckpoint>,
}

/// Where the sweeps of one hook got to (replicated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCheckpoint {
    pub last_delivery_id: u64,
    pub last_delivered_at_ms: u64,
    /// When the leader last moved it.
    pub at_ms: u64,
    pub recovered_total: u64,
    pub sweeps: u64,
}

/// `GET /v1/github/recovery`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    pub enabled: bool,
    pub interval_secs: u64,
    pub since_secs: u64,
    pub hooks: Vec<RecoveryHookStatus>,
}

/// A delivery the cluster had not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingDelivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    pub delivered_at: String,
    #[serde(default)]
    pub status_code: i64,
}

/// What a sweep did for one hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverySource {
    pub source: String,
    pub listed: u64,
    pub missing: Vec<MissingDelivery>,
    pub recovered: u64,
    #[serde(default)]
    pub skipped: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/github/recover`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub dry_run: bool,
    pub sources: Vec<RecoverySource>,
}

impl Client {
    /// `GET /v1/github/recovery`: the hooks delivery recovery sweeps, with checkpoints.
    pub async fn recovery_status(
        &self,
        consistency: Consistency,
    ) -> Result<RecoveryStatus, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "github", "recovery"])
        })
        .await
    }

    /// `POST /v1/github/recover`: sweep every hook's deliveries of the last `since`
    /// (`2h`; `None`: the configured lookback) and ingest the missing ones, or with
    /// `dry_run` only list them. Needs an admin token.
    pub async fn recover_deliveries(
        &self,
        since: Option<&str>,
        dry_run: bool,
    ) -> Result<RecoveryReport, ClientError> {
        let body = serde_json::json!({ "since": since, "dry_run": dry_run });
        self.json(Request {
            body: Some((body.to_string().into_bytes(), "application/json")),
            ..Request::write(Method::POST, &["v1", "github", "recover"])
        })
        .await
    }
}
