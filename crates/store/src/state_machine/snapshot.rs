//! Building, storing and installing snapshots: files in the data directory's `snapshots/`
//! folder in the format of [`crate::snapfile`], named in the `snapshot` tree.
//!
//! A snapshot is a file rather than a sled value so that it is written, sent (openraft reads the
//! leader's file in chunks at offsets) and received (into an anonymous temporary file from
//! [`begin_receiving`]) without ever being one buffer in memory; the install decodes it one
//! record at a time. Only the current snapshot's file is kept: openraft may still be sending an
//! older one to a follower, through a handle that outlives the unlinked file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use openraft::storage::{RaftSnapshotBuilder, Snapshot};
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::{read_json, Applied, AppliedMeta, Shared, StateMachine, StateUpdate};
use crate::chain::Hash;
use crate::codec::{from_json, to_json};
use crate::cold::ColdRows;
use crate::error::{Op, RaftResult, StoreError};
use crate::frame::sync_dir;
use crate::snapfile::{
    read_snapshot, read_snapshot_state, write_snapshot, Carried, SnapshotHeader, CARRIED_TREES,
};
use crate::types::{LogId, MusterNode, StorageError, StoredMembership, TypeConfig};

/// The current snapshot: serde_json of a [`Pointer`].
const SNAPSHOT_CURRENT: &[u8] = b"current";
/// Before [`SNAPSHOT_CURRENT`]: the current snapshot's openraft meta, beside
/// [`SNAPSHOT_FILE`] (both read until a snapshot is stored in the new layout).
const SNAPSHOT_META: &[u8] = b"meta";
/// Before [`SNAPSHOT_CURRENT`]: the current snapshot's file name (in `snapshots/`).
pub(crate) const SNAPSHOT_FILE: &[u8] = b"file";
/// A snapshot of format 2 (serde_json of [`SnapshotPayload`]), from releases before snapshot
/// files; `open` converts it into a file once and removes it.
pub(crate) const SNAPSHOT_DATA: &[u8] = b"data";

/// The format of a [`SnapshotPayload`] stored under [`SNAPSHOT_DATA`].
pub(crate) const SNAPSHOT_FORMAT: u32 = 2;

/// The folder of snapshot files inside a data directory.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// The current snapshot's openraft meta and file, in one value so that one insert replaces both
/// (the store writes no sled batches, see [`crate::writes`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Pointer {
    pub(crate) meta: Option<SnapshotMeta<u64, MusterNode>>,
    pub(crate) file: Option<String>,
}

impl Pointer {
    /// The stored pointer, or an older release's separate keys (a converted format-2 snapshot
    /// has a file and the meta of the release that wrote it).
    pub(crate) fn read(snapshot: &sled::Tree) -> Result<Self, StoreError> {
        if let Some(v) = snapshot.get(SNAPSHOT_CURRENT)? {
            return from_json("snapshot pointer", &v);
        }
        let file = match snapshot.get(SNAPSHOT_FILE)? {
            Some(f) => Some(
                std::str::from_utf8(&f)
                    .map_err(|_| StoreError::corrupt("snapshot", "a file name that is not UTF-8"))?
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Pointer {
            meta: read_json(snapshot, SNAPSHOT_META)?,
            file,
        })
    }

    /// Points at `file`, then drops the older layout's keys (which the pointer overrides).
    fn write(
        snapshot: &sled::Tree,
        meta: &SnapshotMeta<u64, MusterNode>,
        file: &str,
    ) -> Result<(), StoreError> {
        let pointer = Pointer {
            meta: Some(meta.clone()),
            file: Some(file.to_owned()),
        };
        snapshot.insert(SNAPSHOT_CURRENT, to_json(&pointer)?)?;
        for key in [SNAPSHOT_META, SNAPSHOT_FILE, SNAPSHOT_DATA] {
            snapshot.remove(key)?;
        }
        Ok(())
    }
}

/// Writes go through a buffer of this size; reads too.
pub(super) const IO_BUFFER: usize = 1 << 20;

/// A format-2 snapshot: serde_json of this struct in one sled value (read only, to convert it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload<S> {
    pub(crate) format: u32,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The seq of the newest event the state includes.
    pub(crate) last_seq: u64,
    /// The hash-chain link of event `last_seq` (the genesis hash when it is 0).
    pub(crate) chain_head: Hash,
    pub(crate) state: S,
}

