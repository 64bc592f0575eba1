//! Restoring the state machine at start: stored snapshot, then the event tail after it.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use muster_domain::{evolve, State};
use tokio::sync::broadcast;

use super::prefetch::Prefetch;
use super::snapshot::{
    publish, read_stored, remove_leftovers, write_tmp, Pointer, SnapshotPayload, SNAPSHOT_DATA,
    SNAPSHOT_FILE, SNAPSHOT_FORMAT,
};
use super::{Applied, AppliedMeta, Shared, StateMachine, BROADCAST_CAPACITY};
use crate::chain::{chain_hash, to_hex, GENESIS};
use crate::codec::{decode_event, decode_record, from_json};
use crate::error::StoreError;
use crate::event_index::{self, EventIndex};
use crate::flush::GroupFlusher;
use crate::segment::raw_records;
use crate::snapfile::SnapshotHeader;
use crate::types::StoredMembership;

impl StateMachine {
    /// Opens the state machine's trees and restores the state: stored snapshot, then the event
    /// tail after it.
    #[cfg(test)]
    pub(crate) fn open(
        db: &sled::Db,
        flusher: Arc<GroupFlusher>,
        dir: &Path,
    ) -> Result<Self, StoreError> {
        Self::open_prefetched(db, flusher, dir, None)
    }

