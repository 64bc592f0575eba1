//! The replicated state machine: openraft's `RaftStateMachine` over the domain's [`State`], with
//! the event log beside it.
//!
//! Trees:
//! - `events`: protobuf `muster.v1.EventRecord`s (seq, the event, its hash-chain link, see
//!   [`crate::chain`]; and the principal of the command that produced it) in segments of up to 256 consecutive records of one command, each under the
//!   big-endian seq of its first record (see [`crate::segment`]). Seqs are global, start at 1
//!   and have no gaps from `first_seq` on. Readers get the stored link with each event ([`EventLog::read_records`], and
//!   [`AppliedEvents::hashes`] in the live feed) rather than recomputing the chain.
//! - `sm_meta`: `last_applied` and `membership` (serde_json of openraft's types), `last_seq` and
//!   `first_seq` (big-endian u64), `chain_head` (the 32-byte hash of event `last_seq`; the
//!   genesis hash when there is none).
//! - `snapshot`: `meta` (serde_json `SnapshotMeta`) and `data` (the snapshot bytes, see
//!   [`SnapshotPayload`]).
//!
//! Applying a batch of entries runs `State::execute` per command and writes the new events and
//! then the new `sm_meta` (events first: one batch, or chunks written by a writer thread while
//! the apply goes on, see `EventWriter`; then the metadata as one atomic batch), so
//! `last_applied` never covers events that are not written. It does not flush: the entries are durable in the Raft log already, and after a
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

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use muster_domain::{evolve, Event, Principal, State};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, SnapshotMeta};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::broadcast;

use crate::chain::{chain_hash, to_hex, Hash, GENESIS};
use crate::codec::{
    decode_event, decode_record, encode_record, from_json, key_u64, parse_principal,
    principal_text, to_json, u64_key,
};
use crate::error::{Op, RaftResult, StoreError};
use crate::flush::GroupFlusher;
use crate::segment::{raw_records, Segment, SegmentBuilder, SEGMENT_MAX};
use crate::types::{
    AppliedRange, CommandError, Entry, LogId, MusterNode, Response, StorageError, StoredMembership,
    TypeConfig,
};

pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
pub(crate) const LAST_SEQ: &[u8] = b"last_seq";
pub(crate) const FIRST_SEQ: &[u8] = b"first_seq";
const CHAIN_HEAD: &[u8] = b"chain_head";
const SNAPSHOT_META: &[u8] = b"meta";
pub(crate) const SNAPSHOT_DATA: &[u8] = b"data";

/// Format version of [`SnapshotPayload`] (2: with `chain_head`).
pub(crate) const SNAPSHOT_FORMAT: u32 = 2;

/// How many applied batches a slow subscriber may fall behind before it sees `Lagged` and has
/// to catch up from the events tree.
const BROADCAST_CAPACITY: usize = 1024;

/// The bytes of a snapshot: serde_json of this struct.
///
/// JSON is a known cost (size and time grow with the state; a 100,000-device state is tens of
/// megabytes), accepted for now because `State` already derives serde and no compact format is
/// among the chosen dependencies. The version field lets a later format replace it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload<S> {
    pub(crate) format: u32,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The seq of the newest event the state includes.
    pub(crate) last_seq: u64,
    /// The hash-chain link of event `last_seq` ([`GENESIS`] when it is 0).
    pub(crate) chain_head: Hash,
    pub(crate) state: S,
    /// The cold tier's rows (finished runs' devices), which `state` no longer holds; absent
    /// from snapshots of builds before the cold tier (their state still held every row).
    #[serde(default)]
    pub(crate) cold: Vec<crate::cold::SnapshotRun>,
}

/// What the state machine has applied, in memory; readers share it through [`StateReader`].
#[derive(Debug)]
struct Applied {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    last_seq: u64,
    /// The hash of event `last_seq`.
    head: Hash,
    first_seq_available: u64,
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
}

#[derive(Debug)]
struct Shared {
    applied: RwLock<Applied>,
    events: sled::Tree,
    meta: sled::Tree,
    snapshot: sled::Tree,
    /// Finished runs' device rows (see [`crate::cold`]).
    cold: sled::Tree,
    flusher: Arc<GroupFlusher>,
    updates: broadcast::Sender<StateUpdate>,
    /// Serialises writes to the `snapshot` tree, so a slow build cannot overwrite a newer one.
    snapshot_lock: Mutex<()>,
    /// Makes snapshot ids unique within this process.
    snapshot_count: AtomicU64,
    /// Device outcomes and snapshot builds are recorded here once a node sets it.
    metrics: std::sync::OnceLock<muster_metrics::Metrics>,
    /// Spans to parent the apply of a command under, by the address of its `Arc<Command>`
    /// (see [`StateReader::trace_apply`]); `traced` counts them so an apply with none skips
    /// the lock.
    apply_spans: Mutex<std::collections::HashMap<usize, tracing::Span>>,
    traced: std::sync::atomic::AtomicUsize,
}

