//! The peer server's handlers: [`PeerService`] serves `muster.v1.RaftService` on the peer
//! listener only, handing Raft's RPCs to this node's Raft and answering what other nodes
//! forward (writes, read index, administration, history). The client sides are
//! [`crate::transport`] and [`crate::forward`]; the messages both read are [`crate::wire`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use muster_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use muster_proto::pb::RaftBytes;
use muster_tls::PeerTls;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use muster_store::{Request, TypeConfig};

use crate::admin::AdminRequest;
use crate::wire::{
    BinaryAppend, ForwardError, HistoryHeader, HistoryRequest, HISTORY_MAX, MAX_MESSAGE_BYTES,
    REFUSAL_DISK_FULL, REFUSAL_KEY,
};
use crate::{Cluster, ClusterError};

/// The server side of the peer RPCs: hands each request to this node's Raft.
#[derive(Debug, Clone)]
pub struct PeerService {
    cluster: Cluster,
    refusals: Arc<Refusals>,
}

/// How often a follower refusing its leader's entries says so in its log.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(5);

/// Whether this node is refusing its leader's entries for want of disk space, and when it last
/// logged it: one warning every few seconds while it lasts, one line when it ends.
#[derive(Debug, Default)]
struct Refusals {
    refusing: AtomicBool,
    warned: Mutex<Option<Instant>>,
}