    /// [`open`](Self::open), with the snapshot file `prefetch` may have read already.
    pub(crate) fn open_prefetched(
        db: &sled::Db,
        flusher: Arc<GroupFlusher>,
        dir: &Path,
        prefetch: Option<Prefetch>,
    ) -> Result<Self, StoreError> {
        let snapshot_dir = dir.join(super::snapshot::SNAPSHOT_DIR);
        // There from the start: the disk reserve is checked on the file system holding it.
        std::fs::create_dir_all(&snapshot_dir)?;
        let events = Arc::clone(flusher.events());
        let index = EventIndex::open(db)?;
        let meta = db.open_tree("sm_meta")?;
        let snapshot = db.open_tree("snapshot")?;
        let cold = crate::cold::ColdRows::open(dir.join(crate::cold::DIR))?;
        crate::cold::migrate(db, &cold)?;

        let (mut stored_meta, legacy) = AppliedMeta::read(&meta)?;

        let started = std::time::Instant::now();
        remove_leftovers(&snapshot_dir);
        let mut prefetched = false;
        let stored = match snapshot.get(SNAPSHOT_DATA)? {
            // An older release's JSON snapshot: converted into a file once.
            Some(data) if Pointer::read(&snapshot)?.file.is_none() => {
                Some(convert_legacy(&snapshot, &snapshot_dir, db, &cold, &data)?)
            }
            _ => {
                let current = Pointer::read(&snapshot)?.file;
                match prefetch.zip(current).and_then(|(p, name)| p.take(&name)) {
                    Some(read) => {
                        prefetched = true;
                        Some(read?)
                    }
                    None => read_stored(&snapshot, &snapshot_dir)?,
                }
            }
        };
        let (mut state, snapshot_seq, snap_applied, snap_membership, mut prev) = match stored {
            Some((h, state)) => (
                state,
                h.last_seq,
                h.last_applied,
                Some(h.membership),
                h.chain_head,
            ),
            None => (State::default(), 0, None, None, GENESIS),
        };
        if snap_applied > stored_meta.last_applied {
            // A built snapshot only captures state whose record was written before it (apply
            // holds the lock through its write, and sled recovers a prefix of its writes), so
            // this is an install that stopped between its pointer and its record: finish it.
            tracing::warn!(
                snapshot_seq,
                last_seq = stored_meta.last_seq,
                "finishing a snapshot install that stopped before its metadata"
            );
            stored_meta = AppliedMeta {
                last_applied: snap_applied,
                membership: snap_membership.clone().unwrap_or_default(),
                last_seq: snapshot_seq,
                first_seq: snapshot_seq + 1,
                chain_head: prev,
            };
            stored_meta.write(&meta)?;
            crate::backfill::forget(&meta)?;
            index.clear(snapshot_seq)?;
        } else if legacy {
            stored_meta.upgrade(&meta)?;
        }
        let AppliedMeta {
            last_applied,
            membership,
            last_seq,
            first_seq: first_seq_available,
            chain_head: head,
        } = stored_meta;
        if snapshot_seq > last_seq {
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
        // Below `kept_below`: a back-fill's verified records (see `crate::backfill`).
        events.migrate(db, first_seq_available)?;
        let mut kept_below = crate::backfill::kept_below(&meta)?.min(first_seq_available);
        // (A complete back-fill made `first_seq_available` 1: its lane is the log's start.)
        let mut before = events.drop_below(first_seq_available)?;
        if kept_below > 1 && kept_below < first_seq_available {
            // The progress counts records up to `kept_below - 1`; after a power cut the files
            // may end before them (sled made the progress durable on its own). Start over
            // rather than resume past a hole.
            let held = raw_records(&events, kept_below - 1, kept_below - 1)
                .next()
                .is_some_and(|r| r.is_ok_and(|r| r.seq == kept_below - 1));
            if !held {
                tracing::warn!(
                    kept_below,
                    "the back-filled history ends before its recorded progress; the back-fill starts over"
                );
                crate::backfill::forget(&meta)?;
                events.clear_history()?;
                kept_below = 1;
            }
        }
        if kept_below < first_seq_available {
            before += events.truncate_history_from(kept_below)?;
        }
        let after = events.truncate_after(last_seq)?;
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

        let snapshot_read = started.elapsed();
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
        if !EventIndex::is_complete(&meta)? {
            event_index::build(&index, &events, &meta, first_seq_available, last_seq)?;
        }
        // Runs that finished in the replayed tail (or in a snapshot of an older build) leave
        // the state as they did live; rows already written (the normal case: apply wrote them
        // before `last_applied`) are not written again.
        cold.restore_ops(state.spill_all())?;
        tracing::info!(
            snapshot_seq,
            replayed = last_seq - snapshot_seq,
            last_seq,
            snapshot_ms = snapshot_read.as_millis() as u64,
            prefetched,
            total_ms = started.elapsed().as_millis() as u64,
            "state machine restored"
        );

        let (updates, _) = broadcast::channel(BROADCAST_CAPACITY);
        // Subscribed before any apply, so the indexer misses nothing.
        let indexer_updates = updates.subscribe();
        let applied = Applied {
            state,
            last_applied,
            membership: if membership == StoredMembership::default() {
                snap_membership.unwrap_or_default()
            } else {
                membership
            },
            last_seq,
            head,
            first_seq_available,
        };
        let shared = Arc::new(Shared {
            applied: RwLock::new(applied),
            events,
            index,
            meta,
            snapshot,
            snapshot_dir,
            cold,
            flusher,
            updates,
            snapshot_lock: Mutex::new(()),
            snapshot_count: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(snapshot_seq),
            purge_gate: Arc::new({
                let gate = crate::purge_gate::PurgeGate::default();
                gate.stored(snap_applied.map(|l| l.index), false);
                gate
            }),
            metrics: std::sync::OnceLock::new(),
            min_free_disk: AtomicU64::new(0),
            apply_spans: Mutex::default(),
            traced: std::sync::atomic::AtomicUsize::new(0),
            recent: std::sync::OnceLock::new(),
        });
        crate::device_index::spawn_indexer(Arc::downgrade(&shared), indexer_updates)?;
        Ok(StateMachine { shared })
    }
}

/// Converts a format-2 snapshot (serde_json in the `snapshot` tree, from releases before
/// snapshot files) into a snapshot file, once: names the file in the tree and removes the JSON.
/// Returns what it held.
fn convert_legacy(
    snapshot: &sled::Tree,
    dir: &Path,
    db: &sled::Db,
    cold: &crate::cold::ColdRows,
    data: &[u8],
) -> Result<(SnapshotHeader, State), StoreError> {
    let p: SnapshotPayload<State> = from_json("snapshot", data)?;
    if p.format != SNAPSHOT_FORMAT {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("format {} (this release reads {SNAPSHOT_FORMAT})", p.format),
        ));
    }
    let header = SnapshotHeader {
        last_applied: p.last_applied,
        membership: p.membership,
        last_seq: p.last_seq,
        chain_head: p.chain_head,
    };
    let name = format!("converted-{}.snap", p.last_seq);
    let (tmp, bytes) = write_tmp(dir, &name, &header, &p.state, cold)?;
    publish(dir, &tmp, &name)?;
    // The file name first: from then on it is read instead of the JSON (the older layout's
    // `meta` stays beside it until the next snapshot is stored).
    snapshot.insert(SNAPSHOT_FILE, name.as_bytes())?;
    snapshot.remove(SNAPSHOT_DATA)?;
    db.flush()?;
    tracing::info!(
        last_seq = header.last_seq,
        json_bytes = data.len(),
        bytes,
        "converted the stored JSON snapshot (format 2) into a snapshot file"
    );
    Ok((header, p.state))
}
