//! muster's Raft cluster: the node-level handle every other part of a server writes and reads
//! through.
//!
//! [`Cluster::start`] opens the store in a data directory, builds the openraft instance, and, if
//! the directory is new, initialises it as a cluster of one (as etcd runs a one-member cluster),
//! so a single node and a multi-node cluster use the same storage, state machine and code paths.
//! A restarted node finds its vote and log on disk and simply carries on.
//!
//! Writes go through [`Cluster::write`]: one domain command per Raft entry, answered once it is
//! committed and applied. Reads come from the applied state ([`Cluster::reader`]), either as they
//! are (fast, possibly stale on a follower) or after [`Cluster::linearizable`] has confirmed this
//! node is still the leader and its state machine has caught up with the commit index.
//!
//! The network between nodes is gRPC on each node's peer address, in modules that depend one
//! way (as openraft's examples split client transport, server handlers and management):
//! [`wire`] (the messages), [`transport`] (the Raft client and the dialer), [`forward`] (the
//! forwarder of writes, reads, administration and history, over that dialer), [`admin`]
//! (membership and status, through the forwarder) and [`server`] (the peer server's handlers,
//! which call the Raft and [`admin`]). For the single-member cluster it is never called.
//!
//! A multi-member cluster is bootstrapped from [`ClusterConfig::peers`], the peer addresses of all
//! initial members (the same list on every node): a new node then does not initialise a cluster
//! of one; instead the member with the smallest id initialises the cluster with all of them, as
//! soon as a majority answers on their peer addresses. The others wait to be contacted by the
//! leader. At that point only their peer addresses are known, so their membership records carry
//! only `peer_addr`; a node that becomes leader writes its own full record (gRPC and REST
//! addresses too) into the membership, so "not leader" answers can name the leader's client
//! address.
//!
//! A write on a follower is forwarded to the leader over the same peer service
//! ([`Cluster::write`]), so a caller does not see "not leader" while a leader is reachable.

mod admin;
mod backfill;
mod forward;
mod server;
pub mod trace;
mod transport;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_domain::{Command, Principal};
use muster_types::Timestamp;
use openraft::error::InitializeError;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tracing::Instrument;

pub use admin::{ClusterStatus, MemberStatus, Role};
use forward::{Forward, Forwarded};
pub use muster_store::{
    AppliedEvents, AppliedRange, CommandError, ErrorKind, EventLog, MusterNode, Request, Response,
    StateReader, StateUpdate, Store, StoreError, TypeConfig,
};
pub use server::PeerService;
pub use transport::Network;

/// The openraft instance with muster's types.
pub type MusterRaft = Raft<TypeConfig>;
/// What openraft reports about this node (state, leader, term, indexes, membership).
pub type Metrics = RaftMetrics<u64, MusterNode>;

/// The wall clock as a [`Timestamp`]: the leader stamps commands with it. The pure core never
/// reads a clock; this is the one place the server does for commands.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(ms.saturating_add(clock_skew_ms()))
}

