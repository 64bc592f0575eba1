//! Starting a node (opening its store, forming or joining the cluster), changing the
//! membership, and stopping. Changes go to the leader through the write path's forwarding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{Raft, SnapshotPolicy};
use tokio::sync::watch;

use crate::forward::{Forward, Forwarder};
use crate::{
    admin, backfill, millis, transport, Cluster, ClusterConfig, ClusterError, ClusterStatus,
    Metrics, MusterNode, MusterRaft, Network, Store, StoreError,
};

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
        let options = muster_store::StoreOptions {
            cache_bytes: cfg.sled_cache,
        };
        let (mut log, sm) = open_store(&cfg.data_dir, options).await?;
        log.set_metrics(cfg.metrics.clone());
        sm.set_metrics(cfg.metrics.clone());
        sm.set_min_free_disk(cfg.min_free_disk);
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: "muster".into(),
            heartbeat_interval: millis(cfg.heartbeat),
            election_timeout_min: millis(cfg.election_min),
            election_timeout_max: millis(cfg.election_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after),
            max_in_snapshot_log_to_keep: crate::log_kept_after_snapshot(),
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
            forwarder: Forwarder::new(dialer),
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
        if cfg.snapshot_after_events > 0 {
            tokio::spawn(snapshot_by_events(
                cluster.raft.clone(),
                cluster.reader.clone(),
                cfg.snapshot_after_events,
            ));
        }
        Ok(cluster)
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

/// The second snapshot bound beside openraft's own (`snapshot_after` entries): asks Raft for a
/// snapshot once `threshold` events were applied since the current one, and since this last
/// asked (a request while a build runs is dropped by openraft; one that a full disk turned
/// down is not repeated before another `threshold` events). Checked whenever Raft's metrics
/// change, which every apply does; runs until Raft stops.
async fn snapshot_by_events(raft: MusterRaft, reader: muster_store::StateReader, threshold: u64) {
    let mut metrics = raft.metrics();
    let mut asked_at = 0;
    while metrics.changed().await.is_ok() {
        let (since_snapshot, last_seq) = reader.events_since_snapshot();
        let since_asked = last_seq.saturating_sub(asked_at);
        if !snapshot_due(since_snapshot, since_asked, threshold) {
            continue;
        }
        let devices = reader.read(|s| s.registry.devices.len() as u64);
        if !snapshot_due(since_snapshot, since_asked, scaled(threshold, devices)) {
            continue;
        }
        asked_at = last_seq;
        tracing::debug!(since_snapshot, last_seq, "asking for a snapshot by events");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// The event threshold for a registry of `devices`: at least one event per registered device.
/// A snapshot writes about a record per device, so asking sooner spends more on snapshots than
/// a restart would spend replaying the events they replace: at a million devices, ten
/// snapshots during one million-device job took a fifth of the node's CPU (BENCHMARKS.md,
/// session 13). 0 stays off.
fn scaled(threshold: u64, devices: u64) -> u64 {
    if threshold == 0 {
        0
    } else {
        threshold.max(devices)
    }
}

/// Whether enough events were applied for another snapshot: `threshold` since the current
/// snapshot and since the last request.
fn snapshot_due(since_snapshot: u64, since_asked: u64, threshold: u64) -> bool {
    threshold > 0 && since_snapshot >= threshold && since_asked >= threshold
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
    options: muster_store::StoreOptions,
) -> Result<(muster_store::LogStore, muster_store::StateMachine), ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || Store::open_with(&d, options))
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

#[cfg(test)]
mod tests {
    use super::{scaled, snapshot_due};

    #[test]
    fn a_snapshot_is_due_after_threshold_events_since_the_last_one_and_the_last_request() {
        assert!(!snapshot_due(99, 1_000, 100));
        assert!(snapshot_due(100, 100, 100));
        // Asked 50 events ago (a build was running, or the disk was full): not again yet.
        assert!(!snapshot_due(150, 50, 100));
        assert!(!snapshot_due(u64::MAX, u64::MAX, 0));
    }

    #[test]
    fn a_large_registry_raises_the_threshold_to_one_event_per_device() {
        assert_eq!(scaled(200_000, 50_000), 200_000);
        assert_eq!(scaled(200_000, 1_000_000), 1_000_000);
        assert_eq!(scaled(0, 1_000_000), 0, "off stays off");
        assert!(!snapshot_due(500_000, 500_000, scaled(200_000, 1_000_000)));
    }
}
