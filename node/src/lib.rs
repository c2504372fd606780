//! aof-cluster node: Raft consensus (openraft), sled storage, the replicated state
//! machine, and the HTTP and gRPC servers. See `docs/ARCHITECTURE.md` for the map.

pub mod bootstrap;
pub mod codec;
pub mod config;
pub mod grpc;
pub mod http;
pub mod network;
pub mod node;
pub mod registry;
pub mod server;
pub mod sm;
pub mod store;
pub mod types;
