//! The `aof.v1.WorkQueue` gRPC service (workers in any language), served by every
//! node. Each call becomes a Raft command (forwarded to the leader by
//! [`Node::write`]); an OK answer means it is committed on a quorum.
//!
//! **API Boundary**: conversions between the wire types of `aof-proto` and the
//! state machine's types happen here and nowhere else.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_server::{WorkQueue, WorkQueueServer};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, Role};
use crate::network::MAX_MESSAGE_BYTES;
use crate::node::{Consistency, Node, NodeError};
use crate::sm::events::JobState;
use crate::types::{Command, GrantRequest, LeaseGrant};
use aof_core::answers::{FailArgs, LeaseRefused};

/// Most leases one claim stream may hold at once.
pub const MAX_IN_FLIGHT_PER_STREAM: u32 = 1024;
/// How long an idle claim loop waits before looking for work again (it also wakes
/// on every newly applied log entry), and the longest back-off after empty grants.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The first back-off after a grant that found nothing.
const MIN_BACKOFF: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct QueueService {
    node: Arc<Node>,
}

impl QueueService {
    pub fn new(node: Arc<Node>) -> Self {
        QueueService { node }
    }
    /// The service with its message limits: requests from workers are small (at most
    /// [`limits::MAX_REQUEST_BYTES`]); leases carry webhook payloads and may be large.
    pub fn server(self) -> WorkQueueServer<Self> {
        WorkQueueServer::new(self).max_decoding_message_size(limits::MAX_REQUEST_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Refuse a settle (extend / complete / fail) by a worker whose token does not
    /// cover the job's target. Unscoped callers pay nothing; a scoped one costs a local
    /// read (a job's target never changes), or a read-index when this node has not
    /// applied the job yet.
    /// The target of a job, for metric labels: from this node's state (the job exists
    /// once its failure is committed, though a lagging follower may not have it yet).
    fn job_target(&self, job_id: &str) -> String {
        self.node.read_local(|kv| crate::sm::events::get_job(kv, job_id).map(|j| j.route.name)).unwrap_or_else(|| "unknown".into())
    }

    async fn check_job_scope(&self, principal: Option<&Principal>, job_id: &str) -> Result<(), Status> {
        let Some(p) = principal.filter(|p| p.role == Role::Worker && !p.targets.is_empty()) else { return Ok(()) };
        let read = |node: &Node| node.read_local(|kv| crate::sm::events::get_job(kv, job_id).map(|j| j.route.name));
        let target = match read(&self.node) {
            Some(t) => Some(t),
            None => {
                self.node.linearize().await.map_err(status_of)?;
                read(&self.node)
            }
        };
        match target {
            Some(t) if p.may_work_on(&t) => Ok(()),
            Some(t) => Err(Status::permission_denied(format!(
                "job {job_id} belongs to target {t:?}, which token {:?} may not work on (its targets: {:?})",
                p.name, p.targets
            ))),
            None => Err(Status::not_found(format!("no job {job_id} (finished long ago, or never existed)"))),
        }
    }
}

/// Size limits of WorkQueue requests, checked before anything is proposed: a request
/// over them is refused with `INVALID_ARGUMENT` and never reaches the log.
pub mod limits {
    /// Largest request message a worker may send.
    pub const MAX_REQUEST_BYTES: usize = 4 << 20;
    /// `job_id` (they look like `<event id>-<n>`).
    pub const MAX_JOB_ID_BYTES: usize = 64;
    /// `worker_id`.
    pub const MAX_WORKER_ID_BYTES: usize = 256;
    /// `Complete.result` and `Fail.error` (the job history keeps 4 KiB of them).
    pub const MAX_TEXT_BYTES: usize = 64 << 10;
    /// Entries of `Claim.targets`, and the length of each.
    pub const MAX_TARGETS: usize = 64;
    pub const MAX_TARGET_BYTES: usize = 253;
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!("{field}: {} bytes, at most {max} allowed", value.len())));
    }
    Ok(())
}

fn check_job_id(job_id: &str) -> Result<(), Status> {
    check_len("job_id", job_id, limits::MAX_JOB_ID_BYTES)?;
    if job_id.is_empty() {
        return Err(Status::invalid_argument("job_id: required (the job_id of the lease)"));
    }
    Ok(())
}

