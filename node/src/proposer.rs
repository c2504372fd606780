//! Group commit on the leader: many concurrent writes, one Raft entry.
//!
//! openraft 0.9 appends, flushes and replicates one entry per `Raft::client_write`,
//! and its core waits for each flush before it takes the next write, so a leader that
//! proposed every webhook alone would be bound by one fsync per webhook. The
//! [`Proposer`] owns the hot-path writes instead: callers [`submit`](Proposer::submit)
//! a [batchable](Command::is_batchable) command and wait; one task takes everything
//! that queued up while earlier entries were being written (up to [`MAX_BATCH`]
//! commands or [`MAX_BATCH_BYTES`]) and proposes it as one [`Command::Batch`] entry.
//! At most [`MAX_IN_FLIGHT`] entries are being written at once, so under load the
//! next batch fills while the previous one is flushed and replicated; at low load a
//! command waits for nothing but its own entry.
//!
//! **Architecture Invariant**: a caller is answered only with its own response taken
//! from the committed and applied entry that carried its command — the same
//! guarantee as a lone `client_write` (see [`crate::node`]). If the entry fails or
//! times out, every command in it gets that error, and its outcome is unknown to the
//! caller exactly as for a lone write (retries are safe: deliveries dedup, queue
//! operations are fenced).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::leader_clock_ms;
use crate::error::{write_error, write_timeout, NodeError};
use crate::types::{Command, Raft, Request, Response, MAX_BATCH};

/// Entries the proposer has in flight at once (being appended, replicated, applied).
pub const MAX_IN_FLIGHT: usize = 4;
/// A batch is closed once its payloads reach this size, which keeps AppendEntries
/// RPCs short. A single larger webhook still goes alone.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Commands waiting for a batch; `submit` waits (back-pressure) when it is full.
const QUEUE: usize = 8192;

type Answer = Result<(Response, u64), NodeError>;

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Answer>,
}

/// Handle to the leader-side batching task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Start the batching task for `raft`. It ends when the last handle is dropped.
    /// `timeout` bounds one entry's write (as [`crate::node::Timeouts::request`]);
    /// `batch_sizes` observes the number of commands of each entry.
    pub fn spawn(raft: Raft, timeout: Duration, batch_sizes: Histogram) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx, timeout, batch_sizes));
        Proposer { tx }
    }

    /// Propose `cmd` (batched with others) and wait for its own response and the
    /// log index of the entry that carried it.
    pub async fn submit(&self, cmd: Command) -> Answer {
        debug_assert!(cmd.is_batchable());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| NodeError::Unavailable("the node is shutting down; retry on another node".into()))?;
        rx.await.map_err(|_| NodeError::Unavailable("the node is shutting down; the outcome of the write is unknown — retrying it is safe".into()))?
    }
}

/// The encoded size of a command, for [`MAX_BATCH_BYTES`]: its real record size, so
/// large results or target lists count for what they weigh in the log.
fn approx_size(cmd: &Command) -> usize {
    crate::codec::encoded_len(cmd)
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, timeout: Duration, batch_sizes: Histogram) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for room first: whatever arrives meanwhile joins this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = approx_size(&first.cmd);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += approx_size(&p.cmd);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        batch_sizes.observe(batch.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Write one entry carrying `batch` and answer each caller.
async fn propose(raft: &Raft, batch: Vec<Pending>, timeout: Duration) {
    let (mut cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    // A lone command is proposed as itself: no batch wrapper in the log.
    let cmd = if n == 1 { cmds.pop().expect("one command") } else { Command::Batch(cmds) };
    let req = Request { time_ms: leader_clock_ms(), cmd };
    let res = tokio::time::timeout(timeout, raft.client_write(req)).await;
    let answers: Vec<Answer> = match res {
        Err(_) => vec![Err(write_timeout(timeout)); n],
        Ok(Err(e)) => vec![Err(write_error(e)); n],
        Ok(Ok(r)) => {
            let index = r.log_id.index;
            match r.data {
                Response::Batch(resps) if n > 1 && resps.len() == n => resps.into_iter().map(|resp| Ok((resp, index))).collect(),
                resp if n == 1 => vec![Ok((resp, index))],
                other => vec![Err(NodeError::Internal(format!("a batch of {n} commands was answered with {other:?}"))); n],
            }
        }
    };
    for (reply, a) in replies.into_iter().zip(answers) {
        // The caller may have given up (its own timeout); nothing to do then.
        let _ = reply.send(a);
    }
}
