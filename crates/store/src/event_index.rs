//! Per-job and per-device indexes over the event log, so one job's (or device's) history costs
//! what that job wrote instead of a walk over the whole log. This module has the job index and
//! what both share; `device_index` has the device index, kept by a background indexer.
//!
//! Trees (keys big-endian):
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `events_by_job` | id length u16, job id, first seq u64 | count u32 |
//! | `events_by_device` | id length u16, device id, first seq u64 | the entry's further seqs, LEB128 deltas (see `device_index`) |
//!
//! A job entry names a *run*: `count` consecutive seqs from `first seq` that all belong to the
//! job (written by one command, or one chunk of a back-fill or of [`build`]). A command's events
//! of one job are usually consecutive (a thousand results are one run), so the job index costs
//! about one insert per command, written by the apply. The length prefix keeps `ab` from
//! sorting inside `a`'s keys.
//!
//! Durability follows the events (see `state_machine`): an apply writes its job entries before
//! the metadata that publishes `last_seq`, readers stop at `last_seq`, and the re-apply of an
//! interrupted entry writes the same runs again (`decide` is deterministic). Readers still check
//! each record's event against the id, so an entry that points elsewhere (it cannot, short of a
//! bug) is skipped rather than shown. A snapshot install clears both indexes with the events; a
//! back-fill (see `backfill`) writes both for what it writes.
//!
//! `sm_meta["event_index"]` says the job index is complete, in this layout. A data directory
//! written before it is indexed by [`build`] when the store opens.

use std::collections::HashMap;

use muster_domain::Event;

use crate::codec::u64_key;
use crate::device_index::DeviceIndex;
use crate::error::StoreError;
use crate::segment::raw_records;
use crate::state_machine::{decode_stored, StoredEvent};

pub(crate) const JOB_TREE: &str = "events_by_job";
pub(crate) const DEVICE_TREE: &str = "events_by_device";
/// `sm_meta` key present once the index covers every stored record.
pub(crate) const COMPLETE: &[u8] = b"event_index";
/// Version of the index layout, the value of [`COMPLETE`].
/// 2: device entries are seq lists written by the indexer (`device_index`).
const FORMAT: u8 = 2;

/// The two index trees.
#[derive(Debug, Clone)]
pub(crate) struct EventIndex {
    pub(crate) jobs: sled::Tree,
    pub(crate) devices: DeviceIndex,
}

/// How [`id_key`] orders ids: by length, then bytes (writers that sort by it write in key
/// order).
pub(crate) fn id_order(id: &str) -> (usize, &str) {
    (id.len(), id)
}

pub(crate) fn id_key(id: &str, seq: u64) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + id.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(&u64_key(seq));
    k
}

/// The first seq of a key (its last eight bytes).
pub(crate) fn key_seq(k: &[u8]) -> Result<u64, StoreError> {
    k.len()
        .checked_sub(8)
        .and_then(|at| k.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::corrupt("event index key", format!("{} bytes", k.len())))
}

fn value_count(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 4]>::try_from(v)
        .map(|b| u64::from(u32::from_be_bytes(b)))
        .map_err(|_| StoreError::corrupt("event index value", format!("{} bytes", v.len())))
}

/// The index entries of some events, collected while they are applied (or back-filled).
#[derive(Default)]
pub(crate) struct IndexBatch {
    /// `(key, run length)` in the order they were found (a later one for the same key wins).
    pub(crate) jobs: Vec<(Vec<u8>, [u8; 4])>,
}

impl IndexBatch {
    /// Adds the runs of one command's events, `events[i]` at seq `first_seq + i`.
    pub(crate) fn add_command<'e>(
        &mut self,
        first_seq: u64,
        events: impl IntoIterator<Item = &'e Event>,
    ) {
        // id -> (first seq, count) of the run still open for it.
        let mut jobs: HashMap<&str, (u64, u32)> = HashMap::new();
        for (seq, event) in (first_seq..).zip(events) {
            if let Some(job) = event.job() {
                self.extend(&mut jobs, job.as_str(), seq);
            }
        }
        for (id, (start, count)) in jobs {
            self.put(id, start, count);
        }
    }

    fn extend<'e>(&mut self, open: &mut HashMap<&'e str, (u64, u32)>, id: &'e str, seq: u64) {
        match open.get_mut(id) {
            Some((start, count)) if *start + u64::from(*count) == seq && *count < u32::MAX => {
                *count += 1;
            }
            Some(run) => {
                let (start, count) = std::mem::replace(run, (seq, 1));
                self.put(id, start, count);
            }
            None => {
                open.insert(id, (seq, 1));
            }
        }
    }

    fn put(&mut self, id: &str, start: u64, count: u32) {
        self.jobs.push((id_key(id, start), count.to_be_bytes()));
    }

    /// Inserts the entries (readers only follow them up to the applied seq, so a crash part way
    /// leaves nothing they see; the re-apply writes the same entries again).
    pub(crate) fn write(self, index: &EventIndex) -> Result<(), StoreError> {
        crate::writes::insert_all(
            &index.jobs,
            self.jobs.into_iter().map(|(k, v)| (k, v.to_vec())),
        )
    }
}