/// The targets a claim stream serves, within what its token allows.
fn claim_targets(principal: Option<&Principal>, requested: Vec<String>) -> Result<Vec<String>, Status> {
    if requested.len() > limits::MAX_TARGETS {
        return Err(Status::invalid_argument(format!("targets: {} entries, at most {} allowed", requested.len(), limits::MAX_TARGETS)));
    }
    for t in &requested {
        check_len("targets[]", t, limits::MAX_TARGET_BYTES)?;
    }
    let Some(p) = principal.filter(|p| p.role == Role::Worker && !p.targets.is_empty()) else { return Ok(requested) };
    if requested.is_empty() {
        return Ok(p.targets.clone());
    }
    if let Some(t) = requested.iter().find(|t| !p.may_work_on(t)) {
        return Err(Status::permission_denied(format!(
            "token {:?} may not claim jobs of target {t:?} (its targets: {:?})",
            p.name, p.targets
        )));
    }
    Ok(requested)
}

fn status_of(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } | NodeError::Unavailable(_) => Status::unavailable(e.to_string()),
        NodeError::NotFound(m) => Status::not_found(m),
        NodeError::Invalid(m) => Status::invalid_argument(m),
        NodeError::Internal(m) => Status::internal(m),
    }
}

/// Map a refused lease operation to gRPC.
fn refused(r: LeaseRefused) -> Status {
    match r {
        LeaseRefused::StaleToken { job_id, reason } => {
            Status::failed_precondition(format!("stale fencing token for job {job_id}: {reason}"))
        }
        LeaseRefused::JobNotFound { job_id } => Status::not_found(format!("no job {job_id} (finished long ago, or never existed)")),
    }
}

