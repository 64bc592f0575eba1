//! A stand-in for the dispatcher until the MQTT worker pool is wired in: on the leader, it
//! proposes `Advance` when something is due and marks ready devices dispatched, so jobs start,
//! batches roll and (since nothing is sent) devices time out by the core's own rules.

use std::time::Duration;

use muster_cluster::{now, Cluster};
use muster_domain::{actions, Action, Command};
use muster_types::Timestamp;
use tokio::sync::watch;

const MAX_DISPATCH: usize = 1000;

pub(crate) async fn run(cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let mut updates = cluster.reader().subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let mut next: Option<Timestamp> = None;
        if cluster.is_leader() {
            let t = now();
            let todo = cluster.reader().read(|s| actions(s, t, MAX_DISPATCH));
            for a in todo {
                let cmd = match a {
                    Action::Advance => Command::Advance { at: now() },
                    Action::Dispatch { job, run, devices } => Command::MarkDispatched {
                        job,
                        run,
                        devices,
                        at: now(),
                    },
                    Action::WakeAt(at) => {
                        next = Some(at);
                        continue;
                    }
                    // With no broker nothing reaches a device: the deadline ends the call.
                    Action::Send(_) | Action::Invoke(_) | Action::PushDesired(_) => continue,
                };
                if let Err(e) = cluster.write_if_leader(cmd).await {
                    tracing::debug!("ticker: {e}");
                }
            }
        }
        let wait = next
            .map(|n| Duration::from_millis((n.millis() - now().millis()).clamp(1, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = updates.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
            }
            _ = stop.changed() => {}
        }
    }
}