impl EventIndex {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(EventIndex {
            jobs: db.open_tree(JOB_TREE)?,
            devices: DeviceIndex::open(db.open_tree(DEVICE_TREE)?)?,
        })
    }

    /// Empties both indexes: the event log holds nothing up to `last_seq`.
    pub(crate) fn clear(&self, last_seq: u64) -> Result<(), StoreError> {
        self.jobs.clear()?;
        self.devices.reset(last_seq)
    }

    /// Up to `limit` records of `id` with `from <= seq <= to`, in seq order, read from `events`
    /// through the index.
    pub(crate) fn read_job(
        &self,
        events: &crate::event_files::EventFiles,
        id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let tree = &self.jobs;
        let lowest = id_key(id, 0);
        // A run that starts before `from` may reach into it.
        let straddling = match tree.range(lowest.clone()..id_key(id, from)).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                let start = key_seq(&k)?;
                let count = value_count(&v)?;
                (start + count > from).then_some((start, count))
            }
            None => None,
        };
        let rest = tree.range(id_key(id, from)..=id_key(id, to)).map(
            |entry| -> Result<(u64, u64), StoreError> {
                let (k, v) = entry?;
                Ok((key_seq(&k)?, value_count(&v)?))
            },
        );
        // Runs never overlap when written by applies; a back-fill resumed after a crash may
        // cut the same seqs into other runs, so a seq already read is not read again.
        let mut after = 0u64;
        for run in straddling.map(Ok).into_iter().chain(rest) {
            let (start, count) = run?;
            let first = start.max(from).max(after);
            let last = (start + count - 1).min(to);
            for r in raw_records(events, first, last) {
                let r = r?;
                let stored = decode_stored(r.seq, r.bytes())?;
                let belongs = stored.event.job().map(|j| j.as_str()) == Some(id);
                after = stored.seq + 1;
                if !belongs {
                    continue;
                }
                out.push(stored);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Whether `meta` says the index covers every stored record.
    pub(crate) fn is_complete(meta: &sled::Tree) -> Result<bool, StoreError> {
        Ok(meta.get(COMPLETE)?.is_some_and(|v| v.as_ref() == [FORMAT]))
    }

    pub(crate) fn mark_complete(meta: &sled::Tree) -> Result<(), StoreError> {
        meta.insert(COMPLETE, &[FORMAT])?;
        Ok(())
    }
}

/// Indexes every record of `events` from `from` to `to` by job (a data directory written
/// before this index layout), after clearing whatever a build that stopped half-way left, then
/// marks the index complete. The device index is emptied; its indexer reads the log in the
/// background (see `device_index`).
pub(crate) fn build(
    index: &EventIndex,
    events: &crate::event_files::EventFiles,
    meta: &sled::Tree,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    index.jobs.clear()?;
    index.devices.reset(from.saturating_sub(1))?;
    let mut batch = IndexBatch::default();
    let mut pending: Vec<Event> = Vec::new();
    let mut pending_first = from;
    let mut n = 0u64;
    for r in raw_records(events, from, to) {
        let r = r?;
        let stored = decode_stored(r.seq, r.bytes())?;
        if pending.is_empty() {
            pending_first = stored.seq;
        }
        pending.push(stored.event);
        n += 1;
        // Runs only join within a group; a few thousand events keeps each group's runs long.
        if pending.len() == 4096 {
            batch.add_command(pending_first, &pending);
            pending.clear();
            std::mem::take(&mut batch).write(index)?;
        }
    }
    batch.add_command(pending_first, &pending);
    batch.write(index)?;
    EventIndex::mark_complete(meta)?;
    // A new data directory has nothing to index: only an upgrade is worth a line.
    if n > 0 {
        tracing::info!(
            events = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "indexed the event log by job (a data directory from before this index layout); devices follow in the background"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn keys_of_one_id_do_not_interleave_with_a_longer_one() {
        let a = (id_key("a", 0), id_key("a", u64::MAX));
        let ab = id_key("ab", 5);
        assert!(!(a.0 <= ab && ab <= a.1));
        assert_eq!(key_seq(&id_key("dev-1", 42)).unwrap(), 42);
    }
}
