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
//! The handle itself is split the same one way: this file holds the types and the accessors;
//! [`view`] reads Raft's metrics (who leads, whether the core stopped, the `/metrics` gauges),
//! [`write`] is the write path and the read index with their forwarding to the leader, and
//! [`lifecycle`] starts the node, changes the membership (through [`write`]'s forwarding) and
//! stops it.
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
mod lifecycle;
mod server;
pub mod trace;
mod transport;
mod view;
mod wire;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_types::Timestamp;
use openraft::{Raft, RaftMetrics};
use tokio::sync::watch;

pub use admin::{ClusterStatus, MemberStatus, Role};
pub use muster_store::DEFAULT_CACHE_MIB as DEFAULT_SLED_CACHE_MIB;
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

/// Raft log entries kept behind a snapshot (a follower further behind is sent the snapshot):
/// 1,000. Fault injection for the nemesis harness: `MUSTER_TEST_LOG_KEEP` lowers it, so that a
/// follower cut off for seconds, not minutes, needs a snapshot installed (its crash points are
/// then within reach). Read once; never set it in production.
fn log_kept_after_snapshot() -> u64 {
    static KEEP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEEP.get_or_init(|| {
        std::env::var("MUSTER_TEST_LOG_KEEP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
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
    /// Also build one once this many events were applied since the last one (0: by entries
    /// only). One entry can carry 1,000 device results, so the entry count alone lets a log of
    /// millions of events pile up between snapshots, and a restart replays all of it into
    /// memory; see [`DEFAULT_SNAPSHOT_AFTER_EVENTS`].
    pub snapshot_after_events: u64,
    /// sled's page cache in bytes (see `muster_store::DEFAULT_CACHE_MIB`).
    pub sled_cache: u64,
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

/// The default of [`ClusterConfig::snapshot_after_events`]: a job over 100,000 devices applies
/// about 200,000 events (each device's dispatch and its result), so a node running such jobs
/// builds a snapshot every job or so, and a restart replays at most about this many events.
/// A registry of more devices than this raises it to one event per device (a snapshot costs
/// about a record per device; see `lifecycle::scaled`).
pub const DEFAULT_SNAPSHOT_AFTER_EVENTS: u64 = 200_000;

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
            snapshot_after_events: DEFAULT_SNAPSHOT_AFTER_EVENTS,
            sled_cache: muster_store::StoreOptions::default().cache_bytes,
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
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_domain::{Command, DeviceRegistration, Principal};
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
                tags: serde_json::json!({}).into(),
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

    /// Issue 14: entries of many events (device results come 1,000 to an entry) build a
    /// snapshot by their events, long before `snapshot_after` entries passed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_built_after_enough_events_although_few_entries_passed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = cfg(dir.path());
        config.snapshot_after = 10_000;
        config.snapshot_after_events = 500;
        let c = Cluster::start(config).await.unwrap();
        c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        let many = |batch: usize| Command::RegisterDevices {
            devices: (0..300)
                .map(|i| DeviceRegistration {
                    id: DeviceId::new(format!("b{batch}-d{i}")).unwrap(),
                    display_name: String::new(),
                    model_id: None,
                    enabled: true,
                    tags: serde_json::json!({}).into(),
                })
                .collect(),
            upsert: false,
            at: now(),
        };
        let mut last_seq = 0;
        for batch in 0..3 {
            last_seq = c.write(many(batch)).await.unwrap().last_seq;
        }
        assert!(last_seq >= 900, "{last_seq} events");
        let m = c
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.snapshot.is_some(), "a snapshot")
            .await
            .unwrap();
        let entries = m.last_applied.map(|l| l.index).unwrap_or_default();
        assert!(entries < 10, "{entries} entries applied");
        let (since, _) = c.reader().events_since_snapshot();
        assert!(since < 500, "{since} events since the snapshot");
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