/// Fault injection for the nemesis harness (`tests/nemesis`): `MUSTER_TEST_CLOCK_SKEW_MS`
/// shifts this node's command clock, as a badly synchronised host would; read once. Only the
/// stamp moves: Raft's timers and every timeout keep the monotonic clock, as on such a host.
fn clock_skew_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("MUSTER_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// How a node takes part in Raft.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// This node's addresses, recorded in the membership when it initialises the cluster.
    pub node: MusterNode,
    /// The peer addresses of all initial members by node id, this node included, when it is one
    /// of several; empty for a cluster of one. Only read when the data directory is new.
    pub peers: BTreeMap<u64, String>,
    /// Heartbeat interval; the election timeout is drawn between `election_min` and
    /// `election_max`. The defaults suit a LAN.
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one (the log behind it
    /// is then purged).
    pub snapshot_after: u64,
    /// A new data directory waits to be added to an existing cluster (`muster cluster
    /// add-learner`) instead of starting a cluster of one.
    pub join: bool,
    /// Mutual TLS on the peer port: this node dials the others with its certificate and checks
    /// theirs against the cluster CA (the node's peer server does the same for callers). `None`:
    /// plain TCP (loopback clusters and tests).
    pub peer_tls: Option<muster_tls::PeerTls>,
    /// The node's metrics: the store, Raft and this handle record into it, and
    /// [`Cluster::refresh_metrics`] sets its state gauges before a scrape.
    pub metrics: muster_metrics::Metrics,
    /// Writes are refused while the data directory's file system has less than this many bytes
    /// free (see [`ClusterError::DiskFull`]); 0 turns the check off.
    pub min_free_disk: u64,
}

/// The default write reserve: room for the writes already admitted (log entries, their events,
/// a snapshot file) to land after the last check.
pub const DEFAULT_MIN_FREE_DISK: u64 = 256 * 1024 * 1024;

impl ClusterConfig {
    pub fn new(node_id: u64, data_dir: PathBuf, node: MusterNode) -> Self {
        ClusterConfig {
            node_id,
            data_dir,
            node,
            peers: BTreeMap::new(),
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            snapshot_after: 20_000,
            join: false,
            peer_tls: None,
            metrics: muster_metrics::Metrics::new(),
            min_free_disk: DEFAULT_MIN_FREE_DISK,
        }
    }
}

/// Why a write or a read did not happen. Callers map it to an API status.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The command was applied and refused by the core; nothing changed.
    #[error(transparent)]
    Rejected(#[from] CommandError),
    /// This node is not the leader. `leader` is the current leader if one is known, so the
    /// caller (or the forwarding layer) can retry there.
    #[error("this node is not the leader{}", leader.as_ref().map(|(id, n)| format!("; the leader is node {id} ({})", n.grpc_addr)).unwrap_or_default())]
    NotLeader { leader: Option<(u64, MusterNode)> },
    /// No leader could be reached or elected in time (for instance a node cut off from the
    /// majority): the write was not acknowledged and may or may not be applied later.
    #[error("the cluster cannot serve this request right now: {0}")]
    Unavailable(String),
    /// A membership change that cannot be made as asked (an unknown node, a node that is not a
    /// learner, a change already in progress); the message says what to do instead.
    #[error("{0}")]
    Membership(String),
    /// Opening the data directory failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// openraft stopped (a storage failure, or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The data directory's disk is (nearly) full: the write was refused before anything was
    /// appended, so the log stays whole. Reads are still served, and writes are accepted again
    /// as soon as space is freed, without a restart.
    #[error(
        "node {node}'s data directory has {} MiB free, less than the {} MiB it keeps in reserve \
         (--min-free-disk-mib): writes are refused so the log is not damaged; reads are still \
         served. Free disk space on that node (or give it a larger disk); writes are accepted \
         again at once, without a restart",
        free / (1024 * 1024),
        reserve / (1024 * 1024)
    )]
    DiskFull { node: u64, free: u64, reserve: u64 },
}

/// A running Raft node with muster's store.
#[derive(Clone)]
pub struct Cluster {
    id: u64,
    raft: MusterRaft,
    reader: StateReader,
    forwarder: forward::Forwarder,
    /// A leader that has not heard from a majority for this long refuses writes at once: it
    /// cannot commit them.
    quorum_lost_after: Duration,
    metrics: muster_metrics::Metrics,
    data_dir: Arc<PathBuf>,
    /// The span contexts jobs were created in, for the dispatcher's spans (see [`trace`]).
    job_traces: Arc<trace::JobTraces>,
    /// See [`ClusterConfig::min_free_disk`].
    min_free_disk: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).finish()
    }
}

impl Cluster {
    /// Opens `cfg.data_dir` (creating it if needed), starts Raft, and initialises a cluster of one
    /// if the directory held no Raft state. Returns once Raft runs; use
    /// [`wait_for_leader`](Self::wait_for_leader) before the first write.
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            ClusterError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        let (mut log, sm) = open_store(&cfg.data_dir).await?;
        log.set_metrics(cfg.metrics.clone());
        sm.set_metrics(cfg.metrics.clone());
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: "muster".into(),
            heartbeat_interval: millis(cfg.heartbeat),
            election_timeout_min: millis(cfg.election_min),
            election_timeout_max: millis(cfg.election_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after),
            max_in_snapshot_log_to_keep: 1000,
            // openraft gives one AppendEntries exactly one heartbeat interval to complete; with
            // its default of 300 entries per request, entries of 1,000 results each do not make
            // it on a loaded machine, the followers miss heartbeats and call elections. A few
            // dozen large entries per request still carry tens of thousands of results.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Unavailable(format!("invalid raft settings: {e}")))?;
        let dialer = transport::Dialer::new(cfg.peer_tls.as_ref());
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(config),
            Network::new(dialer.clone(), cfg.heartbeat),
            log,
            sm,
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let multi = cfg.peers.keys().any(|id| *id != cfg.node_id);
        if !initialized && cfg.join {
            tracing::info!(
                node = cfg.node_id,
                peer = %cfg.node.peer_addr,
                "new data directory: waiting to be added to a cluster (muster cluster add-learner {} {})",
                cfg.node_id,
                cfg.node.peer_addr
            );
        } else if !initialized && !multi {
            let members = BTreeMap::from([(cfg.node_id, cfg.node.clone())]);
            tracing::info!(
                node = cfg.node_id,
                "new data directory: initialising a cluster of one"
            );
            if let Err(e) = raft.initialize(members).await {
                return Err(ClusterError::Fatal(format!("initialise: {e}")));
            }
        } else if !initialized {
            let first = cfg.peers.keys().next().copied();
            if first == Some(cfg.node_id) {
                tokio::spawn(bootstrap(raft.clone(), cfg.clone()));
            } else {
                tracing::info!(
                    node = cfg.node_id,
                    "new data directory: waiting for node {} to form the cluster",
                    first.unwrap_or_default()
                );
            }
        }
        let cluster = Cluster {
            id: cfg.node_id,
            raft,
            reader,
            forwarder: forward::Forwarder::new(dialer),
            quorum_lost_after: (cfg.election_max * 3).max(Duration::from_millis(1500)),
            metrics: cfg.metrics.clone(),
            data_dir: Arc::new(cfg.data_dir.clone()),
            job_traces: Arc::default(),
            min_free_disk: cfg.min_free_disk,
        };
        tokio::spawn(count_leader_changes(
            cluster.raft.metrics(),
            cfg.metrics.clone(),
        ));
        tokio::spawn(publish_own_record(cluster.clone(), cfg.node.clone()));
        tokio::spawn(backfill::run(cluster.clone()));
        Ok(cluster)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The openraft instance, for the peer RPC service and membership changes.
    pub fn raft(&self) -> &MusterRaft {
        &self.raft
    }

