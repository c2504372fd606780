//! [`Node`]: one cluster member's handle on Raft, its state machine and its peers.
//!
//! Every client-facing operation goes through here. Operations that must run on the
//! leader (writes, membership changes, read-index, cluster status) are a
//! [`LeaderOp`]: a leader runs it ([`Node::run_on_leader`]); any other node forwards it
//! to the leader over gRPC (`ClusterService.Forward`) and relays the answer, so a
//! client never sees a redirect. Forwarding is one hop: a node that receives a
//! forwarded op but is no longer leader answers [`NodeError::NotLeader`] and the
//! origin retries with the new leader.
//!
//! **Architecture Invariant**: a write is answered only after `Raft::client_write`
//! returns, i.e. after its entry is flushed on a quorum, committed and applied on the
//! leader. No code path acknowledges earlier.
//!
//! **Architecture Invariant**: a linearizable read first obtains a read index from
//! the leader (`Raft::ensure_linearizable`, which confirms leadership with a quorum),
//! then waits until the local state machine has applied it, then reads locally. Only
//! `Consistency::Stale` skips this.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aof_proto::v1::cluster_service_client::ClusterServiceClient;
use aof_proto::v1::RaftPayload;
use openraft::error::RaftError;
use openraft::{ChangeMembers, ServerState};
use aof_core::answers::{Answer, Proposal};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{membership_timeout, write_error, write_timeout};
use crate::metrics::Metrics;
use crate::network::{Channels, MAX_MESSAGE_BYTES};
use crate::proposer::Proposer;
use crate::sm::KvRead;
use crate::store::StateMachineStore;
use crate::types::{Command, Member, NodeId, QueuePolicy, Raft, Request, Response};

pub use crate::clock::leader_clock_ms;
pub use crate::error::NodeError;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-index through the leader, then read the local state (the default).
    #[default]
    Linearizable,
    /// The local copy as it is; may lag the leader.
    Stale,
}

/// An operation that only the leader can perform.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Command),
    ReadIndex,
    AddLearner { id: NodeId, member: Member },
    Promote { id: NodeId },
    Remove { id: NodeId },
    ClusterStatus,
    /// A node asks to become (or stay) a member; see [`Node::join`].
    Join { id: NodeId, member: Member, max_voters: u32 },
}

impl LeaderOp {
    /// Check a forwarded operation again on the leader, as its edge checked it on the
    /// node that received it: Trigger documents are parsed again (and stored in the
    /// leader's own canonical form), worker texts are size-capped, and batches —
    /// which only the leader's proposer forms — are refused.
    pub fn revalidate(self) -> Result<LeaderOp, String> {
        use crate::queue_service::limits::{MAX_JOB_ID_BYTES, MAX_TEXT_BYTES, MAX_WORKER_ID_BYTES};
        let too_long = |what: &str, s: &str, max: usize| if s.len() > max { Err(format!("{what}: {} bytes, at most {max}", s.len())) } else { Ok(()) };
        match self {
            LeaderOp::Write(Command::PutTrigger { name, doc_json, if_match }) => {
                let doc_json = crate::registry::canonical_trigger(&name, doc_json.as_bytes())?;
                Ok(LeaderOp::Write(Command::PutTrigger { name, doc_json, if_match }))
            }
            LeaderOp::Write(Command::Batch(_)) => Err("a batch is formed on the leader only".into()),
            LeaderOp::Write(Command::Complete { ref job_id, ref result, .. }) => {
                too_long("job_id", job_id, MAX_JOB_ID_BYTES)?;
                too_long("result", result, MAX_TEXT_BYTES)?;
                Ok(self)
            }
            LeaderOp::Write(Command::Fail { ref job_id, ref error, .. }) => {
                too_long("job_id", job_id, MAX_JOB_ID_BYTES)?;
                too_long("error", error, MAX_TEXT_BYTES)?;
                Ok(self)
            }
            LeaderOp::Write(Command::Grant(ref g)) => {
                too_long("worker_id", &g.worker_id, MAX_WORKER_ID_BYTES)?;
                Ok(self)
            }
            LeaderOp::Write(Command::RecoveryCheckpoint(ref c)) => {
                too_long("source", &c.source, crate::sm::recovery::MAX_SOURCE_LEN)?;
                Ok(self)
            }
            other => Ok(other),
        }
    }
}

