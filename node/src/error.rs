//! The errors of node operations ([`NodeError`]) and how Raft's errors map to them.
//! A module of its own so that `node`, `proposer` and the edges share it without
//! importing each other.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::types::{Member, NodeId};

/// Errors of node operations. They cross the forwarding RPC, so they are plain data.
#[derive(Clone, Debug, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl From<aof_core::answers::UnexpectedAnswer> for NodeError {
    fn from(e: aof_core::answers::UnexpectedAnswer) -> Self {
        NodeError::Internal(e.to_string())
    }
}

/// The error of a write that was not answered within `t`.
pub fn write_timeout(t: Duration) -> NodeError {
    NodeError::Unavailable(format!(
        "the write was not committed within {} ms (no quorum?); its outcome is unknown — retrying is safe",
        t.as_millis()
    ))
}

/// Map a failed `client_write` to the error a caller sees.
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            NodeError::Invalid(format!("membership change refused: {c}"))
        }
        RaftError::Fatal(f) => NodeError::Unavailable(format!("raft stopped: {f}")),
    }
}

/// The error of a membership change that was not committed within `t`.
pub fn membership_timeout(t: Duration) -> NodeError {
    NodeError::Unavailable(format!(
        "the membership change was not committed within {} ms; check `aofctl cluster status` before retrying",
        t.as_millis()
    ))
}
