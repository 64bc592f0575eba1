//! The cold tier: finished runs' per-device rows (see `muster_domain::cold`), one file per
//! run in the data directory's `cold/` ([`file`]).
//!
//! A run's rows are stored in chunks, each under a key that starts with the job id, a NUL byte
//! (ids never contain one) and the run (u32, big-endian), then a tag:
//!
//! | key after `job \0 run` | value (see [`crate::cold_codec`]) |
//! | --- | --- |
//! | `p` chunk number (u32) | the rows of positions 256 * chunk.., run order |
//! | `i` first device id of the chunk | up to 256 `(position, id)`, by id |
//!
//! `i` chunks page a run's devices in id order (the REST list, IoT Hub's `devices.jobs`) by
//! looking each row up in its `p` chunk; `p` chunks page in run order (gRPC `ListJobDevices`,
//! whose page token is a position). A row is stored once. The keys are those of the sled tree
//! `cold_rows` of earlier releases, and of a snapshot's cold section; `open` moves such a
//! tree's runs into files once.
//!
//! Rows are written by the apply that finished their run, before `last_applied` moves, so a
//! crash in between only leaves a run the re-apply writes again, byte for byte; a run file is
//! synced and renamed into place, so one that exists is whole. Chunks older releases wrote
//! (JSON; `i` chunks with whole rows) still read.

pub(crate) mod file;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use muster_domain::{ColdOp, CowVec, DeviceRun, DomainError, RunRows};
use muster_types::{DeviceId, JobId, RunId};

use crate::cold_codec::{decode_rows, encode_index, encode_rows, row_at, IdChunk};
use crate::StoreError;
use file::{RunFile, RunName, RunWriter};

/// The cold tier's directory in a data directory.
pub(crate) const DIR: &str = "cold";
/// The sled tree earlier releases kept the rows in (and the name of a snapshot's cold section).
pub(crate) const TREE: &str = "cold_rows";
const BY_ID: u8 = b'i';
const BY_POSITION: u8 = b'p';
/// Rows per stored chunk.
const CHUNK: usize = 256;

fn job_prefix(job: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.as_str().len() + 6);
    k.extend_from_slice(job.as_str().as_bytes());
    k.push(0);
    k
}

fn run_prefix(job: &JobId, run: RunId, tag: u8) -> Vec<u8> {
    let mut k = run_key(job, run);
    k.push(tag);
    k
}

/// The prefix every key of one run starts with (`job \0 run`).
pub(crate) fn run_key(job: &JobId, run: RunId) -> Vec<u8> {
    let mut k = job_prefix(job);
    k.extend_from_slice(&run.0.to_be_bytes());
    k
}

/// The run prefix ([`run_key`]) of a stored key, and whether the key is a position chunk's.
pub(crate) fn key_run(key: &[u8]) -> Option<(&[u8], bool)> {
    let end = key.iter().position(|b| *b == 0)? + 5;
    let tag = *key.get(end)?;
    Some((&key[..end], tag == BY_POSITION))
}

/// How many position chunks a run of `rows` rows is stored in.
pub(crate) fn position_chunks(rows: u32) -> u64 {
    u64::from(rows).div_ceil(CHUNK as u64)
}

