//! muster's storage: the Raft log and the replicated state machine, on sled 0.34.
//!
//! [`Store::open`] opens (or creates) a data directory and returns the two halves openraft wants,
//! [`LogStore`] (`RaftLogStorage`) and [`StateMachine`] (`RaftStateMachine`), both implementing
//! openraft 0.9's storage-v2 traits for [`TypeConfig`]. Before handing the state machine to
//! `Raft::new`, take a [`StateReader`] from it: that is how queries read the applied state and how
//! the API's `WatchJob` and the leader's dispatcher follow applied events.
//!
//! The store never uses sled's batches or transactions: several keys are written one insert at
//! a time in an order whose every prefix recovery accepts, and values that must change together
//! share one key (see `writes` for the deadlock that rules batches out).
//!
//! One sled database holds every tree, so one flush makes everything written before it durable;
//! see `log_store` and `state_machine` for each tree and its durability rule, and `flush` for
//! the group commit that shares flushes between concurrent callers.
//!
//! On-disk layout (all integers big-endian):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `raft_log` | index u64 | entry envelope: format, log id, kind, protobuf command (format 2: after its principal) / JSON membership |
//! | `raft_meta` | `vote`, `committed`, `last_purged` | serde_json of openraft's types |
//! | `events` | seq u64 of a segment's first record | segment: up to 256 consecutive protobuf `muster.v1.EventRecord`s (seq, event, hash-chain link, principal) of one command, see [`segment`] |
//! | `sm_meta` | `applied` / `backfill_next` / `event_index` | serde_json of `AppliedMeta` (last applied log id, membership, `last_seq`, `first_seq`, chain head) / next seq u64 + link 32 bytes / format byte |
//! | `events_by_job` | id length u16, job id, first seq u64 | run length u32, see `event_index` |
//! | `events_by_device` | id length u16, device id, first seq u64 (`u64::MAX`: the open entry) / empty key | the entry's further seqs as LEB128 deltas (the open entry: its first seq u64, then those) / watermark u64, see `device_index` |
//! | `cold_rows` | (an older release's; `open` moves it into `cold/` and drops it) | finished runs' rows, now in run files, see [`cold`] |
//! | `snapshot` | `current` | serde_json of openraft's `SnapshotMeta` and the name of the current snapshot file in `snapshots/` (format 3, see `snapfile`; an older release's `meta`, `file` and JSON `data` still read) |
//!
//! Beside sled: `snapshots/` (the current snapshot file, see [`snapfile`]) and `cold/` (one file
//! per finished run's rows, see [`cold`]).
//!
//! [`chain`] describes the hash chain over the event log; readers get each event's stored link
//! through [`EventLog::read_records`] and [`AppliedEvents::hashes`]. [`audit`] reads a data
//! directory offline (verify the chain, export, replay) for `muster audit`.

pub mod audit;
mod backfill;
pub mod chain;
mod codec;
pub mod cold;
mod cold_codec;
pub mod crashpoint;
mod device_index;
mod error;
mod event_files;
mod event_index;
mod flush;
mod frame;
mod log_store;
mod purge_gate;
mod recent;
pub mod segment;
pub mod snapfile;
mod state_machine;
#[cfg(test)]
mod tmpfs;
mod types;
pub mod wire;
mod writes;

use std::path::Path;

pub use backfill::{BackfillNeed, BackfillStep, HistoryChunk};
pub use cold::ColdRows;
pub use error::StoreError;
pub use log_store::LogStore;
pub use state_machine::{
    scan_records, AppliedEvents, ApplyTrace, EventLog, StateMachine, StateReader, StateUpdate,
    StoredEvent,
};
pub use types::{
    AppliedRange, CommandError, Entry, ErrorKind, LogId, MusterNode, Request, Response,
    StorageError, StoredMembership, TypeConfig, MAX_PRINCIPAL_BYTES,
};

/// sled's page cache when the caller names none: 16 MiB (sled's own default is 1 GiB).
///
/// Everything written passes through this cache, so it fills with pages of finished jobs. A
/// heap profile of a node over 100,000-device jobs (BENCHMARKS.md, session 18) found ~70 MB of
/// sled pages from the write paths at a 64 MiB setting, filling over the first ten or so jobs,
/// so the node's memory grew with the jobs it had run; at 16 MiB those are a few MB and RSS
/// over twenty jobs stayed within ~20% of the first job's, against +76% at 64 MiB. (Pages an
/// iteration reads stay in memory at either setting, one reason the cold rows are files.) Reads
/// of the hot state
/// never go through the cache (that state is in memory); the three-node commit rate pays
/// ~5-10% for the smaller one (same section).
pub const DEFAULT_CACHE_MIB: u64 = 16;

/// How a data directory is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache in bytes (`sled::Config::cache_capacity`); see [`DEFAULT_CACHE_MIB`].
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_MIB * 1024 * 1024,
        }
    }
}

/// Bytes the file system holding `dir` has free for this process (statvfs' available blocks).
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    fs2::available_space(dir)
}

/// Entry point: opens a data directory.
#[derive(Debug)]
pub struct Store;

impl Store {
    /// Opens or creates the store in `dir` and restores the state machine (latest snapshot plus
    /// the events after it). Only one process may have a directory open at a time (sled locks
    /// it).
    pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// [`open`](Self::open) with settings other than the defaults.
    pub fn open_with(
        dir: &Path,
        options: StoreOptions,
    ) -> Result<(LogStore, StateMachine), StoreError> {
        // The snapshot file is decoded while sled opens (see `state_machine::prefetch`).
        let prefetch = state_machine::Prefetch::start(&dir.join(state_machine::SNAPSHOT_DIR));
        let started = std::time::Instant::now();
        // No periodic flush: every flush goes through the group flusher, which syncs the event
        // files first (see `event_files`).
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(None)
            .open()?;
        // sled re-reads what was written to it since it last opened: most of a long-running
        // node's restart (BENCHMARKS.md, session 20).
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "opened the sled database"
        );
        let flusher = flush::GroupFlusher::open(&db, dir)?;
        let sm = StateMachine::open_prefetched(&db, flusher.clone(), dir, prefetch)?;
        let log = LogStore::open(&db, flusher, sm.purge_gate())?;
        sm.share_recent(log.recent_entries());
        Ok((log, sm))
    }
}