impl Refusals {
    fn refused(&self, why: &ClusterError) {
        self.refusing.store(true, Ordering::Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_some_and(|at| at.elapsed() < REFUSAL_WARNING_EVERY) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(
            "refusing the leader's entries: {why}. This node falls behind (the others go on \
             committing) and catches up by itself once space is freed"
        );
    }

    fn accepted(&self) {
        if self.refusing.swap(false, Ordering::Relaxed) {
            *self.warned.lock().unwrap_or_else(PoisonError::into_inner) = None;
            tracing::info!(
                "disk space is back above the reserve: accepting the leader's entries again"
            );
        }
    }
}

/// The answer to a replication request this node has no room to store: `UNAVAILABLE`, so the
/// leader's client counts this node as unreachable for now and retries, marked so that it
/// retries at the heartbeat pace (see [`REFUSAL_KEY`]).
fn disk_full_status(why: &ClusterError) -> tonic::Status {
    let mut status = tonic::Status::unavailable(why.to_string());
    status.metadata_mut().insert(
        REFUSAL_KEY,
        tonic::metadata::MetadataValue::from_static(REFUSAL_DISK_FULL),
    );
    status
}

impl PeerService {
    /// The tonic service to serve on the peer listener.
    pub fn server(cluster: Cluster) -> RaftServiceServer<PeerService> {
        RaftServiceServer::new(PeerService {
            cluster,
            refusals: Arc::default(),
        })
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
    decode_json(&req.into_inner().json)
}

/// A peer's JSON message; anything else is `INVALID_ARGUMENT`.
fn decode_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(json).map_err(undecodable)
}

/// An AppendEntries as a peer sends it: the plain request (a heartbeat), or a [`BinaryAppend`]
/// header with its entries in `data`.
fn append_request(bytes: RaftBytes) -> Result<AppendEntriesRequest<TypeConfig>, tonic::Status> {
    if bytes.data.is_empty() {
        decode_json(&bytes.json)
    } else {
        let header: BinaryAppend = decode_json(&bytes.json)?;
        header.into_request(&bytes.data).map_err(undecodable)
    }
}

/// An InstallSnapshot as a peer sends it: the JSON request, the chunk in `data`.
fn snapshot_request(bytes: RaftBytes) -> Result<InstallSnapshotRequest<TypeConfig>, tonic::Status> {
    let mut rpc: InstallSnapshotRequest<TypeConfig> = decode_json(&bytes.json)?;
    if rpc.data.is_empty() {
        rpc.data = bytes.data;
    }
    Ok(rpc)
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

impl PeerService {
    /// Refuses entries this node has no room to store, before anything is written (issue 18):
    /// sled cannot recover from a failed write, and openraft stops the node on one.
    ///
    /// The leader keeps sending these entries and no heartbeat while they are outstanding, so
    /// without word from it this node would call an election (and write its vote to the full
    /// disk). Its Raft is handed the request without the entries instead: the heartbeat the
    /// leader would send at this point, which keeps the leader's lease, commits only entries
    /// this node already holds, and answers a higher vote or a conflicting log as the whole
    /// request would be answered. Only an acceptance becomes the refusal.
    async fn refuse_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
        full: ClusterError,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        self.refusals.refused(&full);
        let heartbeat = AppendEntriesRequest {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            entries: Vec::new(),
        };
        match self.cluster.raft().append_entries(heartbeat).await {
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) => {
                Err(disk_full_status(&full))
            }
            answer => encode(&answer),
        }
    }
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let rpc = append_request(req.into_inner())?;
        if rpc.entries.is_empty() {
            return encode(&self.cluster.raft().append_entries(rpc).await);
        }
        if let Err(full) = self.cluster.refuse_when_disk_full() {
            return self.refuse_entries(rpc, full).await;
        }
        self.refusals.accepted();
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
        let rpc = snapshot_request(req.into_inner())?;
        // The leader's heartbeats go on while it streams a snapshot, so this node keeps its
        // leader meanwhile; a refused chunk is sent again after the backoff.
        if let Err(full) = self.cluster.refuse_when_disk_full() {
            self.refusals.refused(&full);
            return Err(disk_full_status(&full));
        }
        // In a task of its own: openraft writes the chunk into the file it receives into and
        // then moves its offset, and a caller that gives up (a timeout, a connection cut by
        // the network) drops this future. Dropped half-way, the file's cursor had moved and
        // the offset not, so the leader's retry of the chunk was written after the partial
        // one, not over it: the received snapshot failed its checksum at install and the
        // Raft core stopped (the nemesis soak found it). A task finishes the chunk either way.
        let raft = self.cluster.raft().clone();
        let chunk = tokio::spawn(async move { raft.install_snapshot(rpc).await });
        match chunk.await {
            Ok(answer) => encode(&answer),
            Err(e) => Err(tonic::Status::internal(format!(
                "receiving the snapshot chunk failed: {e}"
            ))),
        }
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

/// Fuzz targets (issue 18) for what the peer server decodes from the network, through the
/// handlers' own decode functions: arbitrary and damaged bytes give a message or
/// `INVALID_ARGUMENT`, never a panic. Bounded for CI; a longer run is
/// `PROPTEST_CASES=100000 cargo test -p muster-cluster --lib server::fuzz --release`.
#[cfg(test)]
mod fuzz {
    #![allow(clippy::unwrap_used)]

    use muster_types::Timestamp;
    use openraft::raft::{AppendEntriesResponse, VoteResponse};
    use proptest::prelude::*;

    use super::*;
    use crate::forward::history_answer;
    use crate::wire::tests::request;

    /// A real AppendEntries with entries, as the client side sends it.
    fn real_append(n: u64) -> RaftBytes {
        let (header, data) = BinaryAppend::encode(&request(n)).unwrap();
        RaftBytes {
            json: serde_json::to_vec(&header).unwrap(),
            data,
        }
    }

    /// Changes bytes at the given positions (wrapped into range) and cuts at `cut` (if shorter).
    fn damage(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
        if !bytes.is_empty() {
            for &(at, b) in edits {
                let at = at % bytes.len();
                bytes[at] = b;
            }
        }
        if let Some(c) = cut {
            bytes.truncate(c);
        }
        bytes
    }

    fn refused<T>(r: Result<T, tonic::Status>) -> Result<(), TestCaseError> {
        if let Err(s) = r {
            prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            prop_assert!(
                s.message().starts_with("undecodable raft message"),
                "{}",
                s.message()
            );
        }
        Ok(())
    }

