//! The replicated state machine: openraft's `RaftStateMachine` over the domain's [`State`], with
//! the event log beside it.
//!
//! Where things are:
//! - the event files (`DATA/events/`, see [`crate::event_files`]): protobuf `muster.v1.EventRecord`s (seq, the event, its hash-chain link, see
//!   [`crate::chain`]; and the principal of the command that produced it) in segments of up to 256 consecutive records of one command, each under the
//!   big-endian seq of its first record (see [`crate::segment`]). Seqs are global, start at 1
//!   and have no gaps from `first_seq` on. Readers get the stored link with each event ([`EventLog::read_records`], and
//!   [`AppliedEvents::hashes`] in the live feed) rather than recomputing the chain.
//! - sled tree `sm_meta`: `applied`, serde_json of [`AppliedMeta`]: `last_applied` and `membership`
//!   (openraft's types), `last_seq` and `first_seq`, `chain_head` (the hash of event
//!   `last_seq`; the genesis hash when there is none), in one value so that one insert moves
//!   them together (see `meta`).
//! - sled tree `snapshot`: `meta` (serde_json `SnapshotMeta`) and `file` (the name of the current snapshot
//!   file in the data directory's `snapshots/`, see [`crate::snapfile`] and `snapshot`); `data`
//!   only in a directory of an older release (a format-2 JSON [`SnapshotPayload`]), converted
//!   into a file and removed by `open`.
//!
//! Applying a batch of entries runs `State::execute` per command and writes the new events and
//! then the new `applied` record (events first: appended to the event files a chunk at a time,
//! see `EventWriter`; then the record, one insert), so `last_applied` never covers events that
//! are not written (and every sled flush syncs the event files first). It does not flush: the entries are durable in the Raft log already, and after a
//! crash openraft re-applies the committed entries after `last_applied` (it reads `committed`
//! from the log store), which re-creates the same events with the same seqs because `decide`
//! is deterministic. Snapshots and installed snapshots are flushed, because openraft purges the
//! log behind them.
//!
//! Restart = snapshot + event tail: [`StateMachine::open`] loads the stored snapshot (if any)
//! and replays the events after the snapshot's `last_seq` with `evolve` (never `decide`: the
//! events are facts, not requests), up to `sm_meta.last_seq`, checking the hash chain from the
//! snapshot's head to `sm_meta.chain_head` on the way: a damaged or edited log stops the node
//! with an error naming the seq instead of serving a state it cannot vouch for.

mod apply;
mod meta;
mod prefetch;
mod readers;
mod recovery;
mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use muster_domain::{Event, Principal, State};
use muster_types::{DeviceId, JobId};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{OptionalSend, SnapshotMeta};
use tokio::sync::broadcast;

use crate::chain::{Hash, GENESIS};
use crate::codec::{from_json, key_u64};
use crate::error::{Op, RaftResult, StoreError};
use crate::event_index::EventIndex;
use crate::flush::GroupFlusher;
use crate::types::{
    Entry, LogId, MusterNode, Response, StorageError, StoredMembership, TypeConfig,
};

use apply::apply_entries;
pub use apply::ApplyTrace;
pub(crate) use prefetch::Prefetch;
pub(crate) use readers::decode_stored;
use snapshot::{begin_receiving, current_snapshot, install_snapshot};
pub(crate) use snapshot::{read_stored, SNAPSHOT_DIR};

pub(crate) use meta::AppliedMeta;

/// How many applied batches a slow subscriber may fall behind before it sees `Lagged` and has
/// to catch up from the event files. The channel holds every batch some subscriber has not read
/// yet, so this bounds memory too: at 1,024 the device indexer, behind a million-device import
/// of 5,000-device batches, kept ~640,000 registrations alive (~200 MB at the import's peak).
const BROADCAST_CAPACITY: usize = 64;

/// What the state machine has applied, in memory; readers share it through [`StateReader`].
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) last_seq: u64,
    /// The hash of event `last_seq`.
    pub(crate) head: Hash,
    pub(crate) first_seq_available: u64,
}

/// A change subscribers of [`StateReader::subscribe`] are told about, in apply order.
#[derive(Debug, Clone)]
pub enum StateUpdate {
    /// One accepted command's events (never empty).
    Events(Arc<AppliedEvents>),
    /// A snapshot from the leader replaced the whole state; events before it were not seen here.
    /// A follower of the event stream must re-read the state.
    SnapshotInstalled { last_seq: u64 },
}

