//! The Raft client transport: how this node dials its peers ([`Dialer`], shared with the
//! forwarder) and openraft's network ([`Network`], one [`PeerClient`] per peer) over gRPC
//! (`muster.v1.RaftService`, `proto/muster/v1/cluster.proto`) on each peer address.
//!
//! Each RPC carries one of openraft's request types as JSON and answers with
//! `Result<response, error>` as JSON (except the bulk: the entries of an AppendEntries travel in
//! the store's binary entry format, see [`BinaryAppend`], and a snapshot chunk as raw bytes, both
//! in `RaftBytes.data`), so a Raft error raised on the remote node comes back as
//! openraft's own error ([`RPCError::RemoteError`]), and a gRPC failure means only that the
//! transport failed. Transport failures are reported as [`RPCError::Unreachable`] (the peer is
//! down, refused the connection or did not answer within the RPC's deadline), so openraft backs
//! off before trying again, or [`RPCError::Network`] for anything else. A follower whose disk is
//! below its reserve refuses entries and snapshots the same way (`UNAVAILABLE`, marked with
//! [`REFUSAL_KEY`]); the backoff is then the heartbeat interval, so the follower still hears
//! from its leader often enough not to call an election (see [`crate::server`]).
//!
//! The client connects lazily, once per peer, and reconnects by itself (a tonic `Channel`).
//! The server side is [`crate::server`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use muster_proto::pb::raft_service_client::RaftServiceClient;
use muster_proto::pb::RaftBytes;
use muster_tls::PeerTls;
use openraft::error::Unreachable;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use muster_store::{MusterNode, TypeConfig};

use crate::wire::{BinaryAppend, MAX_MESSAGE_BYTES, REFUSAL_DISK_FULL, REFUSAL_KEY};

/// How long a connection attempt to a peer may take before the RPC counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    pub(crate) fn connect(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
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
#[derive(Debug, Clone)]
pub struct Network {
    dialer: Dialer,
    reachability: Reachability,
    /// The Raft heartbeat interval: how soon a peer that refused for want of disk space is
    /// tried again.
    heartbeat: Duration,
}

impl Network {
    pub(crate) fn new(dialer: Dialer, heartbeat: Duration) -> Network {
        Network {
            dialer,
            reachability: Reachability::default(),
            heartbeat,
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
    heartbeat: Duration,
    /// The last call was refused because the peer's disk is below its reserve.
    refused_disk_full: bool,
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
            heartbeat: self.heartbeat,
            refused_disk_full: false,
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

    /// Logs when the peer stops answering or answers again (see [`Reachability`]).
    fn note_reachability(&self, unreachable: Option<String>) {
        match self.reachability.record(self.target, unreachable.is_none()) {
            Some(false) => tracing::warn!(
                node = self.target,
                addr = %self.node.peer_addr,
                "peer unreachable or refusing, retrying (logged again when it answers): {}",
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
        self.refused_disk_full = false;
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
                    if status
                        .metadata()
                        .get(REFUSAL_KEY)
                        .is_some_and(|v| v.as_bytes() == REFUSAL_DISK_FULL.as_bytes())
                    {
                        self.refused_disk_full = true;
                    }
                    return Err(match status.code() {
                        tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown => self.unreachable(status.message()),
                        _ => self.network(status.message()),
                    });
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

    /// openraft asks right after an unreachable answer. A peer that does not answer is tried
    /// every half second (openraft's default); one that refused for want of disk space at the
    /// heartbeat pace, as the only word it gets from the leader while it refuses.
    fn backoff(&self) -> Backoff {
        let every = if self.refused_disk_full {
            self.heartbeat
        } else {
            Duration::from_millis(500)
        };
        Backoff::new(std::iter::repeat(every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
