//! The Raft network between nodes: gRPC (`muster.v1.RaftService`, `proto/muster/v1/cluster.proto`)
//! on each node's peer address.
//!
//! Each RPC carries one of openraft's request types as JSON and answers with
//! `Result<response, error>` as JSON (except the bulk: the entries of an AppendEntries travel in
//! the store's binary entry format, see `BinaryAppend`, and a snapshot chunk as raw bytes, both
//! in `RaftBytes.data`), so a Raft error raised on the remote node comes back as
//! openraft's own error ([`RPCError::RemoteError`]), and a gRPC failure means only that the
//! transport failed. Transport failures are reported as [`RPCError::Unreachable`] (the peer is
//! down, refused the connection or did not answer within the RPC's deadline), so openraft backs
//! off before trying again, or [`RPCError::Network`] for anything else.
//!
//! The client side connects lazily, once per peer, and reconnects by itself (a tonic `Channel`).
//! The server side, [`PeerService`], hands each request to the local Raft; the node serves it on
//! the peer listener only. The same service carries `ClientWrite`, by which a follower forwards a
//! client's write to the leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use muster_proto::pb::raft_service_client::RaftServiceClient;
use muster_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use muster_proto::pb::RaftBytes;
use muster_tls::PeerTls;
use openraft::error::Unreachable;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

use muster_store::{wire, CommandError, HistoryChunk, MusterNode, Request, TypeConfig};

use crate::admin::AdminRequest;
use crate::{Cluster, ClusterError};

/// How long a connection attempt to a peer may take before the RPC counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Snapshot chunks and large append-entries batches are big messages.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How this node dials its peers: plain `http://HOST:PORT`, or with mutual TLS
/// `https://HOST:PORT` presenting the node's certificate and verifying the peer's against the
/// cluster CA, for the host name (or IP address) of the peer address.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dialer {
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    pub(crate) fn new(tls: Option<&PeerTls>) -> Dialer {
        Dialer {
            tls: tls.map(|t| {
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca.pem))
                    .identity(Identity::from_pem(
                        &t.identity.cert_pem,
                        &t.identity.key_pem,
                    ))
            }),
        }
    }

    /// A lazily connecting gRPC client for the peer at `addr` (`host:port`).
    fn connect(&self, addr: &str) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(RaftServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Builds a connection per peer.
#[derive(Debug, Clone, Default)]
pub struct Network {
    dialer: Dialer,
    reachability: Reachability,
}

impl Network {
    pub(crate) fn new(dialer: Dialer) -> Network {
        Network {
            dialer,
            reachability: Reachability::default(),
        }
    }
}

/// Whether each peer answered its last call, shared by all of a node's clients to it.
///
/// openraft retries an unreachable peer every half second and logs two warnings and an error
/// each time; the binary's log filter mutes those (`muster serve` sets it up), and this logs
/// the change instead: one warning when a peer stops answering, one line when it answers again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reachability(Arc<Mutex<BTreeMap<u64, bool>>>);

impl Reachability {
    /// Records the outcome of a call to `target`; returns `Some(now_reachable)` when it differs
    /// from the last one (an unreachable peer never heard from also counts as a change).
    fn record(&self, target: u64, reachable: bool) -> Option<bool> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = map.insert(target, reachable);
        match before {
            Some(b) if b == reachable => None,
            None if reachable => None,
            _ => Some(reachable),
        }
    }
}

/// One peer's connection.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
    node: MusterNode,
    dialer: Dialer,
    client: Option<RaftServiceClient<Channel>>,
    reachability: Reachability,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MusterNode) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            dialer: self.dialer.clone(),
            client: None,
            reachability: self.reachability.clone(),
        }
    }
}

/// The JSON header of an AppendEntries whose entries travel in `RaftBytes.data`, encoded by
/// [`wire::encode_entries`]: the request with an empty entry list, and how many entries the data
/// holds.
///
/// A request without entries (a heartbeat) is sent as the plain request with empty data. The
/// header is deliberately not an `AppendEntriesRequest`: a node that did not know this format
/// would refuse it as undecodable instead of reading an empty request and acknowledging entries
/// it never stored.
#[derive(Debug, Serialize, Deserialize)]
struct BinaryAppend {
    append: AppendEntriesRequest<TypeConfig>,
    binary_entries: u64,
}