fn id_key(job: &JobId, run: RunId, device: &DeviceId) -> Vec<u8> {
    let mut k = run_prefix(job, run, BY_ID);
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

fn position_key(job: &JobId, run: RunId, chunk: u32) -> Vec<u8> {
    let mut k = run_prefix(job, run, BY_POSITION);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// The cold tier: the run files in the data directory's `cold/` (see [`file`]), and a few
/// opened ones for readers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ColdRows {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Runs opened last, newest last: a reader paging through a run opens it once.
    opened: Mutex<VecDeque<(RunName, Arc<RunFile>)>>,
}

/// Runs kept open for readers (each holds its chunks' keys and offsets: ~0.5 MB for a run of a
/// million devices).
const OPENED: usize = 8;

impl ColdRows {
    /// The cold tier in `dir`, created if missing; `.tmp` files of writes a stop interrupted
    /// are removed.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)?;
        crate::frame::remove_tmp_files(&dir)?;
        Ok(Self::at(dir))
    }

    /// The run files in `dir`, for tools and tests that read a data directory's `cold/`.
    pub fn open_dir(dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self::at(dir.to_path_buf()))
    }

    /// The cold tier in `dir`, as it is (for reading a data directory offline).
    pub(crate) fn at(dir: PathBuf) -> Self {
        ColdRows {
            inner: Arc::new(Inner {
                dir,
                opened: Mutex::default(),
            }),
        }
    }

    fn forget(&self, pred: impl Fn(&RunName) -> bool) {
        self.inner
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(name, _)| !pred(name));
    }

    /// The opened run file of `job`'s `run`; `None` if there is none.
    fn run(&self, job: &JobId, run: RunId) -> Result<Option<Arc<RunFile>>, StoreError> {
        let name: RunName = (job.as_str().as_bytes().to_vec(), run.0);
        let mut opened = self
            .inner
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = opened
            .iter()
            .position(|(n, _)| *n == name)
            .and_then(|i| opened.remove(i))
        {
            let f = entry.1.clone();
            opened.push_back(entry);
            return Ok(Some(f));
        }
        // Opened under the lock: a write replacing the file waits, so it cannot be cached
        // stale after the write forgot it.
        let path = self.inner.dir.join(file::file_name(&name.0, name.1));
        let f = match RunFile::open(&path, &run_key(job, run)) {
            Ok(f) => Arc::new(f),
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if opened.len() == OPENED {
            opened.pop_front();
        }
        opened.push_back((name, f.clone()));
        Ok(Some(f))
    }

    /// Makes the changes `ops` describe, in order; writing a run that is there already
    /// rewrites the same bytes. Returns how many rows were written.
    pub(crate) fn write_ops(&self, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
        self.write(ops, false)
    }

    /// [`write_ops`](Self::write_ops) for a restore: a run whose file is there (so whole) is
    /// not written again.
    pub(crate) fn restore_ops(&self, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
        self.write(ops, true)
    }

    fn write(&self, ops: Vec<ColdOp>, skip_written: bool) -> Result<usize, StoreError> {
        let dir = &self.inner.dir;
        let mut n = 0;
        let mut changed = false;
        for op in ops {
            match op {
                ColdOp::Write { job, run, rows } => {
                    if rows.is_empty() {
                        continue;
                    }
                    let id = job.as_str().as_bytes();
                    if skip_written && dir.join(file::file_name(id, run.0)).exists() {
                        continue;
                    }
                    let mut w = RunWriter::create(dir, id, run.0)?;
                    for (key, value) in run_entries(&job, run, &rows) {
                        w.entry(&key, &value)?;
                    }
                    let name: RunName = (id.to_vec(), run.0);
                    let _opened = self
                        .inner
                        .opened
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    w.finish()?;
                    drop(_opened);
                    self.forget(|r| *r == name);
                    n += rows.len();
                    changed = true;
                }
                ColdOp::DropJob { job } => {
                    let prefix = file::job_file_prefix(job.as_str().as_bytes());
                    for e in std::fs::read_dir(dir)? {
                        let e = e?;
                        if e.file_name()
                            .to_str()
                            .is_some_and(|n| n.starts_with(&prefix))
                        {
                            std::fs::remove_file(e.path())?;
                            changed = true;
                        }
                    }
                    let id = job.as_str().as_bytes().to_vec();
                    self.forget(|(j, _)| *j == id);
                }
            }
        }
        if changed {
            crate::frame::sync_dir(dir)?;
        }
        Ok(n)
    }

    /// Removes every run file (an install replaces the cold tier with the snapshot's).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        for path in file::list(&self.inner.dir)?.into_values() {
            std::fs::remove_file(path)?;
        }
        self.forget(|_| true);
        crate::frame::sync_dir(&self.inner.dir)
    }

    /// Writes entries that arrive in key order (a snapshot's cold section, or the sled tree of
    /// an older release) into run files.
    pub(crate) fn loader(&self) -> Loader<'_> {
        Loader {
            rows: self,
            current: None,
            runs: 0,
        }
    }

    /// Copies every run file's entry frames, in key order, into `out`: the cold section of a
    /// snapshot. Returns the frames and bytes copied.
    pub(crate) fn copy_frames(
        &self,
        out: &mut impl std::io::Write,
    ) -> Result<(u64, u64), StoreError> {
        let (mut frames, mut bytes) = (0, 0);
        for path in file::list(&self.inner.dir)?.into_values() {
            if let Some((f, b)) = file::copy_frames(&path, out)? {
                frames += f;
                bytes += b;
            }
        }
        Ok((frames, bytes))
    }

    /// How many runs are stored.
    pub fn runs(&self) -> Result<usize, StoreError> {
        Ok(file::list(&self.inner.dir)?.len())
    }
}

