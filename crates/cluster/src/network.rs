//! The Raft network between nodes: gRPC (`muster.v1.RaftService`, `proto/muster/v1/cluster.proto`)
//! on each node's peer address.
//!
//! Each RPC carries one of openraft's request types as JSON and answers with
//! `Result<response, error>` as JSON, so a Raft error raised on the remote node comes back as
//! openraft's own error ([`RPCError::RemoteError`]), and a gRPC failure means only that the
//! transport failed. Transport failures are reported as [`RPCError::Unreachable`] (the peer is
//! down, refused the connection or did not answer within the RPC's deadline), so openraft backs
//! off before trying again, or [`RPCError::Network`] for anything else.
//!
//! The client side connects lazily, once per peer, and reconnects by itself (a tonic `Channel`).
//! The server side, [`PeerService`], hands each request to the local Raft; the node serves it on
//! the peer listener only. The same service carries `ClientWrite`, by which a follower forwards a
//! client's write to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::pb::raft_service_client::RaftServiceClient;
use muster_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use muster_proto::pb::RaftBytes;
use openraft::error::Unreachable;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use muster_store::{AppliedRange, CommandError, MusterNode, Request, TypeConfig};

use crate::{Cluster, ClusterError};

/// How long a connection attempt to a peer may take before the RPC counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a forwarded client write may take (it waits for commit and apply on the leader).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Snapshot chunks and large append-entries batches travel as JSON; allow big messages.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A lazily connecting gRPC client for the peer at `addr` (`host:port`).
fn connect(addr: &str) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(RaftServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Builds a connection per peer.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// One peer's connection.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
    node: MusterNode,
    client: Option<RaftServiceClient<Channel>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MusterNode) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            client: None,
        }
    }
}

/// Which RPC, for choosing the generated client method.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("node {target} ({addr}): {message}")]
struct TransportError {
    target: u64,
    addr: String,
    message: String,
}

impl PeerClient {
    fn fail(&self, message: impl std::fmt::Display) -> TransportError {
        TransportError {
            target: self.target,
            addr: self.node.peer_addr.clone(),
            message: message.to_string(),
        }
    }

    fn unreachable<E: std::error::Error>(
        &self,
        message: impl std::fmt::Display,
    ) -> RPCError<u64, MusterNode, E> {
        RPCError::Unreachable(Unreachable::new(&self.fail(message)))
    }

    fn network<E: std::error::Error>(
        &self,
        message: impl std::fmt::Display,
    ) -> RPCError<u64, MusterNode, E> {
        RPCError::Network(NetworkError::new(&self.fail(message)))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MusterNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.node.peer_addr.is_empty() {
            return Err(self.unreachable("no peer address is known for this node"));
        }
        let json = serde_json::to_vec(req).map_err(|e| self.network(format!("encode: {e}")))?;
        if self.client.is_none() {
            match connect(&self.node.peer_addr) {
                Ok(c) => self.client = Some(c),
                Err(e) => return Err(self.unreachable(format!("bad peer address: {e}"))),
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(RaftBytes { json });
        request.set_timeout(ttl);
        let call = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let answer = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(self.unreachable(format!("no answer within {ttl:?}"))),
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown => self.unreachable(status.message()),
                    _ => self.network(status.message()),
                })
            }
            Ok(Ok(a)) => a.into_inner(),
        };
        let result: Result<Resp, E> = serde_json::from_slice(&answer.json)
            .map_err(|e| self.network(format!("decode answer: {e}")))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MusterNode, RaftError<u64>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MusterNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MusterNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The answer to a forwarded write, as it crosses the network: [`ClusterError`] without the
/// variants that cannot happen remotely, in a serializable form.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardError {
    Rejected(CommandError),
    NotLeader(Option<(u64, MusterNode)>),
    Unavailable(String),
    Fatal(String),
}

impl From<ClusterError> for ForwardError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(c) => ForwardError::Rejected(c),
            ClusterError::NotLeader { leader } => ForwardError::NotLeader(leader),
            ClusterError::Unavailable(m) => ForwardError::Unavailable(m),
            other @ (ClusterError::Store(_) | ClusterError::Fatal(_)) => {
                ForwardError::Fatal(other.to_string())
            }
        }
    }
}

impl From<ForwardError> for ClusterError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Rejected(c) => ClusterError::Rejected(c),
            ForwardError::NotLeader(leader) => ClusterError::NotLeader { leader },
            ForwardError::Unavailable(m) => ClusterError::Unavailable(m),
            ForwardError::Fatal(m) => ClusterError::Fatal(m),
        }
    }
}

/// Clients for forwarding writes to the leader, one per peer address, shared by all callers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarder {
    clients: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
}

impl Forwarder {
    /// Sends `request` to the node at `peer_addr`, which applies it if it is the leader. `Ok`
    /// also carries the index of the log entry.
    pub(crate) async fn write(
        &self,
        leader: u64,
        peer_addr: &str,
        request: &Request,
    ) -> Result<(AppliedRange, u64), ClusterError> {
        let unavailable = |m: String| {
            ClusterError::Unavailable(format!(
                "forwarding to the leader, node {leader} ({peer_addr}): {m}"
            ))
        };
        let mut client = {
            let mut clients = self
                .clients
                .lock()
                .map_err(|_| ClusterError::Fatal("forwarder lock poisoned".into()))?;
            match clients.get(peer_addr) {
                Some(c) => c.clone(),
                None => {
                    let c = connect(peer_addr).map_err(|e| unavailable(e.to_string()))?;
                    clients.insert(peer_addr.to_string(), c.clone());
                    c
                }
            }
        };
        let json = serde_json::to_vec(request).map_err(|e| unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(RaftBytes { json });
        req.set_timeout(FORWARD_TIMEOUT);
        let answer = match tokio::time::timeout(FORWARD_TIMEOUT, client.client_write(req)).await {
            Err(_) => return Err(unavailable(format!("no answer within {FORWARD_TIMEOUT:?}"))),
            Ok(Err(status)) => return Err(unavailable(status.message().to_string())),
            Ok(Ok(a)) => a.into_inner(),
        };
        let result: Result<(AppliedRange, u64), ForwardError> =
            serde_json::from_slice(&answer.json).map_err(|e| unavailable(e.to_string()))?;
        result.map_err(ClusterError::from)
    }
}

/// The server side of the peer RPCs: hands each request to this node's Raft.
#[derive(Debug, Clone)]
pub struct PeerService {
    cluster: Cluster,
}

impl PeerService {
    /// The tonic service to serve on the peer listener.
    pub fn server(cluster: Cluster) -> RaftServiceServer<PeerService> {
        RaftServiceServer::new(PeerService { cluster })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftBytes>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|json| tonic::Response::new(RaftBytes { json }))
        .map_err(|e| tonic::Status::internal(format!("cannot encode raft answer: {e}")))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        encode(&self.cluster.raft().append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let rpc: VoteRequest<u64> = decode(req)?;
        encode(&self.cluster.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.cluster.raft().install_snapshot(rpc).await)
    }

    async fn client_write(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let request: Request = decode(req)?;
        let result = self
            .cluster
            .write_here(request)
            .await
            .map_err(ForwardError::from);
        encode(&result)
    }
}
