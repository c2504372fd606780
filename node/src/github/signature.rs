//! GitHub webhook signatures: the shared rule of [`aof_contract::signature`],
//! re-exported so `crate::github::signature` keeps its place at the edge.

pub use aof_contract::signature::*;
