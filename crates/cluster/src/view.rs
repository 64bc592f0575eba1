//! This node's view of Raft: who leads, whether the core still runs, and the gauges `/metrics`
//! shows. Reads of openraft's metrics only; nothing here writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::{Cluster, ClusterError, MusterNode};

impl Cluster {
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
