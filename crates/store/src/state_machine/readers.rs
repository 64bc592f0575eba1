//! Read access to the applied state and the event log.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use muster_domain::State;
use muster_types::{DeviceId, JobId};
use tokio::sync::broadcast;

use super::{ApplyTrace, EventLog, StateReader, StateUpdate, StoredEvent};
use crate::chain::Hash;
use crate::codec::{decode_event, decode_record, parse_principal};
use crate::error::StoreError;
use crate::segment::raw_records;
use crate::types::{LogId, StoredMembership};

impl StateReader {
    /// Runs `f` on the current state under a read lock. Keep `f` short: applying waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.read().state)
    }

    /// Like [`read`](Self::read), with the cold tier: a finished run's rows are read through
    /// it (`Run::scan_by_id` and friends), under the same lock, so state and rows agree.
    pub fn read_cold<T>(&self, f: impl FnOnce(&State, &dyn muster_domain::RunRows) -> T) -> T {
        let rows = self.shared.cold.clone();
        f(&self.shared.read().state, &rows)
    }

    /// The cold tier alone, for readers that page it outside the state's lock.
    pub fn cold(&self) -> crate::cold::ColdRows {
        self.shared.cold.clone()
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

    /// `(events applied since the current snapshot, last_seq)`: what a restart would replay
    /// on top of the snapshot. The cluster asks for a snapshot when the first grows too large
    /// (`ClusterConfig::snapshot_after_events`).
    pub fn events_since_snapshot(&self) -> (u64, u64) {
        let last_seq = self.shared.read().last_seq;
        let snapshot_seq = self
            .shared
            .snapshot_seq
            .load(std::sync::atomic::Ordering::Relaxed);
        (last_seq.saturating_sub(snapshot_seq), last_seq)
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

    fn read_job_records(
        &self,
        job: &JobId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (first, last_seq) = self.available();
        let (events, index) = (&self.shared.events, &self.shared.index);
        index.read_job(events, job.as_str(), from_seq.max(first), last_seq, limit)
    }

    fn read_device_records(
        &self,
        device: &DeviceId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (first, last_seq) = self.available();
        let (events, index) = (&self.shared.events, &self.shared.index.devices);
        index.read(
            events,
            device.as_str(),
            from_seq.max(first),
            last_seq,
            limit,
        )
    }
}

impl StateReader {
    /// The seqs readers may read: what the applied metadata covers (see `apply_entries`).
    fn available(&self) -> (u64, u64) {
        let a = self.shared.read();
        (a.first_seq_available, a.last_seq)
    }

    /// The seq up to which the per-device event index is written; device history after it
    /// comes from memory and the log (see `device_index`). For tests and status.
    pub fn device_index_watermark(&self) -> u64 {
        self.shared.index.devices.watermark()
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