/// The wire form of a granted lease.
pub fn lease_to_pb(l: LeaseGrant) -> pb::Lease {
    let context: std::collections::HashMap<String, String> = l
        .context
        .iter()
        .map(|(k, v)| {
            let j = v.to_json();
            (k.clone(), j.as_str().map(str::to_string).unwrap_or_else(|| j.to_string()))
        })
        .collect();
    pb::Lease {
        job_id: l.job_id,
        event_id: l.event_id,
        delivery_id: l.delivery_id,
        target: Some(pb::Target { kind: format!("{:?}", l.route.kind).to_lowercase(), name: l.route.name }),
        params_json: l.route.params_json,
        context,
        payload: l.payload,
        attempt: l.attempt,
        deadline_ms: l.deadline_ms,
        fencing_token: l.token,
        event: l.event,
        trigger: l.trigger,
        traceparent: l.traceparent,
    }
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<pb::Lease, Status>> + Send>>;

#[tonic::async_trait]
impl WorkQueue for QueueService {
    type ClaimStream = LeaseStream;

    async fn claim(&self, req: Request<pb::ClaimRequest>) -> Result<Response<Self::ClaimStream>, Status> {
        let principal = req.extensions().get::<Principal>().cloned();
        let r = req.into_inner();
        let max = r.max_in_flight.clamp(1, MAX_IN_FLIGHT_PER_STREAM);
        check_len("worker_id", &r.worker_id, limits::MAX_WORKER_ID_BYTES)?;
        let targets = claim_targets(principal.as_ref(), r.targets)?;
        let worker_id = if r.worker_id.is_empty() { "anonymous".to_string() } else { r.worker_id };
        let (tx, rx) = mpsc::channel(max as usize);
        tokio::spawn(claim_loop(self.node.clone(), worker_id, targets, max, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn extend(&self, req: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendReply>, Status> {
        let principal = req.extensions().get::<Principal>().cloned();
        let r = req.into_inner();
        check_job_id(&r.job_id)?;
        self.check_job_scope(principal.as_ref(), &r.job_id).await?;
        let extend_ms = if r.extend_ms == 0 { self.node.queue_policy().lease_timeout_ms } else { r.extend_ms };
        let p = Command::extend(r.job_id, r.fencing_token, extend_ms);
        let extended = self.node.propose(p).await.map_err(status_of)?.map_err(refused)?;
        Ok(Response::new(pb::ExtendReply { deadline_ms: extended.deadline_ms }))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteReply>, Status> {
        let principal = req.extensions().get::<Principal>().cloned();
        let r = req.into_inner();
        check_job_id(&r.job_id)?;
        check_len("result", &r.result, limits::MAX_TEXT_BYTES)?;
        self.check_job_scope(principal.as_ref(), &r.job_id).await?;
        let p = Command::complete(r.job_id, r.fencing_token, r.result);
        self.node.propose(p).await.map_err(status_of)?.map_err(refused)?;
        Ok(Response::new(pb::CompleteReply {}))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        let principal = req.extensions().get::<Principal>().cloned();
        let r = req.into_inner();
        check_job_id(&r.job_id)?;
        check_len("error", &r.error, limits::MAX_TEXT_BYTES)?;
        self.check_job_scope(principal.as_ref(), &r.job_id).await?;
        let job_id = r.job_id.clone();
        let p = Command::fail(FailArgs {
            job_id: r.job_id,
            token: r.fencing_token,
            error: r.error,
            retryable: r.retryable,
            delay_ms: r.delay_ms,
            policy: self.node.queue_policy(),
        });
        let failed = self.node.propose(p).await.map_err(status_of)?.map_err(refused)?;
        self.node.metrics().count_failure(&self.job_target(&job_id), failed.dead);
        let outcome = if failed.dead { "dead" } else { "retrying" };
        Ok(Response::new(pb::FailReply { outcome: outcome.into(), ready_at_ms: failed.ready_at_ms }))
    }

    async fn stats(&self, _req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsReply>, Status> {
        let now = crate::node::leader_clock_ms();
        let depths = self.node.read(Consistency::Linearizable, crate::sm::queue::stats).await.map_err(status_of)?;
        Ok(Response::new(pb::StatsReply {
            depths: depths
                .into_iter()
                .map(|d| pb::QueueDepth {
                    target: Some(pb::Target { kind: d.target_kind, name: d.target }),
                    priority: d.priority,
                    ready: d.ready,
                    delayed: d.delayed,
                    leased: d.leased,
                    dead: d.dead,
                    oldest_ready_age_ms: d.oldest_ready_ms.map_or(0, |t| now.saturating_sub(t)),
                })
                .collect(),
        }))
    }
}

/// Grant leases to one claim stream while it has room, until the worker hangs up.
/// A lease counts against `max` until the local state shows it is no longer live
/// (completed, failed, expired — through whichever node).
///
/// The loop sleeps until this node applies new entries (new work, finished leases)
/// and proposes a `Grant` only when the local state shows ready work and the stream
/// has room. A grant that comes back empty (other streams took the work first, or
/// the ready jobs are rate-limited) backs off from [`MIN_BACKOFF`] doubling to
/// [`IDLE_POLL`], and resets once a grant succeeds.
async fn claim_loop(node: Arc<Node>, worker_id: String, targets: Vec<String>, max: u32, tx: mpsc::Sender<Result<pb::Lease, Status>>) {
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    let mut applied = node.raft().metrics();
    let mut seen = applied.borrow().last_applied;
    let mut backoff = Duration::ZERO;
    while !tx.is_closed() {
        if node.is_draining() {
            // The stream must end for the node to stop (its gRPC server waits for open
            // calls); the worker claims from another node. Leases already sent stay
            // valid there. Full channel: the stream simply ends.
            let _ = tx.try_send(Err(Status::unavailable("this node is shutting down; claim from another node")));
            return;
        }
        let work = node.read_local(|kv| crate::sm::queue::has_ready(kv, &targets));
        if work {
            held = node.read_local(|kv| {
                held.into_iter()
                    .filter(|(job, token)| {
                        crate::sm::events::get_job(kv, job).is_some_and(|j| {
                            j.state == JobState::Leased && j.lease.as_ref().is_some_and(|l| l.token == *token)
                        })
                    })
                    .collect()
            });
        }
        let room = max.saturating_sub(held.len() as u32);
        if work && room > 0 {
            let p = Command::grant(GrantRequest { worker_id: worker_id.clone(), targets: targets.clone(), count: room, policy: node.queue_policy() });
            match node.propose(p).await {
                Ok(leases) if !leases.is_empty() => {
                    backoff = Duration::ZERO;
                    let now = crate::node::leader_clock_ms();
                    for l in leases {
                        node.metrics().lease_grants.inc();
                        node.metrics().event_to_claim_seconds.observe(now.saturating_sub(l.received_ms) as f64 / 1000.0);
                        held.insert(l.job_id.clone(), l.token);
                        if tx.send(Ok(lease_to_pb(l))).await.is_err() {
                            // The worker is gone; its leases expire and are retried.
                            return;
                        }
                    }
                    continue;
                }
                Ok(_) => {
                    backoff = (backoff * 2).clamp(MIN_BACKOFF, IDLE_POLL);
                }
                Err(e) => {
                    backoff = IDLE_POLL;
                    tracing::debug!(worker = %worker_id, "grant not committed: {e}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            continue;
        }
        // Nothing to do until this node applies something new.
        let next = async {
            loop {
                if applied.changed().await.is_err() {
                    // Raft has stopped: the node is shutting down.
                    tokio::time::sleep(IDLE_POLL).await;
                    return;
                }
                let now = applied.borrow_and_update().last_applied;
                if now != seen {
                    seen = now;
                    return;
                }
            }
        };
        tokio::select! {
            _ = next => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}
