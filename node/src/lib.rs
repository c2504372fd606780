//! aof-cluster node: Raft consensus (openraft), sled storage, the replicated state
//! machine, and the HTTP and gRPC servers. See `docs/ARCHITECTURE.md` for the map.

pub mod bootstrap;
pub mod codec;
pub mod config;
pub mod events_api;
pub mod executor;
pub mod gateway;
pub mod github;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod network;
pub mod node;
pub mod planted;
pub mod proposer;
pub mod queue_api;
pub mod queue_service;
pub mod registry;
pub mod server;
pub mod snapshot_trigger;
pub mod sm;
pub mod telemetry;
pub mod tls;
pub mod trigger_dir;
pub mod store;
pub mod types;
pub mod workers;