    /// Every message the peer server reads as JSON, from `json`.
    fn every_json_message(json: &[u8]) -> Result<(), TestCaseError> {
        refused(decode_json::<VoteRequest<u64>>(json))?;
        refused(decode_json::<Request>(json))?;
        refused(decode_json::<AdminRequest>(json))?;
        refused(decode_json::<HistoryRequest>(json))?;
        // And the answers the clients read.
        let _ = serde_json::from_slice::<Result<AppendEntriesResponse<u64>, String>>(json);
        let _ = serde_json::from_slice::<Result<VoteResponse<u64>, String>>(json);
        let _ = serde_json::from_slice::<Result<(), ForwardError>>(json);
        Ok(())
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_are_refused_or_read(
            json in proptest::collection::vec(any::<u8>(), 0..200),
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let bytes = RaftBytes { json: json.clone(), data: data.clone() };
            refused(append_request(bytes.clone()))?;
            refused(snapshot_request(bytes.clone()))?;
            every_json_message(&json)?;
            let _ = history_answer(&bytes);
        }

        /// Real frames with bytes changed or cut: the header, the entries, or both.
        #[test]
        fn damaged_append_entries_are_refused_or_read(
            n in 1u64..6,
            json_edits in edits(),
            data_edits in edits(),
            json_cut in proptest::option::of(0usize..400),
            data_cut in proptest::option::of(0usize..400),
        ) {
            let real = real_append(n);
            let json = damage(real.json, &json_edits, json_cut);
            let data = damage(real.data, &data_edits, data_cut);
            every_json_message(&json)?;
            let read = append_request(RaftBytes { json, data });
            if let Ok(rpc) = &read {
                // Whatever decodes holds no more entries than were sent.
                prop_assert!(rpc.entries.len() as u64 <= n);
            }
            refused(read)?;
        }

        /// A real history answer with its header or records damaged.
        #[test]
        fn damaged_history_answers_are_errors(
            json_edits in edits(),
            data_edits in edits(),
            data_cut in proptest::option::of(0usize..200),
        ) {
            let records: Vec<Vec<u8>> = (1..4u64)
                .map(|seq| {
                    muster_proto::EventRecordBytes {
                        seq,
                        event: muster_proto::encode_event(&muster_domain::Event::JobStopped {
                            job: muster_types::JobId::new("j").unwrap(),
                            at: Timestamp(1_700_000_000_000),
                        }),
                        hash: vec![7; 32],
                        principal: String::new(),
                    }
                    .encode_to_vec()
                })
                .collect();
            let header: Result<HistoryHeader, String> =
                Ok(HistoryHeader { first_seq_available: 1, count: records.len() });
            let answer = RaftBytes {
                json: damage(serde_json::to_vec(&header).unwrap(), &json_edits, None),
                data: damage(
                    muster_store::segment::join_segment(&records).unwrap(),
                    &data_edits,
                    data_cut,
                ),
            };
            if let Ok(chunk) = history_answer(&answer) {
                prop_assert_eq!(chunk.records.len(), 3);
            }
        }
    }

    #[test]
    fn a_real_append_reads_back() {
        let rpc = append_request(real_append(3)).unwrap();
        assert_eq!(rpc.entries.len(), 3);
    }
}

/// Issue 18 (found by the nemesis soak): a snapshot chunk whose caller gave up is still
/// written whole, so the leader's next chunk continues the file where it belongs.
#[cfg(test)]
mod abandoned_chunk {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::InstallSnapshotResponse;
    use openraft::SnapshotMeta;

    use super::*;
    use crate::ClusterConfig;
    use muster_domain::{Command, DeviceRegistration};
    use muster_store::MusterNode;
    use muster_types::DeviceId;