impl Shared {
    // `Applied` is replaced or updated only while the write lock is held and no code in those
    // sections panics on purpose; a poisoned lock is still read rather than turned into a panic
    // in every reader.
    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
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
    shared: Arc<Shared>,
}

impl StateReader {
    /// Runs `f` on the current state under a read lock. Keep `f` short: applying waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.read().state)
    }

    /// Like [`read`](Self::read), with the cold tier: a finished run's rows are read through
    /// it (`Run::scan_by_id` and friends), under the same lock, so state and rows agree.
    pub fn read_cold<T>(&self, f: impl FnOnce(&State, &dyn muster_domain::RunRows) -> T) -> T {
        let rows = crate::cold::ColdRows::new(self.shared.cold.clone());
        f(&self.shared.read().state, &rows)
    }

    /// The cold tier alone, for readers that page it outside the state's lock.
    pub fn cold(&self) -> crate::cold::ColdRows {
        crate::cold::ColdRows::new(self.shared.cold.clone())
    }

    /// Like [`read`](Self::read), also passing the seq of the newest event the state includes:
    /// subscribe first, then read, then skip updates up to that seq.
    pub fn read_with_seq<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let a = self.shared.read();
        f(&a.state, a.last_seq)
    }

    /// The log id of the last applied entry.
    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.read().last_applied
    }

    /// The seq of the newest applied event and its hash-chain link.
    pub fn chain_head(&self) -> (u64, Hash) {
        let a = self.shared.read();
        (a.last_seq, a.head)
    }

    /// The membership the state machine applied last (with every member's addresses).
    pub fn membership(&self) -> StoredMembership {
        self.shared.read().membership.clone()
    }

    /// Updates from now on. A receiver that falls more than a thousand commands behind gets
    /// `RecvError::Lagged` and catches up with [`EventLog::read_records`] (or
    /// [`EventLog::read_events`]).
    /// Traces the apply of `command` (this very `Arc`, as proposed on this node) as a child of
    /// `parent` until the returned guard is dropped: a span `raft.apply` for the trace exporter.
    /// Memory only, best effort: an entry read back from disk instead of the log's cache of
    /// recent entries is applied untraced. Nothing is recorded for a disabled `parent`.
    pub fn trace_apply(
        &self,
        command: &Arc<muster_domain::Command>,
        parent: tracing::Span,
    ) -> ApplyTrace {
        let key = Arc::as_ptr(command) as usize;
        if parent.is_disabled() {
            return ApplyTrace { shared: None, key };
        }
        self.shared
            .apply_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, parent);
        self.shared.traced.fetch_add(1, Ordering::Relaxed);
        ApplyTrace {
            shared: Some(Arc::clone(&self.shared)),
            key,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateUpdate> {
        self.shared.updates.subscribe()
    }
}

impl EventLog for StateReader {
    fn last_seq(&self) -> u64 {
        self.shared.read().last_seq
    }

    fn first_seq_available(&self) -> u64 {
        self.shared.read().first_seq_available
    }

    fn read_records(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // Only what the applied metadata covers (see `apply_entries`).
        let last_seq = self.shared.read().last_seq;
        if from_seq > last_seq {
            return Ok(Vec::new());
        }
        raw_records(&self.shared.events, from_seq, last_seq)
            .take(limit)
            .map(|r| {
                let r = r?;
                decode_stored(r.seq, r.bytes())
            })
            .collect()
    }
}

/// The stored record under key `seq`, checking that it is the one the key says.
pub(crate) fn decode_stored(seq: u64, bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let record = decode_record(bytes)?;
    if record.seq != seq {
        return Err(StoreError::corrupt(
            "event record",
            format!("record {} stored under seq {seq}", record.seq),
        ));
    }
    let hash = Hash::try_from(record.hash.as_slice()).map_err(|_| {
        StoreError::corrupt(
            "event record",
            format!("the hash of seq {seq} has {} bytes", record.hash.len()),
        )
    })?;
    Ok(StoredEvent {
        seq,
        event: decode_event(&record.event)?,
        hash,
        principal: parse_principal(seq, &record.principal)?,
    })
}

fn sled_tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::corrupt("transaction", "aborted"),
    }
}

pub(crate) fn read_u64(tree: &sled::Tree, key: &'static [u8]) -> Result<Option<u64>, StoreError> {
    tree.get(key)?
        .map(|v| key_u64("state machine metadata", &v))
        .transpose()
}

