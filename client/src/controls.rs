//! Queue controls over HTTP: list jobs (`GET /v1/jobs`), cancel one
//! (`POST /v1/jobs/{id}/cancel`), re-run an event (`POST /v1/events/{id}/rerun`),
//! and per-target limits (`GET /v1/queue/limits`, `PUT /v1/targets/{target}/limits`).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, Consistency, Job, Request};

/// The lease a listed job is under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub worker_id: String,
    /// ms since the Unix epoch.
    pub deadline_ms: u64,
}

/// An item of `GET /v1/jobs`: a job with its event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListedJob {
    #[serde(flatten)]
    pub job: Job,
    pub event_id: u64,
    /// GitHub event name of its event (`push`, ...).
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub delivery_id: String,
    #[serde(default)]
    pub trigger: String,
    /// When it last entered the ready queue, ms since the Unix epoch.
    #[serde(default)]
    pub enqueued_ms: u64,
    #[serde(default)]
    pub lease: Option<JobLease>,
}

/// A page of `GET /v1/jobs`, in job id order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    #[serde(default)]
    pub items: Vec<ListedJob>,
    /// Pass as [`JobFilter::after`] for the next page; `None` on the last one.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// Which jobs `GET /v1/jobs` returns. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// `ready`, `delayed`, `leased`, `dead`, `completed`, `cancelled`, `purged`.
    pub state: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// GitHub event name.
    pub event: Option<String>,
    /// Page size (the server's default is 100, at most 1000).
    pub limit: Option<usize>,
    /// Only jobs after this job id (paging).
    pub after: Option<String>,
}

impl JobFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("target", &self.target),
            ("event", &self.event),
            ("after", &self.after),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        if let Some(v) = self.limit {
            q.push(("limit", v.to_string()));
        }
        q
    }
}

/// The answer of a cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResult {
    pub job_id: String,
    /// `cancelled`.
    pub state: String,
    /// The state it left: `ready`, `delayed` or `leased`.
    pub was: String,
}

/// The answer of a re-run: the new jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunResult {
    pub event_id: u64,
    #[serde(default)]
    pub jobs: Vec<String>,
}

/// A target's queue limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLimits {
    pub target: String,
    /// Most jobs leased at once, cluster-wide (0 = no limit).
    #[serde(default)]
    pub max_in_flight: u32,
    /// Longest time a job may wait (e.g. `1h`), `None` = no limit.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub ttl_ms: u64,
    /// Jobs of the target leased now (in `GET /v1/queue/limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased: Option<u32>,
}

/// `GET /v1/queue/limits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLimitsList {
    #[serde(default)]
    pub items: Vec<TargetLimits>,
}

impl Client {
    /// `GET /v1/jobs`: one page of jobs matching `filter`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        consistency: Consistency,
    ) -> Result<JobPage, ClientError> {
        self.json(Request {
            consistency,
            query: filter.query(),
            ..Request::get(&["v1", "jobs"])
        })
        .await
    }

    /// `POST /v1/jobs/{id}/cancel`. A finished job is a 409 [`ClientError::Api`],
    /// an unknown one a 404.
    pub async fn cancel_job(
        &self,
        job_id: &str,
        reason: &str,
    ) -> Result<CancelResult, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({ "reason": reason }))
            .expect("JSON of a string serializes");
        self.json(Request {
            body: Some((body, "application/json")),
            ..Request::write(Method::POST, &["v1", "jobs", job_id, "cancel"])
        })
        .await
    }

    /// `POST /v1/events/{id}/rerun`: new jobs for the event's routes. 404 when the
    /// event has expired (its payload with it), 409 when there is nothing to re-run.
    pub async fn rerun_event(&self, event_id: u64) -> Result<RerunResult, ClientError> {
        let id = event_id.to_string();
        self.json(Request {
            body: Some((b"{}".to_vec(), "application/json")),
            ..Request::write(Method::POST, &["v1", "events", &id, "rerun"])
        })
        .await
    }

    /// `GET /v1/queue/limits`: every target with limits.
    pub async fn target_limits(
        &self,
        consistency: Consistency,
    ) -> Result<TargetLimitsList, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "queue", "limits"])
        })
        .await
    }

    /// `PUT /v1/targets/{target}/limits`; `max_in_flight` 0 and `ttl` `None`
    /// remove the target's limits.
    pub async fn set_target_limits(
        &self,
        target: &str,
        max_in_flight: u32,
        ttl: Option<&str>,
    ) -> Result<TargetLimits, ClientError> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "max_in_flight": max_in_flight, "ttl": ttl }))
                .expect("JSON serializes");
        self.json(Request {
            body: Some((body, "application/json")),
            ..Request::write(Method::PUT, &["v1", "targets", target, "limits"])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_job_decodes_and_filters_become_query_parameters() {
        let p: JobPage = serde_json::from_str(
            r#"{"items":[{"job_id":"12-0","target":{"kind":"agent","name":"helper"},"params":null,"priority":"normal",
            "state":"cancelled","attempts":1,"history":[],"event_id":12,"event":"push","delivery_id":"d","trigger":"t",
            "enqueued_ms":5,"lease":null}],"next_after":"12-0"}"#,
        )
        .unwrap();
        assert_eq!(p.items[0].job.state, crate::JobState::Cancelled);
        assert_eq!(p.next_after.as_deref(), Some("12-0"));
        let f = JobFilter {
            state: Some("ready".into()),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            f.query(),
            vec![("state", "ready".to_string()), ("limit", "5".into())]
        );
    }
}