/// A snapshot's id: its last log id, this process's count of builds, and a nonce of this build.
///
/// openraft receives a snapshot in chunks and continues a transfer whose chunks carry the same
/// id at their offsets, so two different files must never share an id. Without the nonce two
/// could: the last log id names the entry's leader, not the builder, two members may snapshot
/// at the same index, and the count restarts with the process; a follower whose transfer went
/// on with the next leader's file of that id would get half of each, and its install fail its
/// checksum. Members' files of one log id differ (cold rows are laid out as each wrote them),
/// so the builder is part of the id: the nonce hashes the data directory, the process and the
/// time of the build.
fn new_snapshot_id(last_applied: Option<&LogId>, n: u64, dir: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update(&std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    h.update(&n.to_le_bytes());
    let nonce = &h.finalize().to_hex()[..12];
    match last_applied {
        Some(l) => format!(
            "{}-{}-{}-{n}-{nonce}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("none-{n}-{nonce}"),
    }
}

/// The file name for a snapshot id: ids come from the leader, so anything but letters, digits
/// and `-` is replaced rather than trusted as a path.
fn file_name(snapshot_id: &str) -> String {
    let safe: String = snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.snap")
}

/// Makes a rename in `dir` durable.
/// Writes a snapshot file of `state` at `header` as `dir/name.tmp`, synced; returns its path
/// and size. [`publish`] gives it its name.
pub(crate) fn write_tmp(
    dir: &Path,
    name: &str,
    header: &SnapshotHeader,
    state: &muster_domain::State,
    cold: &ColdRows,
) -> Result<(PathBuf, u64), StoreError> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    write_file(&tmp, header, state, cold)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .map(|bytes| (tmp, bytes))
}

fn write_file(
    tmp: &Path,
    header: &SnapshotHeader,
    state: &muster_domain::State,
    cold: &ColdRows,
) -> Result<u64, StoreError> {
    let file = File::create(tmp)?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
    let bytes = write_snapshot(&mut out, header, state, &[Carried::Cold(cold)])?;
    let file = out
        .into_inner()
        .map_err(|e| StoreError::Io(e.into_error()))?;
    file.sync_all()?;
    Ok(bytes)
}

/// Renames a written `tmp` file to `dir/name`, durably. Callers other than `open` hold the
/// snapshot lock, so a concurrent build or install cannot delete it before it is named current.
pub(crate) fn publish(dir: &Path, tmp: &Path, name: &str) -> Result<(), StoreError> {
    std::fs::rename(tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Deletes the `.tmp` files of builds and installs a stop interrupted (at `open`, when none
/// runs).
pub(crate) fn remove_leftovers(dir: &Path) {
    let _ = crate::frame::remove_tmp_files(dir);
}

/// Reads the snapshot file `dir/name`.
pub(crate) fn read_file(
    dir: &Path,
    name: &str,
) -> Result<(SnapshotHeader, muster_domain::State), StoreError> {
    let file = File::open(dir.join(name))?;
    // The cold rows it carries are in the run files already (the file was written from them,
    // or installed into them): its entries are passed over unread.
    read_snapshot_state(BufReader::with_capacity(IO_BUFFER, file), CARRIED_TREES)
}

/// Deletes every snapshot file in `dir` but `keep` (and files being written).
fn remove_others(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name != keep && name.ends_with(".snap") {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = name, "could not delete an old snapshot file: {err}");
            }
        }
    }
}

/// Names `tmp` `file` and makes it (with `meta`) the current snapshot unless a newer one is
/// stored (then deletes it), then flushes and deletes the other files. Returns whether it
/// became the current one.
fn store_snapshot(
    shared: &Shared,
    meta: &SnapshotMeta<u64, MusterNode>,
    file: &str,
    tmp: &Path,
) -> Result<bool, StoreError> {
    let _only_one = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let current = Pointer::read(&shared.snapshot)?.meta;
    if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
        let _ = std::fs::remove_file(tmp);
        return Ok(false);
    }
    crate::crashpoint::hit(crate::crashpoint::SNAPSHOT_BUILT, &shared.meta);
    publish(&shared.snapshot_dir, tmp, file)?;
    crate::crashpoint::hit(crate::crashpoint::SNAPSHOT_PUBLISHED, &shared.meta);
    Pointer::write(&shared.snapshot, meta, file)?;
    shared.flusher.flush_blocking()?;
    shared
        .purge_gate
        .stored(meta.last_log_id.map(|l| l.index), false);
    remove_others(&shared.snapshot_dir, file);
    Ok(true)
}

/// Below the disk reserve: the snapshot openraft has already (see [`kept_snapshot`]).
fn skip_when_disk_full(shared: &Shared) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let reserve = shared.min_free_disk.load(Ordering::Relaxed);
    let free = match crate::free_space(&shared.snapshot_dir) {
        Ok(free) if reserve > 0 && free < reserve => free,
        _ => return Ok(None),
    };
    tracing::warn!(
        free_mib = free >> 20,
        reserve_mib = reserve >> 20,
        "not building a snapshot: the data directory is below its free-space reserve; \
         the log is kept until space returns"
    );
    kept_snapshot(shared).map(Some)
}