/// The stored chain head; absent only in a store that has applied no event yet.
pub(crate) fn read_head(meta: &sled::Tree, last_seq: u64) -> Result<Hash, StoreError> {
    match meta.get(CHAIN_HEAD)? {
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
    /// Opens the state machine's trees and restores the state: stored snapshot, then the event
    /// tail after it.
    pub(crate) fn open(db: &sled::Db, flusher: Arc<GroupFlusher>) -> Result<Self, StoreError> {
        let events = db.open_tree("events")?;
        let meta = db.open_tree("sm_meta")?;
        let snapshot = db.open_tree("snapshot")?;
        let cold = db.open_tree(crate::cold::TREE)?;

        let stored = match snapshot.get(SNAPSHOT_DATA)? {
            Some(data) => Some(from_json::<SnapshotPayload<State>>("snapshot", &data)?),
            None => None,
        };
        let last_seq = read_u64(&meta, LAST_SEQ)?.unwrap_or(0);
        let first_seq_available = read_u64(&meta, FIRST_SEQ)?.unwrap_or(1);
        let last_applied: Option<LogId> = read_json(&meta, LAST_APPLIED)?.flatten();
        let membership: Option<StoredMembership> = read_json(&meta, MEMBERSHIP)?;
        let head = read_head(&meta, last_seq)?;

        if let Some(p) = &stored {
            if p.format != SNAPSHOT_FORMAT {
                return Err(StoreError::corrupt(
                    "snapshot",
                    format!("format {} (this release reads {SNAPSHOT_FORMAT})", p.format),
                ));
            }
        }
        let (mut state, snapshot_seq, snap_applied, snap_membership, mut prev) = match stored {
            Some(p) => (
                p.state,
                p.last_seq,
                p.last_applied,
                Some(p.membership),
                p.chain_head,
            ),
            None => (State::default(), 0, None, None, GENESIS),
        };
        if snapshot_seq > last_seq || snap_applied > last_applied {
            // Cannot happen: a built snapshot only captures state whose `sm_meta` was written
            // already (apply holds the lock through its write), and an installed one is written
            // in one transaction with `sm_meta`.
            return Err(StoreError::corrupt(
                "state machine",
                format!("snapshot at seq {snapshot_seq} is ahead of the applied seq {last_seq}"),
            ));
        }
        if snapshot_seq + 1 < first_seq_available {
            return Err(StoreError::corrupt(
                "state machine",
                format!(
                    "events start at seq {first_seq_available} but the snapshot ends at {snapshot_seq}"
                ),
            ));
        }

        // Leftovers of an install that stopped between committing the snapshot and clearing the
        // old events, and records past `last_seq` from an apply that stopped before its
        // metadata (the re-apply writes them again, possibly cut into other segments).
        let mut stale = sled::Batch::default();
        let mut before = 0usize;
        for key in events.range(..u64_key(first_seq_available)).keys() {
            stale.remove(key?);
            before += 1;
        }
        let mut after = 0usize;
        for key in events.range(u64_key(last_seq.saturating_add(1))..).keys() {
            stale.remove(key?);
            after += 1;
        }
        if before + after > 0 {
            tracing::warn!(
                first_seq_available,
                last_seq,
                segments_before = before,
                segments_after = after,
                "deleting event segments outside the applied range (an interrupted snapshot \
                 install or apply; the re-apply of committed entries writes the later ones again)"
            );
        }
        events.apply_batch(stale)?;

        let mut expected = snapshot_seq + 1;
        for r in raw_records(&events, expected, last_seq) {
            let r = r?;
            let seq = r.seq;
            if seq != expected {
                return Err(StoreError::corrupt(
                    "events",
                    format!("expected seq {expected}, found {seq}"),
                ));
            }
            let record = decode_record(r.bytes())?;
            let hash = chain_hash(&prev, seq, &record.principal, &record.event);
            if record.seq != seq || record.hash != hash {
                return Err(StoreError::corrupt(
                    "events",
                    format!("the hash chain breaks at seq {seq} (run `muster audit verify`)"),
                ));
            }
            evolve(&mut state, &decode_event(&record.event)?);
            prev = hash;
            expected += 1;
        }
        if expected != last_seq + 1 {
            return Err(StoreError::corrupt(
                "events",
                format!(
                    "events end at seq {} but {last_seq} were applied",
                    expected - 1
                ),
            ));
        }
        if prev != head {
            return Err(StoreError::corrupt(
                "events",
                format!(
                    "the hash of seq {last_seq} is {} but the stored chain head is {}",
                    to_hex(&prev),
                    to_hex(&head)
                ),
            ));
        }
        // Runs that finished in the replayed tail (or in a snapshot of an older build) leave
        // the state as they did live; their rows are written again, identically.
        crate::cold::write_ops(&cold, state.spill_all())?;
        tracing::info!(
            snapshot_seq,
            replayed = last_seq - snapshot_seq,
            last_seq,
            "state machine restored"
        );

        let (updates, _) = broadcast::channel(BROADCAST_CAPACITY);
        let applied = Applied {
            state,
            last_applied,
            membership: membership.or(snap_membership).unwrap_or_default(),
            last_seq,
            head,
            first_seq_available,
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                events,
                meta,
                snapshot,
                cold,
                flusher,
                updates,
                snapshot_lock: Mutex::new(()),
                snapshot_count: AtomicU64::new(0),
                metrics: std::sync::OnceLock::new(),
                apply_spans: Mutex::default(),
                traced: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// Records device outcomes (as events are applied) and snapshot builds into `metrics`
    /// from now on; the first call wins.
    pub fn set_metrics(&self, metrics: muster_metrics::Metrics) {
        let _ = self.shared.metrics.set(metrics);
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

/// See [`StateReader::trace_apply`]; forgets the span when dropped.
#[derive(Debug)]
pub struct ApplyTrace {
    shared: Option<Arc<Shared>>,
    key: usize,
}

impl Drop for ApplyTrace {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let removed = shared
                .apply_spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.key);
            if removed.is_some() {
                shared.traced.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The `raft.apply` span of a command being applied, if one was asked for.
fn apply_span(shared: &Shared, req: &crate::types::Request, index: u64) -> Option<tracing::Span> {
    if shared.traced.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let key = Arc::as_ptr(&req.command) as usize;
    let spans = shared
        .apply_spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let parent = spans.get(&key)?;
    Some(
        tracing::info_span!(target: "muster_trace", parent: parent, "raft.apply", raft.index = index),
    )
}

/// `State::execute`, inside the command's `raft.apply` span if one was asked for.
fn execute_traced(
    shared: &Shared,
    state: &mut State,
    req: &crate::types::Request,
    index: u64,
) -> Result<Vec<Event>, muster_domain::DomainError> {
    let span = apply_span(shared, req, index);
    let _applying = span.as_ref().map(tracing::Span::enter);
    state.execute(&req.command)
}

/// Applies `entries` in order; see the module docs for the durability argument.
///
/// The write lock is held until the events and the metadata are written, so the in-memory state is
/// never ahead of what sled has (a snapshot taken under the read lock then only ever contains
/// written events). If the write fails, memory is ahead of disk; openraft treats the error as
/// fatal and stops, and a restart rebuilds from disk.
fn apply_entries(shared: &Shared, entries: Vec<Entry>) -> Result<Vec<Response>, StoreError> {
    let mut guard = shared.write();
    let applied = &mut *guard;
    let mut published = Vec::new();
    let mut responses = Vec::with_capacity(entries.len());
    // Inserting the events into sled costs about twice what deciding and evolving them does, so
    // a large apply hands its events to a writer thread in chunks while it goes on with the next
    // ones (see `EventWriter`); a small one writes them in one batch here.
    std::thread::scope(|scope| -> Result<(), StoreError> {
        let mut writer = EventWriter::new(scope, &shared.events);
        for entry in entries {
            let result = match entry.payload {
                EntryPayload::Blank => Ok(AppliedRange::empty_after(applied.last_seq)),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(AppliedRange::empty_after(applied.last_seq))
                }
                EntryPayload::Normal(req) => {
                    match execute_traced(shared, &mut applied.state, &req, entry.log_id.index) {
                        Ok(events) => {
                            // Rows of runs this command finished go to the cold tier before
                            // `last_applied` covers the command (see `crate::cold`).
                            let spilled = applied.state.spill(&events);
                            if !spilled.is_empty() {
                                crate::cold::write_ops(&shared.cold, spilled)?;
                            }
                            let first_seq = applied.last_seq + 1;
                            let mut hashes = Vec::with_capacity(events.len());
                            let principal = principal_text(&req.principal);
                            for event in &events {
                                applied.last_seq += 1;
                                let (record, hash) = encode_record(
                                    applied.last_seq,
                                    event,
                                    &principal,
                                    &applied.head,
                                );
                                writer.push(applied.last_seq, &record)?;
                                applied.head = hash;
                                hashes.push(hash);
                            }
                            writer.end_command();
                            if !events.is_empty() {
                                published.push(AppliedEvents {
                                    first_seq,
                                    events,
                                    principal: req.principal.clone(),
                                    hashes,
                                });
                            }
                            Ok(AppliedRange {
                                first_seq,
                                last_seq: applied.last_seq,
                            })
                        }
                        Err(e) => Err(CommandError::from(&e)),
                    }
                }
            };
            applied.last_applied = Some(entry.log_id);
            responses.push(Response { result });
        }
        writer.finish()
    })?;

    let mut meta_batch = sled::Batch::default();
    meta_batch.insert(LAST_APPLIED, to_json(&applied.last_applied)?);
    meta_batch.insert(MEMBERSHIP, to_json(&applied.membership)?);
    meta_batch.insert(LAST_SEQ, &u64_key(applied.last_seq));
    meta_batch.insert(CHAIN_HEAD, &applied.head);
    // Events first (every one of them is written when `finish` returns), then the metadata that
    // makes them count. A crash before the metadata leaves events past `last_seq`, which nothing
    // reads (readers stop at `last_seq`), which `open` deletes, and which the re-apply of the
    // same entries after restart writes again (`decide` is deterministic). This is
    // several times cheaper than a sled transaction over both trees, which re-buffers every
    // insert.
    shared.meta.apply_batch(meta_batch)?;
    drop(guard);

    if let Some(m) = shared.metrics.get() {
        for e in published.iter().flat_map(|p| &p.events) {
            if let Some(kind) = outcome_kind(e) {
                m.jobs().outcome(kind);
            }
        }
    }
    for events in published {
        // No subscribers is not an error.
        let _ = shared.updates.send(StateUpdate::Events(Arc::new(events)));
    }
    Ok(responses)
}

/// The `outcome` label of an event that ends a device's attempt.
fn outcome_kind(event: &muster_domain::Event) -> Option<&'static str> {
    use muster_domain::job::FailureReason;
    use muster_domain::Event;
    Some(match event {
        Event::DeviceSucceeded { .. } => "succeeded",
        Event::DeviceFailed { retry: true, .. } => "retried",
        Event::DeviceFailed { reason, .. } => match reason {
            FailureReason::DeviceError { .. } => "failed",
            FailureReason::Timeout => "timed_out",
            FailureReason::NotConnected => "not_connected",
            FailureReason::DeviceNotFound => "device_not_found",
            FailureReason::DeviceDisabled => "device_disabled",
            FailureReason::DispatchFailed { .. } => "dispatch_failed",
        },
        _ => return None,
    })
}

/// Events per sled batch once an apply has more than that many: one full segment.
const EVENT_CHUNK: usize = SEGMENT_MAX;

/// Writes an apply's event records to the `events` tree, in segments (see [`crate::segment`]).
///
/// Finished segments collect in a batch; once it holds [`EVENT_CHUNK`] records or more it goes
/// to a writer thread, started for this apply, which inserts them while the applying thread decides, evolves and encodes the
/// next ones. [`finish`](Self::finish) writes what is left (fewer than [`EVENT_CHUNK`] records
/// plus the last command's segment) on the applying thread when there is no writer thread, or
/// hands it over and waits until the writer has written all of it. Batches are written in order, so
/// the tree only ever holds a prefix of the apply's events beyond `last_seq`, exactly like a
/// crash between the events batch and the metadata batch, which the apply's durability argument
/// already covers.
struct EventWriter<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    events: &'env sled::Tree,
    segment: SegmentBuilder,
    batch: sled::Batch,
    /// Records in `batch`.
    pending: usize,
    thread: Option<WriterThread<'scope>>,
}

/// The writer thread of an [`EventWriter`]: where to send batches, and its outcome.
type WriterThread<'scope> = (
    std::sync::mpsc::SyncSender<sled::Batch>,
    std::thread::ScopedJoinHandle<'scope, Result<(), StoreError>>,
);

impl<'scope, 'env> EventWriter<'scope, 'env> {
    fn new(scope: &'scope std::thread::Scope<'scope, 'env>, events: &'env sled::Tree) -> Self {
        EventWriter {
            scope,
            events,
            segment: SegmentBuilder::default(),
            batch: sled::Batch::default(),
            pending: 0,
            thread: None,
        }
    }

    /// Adds the record of `seq` (the next seq) to the current command's segment.
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        if let Some(full) = self.segment.push(seq, record)? {
            self.add_segment(full);
        }
        Ok(())
    }

    /// Closes the current command's last segment: the next command starts its own.
    fn end_command(&mut self) {
        if let Some(last) = self.segment.finish() {
            self.add_segment(last);
        }
    }

    fn add_segment(&mut self, segment: Segment) {
        self.batch.insert(&segment.key, segment.value);
        self.pending += segment.records;
        if self.pending < EVENT_CHUNK {
            return;
        }
        self.pending = 0;
        let events = self.events;
        let (sender, _) = self.thread.get_or_insert_with(|| {
            let (sender, chunks) = std::sync::mpsc::sync_channel::<sled::Batch>(4);
            let handle = self.scope.spawn(move || {
                for chunk in chunks {
                    events.apply_batch(chunk)?;
                }
                Ok(())
            });
            (sender, handle)
        });
        // A send fails only when the writer stopped on an error, which `finish` reports.
        let _ = sender.send(std::mem::take(&mut self.batch));
    }

    /// Writes what is left and returns once every record is in the tree.
    fn finish(mut self) -> Result<(), StoreError> {
        self.end_command();
        match self.thread {
            None => Ok(self.events.apply_batch(self.batch)?),
            Some((sender, handle)) => {
                let _ = sender.send(self.batch);
                drop(sender);
                handle
                    .join()
                    .map_err(|_| StoreError::Io(std::io::Error::other("event writer panicked")))?
            }
        }
    }
}

/// Writes `meta` + `data` as the current snapshot unless a newer one is stored, then flushes.
fn store_snapshot(
    shared: &Shared,
    meta: &SnapshotMeta<u64, MusterNode>,
    data: &[u8],
) -> Result<(), StoreError> {
    let _only_one = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let current: Option<SnapshotMeta<u64, MusterNode>> =
        read_json(&shared.snapshot, SNAPSHOT_META)?;
    if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    batch.insert(SNAPSHOT_META, to_json(meta)?);
    batch.insert(SNAPSHOT_DATA, data);
    shared.snapshot.apply_batch(batch)?;
    shared.flusher.flush_blocking()
}

fn build_snapshot(shared: &Shared) -> Result<Snapshot<TypeConfig>, StoreError> {
    let started = std::time::Instant::now();
    // Clone under the lock (fast), serialise outside it (slow), so applying is not held up by
    // JSON encoding.
    let (state, last_applied, membership, last_seq, chain_head) = {
        let a = shared.read();
        (
            a.state.clone(),
            a.last_applied,
            a.membership.clone(),
            a.last_seq,
            a.head,
        )
    };
    // Outside the lock too: rows are only ever added (identically) or dropped after a job the
    // snapshot's state still has ends its retention, so rows newer than the state are harmless
    // (the follower's re-apply writes them again anyway).
    let cold = crate::cold::ColdRows::new(shared.cold.clone()).export()?;
    let data = to_json(&SnapshotPayload {
        format: SNAPSHOT_FORMAT,
        last_applied,
        membership: membership.clone(),
        last_seq,
        chain_head,
        state: &state,
        cold,
    })?;
    let n = shared.snapshot_count.fetch_add(1, Ordering::Relaxed) + 1;
    let snapshot_id = match last_applied {
        Some(l) => format!(
            "{}-{}-{}-{n}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("none-{n}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    store_snapshot(shared, &meta, &data)?;
    if let Some(m) = shared.metrics.get() {
        let r = m.raft();
        r.snapshot_builds.inc();
        r.snapshot_size
            .set(i64::try_from(data.len()).unwrap_or(i64::MAX));
        r.snapshot_build.observe(started.elapsed().as_secs_f64());
    }
    tracing::info!(
        snapshot_id = %meta.snapshot_id,
        last_seq,
        bytes = data.len(),
        "built a snapshot"
    );
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

/// Replaces state, `sm_meta` and the stored snapshot with the leader's snapshot, and drops the
/// local events: from here on this replica's event log starts at the snapshot's `last_seq + 1`
/// (`first_seq_available`), because the events before it were never sent here.
fn install_snapshot(
    shared: &Shared,
    meta: &SnapshotMeta<u64, MusterNode>,
    data: Vec<u8>,
) -> Result<(), StoreError> {
    let payload: SnapshotPayload<State> = from_json("received snapshot", &data)?;
    if payload.format != SNAPSHOT_FORMAT {
        return Err(StoreError::corrupt(
            "received snapshot",
            format!("format {}", payload.format),
        ));
    }
    let last_seq = payload.last_seq;
    let first_seq_available = last_seq + 1;
    let data_len = data.len();

    let _only_one = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut guard = shared.write();

    let mut snap_batch = sled::Batch::default();
    snap_batch.insert(SNAPSHOT_META, to_json(meta)?);
    snap_batch.insert(SNAPSHOT_DATA, data);
    let mut meta_batch = sled::Batch::default();
    meta_batch.insert(LAST_APPLIED, to_json(&meta.last_log_id)?);
    meta_batch.insert(MEMBERSHIP, to_json(&meta.last_membership)?);
    meta_batch.insert(LAST_SEQ, &u64_key(last_seq));
    meta_batch.insert(FIRST_SEQ, &u64_key(first_seq_available));
    meta_batch.insert(CHAIN_HEAD, &payload.chain_head);
    (&shared.snapshot, &shared.meta)
        .transaction(|(snap, sm_meta)| {
            snap.apply_batch(&snap_batch)?;
            sm_meta.apply_batch(&meta_batch)?;
            Ok::<_, ConflictableTransactionError<()>>(())
        })
        .map_err(sled_tx_error)?;
    shared.cold.clear()?;
    crate::cold::write_ops(
        &shared.cold,
        payload
            .cold
            .into_iter()
            .map(crate::cold::SnapshotRun::into_op)
            .collect(),
    )?;
    shared.flusher.flush_blocking()?;

    *guard = Applied {
        state: payload.state,
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        last_seq,
        head: payload.chain_head,
        first_seq_available,
    };
    // Every local event is older than the snapshot (openraft installs only snapshots newer than
    // what was applied). If this stops half-way, `open` finishes it.
    shared.events.clear()?;
    drop(guard);

    let _ = shared
        .updates
        .send(StateUpdate::SnapshotInstalled { last_seq });
    // An operator watching a lagging replica catch up sees it here: its log now starts after
    // the snapshot (earlier events are only on the members that applied them).
    tracing::info!(
        snapshot_id = %meta.snapshot_id,
        last_seq,
        bytes = data_len,
        "installed a snapshot from the leader; this replica's event log starts at seq {first_seq_available}"
    );
    Ok(())
}

fn current_snapshot(shared: &Shared) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let meta: Option<SnapshotMeta<u64, MusterNode>> = read_json(&shared.snapshot, SNAPSHOT_META)?;
    let data = shared.snapshot.get(SNAPSHOT_DATA)?;
    Ok(match (meta, data) {
        (Some(meta), Some(data)) => Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }),
        _ => None,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.blocking(build_snapshot).await.raft(Op::WriteSnapshot)
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
        self.blocking(move |shared| apply_entries(shared, entries))
            .await
            .raft(Op::WriteStateMachine)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        self.blocking(move |shared| install_snapshot(shared, &meta, data))
            .await
            .raft(Op::WriteSnapshot)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.blocking(current_snapshot).await.raft(Op::ReadSnapshot)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use muster_domain::{Command, DeviceRegistration};
    use muster_types::{DeviceId, Timestamp};
    use openraft::CommittedLeaderId;
    use serde_json::json;

    use super::*;
    use crate::types::Request;

    fn open() -> StateMachine {
        let db = sled::Config::new().temporary(true).open().unwrap();
        StateMachine::open(&db, GroupFlusher::new(db.clone())).unwrap()
    }

    /// Registers `n` devices from `from` on: one command, `n` events.
    fn register(from: usize, n: usize) -> Command {
        Command::RegisterDevices {
            devices: (from..from + n)
                .map(|i| DeviceRegistration {
                    id: DeviceId::new(format!("d{i:03}")).unwrap(),
                    display_name: format!("Device {i}"),
                    model_id: None,
                    enabled: true,
                    tags: json!({"floor": i % 3}),
                })
                .collect(),
            upsert: false,
            at: Timestamp(1_700_000_000_000 + from as i64),
        }
    }

    /// Applies one entry per command, with log indexes from `index` on.
    fn apply(sm: &StateMachine, index: u64, cmds: Vec<Command>) {
        let entries = (index..)
            .zip(cmds)
            .map(|(i, command)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Request::from(command)),
            })
            .collect();
        for r in apply_entries(&sm.shared, entries).unwrap() {
            r.result.unwrap();
        }
    }

    /// The chain recomputed from the raw stored bytes, from `prev` (the link before `from`).
    fn recomputed(sm: &StateMachine, from: u64, mut prev: Hash) -> Vec<(u64, Hash)> {
        raw_records(&sm.shared.events, from, u64::MAX)
            .map(|r| {
                let r = r.unwrap();
                let record = decode_record(r.bytes()).unwrap();
                assert_eq!(record.seq, r.seq);
                prev = chain_hash(&prev, r.seq, &record.principal, &record.event);
                (r.seq, prev)
            })
            .collect()
    }

    fn links(records: &[StoredEvent]) -> Vec<(u64, Hash)> {
        records.iter().map(|r| (r.seq, r.hash)).collect()
    }

    /// An apply of more events than one chunk writes them through the writer thread: every
    /// one is stored, in order, with the same chain as when written in one batch.
    #[test]
    fn large_applies_store_every_event_on_the_chain() {
        let sm = open();
        let reader = sm.reader();
        let n = 3 * EVENT_CHUNK + 7;
        apply(&sm, 1, vec![register(0, n), register(n, 2 * EVENT_CHUNK)]);

        let all = reader.read_records(1, usize::MAX).unwrap();
        assert_eq!(all.len(), 5 * EVENT_CHUNK + 7);
        assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
        assert_eq!(
            reader.chain_head(),
            (all.len() as u64, all[all.len() - 1].hash)
        );
        assert!(all.iter().zip(1..).all(|(r, seq)| r.seq == seq));
        // Segments of at most SEGMENT_MAX records, never shared by two commands.
        let keys: Vec<u64> = sm
            .shared
            .events
            .iter()
            .keys()
            .map(|k| key_u64("event key", &k.unwrap()).unwrap())
            .collect();
        let second = n as u64 + 1;
        let m = SEGMENT_MAX as u64;
        assert_eq!(
            keys,
            vec![1, 1 + m, 1 + 2 * m, 1 + 3 * m, second, second + m]
        );
    }

    /// Records past `last_seq` (an apply that stopped before its metadata, cut into other
    /// segments than the re-apply will cut them) are gone after a restart, and the re-apply's
    /// segments are the only ones readers see.
    #[test]
    fn restart_deletes_records_past_the_applied_seq() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let sm = StateMachine::open(&db, GroupFlusher::new(db.clone())).unwrap();
        apply(&sm, 1, vec![register(0, 5)]);
        let last = sm.reader().last_seq();
        let events = db.open_tree("events").unwrap();
        let junk = |seq: u64| {
            let (record, _) = encode_record(seq, &register_event(), "", &GENESIS);
            record
        };
        events.insert(u64_key(last + 1), junk(last + 1)).unwrap();
        events
            .insert(
                u64_key(last + 3),
                crate::segment::join_segment(&[junk(last + 3), junk(last + 4)]).unwrap(),
            )
            .unwrap();
        drop(sm);

        let sm = StateMachine::open(&db, GroupFlusher::new(db.clone())).unwrap();
        assert_eq!(events.range(u64_key(last + 1)..).count(), 0);
        apply(&sm, 2, vec![register(5, 3)]);
        let all = sm.reader().read_records(1, usize::MAX).unwrap();
        assert_eq!(all.len(), 8);
        assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
    }

    #[test]
    fn records_carry_the_chain_from_any_seq() {
        let sm = open();
        let reader = sm.reader();
        apply(&sm, 1, vec![register(0, 3), register(3, 4), register(7, 2)]);

        let all = reader.read_records(1, usize::MAX).unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
        assert_eq!(reader.chain_head(), (9, all[8].hash));
        // The events are the ones read_events returns.
        let events: Vec<(u64, Event)> = all.iter().map(|r| (r.seq, r.event.clone())).collect();
        assert_eq!(reader.read_events(1, usize::MAX).unwrap(), events);

        // Starting late reads only from there, with the same links; limits hold.
        let tail = reader.read_records(6, 2).unwrap();
        assert_eq!(tail, all[5..7].to_vec());
        assert_eq!(reader.read_records(0, 1).unwrap(), all[..1].to_vec());
        assert!(reader.read_records(10, 5).unwrap().is_empty());
    }

    #[test]
    fn the_live_feed_carries_the_stored_links() {
        let sm = open();
        let reader = sm.reader();
        let mut updates = reader.subscribe();
        apply(&sm, 1, vec![register(0, 2), register(2, 3)]);

        let mut live = Vec::new();
        while let Ok(StateUpdate::Events(applied)) = updates.try_recv() {
            assert_eq!(applied.hashes.len(), applied.events.len());
            live.extend(applied.records().map(|(seq, event, hash)| StoredEvent {
                seq,
                event: event.clone(),
                hash: *hash,
                principal: applied.principal.clone(),
            }));
        }
        assert_eq!(live, reader.read_records(1, usize::MAX).unwrap());
        assert_eq!(links(&live), recomputed(&sm, 1, GENESIS));
    }

    #[test]
    fn a_replica_seeded_from_a_snapshot_holds_the_links_after_it() {
        let leader = open();
        apply(&leader, 1, vec![register(0, 3), register(3, 2)]);
        let snapshot = build_snapshot(&leader.shared).unwrap();
        let (snap_seq, snap_head) = leader.reader().chain_head();
        assert_eq!(snap_seq, 5);

        let follower = open();
        install_snapshot(
            &follower.shared,
            &snapshot.meta,
            snapshot.snapshot.into_inner(),
        )
        .unwrap();
        let mut updates = follower.reader().subscribe();
        apply(&leader, 3, vec![register(5, 2), register(7, 3)]);
        apply(&follower, 3, vec![register(5, 2), register(7, 3)]);

        let reader = follower.reader();
        assert_eq!(reader.first_seq_available(), 6);
        let held = reader.read_records(1, usize::MAX).unwrap();
        assert_eq!(held.first().map(|r| r.seq), Some(6));
        // The same links as the leader's, continuing the chain from the snapshot's head.
        assert_eq!(links(&held), recomputed(&follower, 6, snap_head));
        assert_eq!(held, leader.reader().read_records(6, usize::MAX).unwrap());

        let mut live = Vec::new();
        while let Ok(update) = updates.try_recv() {
            if let StateUpdate::Events(applied) = update {
                live.extend(applied.records().map(|(seq, _, hash)| (seq, *hash)));
            }
        }
        assert_eq!(live, links(&held));
    }

    #[test]
    fn a_record_with_a_bad_hash_length_is_an_error() {
        let (bytes, _) = encode_record(4, &register_event(), "", &GENESIS);
        let mut record = decode_record(&bytes).unwrap();
        assert_eq!(decode_stored(4, &bytes).unwrap().seq, 4);
        assert!(decode_stored(5, &bytes).is_err());
        record.hash.pop();
        assert!(decode_stored(4, &record.encode_to_vec()).is_err());
    }

    fn register_event() -> Event {
        let mut state = State::default();
        state.execute(&register(0, 1)).unwrap().remove(0)
    }
}
