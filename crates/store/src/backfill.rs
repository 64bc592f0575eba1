//! Back-filling the event history a replica seeded from a snapshot never received.
//!
//! A node that installed a snapshot holds events from `first_seq_available` (the snapshot's
//! seq + 1) on. A background task (in `muster-cluster`) asks a peer for the stored records
//! before that, in chunks from seq 1 upwards, and hands each chunk to
//! [`StateReader::backfill`], which checks the hash chain from the zero hash at seq 1 on,
//! writes the records (in segments) and their index entries below `first_seq_available`, and
//! records its progress (`sm_meta`'s `backfill_next`: the next seq wanted and the link of the
//! seq before it), so a restart resumes where it stopped.
//! Readers do not see back-filled records until the last chunk is in and its last link chains
//! into the record at `first_seq_available` (or into the chain head when nothing was applied
//! since the snapshot); then `first_seq_available` becomes 1, in memory and in the applied
//! record.
//!
//! Records past `backfill_next` (a chunk written without its progress) are deleted on open like
//! other records outside the applied range. A snapshot install drops the back-fill with the
//! events (the history is then wanted up to the new snapshot). Back-filled segments are cut
//! every 256 records (`SEGMENT_MAX`), not per command: readers do not depend on where segments
//! start.

use std::sync::PoisonError;

use crate::chain::{chain_hash, Hash, GENESIS};
use crate::codec::{decode_event, decode_record, key_u64, u64_key};
use crate::error::StoreError;
use crate::event_index::IndexBatch;
use crate::segment::{raw_records, Segment, SegmentBuilder};
use crate::state_machine::{AppliedMeta, StateReader};

/// `sm_meta`: a back-fill's progress (absent: none yet): the next seq it wants (big-endian u64)
/// followed by the hash-chain link of the seq before it, in one value so that one insert moves
/// both (the store writes no sled batches, see [`crate::writes`]).
const NEXT: &[u8] = b"backfill_next";
/// `sm_meta`, releases before the progress was one value: the link, beside an 8-byte `NEXT`.
const PREV: &[u8] = b"backfill_prev";

/// The history a replica still lacks: seqs `next..=until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillNeed {
    pub next: u64,
    pub until: u64,
}

/// What a chunk handed to [`StateReader::backfill`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillStep {
    /// Stored and verified; this much is still missing.
    More(BackfillNeed),
    /// The history is complete: this replica holds seq 1 onwards.
    Done,
}

/// Records a peer sends: raw stored record bytes, as [`StateReader::history_records`] reads them.
#[derive(Debug, Clone, Default)]
pub struct HistoryChunk {
    /// The oldest seq the answering replica holds.
    pub first_seq_available: u64,
    /// Consecutive records from the asked seq on (empty when it holds none of them).
    pub records: Vec<Vec<u8>>,
}

/// The stored progress: the next seq wanted and the link before it (seq 1 and the genesis hash
/// when there is none).
fn read_progress(meta: &sled::Tree) -> Result<(u64, Hash), StoreError> {
    let Some(v) = meta.get(NEXT)? else {
        return Ok((1, GENESIS));
    };
    let bad = || StoreError::corrupt("back-fill progress", format!("{} bytes", v.len()));
    let next = key_u64("back-fill progress", v.get(..8).ok_or_else(bad)?)?;
    let prev = match v.len() {
        40 => Hash::try_from(&v[8..]).map_err(|_| bad())?,
        8 => match meta.get(PREV)? {
            Some(p) => Hash::try_from(p.as_ref())
                .map_err(|_| StoreError::corrupt("back-fill link", format!("{} bytes", p.len())))?,
            None => GENESIS,
        },
        _ => return Err(bad()),
    };
    Ok((next, prev))
}

fn write_progress(meta: &sled::Tree, next: u64, prev: &Hash) -> Result<(), StoreError> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&u64_key(next));
    v.extend_from_slice(prev);
    meta.insert(NEXT, v)?;
    meta.remove(PREV)?;
    Ok(())
}

/// Drops a back-fill's progress: the next one starts at seq 1.
pub(crate) fn forget(meta: &sled::Tree) -> Result<(), StoreError> {
    meta.remove(NEXT)?;
    meta.remove(PREV)?;
    Ok(())
}

/// The seq below which records are the back-fill's (kept by `open`), 1 when there is none.
pub(crate) fn kept_below(meta: &sled::Tree) -> Result<u64, StoreError> {
    Ok(read_progress(meta)?.0)
}

impl StateReader {
    /// The seqs this replica lacks, `None` when it holds the whole history.
    pub fn backfill_need(&self) -> Result<Option<BackfillNeed>, StoreError> {
        let first = self.shared.read().first_seq_available;
        if first <= 1 {
            return Ok(None);
        }
        let next = kept_below(&self.shared.meta)?;
        Ok(Some(BackfillNeed {
            next,
            until: first - 1,
        }))
    }

    /// Up to `limit` stored records from `from` on (the raw bytes, exactly as stored), for a
    /// peer back-filling its history. Only what this replica serves to readers: from its
    /// `first_seq_available` to its applied seq.
    pub fn history_records(&self, from: u64, limit: usize) -> Result<HistoryChunk, StoreError> {
        let (first, last) = {
            let a = self.shared.read();
            (a.first_seq_available, a.last_seq)
        };
        let mut chunk = HistoryChunk {
            first_seq_available: first,
            records: Vec::new(),
        };
        if from < first || from > last || limit == 0 {
            return Ok(chunk);
        }
        let to = from.saturating_add(limit as u64 - 1).min(last);
        for r in raw_records(&self.shared.events, from, to) {
            chunk.records.push(r?.bytes().to_vec());
        }
        Ok(chunk)
    }

