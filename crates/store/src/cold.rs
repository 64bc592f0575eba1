//! The cold tier on sled: finished runs' per-device rows (see `muster_domain::cold`).
//!
//! One tree, `cold_rows`. Keys start with the job id, a NUL byte (ids never contain one, so a
//! job's keys are one range) and the run (u32, big-endian), then a tag:
//!
//! | key after `job \0 run` | value (see [`crate::cold_codec`]) |
//! | --- | --- |
//! | `p` chunk number (u32) | the rows of positions 256 * chunk.., run order |
//! | `i` first device id of the chunk | up to 256 `(position, id)`, by id |
//!
//! `i` chunks page a run's devices in id order (the REST list, IoT Hub's `devices.jobs`) by
//! looking each row up in its `p` chunk; `p` chunks page in run order (gRPC `ListJobDevices`,
//! whose page token is a position). A row is stored once; one insert per 256 rows keeps the
//! apply short. Rows are written by the apply that finished their run, before `last_applied`
//! moves, so a crash in between only leaves rows the re-apply writes again, byte for byte. A
//! run is written one chunk at a time, its last position chunk last (see [`write_ops`]). Chunks older releases wrote (JSON; `i` chunks with whole rows) still read.

use muster_domain::{ColdOp, DeviceRun, DomainError, RunRows};
use muster_types::{DeviceId, JobId, RunId};

use crate::cold_codec::{decode_rows, encode_index, encode_rows, row_at, IdChunk};
use crate::StoreError;

pub(crate) const TREE: &str = "cold_rows";
const BY_ID: u8 = b'i';
const BY_POSITION: u8 = b'p';
/// Rows per stored chunk: one sled insert per chunk, not per row, keeps the apply that
/// finishes a 100,000-device run (it holds the state's write lock) short.
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

/// Makes the changes `ops` describe, in order; writing rows that are there already rewrites the
/// same bytes. Returns how many rows were written.
pub(crate) fn write_ops(tree: &sled::Tree, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
    write(tree, ops, false)
}

/// [`write_ops`] for a restore: a run whose rows are there already (its last chunk is written
/// last, so it is there only if all of the run is) is not written again.
pub(crate) fn restore_ops(tree: &sled::Tree, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
    write(tree, ops, true)
}

fn write(tree: &sled::Tree, ops: Vec<ColdOp>, skip_written: bool) -> Result<usize, StoreError> {
    let mut n = 0;
    for op in ops {
        match op {
            ColdOp::Write { job, run, rows } => {
                if rows.is_empty() {
                    continue;
                }
                let last = ((rows.len() - 1) / CHUNK) as u32;
                if skip_written && tree.contains_key(position_key(&job, run, last))? {
                    continue;
                }
                // Id chunks first, then position chunks in order: the last position chunk is
                // the run's last write, so it is there only if all of the run is (sled recovers
                // a prefix of its writes), which is what a restore's check above relies on.
                let by_id = by_id(rows.iter());
                for chunk in by_id.chunks(CHUNK) {
                    let first = &chunk[0].1.device;
                    let index = encode_index(chunk.iter().map(|(p, r)| (*p, &r.device)));
                    tree.insert(id_key(&job, run, first), index)?;
                }
                drop(by_id);
                let mut chunk: Vec<&DeviceRun> = Vec::with_capacity(CHUNK);
                let mut c = 0u32;
                for row in rows.iter() {
                    chunk.push(row);
                    if chunk.len() == CHUNK {
                        tree.insert(position_key(&job, run, c), encode_rows(chunk.drain(..)))?;
                        c += 1;
                    }
                }
                if !chunk.is_empty() {
                    tree.insert(position_key(&job, run, c), encode_rows(chunk))?;
                }
                n += rows.len();
            }
            ColdOp::DropJob { job } => {
                crate::writes::remove_prefix(tree, &job_prefix(&job))?;
            }
        }
    }
    Ok(n)
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

fn sled_err(e: sled::Error) -> DomainError {
    cold_err(e.into())
}

/// The cold rows a reader reads: a handle on the tree (cheap to clone).
#[derive(Debug, Clone)]
pub struct ColdRows {
    tree: sled::Tree,
}

impl ColdRows {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        ColdRows { tree }
    }

    /// The id chunk that holds `device` if any run chunk does: the last one starting at or
    /// before it.
    fn id_chunk(
        &self,
        job: &JobId,
        run: RunId,
        device: &DeviceId,
    ) -> Result<Option<sled::IVec>, DomainError> {
        let prefix = run_prefix(job, run, BY_ID);
        Ok(self
            .tree
            .range(prefix.clone()..=id_key(job, run, device))
            .next_back()
            .transpose()
            .map_err(sled_err)?
            .map(|(_, v)| v))
    }
}

/// Reads rows by position for a walk in id order, keeping the last position chunk fetched: a
/// run's devices mostly join it in id order, so consecutive ids mostly share a chunk.
struct ByPosition<'a> {
    tree: &'a sled::Tree,
    job: &'a JobId,
    run: RunId,
    last: Option<(u32, sled::IVec)>,
}

impl<'a> ByPosition<'a> {
    fn new(tree: &'a sled::Tree, job: &'a JobId, run: RunId) -> Self {
        ByPosition {
            tree,
            job,
            run,
            last: None,
        }
    }