    /// The applied state and the event log, as this node has them.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub fn metrics(&self) -> watch::Receiver<Metrics> {
        self.raft.metrics()
    }

    /// Where the spans of a job's dispatch find the trace of its creation (see [`trace`]).
    pub fn job_traces(&self) -> &trace::JobTraces {
        &self.job_traces
    }

    /// The node's Prometheus metrics (see `muster_metrics`).
    pub fn telemetry(&self) -> &muster_metrics::Metrics {
        &self.metrics
    }

    /// Sets the gauges that describe the node's current state (Raft's indexes and term, the
    /// followers' lag, the event log's seq, jobs by status, the data directory's size), so the
    /// exposition that follows is current. Called by `/metrics` before it encodes.
    pub async fn refresh_metrics(&self) {
        let m = &self.metrics;
        {
            let rm = self.raft.metrics();
            let rm = rm.borrow();
            let r = m.raft();
            r.term.set(to_i64(rm.current_term));
            r.is_leader.set(i64::from(rm.state == ServerState::Leader));
            r.last_log_index.set(to_i64(rm.last_log_index.unwrap_or(0)));
            r.applied_index
                .set(to_i64(rm.last_applied.map_or(0, |l| l.index)));
            let last = rm.last_log_index.unwrap_or(0);
            let lags: Vec<(u64, u64)> = rm
                .replication
                .iter()
                .flat_map(|map| map.iter())
                .filter(|(id, _)| **id != self.id)
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect();
            // The leader's commit index is the highest index a majority of voters holds;
            // elsewhere openraft reports none, and the applied index is the best this node knows.
            let committed = match &rm.replication {
                Some(map) => {
                    let voters: Vec<u64> = rm.membership_config.membership().voter_ids().collect();
                    let mut held: Vec<u64> = voters
                        .iter()
                        .map(|v| {
                            if *v == self.id {
                                last
                            } else {
                                map.get(v).copied().flatten().map_or(0, |l| l.index)
                            }
                        })
                        .collect();
                    held.sort_unstable_by(|a, b| b.cmp(a));
                    held.get(voters.len() / 2).copied().unwrap_or(0)
                }
                None => rm.last_applied.map_or(0, |l| l.index),
            };
            r.committed_index.set(to_i64(committed));
            r.set_follower_lags(lags);
        }
        let (seq, by_status) = self.reader.read_with_seq(|s, seq| {
            use muster_domain::job::JobStatus as J;
            let mut counts: BTreeMap<&'static str, u64> = [
                J::Scheduled,
                J::Pending,
                J::Running,
                J::Stopped,
                J::Completed,
                J::Failed,
                J::Cancelled,
            ]
            .iter()
            .map(|st| (st.as_str(), 0))
            .collect();
            for job in s.jobs.values() {
                *counts.entry(job.status.as_str()).or_default() += 1;
            }
            (seq, counts)
        });
        m.store().event_seq.set(to_i64(seq));
        m.jobs().set_by_status(by_status);
        let dir = Arc::clone(&self.data_dir);
        if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await {
            m.store().data_dir_bytes.set(to_i64(bytes));
        }
    }

    /// Why this node's Raft core has stopped (a storage error, a panic in the core, or a
    /// shutdown), or `None` while it runs. A stopped core never comes back: every write and
    /// read fails from then on, so the node is not ready and should exit for its supervisor.
    pub fn core_stopped(&self) -> Option<String> {
        let m = self.raft.metrics();
        // The core owns the sending side: a closed channel means the core task has ended.
        let closed = m.has_changed().is_err();
        let fatal = m.borrow().running_state.clone().err();
        match fatal {
            Some(fatal) => Some(fatal.to_string()),
            None if closed => Some("the Raft core has ended".to_string()),
            None => None,
        }
    }

    /// Resolves once the Raft core has stopped, with the reason (see [`Cluster::core_stopped`]).
    pub async fn wait_core_stopped(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(fatal) = &rx.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if rx.changed().await.is_err() {
                return self
                    .core_stopped()
                    .unwrap_or_else(|| "the Raft core has ended".to_string());
            }
        }
    }

    /// Whether this node is the leader, as it currently believes.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// The current leader's id and addresses, if one is known.
    pub fn leader(&self) -> Option<(u64, MusterNode)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    /// The client addresses (REST and gRPC) of every member, as the membership records them:
    /// the names clients may know this service by.
    pub fn member_addresses(&self) -> Vec<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .flat_map(|(_, n)| [n.http_addr.clone(), n.grpc_addr.clone()])
            .collect()
    }

    /// Waits until some node is leader (this one or another). Returns the leader id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(id) = rx.borrow_and_update().current_leader {
                    return Ok(id);
                }
                if rx.changed().await.is_err() {
                    return Err(ClusterError::Fatal("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            ClusterError::Unavailable(format!("no leader elected within {timeout:?}"))
        })?
    }

    /// Proposes one command and waits until it is committed and applied. `Ok` carries the
    /// seqs of the events it appended; the state read through [`reader`](Self::reader) includes
    /// them when this returns, on this node whether it leads or not.
    ///
    /// On a follower the command is forwarded to the leader. While no leader is known (an
    /// election is under way) or the known one cannot be reached, it waits for one, up to
    /// [`LEADER_WAIT`]; a request is sent again only when it certainly did not arrive, so a write
    /// is never applied twice by this layer. A leader cut off from the majority refuses at once
    /// (`Unavailable`) instead of accepting a write it cannot commit.
    ///
    /// The command is written on behalf of [`Principal::System`]: for the node's own work.
    /// A command a caller asked for goes through [`write_as`](Self::write_as).
    pub async fn write(&self, command: Command) -> Result<AppliedRange, ClusterError> {
        self.write_as(Principal::System, command).await
    }

    /// [`write`](Self::write) on behalf of `principal`, who is recorded with every event the
    /// command produces (the audit log's "who did it"). A follower forwards the principal with
    /// the command (`ClientWrite` on the peer port), and the leader proposes it as received.
    pub async fn write_as(
        &self,
        principal: Principal,
        command: Command,
    ) -> Result<AppliedRange, ClusterError> {
        // Here too, not only on the leader: this node stores the write as well once it is
        // committed, and a follower that cannot is better refusing it than failing to append.
        self.refuse_when_disk_full()?;
        let request = Request::new(command, principal);
        let span = tracing::info_span!(target: trace::TARGET, "cluster.write", node = self.id);
        self.via_leader(Forward::ClientWrite, &request, |this| {
            let request = request.clone();
            async move { this.write_here(request).await }
        })
        .instrument(span)
        .await
    }

    /// Proposes one command only if this node leads: never forwarded, never waiting for a
    /// leader. For the leader's own work (the dispatcher), which must stop, not move elsewhere,
    /// when this node stops leading.
    pub async fn write_if_leader(&self, command: Command) -> Result<AppliedRange, ClusterError> {
        self.write_here(Request::from(command))
            .await
            .map(|(range, _)| range)
    }

    /// Proposes `request` to this node's Raft, without forwarding. `Ok` also carries the index of
    /// the log entry.
    pub(crate) async fn write_here(
        &self,
        request: Request,
    ) -> Result<(AppliedRange, u64), ClusterError> {
        self.refuse_without_quorum()?;
        self.refuse_when_disk_full()?;
        // Here, so a principal forwarded by a follower is checked by the leader too.
        request.check_principal()?;
        if let Command::CreateJob { id, .. } = &*request.command {
            // This node's dispatcher (it leads) will carry the job out: its spans join here.
            self.job_traces.remember(id);
        }
        let span = tracing::info_span!(
            target: trace::TARGET,
            "raft.commit_apply",
            node = self.id,
            raft.index = tracing::field::Empty
        );
        // Only while this call waits: the apply of this very command is traced under the span.
        let _apply_traced = self.reader.trace_apply(&request.command, span.clone());
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.raft.client_write(request).instrument(span.clone()),
        )
        .await;
        if let Ok(Ok(resp)) = &written {
            span.record("raft.index", resp.log_id.index);
        }
        let raft = self.metrics.raft();
        match &written {
            // A command the core refused was committed all the same.
            Ok(Ok(_)) => {
                raft.proposals_committed.inc();
            }
            // Not a proposal: the caller goes to the leader.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
            _ => {
                raft.proposals_failed.inc();
            }
        }
        match written {
            Err(_) => Err(ClusterError::Unavailable(format!(
                "the write was not committed within {WRITE_TIMEOUT:?} (is a majority of the cluster reachable?); \
                 it was not acknowledged and may or may not take effect: read before retrying"
            ))),
            Ok(Ok(resp)) => Ok((resp.data.into_result()?, resp.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Unavailable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
        }
    }

    /// Refuses a write while the data directory has less than the reserve free (issue 18).
    ///
    /// Checked before proposing because afterwards is too late: sled 0.34 remembers the first
    /// failed write of its log as a global error and fails everything after it until the
    /// process restarts, and openraft stops the node on any storage error. A file system that
    /// cannot be asked (it vanished) is left to the write itself to report.
    ///
    /// Also guards the entries a follower receives from its leader (the peer server's
    /// AppendEntries and InstallSnapshot), so the reserve is checked in this one place. Each
    /// refusal is counted in `muster_raft_writes_refused_disk_full`.
    pub fn refuse_when_disk_full(&self) -> Result<(), ClusterError> {
        self.disk_below_reserve().inspect_err(|_| {
            self.metrics.raft().writes_refused_disk_full.inc();
        })
    }

    /// The reserve check without counting a refusal, for `/readyz` (a probe refuses nothing).
    pub fn disk_below_reserve(&self) -> Result<(), ClusterError> {
        if self.min_free_disk == 0 {
            return Ok(());
        }
        match muster_store::free_space(&self.data_dir) {
            Ok(free) if free < self.min_free_disk => Err(ClusterError::DiskFull {
                node: self.id,
                free,
                reserve: self.min_free_disk,
            }),
            _ => Ok(()),
        }
    }

    /// A leader that has not heard from a majority recently cannot commit: say so before
    /// appending anything.
    fn refuse_without_quorum(&self) -> Result<(), ClusterError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader
            || m.membership_config.membership().voter_ids().count() < 2
        {
            return Ok(());
        }
        match m.millis_since_quorum_ack {
            Some(ms) if ms > millis(self.quorum_lost_after) => Err(ClusterError::Unavailable(
                format!(
                    "this node has not heard from a majority of the cluster for {ms} ms, so nothing \
                     can be committed; the request was not accepted. Check the other members \
                     (`muster cluster status`)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Makes sure a read that follows sees every write acknowledged before this call, on any
    /// node (the read-index protocol): the leader confirms with a quorum that it still leads and
    /// names its commit index; this node waits until it has applied that far. On a follower the
    /// leader is asked over the peer service.
    pub async fn linearizable(&self) -> Result<(), ClusterError> {
        self.via_leader(Forward::ReadIndex, &(), |this| async move {
            this.read_index_here().await.map(|i| ((), i))
        })
        .await
    }

    /// Whether a quorum confirms that this node leads now (not merely that it believes so).
    pub async fn confirm_leadership(&self) -> Result<(), ClusterError> {
        self.read_index_here().await.map(|_| ())
    }

    /// The read index, if this node is the leader: confirmed with a quorum, and already applied
    /// here.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ClusterError> {
        // One heartbeat round can miss a quorum on a busy but healthy cluster (a slow append in
        // flight): try again for a moment before calling the cluster unavailable.
        let deadline = tokio::time::Instant::now() + QUORUM_RETRY;
        loop {
            self.refuse_without_quorum()?;
            let checked =
                tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await;
            return match checked {
                Err(_) => Err(ClusterError::Unavailable(format!(
                    "the leader could not confirm its leadership with a majority within {WRITE_TIMEOUT:?}"
                ))),
                Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
                Ok(Err(RaftError::APIError(
                    openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                ))) => Err(ClusterError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                }),
                Ok(Err(RaftError::APIError(
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(e),
                ))) => {
                    if tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(LEADER_POLL / 2).await;
                        continue;
                    }
                    Err(ClusterError::Unavailable(format!(
                        "this node cannot reach a majority of the cluster: {e}"
                    )))
                }
                Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
            };
        }
    }

    /// Runs `here` on this node; if it answers `NotLeader`, sends `request` as `what` to the
    /// leader instead and, when that answers, waits until this node has applied the log index the
    /// leader returned (so the caller reads its own writes here). Waits for a leader, up to
    /// [`LEADER_WAIT`], while none is known or the known one cannot be reached.
    async fn via_leader<Req, Resp, F, Fut>(
        &self,
        what: Forward,
        request: &Req,
        here: F,
    ) -> Result<Resp, ClusterError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: Fn(Cluster) -> Fut,
        Fut: std::future::Future<Output = Result<(Resp, u64), ClusterError>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = match here(self.clone()).await {
                Err(ClusterError::NotLeader { leader }) => leader,
                other => return other.map(|(resp, _)| resp),
            };
            let why = match leader {
                Some((id, node)) if id != self.id && !node.peer_addr.is_empty() => {
                    let call = self
                        .forwarder
                        .call::<Req, (Resp, u64)>(
                            what,
                            id,
                            &node.peer_addr,
                            request,
                            FORWARD_TIMEOUT,
                        )
                        .instrument(tracing::info_span!(
                            target: trace::TARGET,
                            "cluster.forward",
                            otel.kind = "client",
                            leader = id
                        ));
                    match self.unless_replaced(id, call).await {
                        // A read changes nothing: ask the new leader.
                        Err(Replaced(m)) if matches!(what, Forward::ReadIndex) => m,
                        Err(Replaced(m)) => return Err(ClusterError::Unavailable(format!(
                            "{m}; it may or may not have taken effect: check before sending it again"
                        ))),
                        Ok(Ok((resp, index))) => {
                            self.wait_applied(index).await?;
                            return Ok(resp);
                        }
                        Ok(Err(Forwarded::NotSent(m))) => {
                            format!("the leader, node {id}, cannot be reached: {m}")
                        }
                        // The leader stepped down before it appended anything: ask the next one.
                        Ok(Err(Forwarded::Failed(ClusterError::NotLeader { .. }))) => {
                            format!("node {id} stopped leading")
                        }
                        Ok(Err(Forwarded::Failed(e))) => return Err(e),
                    }
                }
                Some((id, _)) if id != self.id => {
                    format!("the leader, node {id}, has not recorded its peer address yet")
                }
                _ => "no leader is known: an election may be under way".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Unavailable(format!(
                    "{why}; gave up after {LEADER_WAIT:?}"
                )));
            }
            self.leader_changes(deadline).await;
        }
    }

    /// Runs `call`, forwarded to leader `id`, but stops waiting for it [`REPLACED_GRACE`] after
    /// another node has become leader: a leader that froze or was cut off never answers, and
    /// waiting out [`FORWARD_TIMEOUT`] would tell the caller nothing more. A write may still
    /// have reached the old leader and been replicated before it stopped (the new leader then
    /// commits it), so for a write the answer is "outcome unknown", never a silent resend.
    async fn unless_replaced<T>(
        &self,
        id: u64,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, Replaced> {
        tokio::pin!(call);
        let mut rx = self.raft.metrics();
        let raft_stopped = {
            let replaced = rx.wait_for(|m| m.current_leader.is_some_and(|l| l != id));
            tokio::select! {
                r = &mut call => return Ok(r),
                w = replaced => w.is_err(),
            }
        };
        if raft_stopped {
            // Only the call can still answer.
            return Ok(call.await);
        }
        let now = rx.borrow().current_leader;
        tokio::time::timeout(REPLACED_GRACE, &mut call)
            .await
            .map_err(|_| {
                Replaced(format!(
                    "the request went to node {id}, which stopped answering, and node {} leads now",
                    now.map_or_else(|| "another".to_string(), |n| n.to_string())
                ))
            })
    }

    /// Waits a little for the leader to change (or become known), at most until `deadline`.
    async fn leader_changes(&self, deadline: tokio::time::Instant) {
        let mut rx = self.raft.metrics();
        let before = rx.borrow_and_update().current_leader;
        let until = deadline.min(tokio::time::Instant::now() + LEADER_POLL);
        let changed = rx.wait_for(|m| m.current_leader.is_some() && m.current_leader != before);
        let _ = tokio::time::timeout_at(until, changed).await;
    }

    /// Waits until this node has applied log index `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(FORWARDED_APPLY_WAIT))
            .applied_index_at_least(Some(index), "applied here")
            .await
            .map(|_| ())
            .map_err(|e| {
                ClusterError::Unavailable(format!(
                    "the leader answered, but this node has not applied its log up to index {index}: {e}"
                ))
            })
    }

    /// The members, the leader, the term, and each member's log position and lag, as far as this
    /// node can reach them. Works on any node, also one cut off from the others.
    pub async fn status(&self) -> ClusterStatus {
        admin::status(self).await
    }

    /// Adds node `id`, reachable for Raft at `peer_addr`, as a learner: it receives the log (or
    /// a snapshot) but does not vote. Start the node with `join` first.
    pub async fn add_learner(&self, id: u64, peer_addr: String) -> Result<(), ClusterError> {
        let node = MusterNode {
            peer_addr,
            ..MusterNode::default()
        };
        self.admin(admin::AdminRequest::AddLearner { id, node })
            .await
    }

    /// Makes learner `id` a voter, once it has caught up with the leader's log.
    pub async fn promote(&self, id: u64) -> Result<(), ClusterError> {
        self.admin(admin::AdminRequest::Promote { id }).await
    }

    /// Removes voter or learner `id` from the cluster.
    pub async fn remove(&self, id: u64) -> Result<(), ClusterError> {
        self.admin(admin::AdminRequest::Remove { id }).await
    }

    async fn admin(&self, req: admin::AdminRequest) -> Result<(), ClusterError> {
        self.via_leader(Forward::Admin, &req, |this| {
            let req = req.clone();
            async move { admin::execute(&this, req).await }
        })
        .await
        .map(|_| ())
    }

    /// Stops Raft. Everything acknowledged is already durable; this only ends the tasks.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The bytes the files under `dir` take (unreadable entries count as nothing).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Counts every change of the leader this node sees (to another node or to none), for as long