/// The current snapshot, or (with none yet) an empty one with no log id: either is what
/// openraft ignores as not newer than what it has, so a build that cannot write is no error (a
/// snapshot only shortens the log, which keeps everything until one is written).
fn kept_snapshot(shared: &Shared) -> Result<Snapshot<TypeConfig>, StoreError> {
    if let Some(current) = current_snapshot(shared)? {
        return Ok(current);
    }
    Ok(Snapshot {
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "none-skipped".into(),
        },
        snapshot: Box::new(tokio::fs::File::from_std(tempfile::tempfile()?)),
    })
}

/// Opens a snapshot file as openraft's `SnapshotData`.
fn open_data(path: &Path) -> Result<Box<tokio::fs::File>, StoreError> {
    Ok(Box::new(tokio::fs::File::from_std(File::open(path)?)))
}

/// Builds a snapshot, or keeps the current one when the disk is below its reserve or fills up
/// while this one is written (the reserve check and the write race with everything else that
/// writes; a failed build would stop the Raft core for nothing).
pub(super) fn build_snapshot(shared: &Shared) -> Result<Snapshot<TypeConfig>, StoreError> {
    if let Some(kept) = skip_when_disk_full(shared)? {
        return Ok(kept);
    }
    match build_new(shared) {
        Err(e) if e.is_disk_full() => {
            tracing::warn!(
                "not building a snapshot: the disk filled up while it was written ({e}); \
                 the log is kept until space returns"
            );
            kept_snapshot(shared)
        }
        other => other,
    }
}

fn build_new(shared: &Shared) -> Result<Snapshot<TypeConfig>, StoreError> {
    let started = std::time::Instant::now();
    // Clone under the lock, serialise outside it, so applying waits for the clone only: O(1),
    // the state's containers are copy-on-write (`muster_domain::cow`).
    let (state, header) = {
        let a = shared.read();
        (
            a.state.clone(),
            SnapshotHeader {
                last_applied: a.last_applied,
                membership: a.membership.clone(),
                last_seq: a.last_seq,
                chain_head: a.head,
            },
        )
    };
    let cloned = started.elapsed();
    let n = shared.snapshot_count.fetch_add(1, Ordering::Relaxed) + 1;
    let snapshot_id = new_snapshot_id(header.last_applied.as_ref(), n, &shared.snapshot_dir);
    let name = file_name(&snapshot_id);
    let (tmp, bytes) = write_tmp(&shared.snapshot_dir, &name, &header, &state, &shared.cold)?;
    drop(state);
    let meta = SnapshotMeta {
        last_log_id: header.last_applied,
        last_membership: header.membership,
        snapshot_id,
    };
    // Opened before it is named current: if a newer snapshot is stored already, the file is
    // deleted, and the handle still reads it.
    let data = open_data(&tmp)?;
    let current = store_snapshot(shared, &meta, &name, &tmp).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    if current {
        shared
            .snapshot_seq
            .fetch_max(header.last_seq, Ordering::Relaxed);
    }
    if let Some(m) = shared.metrics.get() {
        let r = m.raft();
        r.snapshot_builds.inc();
        r.snapshot_size
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        r.snapshot_build.observe(started.elapsed().as_secs_f64());
    }
    tracing::info!(
        snapshot_id = %meta.snapshot_id,
        last_seq = header.last_seq,
        bytes,
        clone_ms = cloned.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "built a snapshot"
    );
    Ok(Snapshot {
        meta,
        snapshot: data,
    })
}