    /// Checks and stores the records of a chunk (consecutive, from `need.next` on; records past
    /// `need.until` are ignored). An error leaves the stored progress as it was, except when
    /// the completed history does not chain into this replica's own records: then the whole
    /// back-fill is dropped (the peer's history is not this cluster's).
    pub fn backfill(
        &self,
        need: BackfillNeed,
        records: &[Vec<u8>],
    ) -> Result<BackfillStep, StoreError> {
        let shared = &*self.shared;
        // A snapshot install (which resets the back-fill) and a chunk never overlap.
        let _only_one = shared
            .snapshot_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.backfill_need()? {
            None => return Ok(BackfillStep::Done),
            Some(now) if now != need => return Ok(BackfillStep::More(now)),
            Some(_) => {}
        }
        let (_, mut prev) = read_progress(&shared.meta)?;
        let mut seq = need.next;
        let mut segments = SegmentBuilder::default();
        let mut written = Vec::new();
        let mut events = Vec::new();
        for bytes in records {
            if seq > need.until {
                break;
            }
            let record = decode_record(bytes)?;
            if record.seq != seq {
                return Err(StoreError::corrupt(
                    "back-filled record",
                    format!("expected seq {seq}, the peer sent {}", record.seq),
                ));
            }
            let hash = chain_hash(&prev, seq, &record.principal, &record.event);
            if record.hash != hash {
                return Err(StoreError::corrupt(
                    "back-filled record",
                    format!("the hash chain breaks at seq {seq}"),
                ));
            }
            events.push(decode_event(&record.event)?);
            if let Some(full) = segments.push(seq, bytes)? {
                written.push(full);
            }
            prev = hash;
            seq += 1;
        }
        if let Some(last) = segments.finish() {
            written.push(last);
        }
        if seq == need.next {
            return Ok(BackfillStep::More(need));
        }
        let mut index = IndexBatch::default();
        index.add_command(need.next, &events);
        // Records, then their index entries, then the progress that counts them.
        shared
            .events
            .append_history(&Segment::as_appends(&written))?;
        index.write(&shared.index)?;
        shared.index.devices.write_below(
            (need.next..)
                .zip(&events)
                .filter_map(|(s, e)| e.device().map(|d| (s, d.as_str()))),
        )?;
        write_progress(&shared.meta, seq, &prev)?;
        if seq <= need.until {
            return Ok(BackfillStep::More(BackfillNeed {
                next: seq,
                until: need.until,
            }));
        }
        self.finish_backfill(need.until + 1, prev)
    }

    /// The last link is in: check that it chains into the record at `first`, then let readers
    /// see everything from seq 1.
    fn finish_backfill(&self, first: u64, prev: Hash) -> Result<BackfillStep, StoreError> {
        let shared = &*self.shared;
        let mut applied = shared.write();
        let chains = if applied.last_seq < first {
            prev == applied.head
        } else {
            match raw_records(&shared.events, first, first).next() {
                Some(r) => {
                    let r = r?;
                    let record = decode_record(r.bytes())?;
                    record.seq == first
                        && record.hash == chain_hash(&prev, first, &record.principal, &record.event)
                }
                None => false,
            }
        };
        if !chains {
            drop(applied);
            // Drop what was written (the progress first, so that a crash part way leaves
            // records no progress counts); the next attempt starts at seq 1 again.
            forget(&shared.meta)?;
            shared.events.clear_history()?;
            return Err(StoreError::corrupt(
                "back-filled history",
                format!(
                    "seq {} does not chain into this replica's seq {first}",
                    first - 1
                ),
            ));
        }
        applied.first_seq_available = 1;
        // The record first: once it says seq 1, leftover progress means nothing.
        AppliedMeta::of(&applied).write(&shared.meta)?;
        forget(&shared.meta)?;
        drop(applied);
        shared.flusher.flush_blocking()?;
        tracing::info!(
            "event history back-fill complete: this replica holds seq 1 onwards ({} back-filled)",
            first - 1
        );
        Ok(BackfillStep::Done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The progress is one value now; an older release's two keys still read, and writing the
    /// progress drops the older link key.
    #[test]
    fn progress_reads_in_both_layouts() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let meta = db.open_tree("sm_meta").unwrap();
        assert_eq!(read_progress(&meta).unwrap(), (1, GENESIS));
        meta.insert(NEXT, &u64_key(7)).unwrap();
        meta.insert(PREV, &[3u8; 32]).unwrap();
        assert_eq!(read_progress(&meta).unwrap(), (7, [3u8; 32]));
        write_progress(&meta, 9, &[4u8; 32]).unwrap();
        assert_eq!(read_progress(&meta).unwrap(), (9, [4u8; 32]));
        assert!(!meta.contains_key(PREV).unwrap());
        meta.insert(NEXT, &[1u8; 5]).unwrap();
        assert!(read_progress(&meta).is_err());
        forget(&meta).unwrap();
        assert_eq!(kept_below(&meta).unwrap(), 1);
    }
}