    fn chunk(
        rpc: &InstallSnapshotRequest<TypeConfig>,
        offset: usize,
        data: &[u8],
        done: bool,
    ) -> tonic::Request<RaftBytes> {
        let mut rpc = rpc.clone();
        rpc.offset = offset as u64;
        rpc.done = done;
        tonic::Request::new(RaftBytes {
            json: serde_json::to_vec(&rpc).unwrap(),
            data: data.to_vec(),
        })
    }

    // One thread: the chunk's task cannot run before the first poll returns, so "gave up
    // before the answer" is certain, not a race a loaded machine can lose (CI lost it once).
    #[tokio::test(flavor = "current_thread")]
    async fn a_snapshot_chunk_whose_caller_gave_up_is_still_written_whole() {
        // A leader of one with a snapshot of some devices.
        let ldir = tempfile::tempdir().unwrap();
        let leader = Cluster::start(ClusterConfig::new(
            1,
            ldir.path().to_path_buf(),
            MusterNode::default(),
        ))
        .await
        .unwrap();
        leader
            .wait_for_leader(Duration::from_secs(30))
            .await
            .unwrap();
        leader
            .write(Command::RegisterDevices {
                devices: (0..500)
                    .map(|i| DeviceRegistration {
                        id: DeviceId::new(format!("d{i:04}")).unwrap(),
                        display_name: format!("device {i}"),
                        model_id: None,
                        enabled: true,
                        tags: serde_json::json!({"i": i}).into(),
                    })
                    .collect(),
                upsert: false,
                at: crate::now(),
            })
            .await
            .unwrap();
        leader.raft().trigger().snapshot().await.unwrap();
        let m = leader
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.snapshot.is_some(), "a snapshot")
            .await
            .unwrap();
        let file = std::fs::read_dir(ldir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "snap"))
            .unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: m.vote,
            meta: SnapshotMeta {
                last_log_id: m.snapshot,
                last_membership: m.membership_config.as_ref().clone(),
                snapshot_id: file.file_stem().unwrap().to_string_lossy().into_owned(),
            },
            offset: 0,
            data: Vec::new(),
            done: false,
        };

        // A node waiting to be added receives it.
        let fdir = tempfile::tempdir().unwrap();
        let mut cfg = ClusterConfig::new(2, fdir.path().to_path_buf(), MusterNode::default());
        cfg.join = true;
        let follower = Cluster::start(cfg).await.unwrap();
        let service = PeerService {
            cluster: follower.clone(),
            refusals: Arc::default(),
        };
        let half = bytes.len() / 2;
        // The caller of the first chunk gives up at once (its future is dropped unfinished).
        let mut first = service.install_snapshot(chunk(&rpc, 0, &bytes[..half], false));
        let answered = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(first.as_mut(), cx).is_ready())
        })
        .await;
        assert!(!answered, "the first chunk was answered at once");
        drop(first);
        // The second chunk continues it: refused (with a mismatch) only until the first one is
        // written, as the leader would otherwise start over.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = service
                .install_snapshot(chunk(&rpc, half, &bytes[half..], true))
                .await
                .unwrap();
            let answer: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
                serde_json::from_slice(&r.into_inner().json).unwrap();
            match answer {
                Ok(_) => break,
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(_)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the abandoned chunk was never written: {e}"),
            }
        }
        let fm = follower
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|fm| fm.snapshot == m.snapshot, "the snapshot installed")
            .await
            .unwrap();
        assert_eq!(fm.snapshot, m.snapshot);
        follower.shutdown().await;
        leader.shutdown().await;
    }
}

/// Issue 18: below the reserve, entries and snapshot chunks are refused before anything is
/// stored, while heartbeats pass and the refusal still keeps the leader's lease. A reserve of
/// `u64::MAX` puts every disk below it, so this runs without mounting anything.
#[cfg(test)]
mod disk_full {
    #![allow(clippy::unwrap_used)]

    use openraft::error::RaftError;
    use openraft::{SnapshotMeta, StoredMembership};

