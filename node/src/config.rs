//! STUB — being written (DaemonConfig loading and validation).
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub spec: Spec,
}
#[derive(Clone, Debug)]
pub struct Spec {
    pub server: ServerConfig,
    pub cluster: ClusterConfig,
}
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
}
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub grpc_addr: String,
    pub data_dir: PathBuf,
    pub initial_members: Vec<InitialMember>,
    pub raft: RaftTuning,
    pub storage: StorageTuning,
}
#[derive(Clone, Debug)]
pub struct InitialMember {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
}
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every: u64,
    pub logs_to_keep_after_snapshot: u64,
    pub request_timeout_ms: u64,
}
#[derive(Clone, Debug)]
pub struct StorageTuning {
    pub cache_capacity_mb: u64,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl DaemonConfig {
    pub fn http_addr(&self) -> String {
        format!("{}:{}", self.spec.server.host, self.spec.server.port)
    }
}
pub fn load(_path: &Path, _data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    unimplemented!()
}