/// Where a snapshot from the leader is received: an anonymous file in `snapshots/` (unlinked at
/// once, so an interrupted transfer leaves nothing behind), written by openraft at the offsets
/// of the chunks.
pub(super) fn begin_receiving(shared: &Shared) -> Result<Box<tokio::fs::File>, StoreError> {
    shared.purge_gate.receiving();
    std::fs::create_dir_all(&shared.snapshot_dir)?;
    let file = tempfile::tempfile_in(&shared.snapshot_dir)?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

/// Copies what it reads into `copy`: the install decodes the received file and writes the
/// snapshot file it keeps in one pass.
struct Tee<R, W> {
    from: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Replaces state, `sm_meta` and the stored snapshot with the leader's snapshot (read from
/// `received`), and drops the local events: from here on this replica's event log starts at the
/// snapshot's `last_seq + 1` (`first_seq_available`), because the events before it were never
/// sent here.
pub(super) fn install_snapshot(
    shared: &Shared,
    meta: &SnapshotMeta<u64, MusterNode>,
    mut received: File,
) -> Result<(), StoreError> {
    received.rewind()?;
    let dir = &shared.snapshot_dir;
    std::fs::create_dir_all(dir)?;
    let name = file_name(&meta.snapshot_id);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut tee = Tee {
        from: BufReader::with_capacity(IO_BUFFER, received),
        copy: BufWriter::with_capacity(IO_BUFFER, File::create(&tmp)?),
    };
    // The cold tier is replaced as it streams in (a replica installing a snapshot is behind
    // anyway; its readers may see the new rows a moment before the new state).
    let loader = std::cell::RefCell::new(shared.cold.loader());
    let result = read_snapshot(
        &mut tee,
        CARRIED_TREES,
        |_| shared.cold.clear(),
        |_, k, v| loader.borrow_mut().insert(k, v),
    )
    .and_then(|r| {
        loader.into_inner().finish()?;
        Ok(r)
    });
    let (header, state) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let file = tee
        .copy
        .into_inner()
        .map_err(|e| StoreError::Io(e.into_error()))?;
    file.sync_all()?;
    crate::crashpoint::hit(crate::crashpoint::INSTALL_TREES_LOADED, &shared.meta);

    let last_seq = header.last_seq;
    let first_seq_available = last_seq + 1;

    let _only_one = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    publish(dir, &tmp, &name)?;
    let mut guard = shared.write();

    // The pointer first, then the metadata: `open` finishes an install that stopped between
    // the two (a stored snapshot ahead of the applied record can only be an install's).
    Pointer::write(&shared.snapshot, meta, &name)?;
    crate::crashpoint::hit(crate::crashpoint::INSTALL_POINTER_WRITTEN, &shared.meta);
    let applied = AppliedMeta {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        last_seq,
        first_seq: first_seq_available,
        chain_head: header.chain_head,
    };
    applied.write(&shared.meta)?;
    // A back-fill in progress wanted history up to the old snapshot; it starts over.
    crate::backfill::forget(&shared.meta)?;
    shared.flusher.flush_blocking()?;
    crate::crashpoint::hit(crate::crashpoint::INSTALL_META_WRITTEN, &shared.meta);
    shared
        .purge_gate
        .stored(meta.last_log_id.map(|l| l.index), true);

    let old = std::mem::replace(
        &mut *guard,
        Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            last_seq,
            head: header.chain_head,
            first_seq_available,
        },
    );
    // Every local event is older than the snapshot (openraft installs only snapshots newer than
    // what was applied). If this stops half-way, `open` finishes it.
    shared.events.clear()?;
    shared.index.clear(last_seq)?;
    shared.snapshot_seq.store(last_seq, Ordering::Relaxed);
    drop(guard);
    // The old state is freed outside the lock.
    drop(old);
    remove_others(dir, &name);

    let _ = shared
        .updates
        .send(StateUpdate::SnapshotInstalled { last_seq });
    // An operator watching a lagging replica catch up sees it here: its log now starts after
    // the snapshot (earlier events are only on the members that applied them).
    tracing::info!(
        snapshot_id = %meta.snapshot_id,
        last_seq,
        "installed a snapshot from the leader; this replica's event log starts at seq {first_seq_available}"
    );
    Ok(())
}

pub(super) fn current_snapshot(
    shared: &Shared,
) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let _only_one = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Ok(match Pointer::read(&shared.snapshot)? {
        Pointer {
            meta: Some(meta),
            file: Some(name),
        } => Some(Snapshot {
            meta,
            snapshot: open_data(&shared.snapshot_dir.join(name))?,
        }),
        _ => None,
    })
}

/// The snapshot stored in a data directory whose `snapshot` tree is `snapshot` and whose
/// snapshot folder is `dir`:
/// its file, or the JSON of an older release not yet converted (read only: offline tools do not
/// write). `None` if there is none.
pub(crate) fn read_stored(
    snapshot: &sled::Tree,
    dir: &Path,
) -> Result<Option<(SnapshotHeader, muster_domain::State)>, StoreError> {
    if let Some(name) = Pointer::read(snapshot)?.file {
        return read_file(dir, &name).map(Some);
    }
    let Some(data) = snapshot.get(SNAPSHOT_DATA)? else {
        return Ok(None);
    };
    let p: SnapshotPayload<muster_domain::State> = crate::codec::from_json("snapshot", &data)?;
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
    Ok(Some((header, p.state)))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.blocking(build_snapshot).await.raft(Op::WriteSnapshot)
    }
}
