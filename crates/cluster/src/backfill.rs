//! The background back-fill of event history a member that joined from a snapshot lacks (see
//! `muster_store`'s `backfill` module for the checks and the storage).
//!
//! Every node runs [`run`]: while its event log starts after seq 1 it asks the other members,
//! one after another, for the records it lacks ([`HISTORY_MAX`] at a time, from the oldest
//! missing seq up) over the peer-only `History` RPC, and hands each chunk to the store, which
//! verifies the hash chain before writing anything. A member that lacks those records too (it
//! joined from a snapshot itself), does not answer, or sends a chunk that does not verify is
//! skipped for the next; when none helps, it tries again a few seconds later. Progress is in
//! the store, so a restart resumes; `muster cluster status` shows each member's oldest held
//! seq (`historyFromSeq`), 1 once the back-fill is done.

use std::time::Duration;

use muster_store::{BackfillNeed, BackfillStep};

use crate::wire::HISTORY_MAX;
use crate::Cluster;

/// How long to wait before looking again when there is nothing to do or nobody could help.
const IDLE: Duration = Duration::from_secs(2);
/// How long one `History` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs until Raft stops.
pub(crate) async fn run(cluster: Cluster) {
    let mut raft = cluster.raft().metrics();
    let mut announced = false;
    loop {
        if !run_once(&cluster, &mut announced).await {
            // Nothing to do or nobody could help: wait, unless Raft stops meanwhile.
            let deadline = tokio::time::sleep(IDLE);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    changed = raft.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// One pass over the members; `true` when it made progress (and should go on at once).
async fn run_once(cluster: &Cluster, announced: &mut bool) -> bool {
    let reader = cluster.reader().clone();
    let need = match tokio::task::spawn_blocking(move || reader.backfill_need()).await {
        Ok(Ok(Some(need))) => need,
        Ok(Ok(None)) => return false,
        Ok(Err(e)) => {
            tracing::error!("event history back-fill: reading progress: {e}");
            return false;
        }
        Err(_) => return false,
    };
    if !*announced {
        *announced = true;
        tracing::info!(
            from = need.next,
            until = need.until,
            "this member joined from a snapshot: back-filling the event history before seq {} from the other members",
            need.until + 1
        );
    }
    let peers: Vec<(u64, String)> = cluster
        .reader()
        .membership()
        .membership()
        .nodes()
        .filter(|(id, n)| **id != cluster.id() && !n.peer_addr.is_empty())
        .map(|(id, n)| (*id, n.peer_addr.clone()))
        .collect();
    for (peer, addr) in peers {
        match from_peer(cluster, peer, &addr, need).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::warn!(peer, "event history back-fill: {e}; trying another member"),
        }
    }
    false
}

/// Back-fills from one member while it helps: `Ok(true)` after progress.
async fn from_peer(
    cluster: &Cluster,
    peer: u64,
    addr: &str,
    mut need: BackfillNeed,
) -> Result<bool, String> {
    let mut progressed = false;
    loop {
        let chunk = cluster
            .forwarder
            .history(addr, need.next, HISTORY_MAX, CALL_TIMEOUT)
            .await?;
        if chunk.records.is_empty() {
            if !progressed {
                tracing::debug!(
                    peer,
                    held_from = chunk.first_seq_available,
                    want = need.next,
                    "event history back-fill: this member does not hold the seqs wanted"
                );
            }
            return Ok(progressed);
        }
        let reader = cluster.reader().clone();
        let step = tokio::task::spawn_blocking(move || reader.backfill(need, &chunk.records))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("node {peer}'s records: {e}"))?;
        match step {
            BackfillStep::Done => return Ok(true),
            BackfillStep::More(next) => {
                if next.next == need.next {
                    return Ok(progressed);
                }
                // A line every ~64k events, so a long back-fill shows it moves.
                if next.next / 65_536 != need.next / 65_536 {
                    tracing::info!(
                        peer,
                        next = next.next,
                        until = next.until,
                        "event history back-fill in progress"
                    );
                }
                progressed = true;
                need = next;
            }
        }
    }
}
