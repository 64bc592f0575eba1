//! Back-filling the event history a replica seeded from a snapshot never received.
//!
//! A node that installed a snapshot holds events from `first_seq_available` (the snapshot's
//! seq + 1) on. A background task (in `muster-cluster`) asks a peer for the stored records
//! before that, in chunks from seq 1 upwards, and hands each chunk to
//! [`StateReader::backfill`], which checks the hash chain from the zero hash at seq 1 on,
//! writes the records (in segments) and their index entries below `first_seq_available`, and
//! records its progress (`sm_meta`: `backfill_next`, the next seq wanted, and
//! `backfill_prev`, the link of the seq before it), so a restart resumes where it stopped.
//! Readers do not see back-filled records until the last chunk is in and its last link chains
//! into the record at `first_seq_available` (or into the chain head when nothing was applied
//! since the snapshot); then `first_seq_available` becomes 1, in memory and in `sm_meta`.
//!
//! Records past `backfill_next` (a chunk written without its progress) are deleted on open like
//! other records outside the applied range. A snapshot install drops the back-fill with the
//! events (the history is then wanted up to the new snapshot). Back-filled segments are cut
//! every 256 records (`SEGMENT_MAX`), not per command: readers do not depend on where segments
//! start.

use std::sync::PoisonError;

use crate::chain::{chain_hash, Hash, GENESIS};
use crate::codec::{decode_event, decode_record, u64_key};
use crate::error::StoreError;
use crate::event_index::IndexBatch;
use crate::segment::{raw_records, SegmentBuilder};
use crate::state_machine::{read_u64, StateReader, FIRST_SEQ};

/// `sm_meta`: the next seq a back-fill wants (absent: 1).
pub(crate) const NEXT: &[u8] = b"backfill_next";
/// `sm_meta`: the hash-chain link of seq `NEXT - 1` (absent: the zero hash).
pub(crate) const PREV: &[u8] = b"backfill_prev";

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

fn read_prev(meta: &sled::Tree) -> Result<Hash, StoreError> {
    match meta.get(PREV)? {
        Some(v) => Hash::try_from(v.as_ref())
            .map_err(|_| StoreError::corrupt("back-fill link", format!("{} bytes", v.len()))),
        None => Ok(GENESIS),
    }
}

/// The seq below which records are the back-fill's (kept by `open`), 1 when there is none.
pub(crate) fn kept_below(meta: &sled::Tree) -> Result<u64, StoreError> {
    Ok(read_u64(meta, NEXT)?.unwrap_or(1))
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
        let mut prev = read_prev(&shared.meta)?;
        let mut seq = need.next;
        let mut segments = SegmentBuilder::default();
        let mut batch = sled::Batch::default();
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
                batch.insert(&full.key, full.value);
            }
            prev = hash;
            seq += 1;
        }
        if let Some(last) = segments.finish() {
            batch.insert(&last.key, last.value);
        }
        if seq == need.next {
            return Ok(BackfillStep::More(need));
        }
        let mut index = IndexBatch::default();
        index.add_command(need.next, &events);
        // Records, then their index entries, then the progress that counts them.
        shared.events.apply_batch(batch)?;
        index.write(&shared.index)?;
        shared.index.devices.write_below(
            (need.next..)
                .zip(&events)
                .filter_map(|(s, e)| e.device().map(|d| (s, d.as_str()))),
        )?;
        let mut progress = sled::Batch::default();
        progress.insert(NEXT, &u64_key(seq));
        progress.insert(PREV, &prev);
        shared.meta.apply_batch(progress)?;
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
            // Drop what was written; the next attempt starts at seq 1 again.
            let mut stale = sled::Batch::default();
            for key in shared.events.range(..u64_key(first)).keys() {
                stale.remove(key?);
            }
            shared.events.apply_batch(stale)?;
            let mut reset = sled::Batch::default();
            reset.remove(NEXT);
            reset.remove(PREV);
            shared.meta.apply_batch(reset)?;
            return Err(StoreError::corrupt(
                "back-filled history",
                format!(
                    "seq {} does not chain into this replica's seq {first}",
                    first - 1
                ),
            ));
        }
        let mut done = sled::Batch::default();
        done.insert(FIRST_SEQ, &u64_key(1));
        done.remove(NEXT);
        done.remove(PREV);
        shared.meta.apply_batch(done)?;
        applied.first_seq_available = 1;
        drop(applied);
        shared.flusher.flush_blocking()?;
        tracing::info!(
            "event history back-fill complete: this replica holds seq 1 onwards ({} back-filled)",
            first - 1
        );
        Ok(BackfillStep::Done)
    }
}