/// as Raft runs.
async fn count_leader_changes(mut rx: watch::Receiver<Metrics>, metrics: muster_metrics::Metrics) {
    let mut leader = rx.borrow_and_update().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().current_leader;
        if now != leader {
            leader = now;
            metrics.raft().leader_changes.inc();
        }
    }
}

/// Opens the store, waiting a few seconds if another holder of the directory is still letting go
/// of it (a previous process exiting, or sled's background thread of a store just dropped in
/// this one); after that the directory is reported as in use.
async fn open_store(
    dir: &std::path::Path,
) -> Result<(muster_store::LogStore, muster_store::StateMachine), ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || Store::open(&d))
            .await
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        match opened {
            Err(StoreError::Sled(e)) if e.to_string().contains("could not acquire lock") => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ClusterError::Unavailable(format!(
                        "data directory {} is in use by another process",
                        dir.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Forms a new multi-member cluster: run by the member with the smallest id when its data
/// directory is new. Waits until a majority of the members accept TCP connections on their peer
/// addresses, then initialises the cluster with all of them, retrying until it succeeds (an
/// "already initialised" answer counts as success) or Raft stops.
async fn bootstrap(raft: MusterRaft, cfg: ClusterConfig) {
    let members: BTreeMap<u64, MusterNode> = cfg
        .peers
        .iter()
        .map(|(id, addr)| {
            let node = if *id == cfg.node_id {
                cfg.node.clone()
            } else {
                MusterNode {
                    peer_addr: addr.clone(),
                    ..MusterNode::default()
                }
            };
            (*id, node)
        })
        .collect();
    let majority = members.len() / 2 + 1;
    loop {
        let mut up = 1; // this node
        for (id, node) in &members {
            if *id == cfg.node_id {
                continue;
            }
            let connect = tokio::net::TcpStream::connect(node.peer_addr.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                up += 1;
            }
        }
        if up >= majority {
            break;
        }
        tracing::info!(
            up,
            of = members.len(),
            "forming the cluster: waiting for a majority of the members to listen"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        match raft.initialize(members.clone()).await {
            Ok(()) => {
                tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "cluster formed");
                return;
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return,
            Err(RaftError::Fatal(e)) => {
                tracing::warn!("cannot form the cluster: raft stopped: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!("cannot form the cluster yet: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps this node's record in the membership current, on every member of a multi-member
/// cluster: members other than the one that formed the cluster start with only their peer
/// address recorded (a learner with only the one the operator gave), and a restarted node may
/// listen on new client ports. The peer address already recorded is kept: it is what the others
/// were told to dial, while this node only knows what it bound (perhaps `0.0.0.0`).
async fn publish_own_record(cluster: Cluster, me: MusterNode) {
    let id = cluster.id;
    let mut rx = cluster.raft.metrics();
    let mut done: Option<(u64, MusterNode)> = None;
    loop {
        let todo = {
            let m = rx.borrow_and_update();
            let membership = m.membership_config.membership();
            let several = membership.nodes().count() > 1;
            match (membership.get_node(&id), m.current_leader) {
                (Some(recorded), Some(_)) if several => {
                    let mut want = me.clone();
                    if !recorded.peer_addr.is_empty() {
                        want.peer_addr = recorded.peer_addr.clone();
                    }
                    let again = done.as_ref() == Some(&(m.current_term, want.clone()));
                    (*recorded != want && !again).then_some((m.current_term, want))
                }
                _ => None,
            }
        };
        if let Some((term, node)) = todo {
            match cluster
                .admin(admin::AdminRequest::SetNode {
                    id,
                    node: node.clone(),
                })
                .await
            {
                Ok(()) => {
                    tracing::info!(node = id, "recorded this node's addresses ({node})");
                    done = Some((term, node));
                }
                Err(ClusterError::Fatal(_)) => return,
                Err(e) => {
                    tracing::debug!("cannot record this node's addresses yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Log entries per AppendEntries request (see `Cluster::start`).
const MAX_PAYLOAD_ENTRIES: u64 = 16;

/// How long a follower waits to apply a write it forwarded, once the leader answered.
const FORWARDED_APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a request waits for a leader to be elected or to become reachable. Elections take
/// about one election timeout; this covers several failed rounds.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a read index keeps asking when a heartbeat round misses a quorum.
const QUORUM_RETRY: Duration = Duration::from_secs(3);
/// How often a request waiting for a leader looks again.
const LEADER_POLL: Duration = Duration::from_millis(200);
/// How long a write or a read index may take to be confirmed by a majority.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request forwarded to the leader may take (it waits for commit and apply there).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(35);
/// A forwarded request given up because another node leads now (see
/// `Cluster::unless_replaced`): what happened, for the caller's message.
struct Replaced(String);

/// How long a request forwarded to a leader may still take once another node leads (a deposed
/// leader that is alive answers at once that it no longer leads).
const REPLACED_GRACE: Duration = Duration::from_secs(2);

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_domain::DeviceRegistration;
    use muster_types::DeviceId;

    fn cfg(dir: &std::path::Path) -> ClusterConfig {
        ClusterConfig::new(1, dir.to_path_buf(), MusterNode::default())
    }

    fn register(id: &str) -> Command {
        Command::RegisterDevices {
            devices: vec![DeviceRegistration {
                id: DeviceId::new(id).unwrap(),
                display_name: id.into(),
                model_id: None,
                enabled: true,
                tags: serde_json::json!({}),
            }],
            upsert: false,
            at: now(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_directory_becomes_a_cluster_of_one_and_restarts_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::start(cfg(dir.path())).await.unwrap();
        assert_eq!(c.wait_for_leader(Duration::from_secs(10)).await.unwrap(), 1);
        let r = c.write(register("d1")).await.unwrap();
        assert!(!r.is_empty());
        let err = c.write(register("d1")).await.unwrap_err();
        assert!(matches!(
            err,
            ClusterError::Rejected(CommandError {
                kind: ErrorKind::AlreadyExists,
                ..
            })
        ));
        c.linearizable().await.unwrap();
        c.shutdown().await;
        drop(c);

        let c = Cluster::start(cfg(dir.path())).await.unwrap();
        c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        c.linearizable().await.unwrap();
        let n = c.reader().read(|s| s.registry.devices.len());
        assert_eq!(n, 1);
        c.shutdown().await;
    }

    /// Issue 18: a node whose Raft core stopped said ready. The core's end is now visible.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_core_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::start(cfg(dir.path())).await.unwrap();
        c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        assert_eq!(c.core_stopped(), None);
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_core_stopped().await })
        };
        c.raft().shutdown().await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("wait_core_stopped resolves")
            .unwrap();
        assert!(!why.is_empty());
        assert!(c.core_stopped().is_some());
        assert!(c.write(register("d1")).await.is_err());
    }

    /// `write_as` records its principal with every event of the command; `write` records
    /// `system`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_record_their_principal() {
        use muster_store::EventLog;
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::start(cfg(dir.path())).await.unwrap();
        c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        let who = Principal::Policy("iothubowner".into());
        let a = c.write_as(who.clone(), register("d1")).await.unwrap();
        let b = c.write(register("d2")).await.unwrap();
        let records = c.reader().read_records(1, usize::MAX).unwrap();
        let of = |seq: u64| {
            records
                .iter()
                .find(|r| r.seq == seq)
                .unwrap()
                .principal
                .clone()
        };
        assert_eq!(of(a.first_seq), who);
        assert_eq!(of(b.first_seq), Principal::System);
        // A principal the log could not read back is refused before it is proposed.
        for bad in [
            Principal::Policy(String::new()),
            Principal::Token("x".repeat(muster_store::MAX_PRINCIPAL_BYTES)),
        ] {
            let err = c.write_as(bad, register("d3")).await.unwrap_err();
            assert!(
                matches!(
                    &err,
                    ClusterError::Rejected(CommandError {
                        kind: ErrorKind::Invalid,
                        ..
                    })
                ),
                "{err:?}"
            );
        }
        assert_eq!(c.reader().read_records(1, usize::MAX).unwrap(), records);
        c.shutdown().await;
    }
}
