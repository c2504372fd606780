//! The event status API: what happened to a webhook delivery.
//! `GET /v1/events?repo=&status=&event=&limit=&after=`, `GET /v1/events/{id}` and
//! `GET /v1/deliveries/{delivery_id}` — an event with its jobs and each job's
//! state history. Reads are linearizable unless [`Consistency::Stale`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lease::Target;
use crate::{Client, ClientError, Consistency, Request};

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Jobs are waiting or running.
    Queued,
    /// No trigger matched; nothing to do.
    Unmatched,
    /// A trigger matched but routed the event nowhere.
    NoRoute,
    /// Every job completed.
    Completed,
    /// Every job finished, some of them dead-lettered or purged.
    Failed,
    /// A status this client does not know (newer server).
    #[serde(other)]
    Unknown,
}

impl EventStatus {
    /// The API's name, e.g. `no_route`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Unmatched => "unmatched",
            EventStatus::NoRoute => "no_route",
            EventStatus::Completed => "completed",
            EventStatus::Failed => "failed",
            EventStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Ready,
    /// Held by a worker until its lease deadline.
    Leased,
    /// Waiting for its retry time.
    Delayed,
    Completed,
    /// In the dead-letter queue.
    Dead,
    /// Removed from the dead-letter queue.
    Purged,
    /// Cancelled by an operator before it finished (`aofctl cancel job`).
    Cancelled,
    /// A state this client does not know (newer server).
    #[serde(other)]
    Unknown,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Delayed => "delayed",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Purged => "purged",
            JobState::Cancelled => "cancelled",
            JobState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a job's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTransition {
    pub state: JobState,
    /// Leader-stamped time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Raft log index of the change.
    #[serde(default)]
    pub index: u64,
    /// e.g. `leased to host-1 (attempt 1, token 17)`.
    #[serde(default)]
    pub note: Option<String>,
}

/// A job of an event: one unit of work for an agent, fleet or flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// e.g. `42-0`.
    pub job_id: String,
    pub target: Target,
    /// The route's params (`null` if none).
    #[serde(default)]
    pub params: serde_json::Value,
    /// e.g. `normal`.
    #[serde(default)]
    pub priority: String,
    pub state: JobState,
    /// Attempts so far (leases granted).
    #[serde(default)]
    pub attempts: u32,
    /// Oldest first.
    #[serde(default)]
    pub history: Vec<JobTransition>,
}

/// An accepted webhook delivery with its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The Raft log index that recorded it.
    pub event_id: u64,
    /// GitHub's `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// GitHub's `X-GitHub-Event`.
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    /// `owner/name`.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub sender: Option<String>,
    pub status: EventStatus,
    /// The trigger that matched, if any.
    #[serde(default)]
    pub trigger: Option<String>,
    /// The command key or slash command that routed it, if any.
    #[serde(default)]
    pub command: Option<String>,
    /// Leader-stamped, ms since the Unix epoch.
    #[serde(default)]
    pub received_ms: u64,
    /// The node that accepted the webhook.
    #[serde(default)]
    pub received_by: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// When a finished event is removed (retention).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub payload_bytes: u64,
    /// AOF context variables (`event_type`, `repo_full_name`, `pr_number`, ...).
    #[serde(default)]
    pub context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub jobs: Vec<Job>,
}

/// A page of `GET /v1/events`, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    #[serde(default)]
    pub items: Vec<Event>,
    /// Pass as [`EventFilter::after`] for the next page; `None` on the last one.
    #[serde(default)]
    pub next_after: Option<u64>,
}

/// Which events `GET /v1/events` returns. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// `owner/name`.
    pub repo: Option<String>,
    pub status: Option<EventStatus>,
    /// GitHub event name, e.g. `pull_request`.
    pub event: Option<String>,
    /// Page size (the server's default is 100, at most 1000).
    pub limit: Option<usize>,
    /// Only events with a larger id (paging).
    pub after: Option<u64>,
}

impl EventFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(v) = &self.repo {
            q.push(("repo", v.clone()));
        }
        if let Some(v) = self.status {
            q.push(("status", v.as_str().to_string()));
        }
        if let Some(v) = &self.event {
            q.push(("event", v.clone()));
        }
        if let Some(v) = self.limit {
            q.push(("limit", v.to_string()));
        }
        if let Some(v) = self.after {
            q.push(("after", v.to_string()));
        }
        q
    }
}

impl Client {
    /// `GET /v1/events`: one page of events matching `filter`, oldest first.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        consistency: Consistency,
    ) -> Result<EventPage, ClientError> {
        self.json(Request {
            consistency,
            query: filter.query(),
            ..Request::get(&["v1", "events"])
        })
        .await
    }

    /// `GET /v1/events/{id}`; 404 [`ClientError::Api`] if unknown or expired.
    pub async fn get_event(
        &self,
        event_id: u64,
        consistency: Consistency,
    ) -> Result<Event, ClientError> {
        let id = event_id.to_string();
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "events", &id])
        })
        .await
    }

    /// `GET /v1/deliveries/{delivery_id}`: the event of a GitHub delivery; 404
    /// [`ClientError::Api`] if never accepted or expired.
    pub async fn get_delivery(
        &self,
        delivery_id: &str,
        consistency: Consistency,
    ) -> Result<Event, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "deliveries", delivery_id])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_decodes_with_its_jobs_and_unknown_values() {
        let json = r#"{"event_id":12,"delivery_id":"d-1","event":"push","action":null,"repo":"acme/api",
            "sender":"alice","status":"completed","trigger":"all","command":null,"received_ms":1000,
            "received_by":2,"finished_ms":2000,"expires_ms":null,"payload_bytes":77,
            "context":{"event_type":"push","pr_number":7},
            "jobs":[{"job_id":"12-0","target":{"kind":"agent","name":"helper"},"params":null,
              "priority":"normal","state":"completed","attempts":1,
              "history":[{"state":"ready","at_ms":1000,"index":12,"note":null},
                         {"state":"leased","at_ms":1100,"index":14,"note":"leased to w (attempt 1, token 14)"},
                         {"state":"teleported","at_ms":1200,"index":15,"note":null}]}],
            "new_field":true}"#;
        let e: Event = serde_json::from_str(json).unwrap();
        assert_eq!(e.status, EventStatus::Completed);
        assert_eq!(e.context["pr_number"], 7);
        let j = &e.jobs[0];
        assert_eq!(j.target.to_string(), "agent/helper");
        assert_eq!(
            j.history[1].note.as_deref(),
            Some("leased to w (attempt 1, token 14)")
        );
        assert_eq!(j.history[2].state, JobState::Unknown);
        let s: EventStatus = serde_json::from_str("\"no_route\"").unwrap();
        assert_eq!(s.to_string(), "no_route");
    }

    #[test]
    fn filters_become_query_parameters() {
        let f = EventFilter {
            repo: Some("acme/api".into()),
            status: Some(EventStatus::NoRoute),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            f.query(),
            vec![
                ("repo", "acme/api".to_string()),
                ("status", "no_route".into()),
                ("limit", "5".into())
            ]
        );
        assert!(EventFilter::default().query().is_empty());
    }
}
