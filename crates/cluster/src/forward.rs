//! The forwarder: what one node asks of another outside Raft itself (a follower's client write
//! to the leader, a read index, membership administration and member status, a back-fill's
//! history), over the same peer service as Raft, through the [`Dialer`] of the Raft client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::pb::raft_service_client::RaftServiceClient;
use muster_proto::pb::RaftBytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use muster_store::HistoryChunk;

use crate::transport::Dialer;
use crate::wire::{ForwardError, HistoryHeader, HistoryRequest};
use crate::ClusterError;

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
        // The map of clients stays whole whatever a holder of the lock did.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        history_answer(&answer).map_err(|e| context(&e))
    }
}

/// A `History` answer as the peer sent it: the JSON header (or the peer's error) and the
/// records, one segment in `data`, as many as the header announces.
pub(crate) fn history_answer(answer: &RaftBytes) -> Result<HistoryChunk, String> {
    let header: Result<HistoryHeader, String> =
        serde_json::from_slice(&answer.json).map_err(|e| e.to_string())?;
    let header = header?;
    let records = if answer.data.is_empty() {
        Vec::new()
    } else {
        muster_store::segment::split_segment(&answer.data).map_err(|e| e.to_string())?
    };
    if records.len() != header.count {
        return Err(format!(
            "{} records announced, {} sent",
            header.count,
            records.len()
        ));
    }
    Ok(HistoryChunk {
        first_seq_available: header.first_seq_available,
        records,
    })
}

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
