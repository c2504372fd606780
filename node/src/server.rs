//! STUB — being written: runs one node (HTTP + gRPC + Raft) until shutdown.
use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Other(String),
}

/// Run one node until `shutdown` resolves, then stop gracefully.
pub async fn run(_cfg: crate::config::DaemonConfig, _shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    unimplemented!()
}
