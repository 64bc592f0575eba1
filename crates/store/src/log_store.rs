//! The Raft log on sled: openraft's `RaftLogStorage` (storage-v2).
//!
//! Trees:
//! - `raft_log`: big-endian index -> entry envelope ([`crate::codec::encode_entry`]).
//! - `raft_meta`: `vote`, `committed`, `last_purged` -> serde_json of openraft's types.
//!
//! Durability: `append` inserts the entries in index order, then flushes (blocking flush on a
//! blocking thread, through the shared [`GroupFlusher`]) and only then reports the entries
//! flushed to openraft. Vote, committed and truncation are flushed before the call returns.
//! Purge is not flushed: losing a purge in a crash only leaves entries that a later purge
//! removes, and `last_purged` is written before the entries go (sled recovers a prefix of its
//! write order), so the log never looks like it has a hole.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, Vote};

use crate::codec::{decode_entry, encode_entry, from_json, to_json, u64_key};
use crate::error::{Op, RaftResult, StoreError};
use crate::flush::GroupFlusher;
use crate::purge_gate::PurgeGate;
use crate::recent::Recent;
use crate::types::{Entry, LogId, StorageError, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// openraft's log storage. Cheap to clone: clones share the same trees, and a clone is also the
/// log reader openraft asks for.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<GroupFlusher>,
    recent: Recent,
    /// Holds a purge until a snapshot being installed is stored (see [`crate::purge_gate`]).
    gate: Arc<PurgeGate>,
    /// Where append latency is recorded; `None` outside a node (tools, tests).
    metrics: Option<muster_metrics::Metrics>,
}

impl LogStore {
    pub(crate) fn open(
        db: &sled::Db,
        flusher: Arc<GroupFlusher>,
        gate: Arc<PurgeGate>,
    ) -> Result<Self, StoreError> {
        Ok(LogStore {
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher,
            recent: Recent::default(),
            gate,
            metrics: None,
        })
    }

    /// Records append-and-flush latency into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: muster_metrics::Metrics) {
        self.metrics = Some(metrics);
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, crate::recent::RecentEntries> {
        self.recent.lock()
    }

    /// The cache of decoded entries, for the state machine to tell what it applied.
    pub(crate) fn recent_entries(&self) -> Recent {
        self.recent.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
    ) -> Result<Option<T>, StoreError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(from_json("raft metadata", &bytes)?)),
            None => Ok(None),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        self.read_meta(LAST_PURGED)
    }

    /// Entries in `range`, in index order.
    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(u64_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(u64_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // sled asserts that a range is not inverted; an empty request is answered here.
        let empty = match end {
            Bound::Included(e) => u64_key(start) > e,
            Bound::Excluded(e) => u64_key(start) >= e,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        let cached_end = match end {
            Bound::Included(e) => u64::from_be_bytes(e).checked_add(1),
            Bound::Excluded(e) => Some(u64::from_be_bytes(e)),
            Bound::Unbounded => None,
        };
        if let Some(entries) = cached_end.and_then(|end| self.recent().get(start, end)) {
            return Ok(entries);
        }
        self.log
            .range((Bound::Included(u64_key(start)), end))
            .values()
            .map(|v| decode_entry(&v?))
            .collect()
    }

    /// Inserts `entries` in index order (a crash part way leaves a contiguous log, see
    /// [`crate::writes`]); returns once they are readable (not yet durable).
    async fn write_entries(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut sized = Vec::with_capacity(entries.len());
            for entry in entries {
                let bytes = encode_entry(&entry)?;
                this.log
                    .insert(u64_key(entry.log_id.index), bytes.as_slice())?;
                sized.push((entry, bytes.len()));
            }
            let evicted = this.recent().appended(sized);
            drop(evicted);
            Ok::<_, StoreError>(())
        })
        .await?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range).raft(Op::ReadLogs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().raft(Op::ReadLogs)?;
        let last_in_log = match self.log.last().raft(Op::ReadLogs)? {
            Some((_, v)) => Some(decode_entry(&v).raft(Op::ReadLogs)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_log_id: last_in_log.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.meta
            .insert(VOTE, to_json(vote).raft(Op::WriteVote)?)
            .raft(Op::WriteVote)?;
        self.flusher.flush().await.raft(Op::WriteVote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.read_meta(VOTE).raft(Op::ReadVote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        match committed {
            Some(c) => self
                .meta
                .insert(COMMITTED, to_json(&c).raft(Op::WriteLogs)?)
                .raft(Op::WriteLogs)?,
            None => self.meta.remove(COMMITTED).raft(Op::WriteLogs)?,
        };
        self.flusher.flush().await.raft(Op::WriteLogs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(COMMITTED).raft(Op::ReadLogs)
    }

    /// Writes the entries (one batch), then hands the flush and the callback to a blocking
    /// thread and returns: the entries are readable now, durable when the callback fires. The
    /// flush goes through the group flusher, so appends, votes and snapshots that want
    /// durability at the same moment share flushes instead of queueing one fsync each.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Err(e) = self.write_entries(entries).await {
            let err = e.into_raft(Op::WriteLogs);
            callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
            return Err(err);
        }
        let flusher = Arc::clone(&self.flusher);
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let result = flusher
                .flush_blocking()
                .map_err(|e| std::io::Error::other(e.to_string()));
            if let Some(m) = &metrics {
                m.raft().log_append.observe(started.elapsed().as_secs_f64());
            }
            callback.log_io_completed(result);
        });
        Ok(())
    }

    /// Deletes the entries from `log_id.index` on (a conflicting suffix), durably.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let removed = self.recent().truncate(log_id.index);
        drop(removed);
        // Highest first: a crash part way leaves a shorter log, never one with a hole.
        crate::writes::remove_descending(&self.log, u64_key(log_id.index)..).raft(Op::WriteLogs)?;
        self.flusher.flush().await.raft(Op::WriteLogs)
    }

    /// Deletes the entries up to and including `log_id.index`, recording `log_id` as purged
    /// first.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if self.last_purged().raft(Op::ReadLogs)? >= Some(log_id) {
            return Ok(());
        }
        self.gate.wait(log_id.index).await.raft(Op::WriteLogs)?;
        self.meta
            .insert(LAST_PURGED, to_json(&log_id).raft(Op::WriteLogs)?)
            .raft(Op::WriteLogs)?;
        let removed = self.recent().purge(log_id.index);
        drop(removed);
        crate::writes::remove_ascending(&self.log, ..=u64_key(log_id.index))
            .map(drop)
            .raft(Op::WriteLogs)
    }
}