/// The events one accepted command appended, with their seqs and hash-chain links.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEvents {
    pub first_seq: u64,
    pub events: Vec<Event>,
    /// Who the command was written on behalf of; stored with each of its events.
    pub principal: Principal,
    /// The hash-chain link of each event (`hashes[i]` belongs to `events[i]`), exactly as the
    /// apply wrote it into the event's record (see [`crate::chain`]). Carried so a follower of
    /// the live feed can pass an event's link on without hashing the log from seq 1 itself.
    pub hashes: Vec<Hash>,
}

impl AppliedEvents {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64 - 1
    }

    /// `(seq, event)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Event)> {
        (self.first_seq..).zip(self.events.iter())
    }

    /// `(seq, event, hash)` triples: the events as [`EventLog::read_records`] reads them back
    /// (each one's principal is [`principal`](Self::principal)).
    pub fn records(&self) -> impl Iterator<Item = (u64, &Event, &Hash)> {
        self.iter()
            .zip(self.hashes.iter())
            .map(|((seq, event), hash)| (seq, event, hash))
    }
}

/// One stored event: its seq, the event, the hash-chain link stored with it, and who the command
/// that produced it was written on behalf of (`System` for records written before principals
/// existed).
///
/// The hash is the one the apply computed and wrote into the record (see [`crate::chain`]),
/// read back rather than recomputed: recomputing needs the previous link, hence the whole log
/// from seq 1, which a reader starting at a late seq would have to hash through and which a
/// replica seeded from a snapshot does not even hold. Reading does not check the chain
/// (`Store::open` checks the tail after the snapshot; `muster audit verify` checks all of it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub event: Event,
    pub hash: Hash,
    pub principal: Principal,
}

/// Read access to the event log, whatever engine holds it.
///
/// The design keeps storage behind the openraft traits and this one, so that audit, export and
/// catch-up code does not depend on sled.
pub trait EventLog {
    /// The seq of the newest event, 0 if there is none.
    fn last_seq(&self) -> u64;
    /// The oldest seq this replica holds. 1 unless the replica was seeded from a leader's
    /// snapshot, in which case the events before it were never stored here.
    fn first_seq_available(&self) -> u64;
    /// Up to `limit` stored events with seq >= `from_seq`, in order, each with its stored
    /// hash-chain link ([`StoredEvent`]), so a reader can start anywhere at or after
    /// [`first_seq_available`](Self::first_seq_available) and still hand out each event's link.
    fn read_records(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;
    /// Up to `limit` events with seq >= `from_seq`, in order: [`read_records`](Self::read_records)
    /// without the hashes, for readers that do not show them.
    fn read_events(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        Ok(self
            .read_records(from_seq, limit)?
            .into_iter()
            .map(|r| (r.seq, r.event))
            .collect())
    }
    /// Up to `limit` stored events of `job` with seq >= `from_seq`, in order. The store reads
    /// them through its per-job index (cost: what the job wrote); this default walks the log.
    fn read_job_records(
        &self,
        job: &JobId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        scan_records(self, from_seq, limit, |e| e.job() == Some(job))
    }
    /// Like [`read_job_records`](Self::read_job_records), for one device's events.
    fn read_device_records(
        &self,
        device: &DeviceId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        scan_records(self, from_seq, limit, |e| e.device() == Some(device))
    }
}

/// Up to `limit` records from `from_seq` on whose event `keep`s, walking the whole log.
pub fn scan_records<L: EventLog + ?Sized>(
    log: &L,
    from_seq: u64,
    limit: usize,
    keep: impl Fn(&Event) -> bool,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    let mut from = from_seq.max(log.first_seq_available());
    while out.len() < limit {
        let chunk = log.read_records(from, 1024)?;
        let Some(last) = chunk.last().map(|r| r.seq) else {
            break;
        };
        from = last + 1;
        out.extend(chunk.into_iter().filter(|r| keep(&r.event)));
    }
    out.truncate(limit);
    Ok(out)
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) applied: RwLock<Applied>,
    /// The event log's segments (see [`crate::event_files`]).
    pub(crate) events: Arc<crate::event_files::EventFiles>,
    /// Per-job and per-device entries over `events` (see [`crate::event_index`]).
    pub(crate) index: EventIndex,
    pub(crate) meta: sled::Tree,
    pub(crate) snapshot: sled::Tree,
    /// Finished runs' device rows (see [`crate::cold`]).
    pub(crate) cold: crate::cold::ColdRows,
    /// The data directory's `snapshots/` folder.
    pub(crate) snapshot_dir: std::path::PathBuf,
    pub(crate) flusher: Arc<GroupFlusher>,
    pub(crate) updates: broadcast::Sender<StateUpdate>,
    /// Serialises writes to the `snapshot` tree, so a slow build cannot overwrite a newer one.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Makes snapshot ids unique within this process.
    pub(crate) snapshot_count: AtomicU64,
    /// The `last_seq` of the current snapshot (built, installed or loaded at open; 0 with none):
    /// how many events a restart would replay is `last_seq` minus this, see
    /// [`StateReader::events_since_snapshot`].
    pub(crate) snapshot_seq: AtomicU64,
    /// Told when a snapshot from the leader starts arriving and when one is stored, for the log
    /// store's purges (see [`crate::purge_gate`]).
    pub(crate) purge_gate: Arc<crate::purge_gate::PurgeGate>,
    /// Device outcomes and snapshot builds are recorded here once a node sets it.
    pub(crate) metrics: std::sync::OnceLock<muster_metrics::Metrics>,
    /// Free bytes below which no snapshot is written (0: none); see [`StateMachine::set_min_free_disk`].
    pub(crate) min_free_disk: AtomicU64,
    /// Spans to parent the apply of a command under, by the address of its `Arc<Command>`
    /// (see [`StateReader::trace_apply`]); `traced` counts them so an apply with none skips
    /// the lock.
    pub(crate) apply_spans: Mutex<std::collections::HashMap<usize, tracing::Span>>,
    pub(crate) traced: std::sync::atomic::AtomicUsize,
    /// The log store's cache of decoded entries, told what each apply applied (see
    /// [`crate::recent::RecentEntries::applied`]); unset outside a node's store.
    pub(crate) recent: std::sync::OnceLock<crate::recent::Recent>,
}