/// Moves the rows an older release kept in sled's `cold_rows` tree into run files, once: the
/// files are written and synced before the tree is emptied, so a stop in between only means
/// doing it again. Returns how many runs were moved.
pub(crate) fn migrate(db: &sled::Db, rows: &ColdRows) -> Result<usize, StoreError> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == TREE.as_bytes())
    {
        return Ok(0);
    }
    let tree = db.open_tree(TREE)?;
    if tree.is_empty() {
        db.drop_tree(TREE)?;
        return Ok(0);
    }
    let mut loader = rows.loader();
    for kv in tree.iter() {
        let (k, v) = kv?;
        loader.insert(&k, &v)?;
    }
    let runs = loader.runs;
    loader.finish()?;
    db.drop_tree(TREE)?;
    db.flush()?;
    tracing::info!(
        runs,
        "moved the cold rows of an older release from sled into run files"
    );
    Ok(runs)
}

/// See [`ColdRows::loader`].
pub(crate) struct Loader<'a> {
    rows: &'a ColdRows,
    current: Option<(Vec<u8>, RunWriter)>,
    runs: usize,
}

impl Loader<'_> {
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (run, _) = key_run(key)
            .ok_or_else(|| StoreError::corrupt("cold rows", "a key that names no run"))?;
        if self
            .current
            .as_ref()
            .is_none_or(|(r, _)| r.as_slice() != run)
        {
            self.close()?;
            let (job, number) = split_run_key(run)?;
            let w = RunWriter::create(&self.rows.inner.dir, &job, number)?;
            self.current = Some((run.to_vec(), w));
        }
        if let Some((_, w)) = &mut self.current {
            w.entry(key, value)?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some((run, w)) = self.current.take() {
            let name = split_run_key(&run)?;
            w.finish()?;
            self.rows.forget(|r| *r == name);
            self.runs += 1;
        }
        Ok(())
    }

    /// Names the last run's file and makes the names durable.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        self.close()?;
        crate::frame::sync_dir(&self.rows.inner.dir)
    }
}

/// The job id and run number of a run prefix ([`run_key`]).
fn split_run_key(run: &[u8]) -> Result<RunName, StoreError> {
    let bad = || StoreError::corrupt("cold rows", "a key that names no run");
    let job_len = run.len().checked_sub(5).ok_or_else(bad)?;
    let number: [u8; 4] = run
        .get(job_len + 1..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok((run[..job_len].to_vec(), u32::from_be_bytes(number)))
}

/// A run's entries in key order: id chunks (by first id), then position chunks.
fn run_entries<'a>(
    job: &'a JobId,
    run: RunId,
    rows: &'a CowVec<DeviceRun>,
) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a {
    let by_id = by_id(rows.iter());
    let ids: Vec<(Vec<u8>, Vec<u8>)> = by_id
        .chunks(CHUNK)
        .map(|chunk| {
            let first = &chunk[0].1.device;
            let index = encode_index(chunk.iter().map(|(p, r)| (*p, &r.device)));
            (id_key(job, run, first), index)
        })
        .collect();
    let positions = (0..position_chunks(rows.len() as u32)).map(move |c| {
        let chunk = rows.iter_from(c as usize * CHUNK).take(CHUNK);
        (position_key(job, run, c as u32), encode_rows(chunk))
    });
    ids.into_iter().chain(positions)
}

/// A run's rows with their positions, in id order (what the id chunks list).
fn by_id<'a>(rows: impl Iterator<Item = &'a DeviceRun>) -> Vec<(u32, &'a DeviceRun)> {
    let mut out: Vec<(u32, &DeviceRun)> = rows.enumerate().map(|(p, r)| (p as u32, r)).collect();
    out.sort_by(|a, b| a.1.device.cmp(&b.1.device));
    out
}

fn cold_err(e: StoreError) -> DomainError {
    DomainError::ColdRows(e.to_string())
}

