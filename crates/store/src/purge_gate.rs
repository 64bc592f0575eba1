//! Holds a follower's log purge until the snapshot it makes room for is stored.
//!
//! openraft 0.9 installs a snapshot from the leader by handing it to the state machine and, in
//! the same step, purging the log up to it (`install_full_snapshot`); nothing orders the two. A
//! purge that reached the disk before the install, on a node stopped in between, left a log that
//! ends after its stored snapshot with nothing in between, and openraft refused every start
//! (`purge_upto <= snapshot_last_log_id`; found by the nemesis with crash points). Dropping the
//! purged entries' record at start instead would lower the log this node has promised to the
//! cluster (its vote could then elect a leader without committed entries), so the purge waits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::StoreError;

/// How long a purge waits for a snapshot install before it fails (which stops the Raft core:
/// an install that takes longer has failed in all likelihood, and the log stays whole).
const WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub(crate) struct PurgeGate {
    /// A snapshot from the leader is being received or installed.
    installing: AtomicBool,
    /// One past the last log index the stored snapshot covers (0: none).
    stored_end: AtomicU64,
}

impl PurgeGate {
    /// The first chunk of a snapshot from the leader arrived.
    pub(crate) fn receiving(&self) {
        self.installing.store(true, Ordering::SeqCst);
    }

    /// A snapshot up to log index `index` is stored (built here or installed).
    pub(crate) fn stored(&self, index: Option<u64>, installed: bool) {
        if let Some(i) = index {
            self.stored_end.fetch_max(i + 1, Ordering::SeqCst);
        }
        if installed {
            self.installing.store(false, Ordering::SeqCst);
        }
    }

    fn holds(&self, upto: u64) -> bool {
        self.installing.load(Ordering::SeqCst) && self.stored_end.load(Ordering::SeqCst) <= upto
    }

    /// Returns once a purge up to log index `upto` may go to disk: at once unless a snapshot is
    /// being installed that has not been stored that far yet.
    pub(crate) async fn wait(&self, upto: u64) -> Result<(), StoreError> {
        if !self.holds(upto) {
            return Ok(());
        }
        tracing::debug!(upto, "log purge waits for the snapshot being installed");
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.holds(upto) {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "a log purge up to index {upto} waited {WAIT:?} for the snapshot being \
                     installed to be stored"
                ))));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_purge_past_the_stored_snapshot_waits_only_while_one_is_installed() {
        let gate = Arc::new(PurgeGate::default());
        // No install: purges go (openraft's own suite purges logs no snapshot covers).
        gate.wait(10).await.unwrap();

        gate.stored(Some(4), false);
        gate.receiving();
        gate.wait(3).await.unwrap();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait(10).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the purge went before the install");
        gate.stored(Some(10), true);
        waiting.await.unwrap().unwrap();
    }
}
