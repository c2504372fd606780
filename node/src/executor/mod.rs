//! Executors: what a worker does with a lease. Used by the built-in workers of every
//! node (`spec.runtime.executors`, see [`crate::workers`]) and by `aofctl worker`.
//!
//! An executor returns the job's result text, or an [`ExecError`] saying whether a
//! retry can help.

pub mod aof;
pub mod command;
pub mod github;
pub mod template;

use std::collections::BTreeMap;

use aof_proto::v1 as pb;

/// What an executor gets to work on: a granted lease, in plain types.
#[derive(Clone, Debug, Default)]
pub struct JobInput {
    pub job_id: String,
    pub event_id: u64,
    pub delivery_id: String,
    pub event: String,
    pub trigger: String,
    pub target_kind: String,
    pub target: String,
    pub params_json: String,
    pub attempt: u32,
    pub fencing_token: u64,
    /// W3C traceparent of the delivery (empty when unknown).
    pub traceparent: String,
    /// The worker running the job (set by the pool; not part of the lease).
    pub worker_id: String,
    /// AOF context variables, as text.
    pub context: BTreeMap<String, String>,
    /// The webhook body as GitHub sent it.
    pub payload: Vec<u8>,
}

impl JobInput {
    /// The job as the `AOF_*` environment contract sees it.
    pub fn env_job(&self) -> aof_contract::jobenv::Job<'_> {
        aof_contract::jobenv::Job {
            event: &self.event,
            delivery_id: &self.delivery_id,
            event_id: self.event_id,
            job_id: &self.job_id,
            attempt: self.attempt,
            target: &self.target,
            target_kind: &self.target_kind,
            trigger: &self.trigger,
            params_json: &self.params_json,
            worker_id: &self.worker_id,
            fencing_token: self.fencing_token,
            traceparent: &self.traceparent,
            context: &self.context,
        }
    }
}

impl From<&pb::Lease> for JobInput {
    fn from(l: &pb::Lease) -> Self {
        let target = l.target.clone().unwrap_or_default();
        JobInput {
            job_id: l.job_id.clone(),
            event_id: l.event_id,
            delivery_id: l.delivery_id.clone(),
            event: l.event.clone(),
            trigger: l.trigger.clone(),
            target_kind: target.kind,
            target: target.name,
            params_json: l.params_json.clone(),
            attempt: l.attempt,
            fencing_token: l.fencing_token,
            traceparent: l.traceparent.clone(),
            worker_id: String::new(),
            context: l.context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            payload: l.payload.clone(),
        }
    }
}

/// A failed execution.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub message: String,
    /// `false` sends the job to the dead-letter queue at once.
    pub retryable: bool,
}

impl ExecError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ExecError { message: message.into(), retryable: true }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ExecError { message: message.into(), retryable: false }
    }
}