    fn row(&mut self, position: u32, device: &DeviceId) -> Result<DeviceRun, DomainError> {
        let chunk = position / CHUNK as u32;
        let bytes = match &self.last {
            Some((c, bytes)) if *c == chunk => bytes,
            _ => {
                let bytes = self
                    .tree
                    .get(position_key(self.job, self.run, chunk))
                    .map_err(sled_err)?
                    .ok_or_else(|| missing(device, position))?;
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

impl RunRows for ColdRows {
    fn scan_by_id(
        &self,
        job: &JobId,
        run: RunId,
        after: Option<&DeviceId>,
        visit: &mut dyn FnMut(DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        let prefix = run_prefix(job, run, BY_ID);
        // Start at the chunk holding `after` (or the first), skip what is not after it.
        let start = match after {
            Some(a) => self
                .tree
                .range(prefix.clone()..=id_key(job, run, a))
                .next_back()
                .transpose()
                .map_err(sled_err)?
                .map_or_else(|| prefix.clone(), |(k, _)| k.to_vec()),
            None => prefix.clone(),
        };
        let mut rows = ByPosition::new(&self.tree, job, run);
        for kv in self.tree.range(start..) {
            let (key, value) = kv.map_err(sled_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let is_after = |d: &DeviceId| after.is_none_or(|a| d > a);
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
        let prefix = run_prefix(job, run, BY_POSITION);
        let first = from / CHUNK as u32;
        for kv in self.tree.range(position_key(job, run, first)..) {
            let (key, value) = kv.map_err(sled_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some(c) = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            else {
                continue;
            };
            let base = u32::from_be_bytes(c) * CHUNK as u32;
            for (i, row) in decode_rows(&value)
                .map_err(cold_err)?
                .into_iter()
                .enumerate()
            {
                let pos = base + i as u32;
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
        let Some(bytes) = self.id_chunk(job, run, device)? else {
            return Ok(None);
        };
        match IdChunk::decode(&bytes).map_err(cold_err)? {
            IdChunk::Rows(rows) => Ok(rows
                .binary_search_by(|(_, r)| r.device.cmp(device))
                .ok()
                .and_then(|i| rows.into_iter().nth(i))
                .map(|(_, r)| r)),
            IdChunk::Index(pairs) => match pairs.binary_search_by(|(_, d)| d.cmp(device)) {
                Ok(i) => ByPosition::new(&self.tree, job, run)
                    .row(pairs[i].0, device)
                    .map(Some),
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

    /// The chunked sled layout answers every read as the in-memory one does, across chunk
    /// edges, and a dropped job is gone.
    #[test]
    fn chunks_read_like_memory() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
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
        assert_eq!(write_ops(&tree, ops.clone()).unwrap(), 603);
        assert_eq!(restore_ops(&tree, ops).unwrap(), 0, "already written");
        let cold = ColdRows::new(tree.clone());
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
        assert_eq!(ids(&cold, &other, None).len(), 3);
        write_ops(&tree, vec![ColdOp::DropJob { job: job.clone() }]).unwrap();
        assert!(ids(&cold, &job, None).is_empty());
        assert_eq!(
            ids(&cold, &other, None).len(),
            3,
            "another job keeps its rows"
        );
    }

    /// Rows an older release wrote (JSON chunks; id chunks holding whole rows) read as they
    /// did, beside a run written now.
    #[test]
    fn json_chunks_of_older_releases_still_read() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let job = JobId::new("old").unwrap();
        let rows: Vec<DeviceRun> = (0..600).map(row).collect();
        for chunk in by_id(rows.iter()).chunks(CHUNK) {
            let key = id_key(&job, RunId(1), &chunk[0].1.device);
            tree.insert(key, serde_json::to_vec(chunk).unwrap())
                .unwrap();
        }
        for (c, chunk) in rows.chunks(CHUNK).enumerate() {
            let key = position_key(&job, RunId(1), c as u32);
            tree.insert(key, serde_json::to_vec(chunk).unwrap())
                .unwrap();
        }
        let new = JobId::new("new").unwrap();
        let ops = vec![ColdOp::Write {
            job: new.clone(),
            run: RunId(1),
            rows: rows.clone().into(),
        }];
        write_ops(&tree, ops).unwrap();
        let cold = ColdRows::new(tree.clone());
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

    /// A run of many chunks is written its last position chunk last, and reads back whole in
    /// both orders; a restore rewrites a run cut short before that chunk (a crash part way) and
    /// skips one written whole.
    #[test]
    fn a_large_run_is_written_last_chunk_last() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
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
        assert_eq!(write_ops(&tree, vec![op.clone()]).unwrap(), n);
        let cold = ColdRows::new(tree.clone());
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
        let last = position_key(&job, RunId(1), ((n - 1) / CHUNK) as u32);
        assert_eq!(
            restore_ops(&tree, vec![op.clone()]).unwrap(),
            0,
            "written whole"
        );
        tree.remove(&last).unwrap();
        assert_eq!(
            restore_ops(&tree, vec![op]).unwrap(),
            n,
            "cut short: written again"
        );
        let read: Vec<DeviceRun> = positions(&cold, &job, 0)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(read, rows);
    }
}
