//! Leader-only work: the dispatcher runs while this node is the Raft leader and stops when it
//! is not, and the [`ClusterHost`] is what it sees of the node.
//!
//! Without MQTT brokers configured (no `--mqtt-url`, no `--dev`), the leader still advances
//! time: it proposes `Advance` when the core says something is due and marks ready devices
//! dispatched, so schedules, deadlines and timeouts keep working and nothing silently stalls;
//! no device is reached in that mode, so method attempts end as timed out.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use muster_cluster::{Cluster, ClusterError, StateUpdate};
use muster_dispatch::{DispatchConfig, Dispatcher, Host, HostError, Update};
use muster_domain::{Command, State};
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;

/// [`Host`] over the Raft node and its state reader.
#[derive(Debug, Clone)]
pub(crate) struct ClusterHost {
    pub(crate) cluster: Cluster,
}

impl Host for ClusterHost {
    async fn propose(&self, cmd: Command) -> Result<(), HostError> {
        // Only as leader: a deposed leader's dispatcher must not push its work to the next one.
        match self.cluster.write_if_leader(cmd).await {
            Ok(_) => Ok(()),
            Err(ClusterError::Rejected(e)) => Err(HostError::Rejected(e.message)),
            Err(ClusterError::NotLeader { .. }) => Err(HostError::NotLeader),
            Err(e) => Err(HostError::Other(e.to_string())),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        self.cluster.reader().read_with_seq(f)
    }

    fn now(&self) -> muster_types::Timestamp {
        muster_cluster::now()
    }

    fn adopt_span(&self, job: &muster_types::JobId, span: tracing::Span) -> tracing::Span {
        self.cluster.job_traces().adopt(job, span)
    }

    fn updates(&self) -> BoxStream<'static, Update> {
        BroadcastStream::new(self.cluster.reader().subscribe())
            .map(|u| match u {
                Ok(StateUpdate::Events(_)) => Update::Applied,
                Ok(StateUpdate::SnapshotInstalled { .. }) | Err(_) => Update::Resync,
            })
            .boxed()
    }
}

/// Runs the dispatcher (or the broker-less ticker) whenever this node leads, until `stop`.
pub(crate) async fn run(
    cluster: Cluster,
    dispatch: DispatchConfig,
    retention: muster_domain::Retention,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = cluster.metrics();
    loop {
        if *stop.borrow() {
            return;
        }
        // A restarted former leader may believe it leads for a moment, until it hears of a
        // newer term: start leader work only once a quorum has confirmed the leadership.
        if cluster.is_leader() && cluster.confirm_leadership().await.is_ok() {
            tracing::info!(node = cluster.id(), "leader: starting the dispatcher");
            let (lost_tx, lost_rx) = watch::channel(false);
            let watcher = {
                let (cluster, mut metrics, mut stop) =
                    (cluster.clone(), cluster.metrics(), stop.clone());
                async move {
                    loop {
                        if !cluster.is_leader() || *stop.borrow() {
                            let _ = lost_tx.send(true);
                            return;
                        }
                        tokio::select! {
                            r = metrics.changed() => if r.is_err() { let _ = lost_tx.send(true); return; },
                            _ = stop.changed() => {}
                        }
                    }
                }
            };
            let ended = {
                let mut rx = lost_rx.clone();
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                }
            };
            let work = async {
                if dispatch.brokers.is_empty() {
                    crate::ticker::run(cluster.clone(), lost_rx.clone()).await;
                } else if let Err(e) = Dispatcher::run_with_metrics(
                    ClusterHost {
                        cluster: cluster.clone(),
                    },
                    dispatch.clone(),
                    cluster.telemetry().clone(),
                    ended,
                )
                .await
                {
                    tracing::error!("dispatcher cannot run: {e}");
                }
            };
            let retain = crate::retention::run(cluster.clone(), retention, lost_rx.clone());
            tokio::join!(watcher, work, retain);
            tracing::info!(node = cluster.id(), "dispatcher stopped");
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return; },
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