    use super::*;
    use crate::wire::tests::request;
    use crate::ClusterConfig;
    use muster_store::MusterNode;

    fn bytes(rpc: &AppendEntriesRequest<TypeConfig>) -> RaftBytes {
        if rpc.entries.is_empty() {
            return RaftBytes {
                json: serde_json::to_vec(rpc).unwrap(),
                data: Vec::new(),
            };
        }
        let (header, data) = BinaryAppend::encode(rpc).unwrap();
        RaftBytes {
            json: serde_json::to_vec(&header).unwrap(),
            data,
        }
    }

    /// Raft's answer, as the leader's client reads it (`None`: a Raft error).
    fn answer(
        r: Result<tonic::Response<RaftBytes>, tonic::Status>,
    ) -> Option<AppendEntriesResponse<u64>> {
        let read: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            serde_json::from_slice(&r.unwrap().into_inner().json).unwrap();
        read.ok()
    }

    fn refused_for_disk_space(r: Result<tonic::Response<RaftBytes>, tonic::Status>) {
        let status = r.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(
            status.metadata().get(REFUSAL_KEY).unwrap().as_bytes(),
            REFUSAL_DISK_FULL.as_bytes()
        );
        assert!(status.message().contains("MiB free"), "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_and_snapshots_are_refused_heartbeats_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ClusterConfig::new(2, dir.path().to_path_buf(), MusterNode::default());
        // A node waiting to be added: an empty log that follows whoever leads.
        cfg.join = true;
        cfg.min_free_disk = u64::MAX;
        let cluster = Cluster::start(cfg).await.unwrap();
        let service = PeerService {
            cluster: cluster.clone(),
            refusals: Arc::default(),
        };

        // Entries from the start of the log: refused, nothing stored, yet the leader's vote
        // reached Raft (its lease holds, so no election).
        let mut rpc = request(2);
        rpc.prev_log_id = None;
        rpc.leader_commit = None;
        for (i, e) in rpc.entries.iter_mut().enumerate() {
            e.log_id.index = i as u64 + 1;
        }
        refused_for_disk_space(
            service
                .append_entries(tonic::Request::new(bytes(&rpc)))
                .await,
        );
        // Raft answers before it publishes its metrics: wait for them to show the vote.
        let m = cluster
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.vote == rpc.vote, "the leader's vote adopted")
            .await
            .unwrap();
        assert_eq!(m.last_log_index, None);

        // Entries after a log this node does not have: the conflict is answered as such, so the
        // leader learns where to resume.
        let r = service
            .append_entries(tonic::Request::new(bytes(&request(2))))
            .await;
        assert!(matches!(answer(r), Some(AppendEntriesResponse::Conflict)));

        // A heartbeat passes.
        let mut heartbeat = rpc.clone();
        heartbeat.entries.clear();
        let r = service
            .append_entries(tonic::Request::new(bytes(&heartbeat)))
            .await;
        assert!(matches!(answer(r), Some(AppendEntriesResponse::Success)));

        // A snapshot chunk is refused the same way.
        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: rpc.vote,
            meta: SnapshotMeta {
                last_log_id: rpc.entries.last().map(|e| e.log_id),
                last_membership: StoredMembership::default(),
                snapshot_id: "s1".into(),
            },
            offset: 0,
            data: Vec::new(),
            done: true,
        };
        refused_for_disk_space(
            service
                .install_snapshot(tonic::Request::new(RaftBytes {
                    json: serde_json::to_vec(&snapshot).unwrap(),
                    data: vec![1, 2, 3],
                }))
                .await,
        );
        let m = cluster.raft().metrics().borrow().clone();
        assert_eq!(m.last_log_index, None);
        assert_eq!(m.snapshot, None);
        assert!(cluster.metrics.raft().writes_refused_disk_full.get() >= 2);
        assert!(service.refusals.refusing.load(Ordering::Relaxed));
        cluster.shutdown().await;
    }
}