/// The leader's answer to a [`LeaderOp`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderReply {
    Written { response: Response, log_index: u64 },
    ReadIndex { index: u64 },
    Membership { log_index: u64 },
    ClusterStatus(ClusterStatus),
    Joined { role: JoinRole },
}

/// Where a node stands after asking to join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRole {
    Voter,
    /// A learner, and it stays one: the cluster has `max_voters` voters.
    Learner,
    /// A learner not yet close enough to the leader's log to be promoted.
    CatchingUp,
}

impl JoinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Voter => "voter",
            JoinRole::Learner => "learner",
            JoinRole::CatchingUp => "catching_up",
        }
    }
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    /// Last log index covered by the answering node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// The answering node's log is purged up to here (a member that needs older
    /// entries is caught up by snapshot).
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub peer_addr: String,
    pub grpc_addr: String,
    pub api_addr: String,
    pub http_addr: String,
    /// `voter` or `learner`.
    pub role: String,
    pub is_leader: bool,
    /// Highest log index known to be replicated to this member (leader's view).
    pub matched_index: Option<u64>,
}

/// Timeouts of client-facing operations.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Bound of one forwarded call, read-index or write wait.
    pub request: Duration,
}

/// A running member's handle. Its parts are private: callers use its methods.
pub struct Node {
    id: NodeId,
    raft: Raft,
    sm: StateMachineStore,
    channels: Channels,
    timeouts: Timeouts,
    /// The read index obtained from the leader after start; `/ready` waits until it is applied.
    startup_index: OnceLock<u64>,
    /// `spec.queue`, put into the queue commands this node proposes.
    queue_policy: QueuePolicy,
    /// Set when shutdown begins: `/ready` and new webhooks answer 503 from then on.
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    /// Group commit of the hot-path writes while this node leads.
    proposer: Proposer,
    /// The addresses this node advertises for its four listeners.
    advertised: Member,
}

/// What a [`Node`] is made of (see `crate::server`).
pub struct NodeParts {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub channels: Channels,
    pub timeouts: Timeouts,
    pub queue_policy: QueuePolicy,
    pub metrics: Arc<Metrics>,
    pub advertised: Member,
}

/// A learner within this many entries of the leader's log counts as caught up and
/// may be promoted to voter.
pub const CAUGHT_UP_ENTRIES: u64 = 64;

impl Node {
    /// Assemble a node and start its proposer (group commit while it leads).
    pub fn new(p: NodeParts) -> Node {
        let proposer = Proposer::spawn(p.raft.clone(), p.timeouts.request, p.metrics.proposal_batch_commands.clone());
        Node {
            id: p.id,
            raft: p.raft,
            sm: p.sm,
            channels: p.channels,
            timeouts: p.timeouts,
            startup_index: OnceLock::new(),
            queue_policy: p.queue_policy,
            draining: AtomicBool::new(false),
            metrics: p.metrics,
            proposer,
            advertised: p.advertised,
        }
    }

