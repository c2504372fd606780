//! aof-cluster node: Raft consensus (openraft), sled storage, the replicated state
//! machine, and the HTTP and gRPC servers. See `docs/ARCHITECTURE.md` for the map.

pub use aof_core::{codec, sm};

pub mod auth;
pub mod backup;
pub mod bootstrap;
pub mod callbacks;
pub mod clock;
pub mod config;
pub mod error;
pub mod executor;
pub mod github;
pub mod grpc;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod planted;
pub mod proposer;
pub mod queue_service;
pub mod refusals;
pub mod registry;
pub mod server;
pub mod snapshot_trigger;
pub mod telemetry;
pub mod tls;
pub mod trigger_dir;
pub mod store;
pub mod types;
pub mod workers;