impl Shared {
    // `Applied` is replaced or updated only while the write lock is held and no code in those
    // sections panics on purpose; a poisoned lock is still read rather than turned into a panic
    // in every reader.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The openraft state machine. Hand it to `Raft::new`; keep a [`StateReader`] (from
/// [`StateMachine::reader`]) for queries first.
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// A cheap, cloneable handle for reading the applied state and following the event log.
#[derive(Debug, Clone)]
pub struct StateReader {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) fn read_u64(tree: &sled::Tree, key: &'static [u8]) -> Result<Option<u64>, StoreError> {
    tree.get(key)?
        .map(|v| key_u64("state machine metadata", &v))
        .transpose()
}

/// The stored chain head; absent only in a store that has applied no event yet.
fn read_head(meta: &sled::Tree, last_seq: u64) -> Result<Hash, StoreError> {
    match meta.get(meta::CHAIN_HEAD)? {
        Some(v) => Hash::try_from(v.as_ref())
            .map_err(|_| StoreError::corrupt("chain head", format!("{} bytes", v.len()))),
        None if last_seq == 0 => Ok(GENESIS),
        None => Err(StoreError::corrupt(
            "state machine metadata",
            "no hash-chain head: the data directory was written by a release without the hash chain",
        )),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &'static [u8],
) -> Result<Option<T>, StoreError> {
    tree.get(key)?
        .map(|v| from_json("state machine metadata", &v))
        .transpose()
}

impl StateMachine {
    /// Records device outcomes (as events are applied) and snapshot builds into `metrics`
    /// from now on; the first call wins.
    pub fn set_metrics(&self, metrics: muster_metrics::Metrics) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// The gate the log store's purges pass (see [`crate::purge_gate`]).
    pub(crate) fn purge_gate(&self) -> Arc<crate::purge_gate::PurgeGate> {
        self.shared.purge_gate.clone()
    }

    /// Tells the log store's cache what each apply applied from now on.
    pub(crate) fn share_recent(&self, recent: crate::recent::Recent) {
        // Set once, by `Store::open_with`, right after both halves are opened.
        let _ = self.shared.recent.set(recent);
    }

    /// The node's disk reserve: while the data directory has less free space, a snapshot
    /// openraft asks for is not written (sled and openraft cannot recover from a failed write:
    /// the node would stop). The current snapshot is answered instead, which openraft ignores
    /// as not newer, and asks again after later applies.
    pub fn set_min_free_disk(&self, bytes: u64) {
        self.shared.min_free_disk.store(bytes, Ordering::Relaxed);
    }

    /// The handle the rest of the node reads state and events through.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared)).await?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id.index);
        let responses = self
            .blocking(move |shared| apply_entries(shared, entries))
            .await
            .raft(Op::WriteStateMachine)?;
        if let (Some(recent), Some(last)) = (self.shared.recent.get(), last) {
            let removed = recent.lock().applied(last);
            drop(removed);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        self.blocking(begin_receiving).await.raft(Op::WriteSnapshot)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MusterNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let meta = meta.clone();
        let file = snapshot.into_std().await;
        self.blocking(move |shared| install_snapshot(shared, &meta, file))
            .await
            .raft(Op::WriteSnapshot)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.blocking(current_snapshot).await.raft(Op::ReadSnapshot)
    }
}