    /// This member's id (`spec.cluster.node_id`).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft instance (membership, snapshots, metrics, the peer RPCs).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The local state machine store.
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.sm
    }

    /// A channel to peer `id` at `addr` from the node's pool (mutual TLS when set).
    pub fn peer_channel(&self, id: NodeId, addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        self.channels.get(id, addr)
    }

    /// Bound of one forwarded call, read-index or write wait.
    pub fn request_timeout(&self) -> Duration {
        self.timeouts.request
    }

    /// `spec.queue`, as carried in the queue commands this node proposes.
    pub fn queue_policy(&self) -> QueuePolicy {
        self.queue_policy
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The addresses this node advertises for its four listeners.
    pub fn advertised(&self) -> &Member {
        &self.advertised
    }

    /// Read the local state machine as it is (no read-index; may lag the leader).
    pub fn read_local<R>(&self, f: impl FnOnce(&dyn KvRead) -> R) -> R {
        self.sm.read(f)
    }

    /// Note the leader's read index after start; `/ready` waits until it is applied.
    pub fn set_startup_index(&self, index: u64) {
        let _ = self.startup_index.set(index);
    }

    /// Shutdown begins: `/ready` and new webhooks answer 503 from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Propose a command with a typed answer (see [`aof_core::answers`]) and wait
    /// until it is committed and applied.
    pub async fn propose<A: Answer>(&self, p: Proposal<A>) -> Result<A, NodeError> {
        let cmd = p.into_command();
        let kind = cmd.kind();
        let (response, _) = self.write(cmd).await?;
        Ok(Proposal::<A>::answer(kind, response)?)
    }

    /// Propose a command and wait until it is committed and applied; the untyped
    /// answer and the log index of the entry. Edges use [`Node::propose`].
    #[tracing::instrument(name = "raft.write", skip_all, fields(command = cmd.kind()))]
    pub async fn write(&self, cmd: Command) -> Result<(Response, u64), NodeError> {
        match self.on_leader(LeaderOp::Write(cmd)).await? {
            LeaderReply::Written { response, log_index } => Ok((response, log_index)),
            other => Err(unexpected(other)),
        }
    }

    /// Read the local state machine with the requested consistency.
    pub async fn read<R>(&self, consistency: Consistency, f: impl FnOnce(&dyn KvRead) -> R) -> Result<R, NodeError> {
        if consistency == Consistency::Linearizable && !crate::planted::active(crate::planted::Bug::StaleReads) {
            self.linearize().await?;
        }
        Ok(self.sm.read(f))
    }

    /// Read-index: after this returns, the local state machine reflects every write
    /// that completed before it was called.
    pub async fn linearize(&self) -> Result<u64, NodeError> {
        let started = Instant::now();
        let index = match self.on_leader(LeaderOp::ReadIndex).await? {
            LeaderReply::ReadIndex { index } => index,
            other => return Err(unexpected(other)),
        };
        let remaining = self.timeouts.request.saturating_sub(started.elapsed()).max(Duration::from_millis(50));
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read-index")
            .await
            .map_err(|e| {
                NodeError::Unavailable(format!(
                    "this node has not applied up to the leader's read index {index} in time ({e}); retry, or read with ?consistency=stale"
                ))
            })?;
        Ok(index)
    }

    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<u64, NodeError> {
        membership_index(self.on_leader(LeaderOp::AddLearner { id, member }).await?)
    }

    pub async fn promote(&self, id: NodeId) -> Result<u64, NodeError> {
        membership_index(self.on_leader(LeaderOp::Promote { id }).await?)
    }

    pub async fn remove(&self, id: NodeId) -> Result<u64, NodeError> {
        membership_index(self.on_leader(LeaderOp::Remove { id }).await?)
    }

    /// Cluster status: the leader's view (linearizable) or this node's own view.
    pub async fn cluster_status(&self, consistency: Consistency) -> Result<ClusterStatus, NodeError> {
        match consistency {
            Consistency::Stale => Ok(self.local_status().await),
            Consistency::Linearizable => match self.on_leader(LeaderOp::ClusterStatus).await? {
                LeaderReply::ClusterStatus(s) => Ok(s),
                other => Err(unexpected(other)),
            },
        }
    }

    /// The leader this node currently knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Run `op` on the leader: here if this node leads, else forwarded. Retries (within
    /// the request timeout) only when the op was certainly not performed: no leader
    /// known yet, or the contacted node was no longer leader.
    pub async fn on_leader(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        let deadline = Instant::now() + self.timeouts.request;
        let mut last_err = None;
        for _attempt in 0..10 {
            let leader = match self.current_leader() {
                Some(l) => l,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let waited =
                        self.raft.wait(Some(left)).metrics(|m| m.current_leader.is_some(), "a leader is known").await;
                    match waited {
                        Ok(m) => m.current_leader.expect("waited for a leader"),
                        Err(_) => break,
                    }
                }
            };
            let res = if leader == self.id { self.run_on_leader(op.clone()).await } else { self.forward(leader, &op, deadline).await };
            match res {
                Err(e @ NodeError::NotLeader { .. }) => {
                    last_err = Some(e);
                    if Instant::now() >= deadline {
                        break;
                    }
                    // The leader changed under us; give the new one a moment to be known.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
        Err(NodeError::Unavailable(format!(
            "no leader could serve the request within {} ms ({}); the cluster may have lost quorum — check `aofctl cluster status` and retry",
            self.timeouts.request.as_millis(),
            last_err.map_or("no leader known".to_string(), |e| e.to_string())
        )))
    }

    #[tracing::instrument(name = "forward", skip_all, fields(leader))]
    async fn forward(&self, leader: NodeId, op: &LeaderOp, deadline: Instant) -> Result<LeaderReply, NodeError> {
        let addr = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().get_node(&leader).map(|n| n.peer_addr.clone())
        };
        let Some(addr) = addr else {
            return Err(NodeError::NotLeader { leader: None });
        };
        let channel = self.channels.get(leader, &addr).map_err(|e| NodeError::Internal(format!("bad leader address {addr}: {e}")))?;
        let mut client = ClusterServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        let call = client.forward(RaftPayload { data: codec::encode(op) });
        let reply = match tokio::time::timeout(left, call).await {
            Err(_) => {
                return Err(NodeError::Unavailable(format!(
                    "leader {leader} ({addr}) did not answer within the request timeout; the outcome of a write is unknown — retrying it is safe"
                )))
            }
            Ok(Err(status)) => {
                return Err(NodeError::Unavailable(format!(
                    "cannot reach leader {leader} at {addr}: {}; retry shortly",
                    status.message()
                )))
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<LeaderReply, NodeError> =
            codec::decode(&reply.data).map_err(|e| NodeError::Internal(format!("bad forward reply: {e}")))?;
        result
    }

    /// Perform `op` as leader. Answers [`NodeError::NotLeader`] if this node is not
    /// the leader (then nothing was proposed).
    pub async fn run_on_leader(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        let t = self.timeouts.request;
        match op {
            LeaderOp::Write(cmd) if cmd.is_batchable() => {
                let res = tokio::time::timeout(t, self.proposer.submit(cmd)).await.map_err(|_| write_timeout(t))?;
                res.map(|(response, log_index)| LeaderReply::Written { response, log_index })
            }
            LeaderOp::Write(cmd) => {
                let req = Request { time_ms: leader_clock_ms(), cmd };
                let res = tokio::time::timeout(t, self.raft.client_write(req)).await.map_err(|_| write_timeout(t))?;
                match res {
                    Ok(r) => Ok(LeaderReply::Written { response: r.data, log_index: r.log_id.index }),
                    Err(e) => Err(write_error(e)),
                }
            }
            LeaderOp::ReadIndex => Ok(LeaderReply::ReadIndex { index: self.leader_read_index().await? }),
            LeaderOp::AddLearner { id, member } => {
                self.check_joining_peer(id, &member).await?;
                let res = tokio::time::timeout(t, self.raft.add_learner(id, member, false))
                    .await
                    .map_err(|_| membership_timeout(t))?;
                res.map(|r| LeaderReply::Membership { log_index: r.log_id.index }).map_err(write_error)
            }
            LeaderOp::Promote { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                if m.membership().get_node(&id).is_none() {
                    return Err(NodeError::NotFound(format!(
                        "node {id} is not a member; add it first with `aofctl cluster join`"
                    )));
                }
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                let res = tokio::time::timeout(t, self.raft.change_membership(change, false))
                    .await
                    .map_err(|_| membership_timeout(t))?;
                res.map(|r| LeaderReply::Membership { log_index: r.log_id.index }).map_err(write_error)
            }
            LeaderOp::Remove { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                let is_voter = m.membership().voter_ids().any(|v| v == id);
                let is_node = m.membership().get_node(&id).is_some();
                if !is_node {
                    return Err(NodeError::NotFound(format!("node {id} is not a member of this cluster")));
                }
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                let res = tokio::time::timeout(t, self.raft.change_membership(change, false))
                    .await
                    .map_err(|_| membership_timeout(t))?;
                res.map(|r| LeaderReply::Membership { log_index: r.log_id.index }).map_err(write_error)
            }
            LeaderOp::Join { id, member, max_voters } => self.join_on_leader(id, member, max_voters).await,
            LeaderOp::ClusterStatus => {
                // Confirm leadership with a quorum so the answer is not from a deposed leader.
                self.leader_read_index().await?;
                Ok(LeaderReply::ClusterStatus(self.local_status().await))
            }
        }
    }

    /// Ask the leader to make node `id` a member (automatic membership, see
    /// `crate::membership`). Idempotent: call it until it answers [`JoinRole::Voter`]
    /// or [`JoinRole::Learner`].
    pub async fn join(&self, id: NodeId, member: Member, max_voters: u32) -> Result<JoinRole, NodeError> {
        match self.on_leader(LeaderOp::Join { id, member, max_voters }).await? {
            LeaderReply::Joined { role } => Ok(role),
            other => Err(unexpected(other)),
        }
    }

    /// On the leader: a node that is not a member is checked (mutual TLS, its id)
    /// and added as a learner; a member whose addresses changed gets them updated; a
    /// caught-up learner is promoted while the cluster has fewer than `max_voters`.
    async fn join_on_leader(&self, id: NodeId, member: Member, max_voters: u32) -> Result<LeaderReply, NodeError> {
        let t = self.timeouts.request;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let Some(current) = membership.get_node(&id).cloned() else {
            self.check_joining_peer(id, &member).await?;
            let res = tokio::time::timeout(t, self.raft.add_learner(id, member, false)).await.map_err(|_| membership_timeout(t))?;
            res.map_err(write_error)?;
            tracing::info!(node = id, "added as a learner (automatic membership)");
            return Ok(LeaderReply::Joined { role: JoinRole::CatchingUp });
        };
        if current != member {
            self.check_joining_peer(id, &member).await?;
            let change = ChangeMembers::SetNodes(std::collections::BTreeMap::from([(id, member.clone())]));
            let res = tokio::time::timeout(t, self.raft.change_membership(change, false)).await.map_err(|_| membership_timeout(t))?;
            res.map_err(write_error)?;
            tracing::info!(node = id, %member, "member's addresses updated");
        }
        if voters.contains(&id) {
            return Ok(LeaderReply::Joined { role: JoinRole::Voter });
        }
        if voters.len() >= max_voters as usize {
            return Ok(LeaderReply::Joined { role: JoinRole::Learner });
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
        if matched + CAUGHT_UP_ENTRIES < last {
            return Ok(LeaderReply::Joined { role: JoinRole::CatchingUp });
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        let res = tokio::time::timeout(t, self.raft.change_membership(change, false)).await.map_err(|_| membership_timeout(t))?;
        res.map_err(write_error)?;
        tracing::info!(node = id, voters = voters.len() + 1, max_voters, "promoted to voter (automatic membership)");
        Ok(LeaderReply::Joined { role: JoinRole::Voter })
    }

    /// Before a learner is added (and so receives the whole state), make sure it is
    /// the node it claims to be: it must answer on its peer address over mutual TLS
    /// with a certificate of this cluster's CA naming its id.
    async fn check_joining_peer(&self, id: NodeId, member: &Member) -> Result<(), NodeError> {
        use aof_proto::v1::NodeInfoRequest;
        let channel = self
            .channels
            .get(id, &member.peer_addr)
            .map_err(|e| NodeError::Invalid(format!("peer_addr {:?}: {e}", member.peer_addr)))?;
        let mut client = ClusterServiceClient::new(channel);
        let t = self.timeouts.request;
        let info = match tokio::time::timeout(t, client.node_info(NodeInfoRequest {})).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                return Err(NodeError::Invalid(format!(
                    "node {id} at {} did not answer over the peer listener ({}); start it with a certificate from this \
                     cluster's CA (spec.cluster.peer_tls, `aofctl certs init`) and check the address",
                    member.peer_addr,
                    status.message()
                )))
            }
            Err(_) => {
                return Err(NodeError::Unavailable(format!(
                    "node {id} at {} did not answer within {} ms; is it running and reachable from the leader?",
                    member.peer_addr,
                    t.as_millis()
                )))
            }
        };
        if info.node_id != id {
            return Err(NodeError::Invalid(format!(
                "the node at {} is node {}, not node {id}; check --node-id and the addresses",
                member.peer_addr, info.node_id
            )));
        }
        Ok(())
    }

    /// Confirm leadership with a quorum (read-index). A round in which too few
    /// followers answered within the heartbeat interval (a slow fsync on a follower,
    /// a lost packet) is tried again, with backoff, until the request timeout: etcd's
    /// ReadIndex waits the same way instead of failing the read at once.
    async fn leader_read_index(&self) -> Result<u64, NodeError> {
        let t = self.timeouts.request;
        let deadline = Instant::now() + t;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let res = tokio::time::timeout(left, self.raft.ensure_linearizable()).await.map_err(|_| {
                NodeError::Unavailable(format!(
                    "the leader could not confirm its leadership with a quorum within {} ms; retry, or read with ?consistency=stale",
                    t.as_millis()
                ))
            })?;
            match res {
                Ok(log_id) => return Ok(log_id.map_or(0, |l| l.index)),
                Err(RaftError::APIError(e)) => match e {
                    openraft::error::CheckIsLeaderError::ForwardToLeader(f) => {
                        return Err(NodeError::NotLeader { leader: f.leader_id })
                    }
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(q) => {
                        if Instant::now() + pause >= deadline {
                            return Err(NodeError::Unavailable(format!(
                                "the leader cannot reach a quorum ({q}); retry, or read with ?consistency=stale"
                            )));
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(250));
                    }
                },
                Err(RaftError::Fatal(f)) => return Err(NodeError::Unavailable(format!("raft stopped: {f}"))),
            }
        }
    }

    /// This node's own view of the cluster.
    pub async fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = self.raft.with_raft_state(|st| st.committed.map_or(0, |l| l.index)).await.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: NodeId| -> Option<u64> {
            if m.state == ServerState::Leader {
                if id == self.id {
                    return m.last_log_index;
                }
                m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index)
            } else {
                None
            }
        };
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                id: *id,
                peer_addr: n.peer_addr.clone(),
                grpc_addr: n.grpc_addr.clone(),
                api_addr: n.api_addr.clone(),
                http_addr: n.http_addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
                is_leader: m.current_leader == Some(*id),
                matched_index: matched(*id),
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// Refresh the state gauges of `/metrics` from this node's own view.
    pub async fn refresh_metrics(&self, store: &crate::store::Store) {
        let status = self.local_status().await;
        let view = crate::metrics::RaftView {
            node_id: self.id,
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit_index,
            last_applied: status.last_applied,
            matched: status.members.iter().map(|m| (m.id, m.matched_index)).collect(),
        };
        let depths = self.sm.read(crate::sm::queue::stats);
        self.metrics.refresh(&view, depths, store);
    }

    /// `/ready`: Raft is running, the storage alarm is not raised, a leader is known
    /// and everything committed when this node started (as told by the leader's read
    /// index) has been applied here.
    pub fn readiness(&self) -> Result<NodeId, String> {
        if self.is_draining() {
            return Err("draining: this node is shutting down".into());
        }
        let m = self.raft.metrics().borrow().clone();
        if let Err(fatal) = &m.running_state {
            return Err(format!("raft stopped: {fatal}; restart this node"));
        }
        if let Some(alarm) = self.sm.disk_alarm() {
            return Err(format!("storage alarm: {alarm}"));
        }
        let Some(leader) = m.current_leader else {
            return Err("no leader known yet; the node is waiting for an election or to be joined".into());
        };
        let Some(&target) = self.startup_index.get() else {
            return Err("catching up: waiting for the leader's commit index".into());
        };
        let applied = m.last_applied.map_or(0, |l| l.index);
        if applied < target {
            return Err(format!("catching up: applied {applied} of {target}"));
        }
        Ok(leader)
    }
}

fn unexpected(r: LeaderReply) -> NodeError {
    NodeError::Internal(format!("unexpected reply from the leader: {r:?}"))
}

fn membership_index(r: LeaderReply) -> Result<u64, NodeError> {
    match r {
        LeaderReply::Membership { log_index } => Ok(log_index),
        other => Err(unexpected(other)),
    }
}