/// Reads rows by position for a walk in id order, keeping the last position chunk fetched: a
/// run's devices mostly join it in id order, so consecutive ids mostly share a chunk.
struct ByPosition<'a> {
    file: &'a RunFile,
    last: Option<(u32, Vec<u8>)>,
}

impl<'a> ByPosition<'a> {
    fn new(file: &'a RunFile) -> Self {
        ByPosition { file, last: None }
    }

    fn row(&mut self, position: u32, device: &DeviceId) -> Result<DeviceRun, DomainError> {
        let chunk = position / CHUNK as u32;
        let bytes = match &self.last {
            Some((c, bytes)) if *c == chunk => bytes,
            _ => {
                let key = position_suffix(chunk);
                let i = self
                    .file
                    .last_at_or_before(&key)
                    .filter(|i| self.file.key(*i) == key.as_slice())
                    .ok_or_else(|| missing(device, position))?;
                let bytes = self.file.value(i).map_err(cold_err)?;
                &self.last.insert((chunk, bytes)).1
            }
        };
        row_at(bytes, (position % CHUNK as u32) as usize)
            .map_err(cold_err)?
            .filter(|row| row.device == *device)
            .ok_or_else(|| missing(device, position))
    }
}

fn missing(device: &DeviceId, position: u32) -> DomainError {
    cold_err(StoreError::corrupt(
        "cold rows",
        format!("the id index puts {device} at position {position}, which holds no such row"),
    ))
}