impl BinaryAppend {
    /// The header and the data that carry `rpc`.
    fn encode(
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<(BinaryAppend, Vec<u8>), muster_store::StoreError> {
        let data = wire::encode_entries(&rpc.entries)?;
        let header = BinaryAppend {
            binary_entries: rpc.entries.len() as u64,
            append: AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                entries: Vec::new(),
            },
        };
        Ok((header, data))
    }

    /// The whole request, with the entries decoded from `data`.
    fn into_request(self, data: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, String> {
        let mut rpc = self.append;
        if !rpc.entries.is_empty() {
            return Err("entries both in the header and in the data".into());
        }
        rpc.entries = wire::decode_entries(data).map_err(|e| e.to_string())?;
        if rpc.entries.len() as u64 != self.binary_entries {
            return Err(format!(
                "{} entries in the data, {} announced",
                rpc.entries.len(),
                self.binary_entries
            ));
        }
        Ok(rpc)
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

    /// Logs when the peer stops answering or answers again (see [`Reachability`]).
    fn note_reachability(&self, unreachable: Option<String>) {
        match self.reachability.record(self.target, unreachable.is_none()) {
            Some(false) => tracing::warn!(
                node = self.target,
                addr = %self.node.peer_addr,
                "peer unreachable, retrying every half second (logged again when it answers): {}",
                unreachable.unwrap_or_default()
            ),
            Some(true) => tracing::info!(
                node = self.target,
                addr = %self.node.peer_addr,
                "peer answers again"
            ),
            None => {}
        }
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MusterNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RPCError<u64, MusterNode, E>> = async {
            if self.node.peer_addr.is_empty() {
                return Err(self.unreachable("no peer address is known for this node"));
            }
            let json = serde_json::to_vec(req).map_err(|e| self.network(format!("encode: {e}")))?;
            if self.client.is_none() {
                match self.dialer.connect(&self.node.peer_addr) {
                    Ok(c) => self.client = Some(c),
                    Err(e) => return Err(self.unreachable(format!("bad peer address: {e}"))),
                }
            }
            let Some(client) = self.client.as_mut() else {
                return Err(self.unreachable("not connected"));
            };
            let ttl = option.hard_ttl();
            let mut request = tonic::Request::new(RaftBytes { json, data });
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
        .await;
        self.note_reachability(match &result {
            Err(RPCError::Unreachable(e)) => Some(e.to_string()),
            _ => None,
        });
        result
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MusterNode, RaftError<u64>>> {
        if rpc.entries.is_empty() {
            return self
                .call(Rpc::AppendEntries, &rpc, Vec::new(), &option)
                .await;
        }
        // The entries travel as the store's binary entry format beside a JSON header that holds
        // the rest of the request (see `BinaryAppend`).
        match BinaryAppend::encode(&rpc) {
            Ok((header, data)) => {
                drop(rpc);
                self.call(Rpc::AppendEntries, &header, data, &option).await
            }
            Err(e) => {
                // Cannot happen with the store's own types; JSON still carries the request.
                tracing::warn!(node = self.target, "entries sent as JSON: {e}");
                self.call(Rpc::AppendEntries, &rpc, Vec::new(), &option)
                    .await
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MusterNode, RaftError<u64, InstallSnapshotError>>,
    > {
        // The chunk travels as raw bytes beside the JSON header.
        let data = std::mem::take(&mut rpc.data);
        self.call(Rpc::InstallSnapshot, &rpc, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MusterNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, Vec::new(), &option).await
    }
}

/// The answer to a forwarded request, as it crosses the network: [`ClusterError`] without the
/// variants that cannot happen remotely, in a serializable form.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardError {
    Rejected(CommandError),
    NotLeader(Option<(u64, MusterNode)>),
    Unavailable(String),
    Membership(String),
    Fatal(String),
    DiskFull { node: u64, free: u64, reserve: u64 },
}

impl From<ClusterError> for ForwardError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(c) => ForwardError::Rejected(c),
            ClusterError::NotLeader { leader } => ForwardError::NotLeader(leader),
            ClusterError::Unavailable(m) => ForwardError::Unavailable(m),
            ClusterError::Membership(m) => ForwardError::Membership(m),
            ClusterError::DiskFull {
                node,
                free,
                reserve,
            } => ForwardError::DiskFull {
                node,
                free,
                reserve,
            },
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
            ForwardError::Membership(m) => ClusterError::Membership(m),
            ForwardError::Fatal(m) => ClusterError::Fatal(m),
            ForwardError::DiskFull {
                node,
                free,
                reserve,
            } => ClusterError::DiskFull {
                node,
                free,
                reserve,
            },
        }
    }
}

/// The requests one node makes of another outside Raft itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Forward {
    /// A client's write, to the leader.
    ClientWrite,
    /// A read index, from the leader.
    ReadIndex,
    /// Membership administration (to the leader) or a member's own status (to anyone).
    Admin,
}

/// Why a forwarded request has no answer from the other node.
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// The request never reached the other node (no connection): it is safe to send it again,
    /// to the same node or another.
    NotSent(String),
    /// The other node answered with this error, or the request may have reached it and the
    /// answer was lost (then the error is `Unavailable`).
    Failed(ClusterError),
}

/// Clients for requests to other nodes, one per peer address, shared by all callers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarder {
    dialer: Dialer,
    clients: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
}

