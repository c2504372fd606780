//! Outgoing node-to-node gRPC: openraft's [`RaftNetworkFactory`] over tonic, and the
//! channel pool that forwarding and bootstrap probes also use. Every peer is dialled on
//! its advertised `peer_addr` (a DNS name is resolved again on each reconnect, so a
//! member whose IP changed is reached without any command), with mutual TLS when the
//! node has peer certificates: the server must present `aof-node-<id>` signed by the
//! cluster CA, and this node presents its own certificate.
//!
//! Raft messages travel as `aof.v1.RaftPayload` carrying [`crate::codec`] records. A
//! reply payload is `Result<Resp, RaftError<..>>`, so a remote Raft error is returned
//! to openraft as [`RemoteError`] and a transport failure as [`Unreachable`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aof_proto::v1::raft_service_client::RaftServiceClient;
use aof_proto::v1::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::tls::PeerTls;
use crate::types::{Member, NodeId, TypeConfig};

/// Largest gRPC message a node sends or accepts (a Raft batch can hold several
/// webhook payloads of up to 25 MiB each).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Longest wait for a member to take one snapshot chunk (up to 3 MiB) other than the
/// last (see `install_snapshot`).
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Lazily-connected gRPC channels to peers, one per (node id, address).
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    /// Peer mutual TLS (`spec.cluster.peer_tls`); `None` only with `spec.auth.insecure`.
    tls: Option<Arc<PeerTls>>,
}

impl Channels {
    pub fn new(tls: Option<Arc<PeerTls>>) -> Self {
        Channels { inner: Arc::default(), tls }
    }

    /// A channel to peer `id` at `addr` (`host:port`). Connection happens on first use
    /// and is re-established by tonic after failures (resolving a name again).
    pub fn get(&self, id: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.inner.lock().expect("channel pool lock");
        let key = (id, addr.to_string());
        if let Some(ch) = map.get(&key) {
            return Ok(ch.clone());
        }
        let endpoint = match &self.tls {
            Some(tls) => tls.endpoint(id, addr)?,
            None => Endpoint::from_shared(format!("http://{addr}"))?,
        };
        let ch = endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        map.insert(key, ch.clone());
        Ok(ch)
    }
}

/// gRPC metadata key of the sender's cluster id on Raft RPCs (see
/// [`crate::backup`]): a node of a restored cluster and a node of the cluster it was
/// saved from refuse each other's Raft traffic.
pub const CLUSTER_ID_HEADER: &str = "aof-cluster-id";

/// Creates a [`PeerClient`] per replication target. `Default`: no peer TLS.
#[derive(Clone, Default)]
pub struct Network {
    pub channels: Channels,
    /// This node's state, to send its cluster id with each RPC.
    pub state: Option<crate::store::StateMachineStore>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerClient { target, addr: node.peer_addr.clone(), channels: self.channels.clone(), state: self.state.clone() }
    }
}

/// The Raft RPC client for one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    channels: Channels,
    state: Option<crate::store::StateMachineStore>,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self.channels.get(self.target, &self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut payload = tonic::Request::new(RaftPayload { data: codec::encode(req) });
        if let Some(id) = self.state.as_ref().and_then(|s| s.read(|kv| aof_core::sm::cluster_id(kv))) {
            if let Ok(v) = id.parse() {
                payload.metadata_mut().insert(CLUSTER_ID_HEADER, v);
            }
        }
        let fut = async {
            match method {
                Method::Append => client.append_entries(payload).await,
                Method::Vote => client.vote(payload).await,
                Method::Snapshot => client.install_snapshot(payload).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
            Ok(Err(status)) => return Err(status_to_rpc_error(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

fn status_to_rpc_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    // Transport-level failures mean the peer is down or unreachable: openraft backs
    // off for Unreachable instead of retrying at full speed.
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Method::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>> {
        // The last chunk's answer comes after the member has installed the whole
        // snapshot, which takes time in proportion to the state; openraft's
        // `install_snapshot_timeout` (see `RaftTuning::openraft_config`) bounds that
        // wait, every other chunk gets `SNAPSHOT_CHUNK_TIMEOUT`. (One bound for both
        // made a leader give up on an install of a large state, send the whole
        // snapshot again and again, and a member never joined.)
        let ttl = if rpc.done { option.hard_ttl() } else { SNAPSHOT_CHUNK_TIMEOUT.min(option.hard_ttl()) };
        self.call(Method::Snapshot, &rpc, ttl).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}
