//! aof-cluster node: Raft consensus (openraft), sled storage, the replicated state
//! machine, and the HTTP and gRPC servers. See `docs/ARCHITECTURE.md` for the map.

pub mod codec;
pub mod sm;
pub mod types;
pub mod config;
pub mod server;
pub mod store;