impl Forwarder {
    pub(crate) fn new(dialer: Dialer) -> Forwarder {
        Forwarder {
            dialer,
            clients: Arc::default(),
        }
    }

    /// Sends `request` to node `target` at `peer_addr` and waits up to `timeout` for its answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        what: Forward,
        target: u64,
        peer_addr: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Forwarded> {
        let context = |m: &dyn std::fmt::Display| format!("node {target} ({peer_addr}): {m}");
        let unavailable =
            |m: &dyn std::fmt::Display| Forwarded::Failed(ClusterError::Unavailable(context(m)));
        let mut client = self.client(peer_addr, &context)?;
        let json = serde_json::to_vec(request).map_err(|e| unavailable(&e))?;
        let mut req = tonic::Request::new(RaftBytes {
            json,
            data: Vec::new(),
        });
        req.set_timeout(timeout);
        crate::trace::inject(req.metadata_mut());
        let call = async {
            match what {
                Forward::ClientWrite => client.client_write(req).await,
                Forward::ReadIndex => client.read_index(req).await,
                Forward::Admin => client.admin(req).await,
            }
        };
        let answer = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(unavailable(&format!("no answer within {timeout:?}"))),
            Ok(Err(status)) if never_sent(&status) => {
                return Err(Forwarded::NotSent(context(&status.message())))
            }
            Ok(Err(status)) => return Err(unavailable(&status.message())),
            Ok(Ok(a)) => a.into_inner(),
        };
        let result: Result<Resp, ForwardError> =
            serde_json::from_slice(&answer.json).map_err(|e| unavailable(&e))?;
        result.map_err(|e| Forwarded::Failed(e.into()))
    }

    /// The client for `peer_addr`, connecting (lazily) the first time.
    fn client(
        &self,
        peer_addr: &str,
        context: &dyn Fn(&dyn std::fmt::Display) -> String,
    ) -> Result<RaftServiceClient<Channel>, Forwarded> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| Forwarded::Failed(ClusterError::Fatal("forwarder lock".into())))?;
        Ok(match clients.get(peer_addr) {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .dialer
                    .connect(peer_addr)
                    .map_err(|e| Forwarded::NotSent(context(&format!("bad address: {e}"))))?;
                clients.insert(peer_addr.to_string(), c.clone());
                c
            }
        })
    }

    /// Asks the member at `peer_addr` for up to `limit` stored event records from `from_seq`
    /// on (the `History` RPC), for a back-fill. Any failure is a message for the log: the
    /// caller tries another member.
    pub(crate) async fn history(
        &self,
        peer_addr: &str,
        from_seq: u64,
        limit: usize,
        timeout: Duration,
    ) -> Result<HistoryChunk, String> {
        let context = |m: &dyn std::fmt::Display| format!("{peer_addr}: {m}");
        let mut client = self.client(peer_addr, &context).map_err(|e| match e {
            Forwarded::NotSent(m) => m,
            Forwarded::Failed(e) => e.to_string(),
        })?;
        let json =
            serde_json::to_vec(&HistoryRequest { from_seq, limit }).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(RaftBytes {
            json,
            data: Vec::new(),
        });
        req.set_timeout(timeout);
        let answer = match tokio::time::timeout(timeout, client.history(req)).await {
            Err(_) => return Err(context(&format!("no answer within {timeout:?}"))),
            Ok(Err(status)) => return Err(context(&status.message())),
            Ok(Ok(a)) => a.into_inner(),
        };
        let header: Result<HistoryHeader, String> =
            serde_json::from_slice(&answer.json).map_err(|e| context(&e))?;
        let header = header.map_err(|e| context(&e))?;
        let records = if answer.data.is_empty() {
            Vec::new()
        } else {
            muster_store::segment::split_segment(&answer.data).map_err(|e| context(&e))?
        };
        if records.len() != header.count {
            return Err(context(&format!(
                "{} records announced, {} sent",
                header.count,
                records.len()
            )));
        }
        Ok(HistoryChunk {
            first_seq_available: header.first_seq_available,
            records,
        })
    }
}

