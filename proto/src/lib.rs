//! Wire types of aof-cluster: the protobuf package `aof.v1` and its tonic services.
//!
//! **API Boundary**: types generated here are the only wire types. The node and the
//! client convert them to and from their own types explicitly; nothing else in the
//! workspace defines a message that crosses the network.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("aof.v1");
}
