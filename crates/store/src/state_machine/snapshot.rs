//! Building, storing and installing snapshots.

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use muster_domain::State;
use openraft::storage::{RaftSnapshotBuilder, Snapshot};
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{
    read_json, Applied, Shared, StateMachine, StateUpdate, CHAIN_HEAD, FIRST_SEQ, LAST_APPLIED,
    LAST_SEQ, MEMBERSHIP,
};
use crate::chain::Hash;
use crate::codec::{from_json, to_json, u64_key};
use crate::error::{Op, RaftResult, StoreError};
use crate::types::{LogId, MusterNode, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_META: &[u8] = b"meta";
pub(crate) const SNAPSHOT_DATA: &[u8] = b"data";

/// Format version of [`SnapshotPayload`] (2: with `chain_head`).
pub(crate) const SNAPSHOT_FORMAT: u32 = 2;

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

pub(super) fn build_snapshot(shared: &Shared) -> Result<Snapshot<TypeConfig>, StoreError> {
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
pub(super) fn install_snapshot(
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

pub(super) fn current_snapshot(
    shared: &Shared,
) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
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

fn sled_tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::corrupt("transaction", "aborted"),
    }
}