/// The `History` RPC's request.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryRequest {
    from_seq: u64,
    limit: usize,
}

/// The `History` RPC's answer header; the records are in `RaftBytes.data`.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryHeader {
    first_seq_available: u64,
    count: usize,
}

/// The most records one `History` answer carries.
pub(crate) const HISTORY_MAX: usize = 4096;

/// Whether a failed call certainly did not reach the other node: the connection could not be
/// made. Anything else (a reset, a timeout) may have delivered the request.
fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut text = status.message().to_ascii_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push(' ');
        text.push_str(&e.to_string().to_ascii_lowercase());
        source = e.source();
    }
    text.contains("connect") || text.contains("refused")
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

    /// The peer server's TLS: this node's certificate, and a client certificate that chains to
    /// the cluster CA is required: a caller without one fails the handshake and reaches no RPC
    /// (no vote, append, snapshot, forwarded write or membership change).
    pub fn tls_config(tls: &PeerTls) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &tls.identity.cert_pem,
                &tls.identity.key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&tls.ca.pem))
            .client_auth_optional(false)
            .timeout(Duration::from_secs(5))
    }
}

fn undecodable(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftBytes>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&req.into_inner().json).map_err(undecodable)
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|json| {
            tonic::Response::new(RaftBytes {
                json,
                data: Vec::new(),
            })
        })
        .map_err(|e| tonic::Status::internal(format!("cannot encode raft answer: {e}")))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let bytes = req.into_inner();
        let rpc: AppendEntriesRequest<TypeConfig> = if bytes.data.is_empty() {
            serde_json::from_slice(&bytes.json).map_err(undecodable)?
        } else {
            let header: BinaryAppend = serde_json::from_slice(&bytes.json).map_err(undecodable)?;
            header.into_request(&bytes.data).map_err(undecodable)?
        };
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
        let bytes = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(&bytes.json)
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
        if rpc.data.is_empty() {
            rpc.data = bytes.data;
        }
        encode(&self.cluster.raft().install_snapshot(rpc).await)
    }

    async fn client_write(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        // The request carries the principal the follower's edge authenticated; the peer port is
        // for members only, so the leader records it as received.
        let parent = crate::trace::extract(req.metadata());
        let mut request: Request = decode(req)?;
        // The leader's clock stamps what it appends (see `Command::at_mut`).
        *std::sync::Arc::make_mut(&mut request.command).at_mut() = crate::now();
        let span = tracing::info_span!(
            target: crate::trace::TARGET,
            "leader.write",
            otel.kind = "server",
            node = self.cluster.id()
        );
        crate::trace::continue_remote(&span, parent);
        let result = tracing::Instrument::instrument(self.cluster.write_here(request), span)
            .await
            .map_err(ForwardError::from);
        encode(&result)
    }

    async fn read_index(
        &self,
        _req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let result = self
            .cluster
            .read_index_here()
            .await
            .map(|index| ((), index))
            .map_err(ForwardError::from);
        encode(&result)
    }

    async fn admin(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let request: AdminRequest = decode(req)?;
        let result = crate::admin::execute(&self.cluster, request)
            .await
            .map_err(ForwardError::from);
        encode(&result)
    }

    async fn history(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let request: HistoryRequest = decode(req)?;
        let reader = self.cluster.reader().clone();
        let limit = request.limit.min(HISTORY_MAX);
        let read =
            tokio::task::spawn_blocking(move || reader.history_records(request.from_seq, limit))
                .await;
        let chunk = match read {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => {
                tracing::error!("History: reading the event log: {e}");
                let answer: Result<HistoryHeader, String> =
                    Err(format!("reading the event log failed: {e}"));
                return encode(&answer);
            }
            Err(e) => return Err(tonic::Status::internal(format!("history reader: {e}"))),
        };
        let data = if chunk.records.is_empty() {
            Vec::new()
        } else {
            muster_store::segment::join_segment(&chunk.records)
                .map_err(|e| tonic::Status::internal(e.to_string()))?
        };
        let header: Result<HistoryHeader, String> = Ok(HistoryHeader {
            first_seq_available: chunk.first_seq_available,
            count: chunk.records.len(),
        });
        let mut answer = encode(&header)?;
        answer.get_mut().data = data;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use muster_domain::Command;
    use muster_store::LogId;
    use muster_types::Timestamp;
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    #[test]
    fn reachability_reports_each_change_once() {
        let r = Reachability::default();
        // A peer that answers from the start is not news.
        assert_eq!(r.record(2, true), None);
        assert_eq!(r.record(2, true), None);
        assert_eq!(r.record(2, false), Some(false));
        assert_eq!(r.record(2, false), None);
        assert_eq!(r.record(2, true), Some(true));
        // One never heard from that does not answer is.
        assert_eq!(r.record(3, false), Some(false));
        assert_eq!(r.record(3, false), None);
        // Clones share what they know.
        assert_eq!(r.clone().record(3, true), Some(true));
        assert_eq!(r.record(3, true), None);
    }

    use super::*;

    fn request(n: u64) -> AppendEntriesRequest<TypeConfig> {
        let log_id = |i| LogId::new(CommittedLeaderId::new(2, 1), i);
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(4)),
            leader_commit: Some(log_id(3)),
            entries: (5..5 + n)
                .map(|i| muster_store::Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Normal(Request::from(Command::Advance {
                        at: Timestamp(1_700_000_000_000 + i as i64),
                    })),
                })
                .collect(),
        }
    }

    /// What the client side sends for a request with entries, as the server side reads it.
    fn over_the_wire(rpc: &AppendEntriesRequest<TypeConfig>) -> (Vec<u8>, Vec<u8>) {
        let (header, data) = BinaryAppend::encode(rpc).unwrap();
        (serde_json::to_vec(&header).unwrap(), data)
    }

    #[test]
    fn binary_entries_arrive_as_sent() {
        let sent = request(3);
        let (json, data) = over_the_wire(&sent);
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        let got = header.into_request(&data).unwrap();
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
        assert_eq!(got.entries.len(), 3);
    }

    /// A forwarded write carries its principal to the leader; one from an older node (no
    /// principal) is `system`'s.
    #[test]
    fn a_forwarded_write_carries_its_principal() {
        let cmd = Command::Advance {
            at: Timestamp(1_700_000_000_000),
        };
        let sent = Request::new(cmd.clone(), muster_domain::Principal::Token("t1".into()));
        let json = serde_json::to_vec(&sent).unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&json).unwrap(), sent);
        let mut old = serde_json::to_value(&sent).unwrap();
        old.as_object_mut().unwrap().remove("principal");
        let old: Request = serde_json::from_value(old).unwrap();
        assert_eq!(old, Request::from(cmd));
    }

    /// Entries written on behalf of a principal reach the follower with it.
    #[test]
    fn appended_entries_carry_their_principal() {
        let mut sent = request(2);
        if let EntryPayload::Normal(r) = &mut sent.entries[1].payload {
            r.principal = muster_domain::Principal::Anonymous;
        }
        let (json, data) = over_the_wire(&sent);
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        let got = header.into_request(&data).unwrap();
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
    }

    #[test]
    fn a_mismatched_or_unknown_format_is_refused() {
        let (json, data) = over_the_wire(&request(3));
        // Fewer entries in the data than announced.
        let (_, fewer) = over_the_wire(&request(2));
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        assert!(header.into_request(&fewer).is_err());
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        assert!(header.into_request(&data[..data.len() - 1]).is_err());
        // A node that reads the plain request cannot mistake the header for an empty request
        // (and acknowledge entries it never stored).
        assert!(serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&json).is_err());
    }
}