fn id_suffix(device: &DeviceId) -> Vec<u8> {
    let mut k = vec![BY_ID];
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

fn position_suffix(chunk: u32) -> Vec<u8> {
    let mut k = vec![BY_POSITION];
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

impl RunRows for ColdRows {
    fn scan_by_id(
        &self,
        job: &JobId,
        run: RunId,
        after: Option<&DeviceId>,
        visit: &mut dyn FnMut(DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        let Some(file) = self.run(job, run).map_err(cold_err)? else {
            return Ok(());
        };
        // Start at the chunk holding `after` (or the first), skip what is not after it.
        let first_id = file.first_at_or_after(&[BY_ID]);
        let start = match after {
            Some(a) => file
                .last_at_or_before(&id_suffix(a))
                .filter(|i| *i >= first_id)
                .unwrap_or(first_id),
            None => first_id,
        };
        let mut rows = ByPosition::new(&file);
        let is_after = |d: &DeviceId| after.is_none_or(|a| d > a);
        for i in start..file.len() {
            if file.key(i).first() != Some(&BY_ID) {
                break;
            }
            let value = file.value(i).map_err(cold_err)?;
            match IdChunk::decode(&value).map_err(cold_err)? {
                IdChunk::Rows(chunk) => {
                    for (_, row) in chunk {
                        if is_after(&row.device) && !visit(row) {
                            return Ok(());
                        }
                    }
                }
                IdChunk::Index(chunk) => {
                    for (position, device) in chunk {
                        if is_after(&device) && !visit(rows.row(position, &device)?) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_by_position(
        &self,
        job: &JobId,
        run: RunId,
        from: u32,
        visit: &mut dyn FnMut(u32, DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        let Some(file) = self.run(job, run).map_err(cold_err)? else {
            return Ok(());
        };
        let first = from / CHUNK as u32;
        for i in file.first_at_or_after(&position_suffix(first))..file.len() {
            let key = file.key(i);
            let Some(c) = key
                .strip_prefix(&[BY_POSITION])
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            else {
                break;
            };
            let base = u32::from_be_bytes(c) * CHUNK as u32;
            let value = file.value(i).map_err(cold_err)?;
            for (j, row) in decode_rows(&value)
                .map_err(cold_err)?
                .into_iter()
                .enumerate()
            {
                let pos = base + j as u32;
                if pos < from {
                    continue;
                }
                if !visit(pos, row) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn get(
        &self,
        job: &JobId,
        run: RunId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRun>, DomainError> {
        let Some(file) = self.run(job, run).map_err(cold_err)? else {
            return Ok(None);
        };
        let Some(i) = file
            .last_at_or_before(&id_suffix(device))
            .filter(|i| file.key(*i).first() == Some(&BY_ID))
        else {
            return Ok(None);
        };
        let bytes = file.value(i).map_err(cold_err)?;
        match IdChunk::decode(&bytes).map_err(cold_err)? {
            IdChunk::Rows(rows) => Ok(rows
                .binary_search_by(|(_, r)| r.device.cmp(device))
                .ok()
                .and_then(|i| rows.into_iter().nth(i))
                .map(|(_, r)| r)),
            IdChunk::Index(pairs) => match pairs.binary_search_by(|(_, d)| d.cmp(device)) {
                Ok(i) => ByPosition::new(&file).row(pairs[i].0, device).map(Some),
                Err(_) => Ok(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_domain::{DeviceStatus, MemRows};

    fn row(i: usize) -> DeviceRun {
        DeviceRun {
            device: DeviceId::new(format!("d-{:04}", (i * 7919) % 1000)).unwrap(),
            batch: 0,
            status: DeviceStatus::Succeeded,
            attempts: 1,
            ready_since: None,
            dispatched_at: None,
            finished_at: None,
            last_error: None,
            response: None,
        }
    }

    fn ids(rows: &dyn RunRows, job: &JobId, after: Option<&DeviceId>) -> Vec<DeviceRun> {
        let mut out = Vec::new();
        rows.scan_by_id(job, RunId(1), after, &mut |r| {
            out.push(r);
            true
        })
        .unwrap();
        out
    }

    fn positions(rows: &dyn RunRows, job: &JobId, from: u32) -> Vec<(u32, DeviceRun)> {
        let mut out = Vec::new();
        rows.scan_by_position(job, RunId(1), from, &mut |p, r| {
            out.push((p, r));
            true
        })
        .unwrap();
        out
    }

    fn store() -> (tempfile::TempDir, ColdRows) {
        let tmp = tempfile::tempdir().unwrap();
        let cold = ColdRows::open(tmp.path().join("cold")).unwrap();
        (tmp, cold)
    }

    /// The chunked layout answers every read as the in-memory one does, across chunk edges,
    /// and a dropped job is gone.
    #[test]
    fn chunks_read_like_memory() {
        let (_tmp, cold) = store();
        let job = JobId::new("j").unwrap();
        let other = JobId::new("j2").unwrap();
        let rows: Vec<DeviceRun> = (0..600).map(row).collect();
        let ops = vec![
            ColdOp::Write {
                job: job.clone(),
                run: RunId(1),
                rows: rows.clone().into(),
            },
            ColdOp::Write {
                job: other.clone(),
                run: RunId(1),
                rows: rows[..3].to_vec().into(),
            },
        ];
        let mut mem = MemRows::default();
        mem.absorb(ops.clone());
        assert_eq!(cold.write_ops(ops.clone()).unwrap(), 603);
        assert_eq!(cold.restore_ops(ops).unwrap(), 0, "already written");
        assert_eq!(ids(&cold, &job, None), ids(&mem, &job, None));
        for a in [0, 1, 255, 256, 257, 511, 599] {
            let after = rows[a].device.clone();
            assert_eq!(
                ids(&cold, &job, Some(&after)),
                ids(&mem, &job, Some(&after))
            );
            assert_eq!(
                cold.get(&job, RunId(1), &after).unwrap(),
                mem.get(&job, RunId(1), &after).unwrap()
            );
            assert_eq!(
                positions(&cold, &job, a as u32),
                positions(&mem, &job, a as u32)
            );
        }
        let missing = DeviceId::new("zzz").unwrap();
        assert_eq!(cold.get(&job, RunId(1), &missing).unwrap(), None);
        let first = DeviceId::new("a").unwrap();
        assert_eq!(
            cold.get(&job, RunId(1), &first).unwrap(),
            None,
            "before every id"
        );
        assert_eq!(ids(&cold, &other, None).len(), 3);
        assert!(ids(&cold, &JobId::new("none").unwrap(), None).is_empty());
        cold.write_ops(vec![ColdOp::DropJob { job: job.clone() }])
            .unwrap();
        assert!(ids(&cold, &job, None).is_empty());
        assert_eq!(
            ids(&cold, &other, None).len(),
            3,
            "another job (whose id starts with the dropped one's) keeps its rows"
        );
    }

    /// Rows an older release wrote (JSON chunks; id chunks holding whole rows), loaded as an
    /// upgrade loads its sled tree, read as they did, beside a run written now.
    #[test]
    fn json_chunks_of_older_releases_still_read() {
        let (_tmp, cold) = store();
        let job = JobId::new("old").unwrap();
        let rows: Vec<DeviceRun> = (0..600).map(row).collect();
        let mut loader = cold.loader();
        for chunk in by_id(rows.iter()).chunks(CHUNK) {
            let key = id_key(&job, RunId(1), &chunk[0].1.device);
            loader
                .insert(&key, &serde_json::to_vec(chunk).unwrap())
                .unwrap();
        }
        for (c, chunk) in rows.chunks(CHUNK).enumerate() {
            let key = position_key(&job, RunId(1), c as u32);
            loader
                .insert(&key, &serde_json::to_vec(chunk).unwrap())
                .unwrap();
        }
        loader.finish().unwrap();
        let new = JobId::new("new").unwrap();
        let ops = vec![ColdOp::Write {
            job: new.clone(),
            run: RunId(1),
            rows: rows.clone().into(),
        }];
        cold.write_ops(ops).unwrap();
        assert_eq!(ids(&cold, &job, None), ids(&cold, &new, None));
        assert_eq!(positions(&cold, &job, 3), positions(&cold, &new, 3));
        let after = rows[300].device.clone();
        assert_eq!(
            ids(&cold, &job, Some(&after)),
            ids(&cold, &new, Some(&after))
        );
        assert_eq!(
            cold.get(&job, RunId(1), &after).unwrap(),
            Some(rows[300].clone())
        );
    }

    /// A run of many chunks reads back whole in both orders; a restore skips a run whose file
    /// is there and writes one that is missing; a file a stop left half-written is removed.
    #[test]
    fn a_large_run_reads_back_and_a_restore_writes_only_missing_runs() {
        let (tmp, cold) = store();
        let job = JobId::new("big").unwrap();
        let n = CHUNK * 128 + 300;
        let rows: Vec<DeviceRun> = (0..n)
            .map(|i| DeviceRun {
                device: DeviceId::new(format!("d-{i:06}")).unwrap(),
                ..row(i)
            })
            .collect();
        let op = ColdOp::Write {
            job: job.clone(),
            run: RunId(1),
            rows: rows.clone().into(),
        };
        assert_eq!(cold.write_ops(vec![op.clone()]).unwrap(), n);
        let read: Vec<DeviceRun> = positions(&cold, &job, 0)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(read, rows);
        assert_eq!(
            ids(&cold, &job, None),
            rows,
            "ids sort as the positions here"
        );
        assert_eq!(
            cold.restore_ops(vec![op.clone()]).unwrap(),
            0,
            "written whole"
        );
        let dir = tmp.path().join("cold");
        let path = dir.join(file::file_name(b"big", 1));
        std::fs::rename(&path, dir.join("half.rows.tmp")).unwrap();
        let cold = ColdRows::open(dir.clone()).unwrap();
        assert!(!dir.join("half.rows.tmp").exists(), "leftover removed");
        assert!(ids(&cold, &job, None).is_empty());
        assert_eq!(
            cold.restore_ops(vec![op]).unwrap(),
            n,
            "missing: written again"
        );
        let read: Vec<DeviceRun> = positions(&cold, &job, 0)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(read, rows);
    }

    /// A damaged run file is an error to its readers, not rows that are not there.
    #[test]
    fn a_damaged_run_file_is_an_error() {
        let (tmp, cold) = store();
        let job = JobId::new("j").unwrap();
        let rows: Vec<DeviceRun> = (0..600).map(row).collect();
        cold.write_ops(vec![ColdOp::Write {
            job: job.clone(),
            run: RunId(1),
            rows: rows.into(),
        }])
        .unwrap();
        let path = tmp.path().join("cold").join(file::file_name(b"j", 1));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let cold = ColdRows::at(tmp.path().join("cold"));
        let mut n = 0;
        let r = cold.scan_by_position(&job, RunId(1), 0, &mut |_, _| {
            n += 1;
            true
        });
        assert!(r.is_err(), "{n} rows read from a damaged file");
        bytes.truncate(at);
        std::fs::write(&path, &bytes).unwrap();
        let cold = ColdRows::at(tmp.path().join("cold"));
        assert!(cold
            .get(&job, RunId(1), &DeviceId::new("d-0001").unwrap())
            .is_err());
    }
}
