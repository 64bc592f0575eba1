//! The cold tier on sled: finished runs' per-device rows (see `muster_domain::cold`).
//!
//! One tree, `cold_rows`. Keys start with the job id, a NUL byte (ids never contain one, so a
//! job's keys are one range) and the run (u32, big-endian), then a tag:
//!
//! | key after `job \0 run` | value |
//! | --- | --- |
//! | `d` device id | position (u32) + serde_json `DeviceRun` |
//! | `p` position (u32) | device id |
//!
//! `d` keys page a run's devices in id order (the REST list, the CSV, IoT Hub's `devices.jobs`),
//! `p` keys in run order (gRPC `ListJobDevices`, whose page token is a position). Rows are written
//! by the apply that finished their run, before `last_applied` moves, so a crash in between only
//! leaves rows the re-apply writes again, byte for byte.

use muster_domain::{ColdOp, DeviceRun, DomainError, RunRows};
use muster_types::{DeviceId, JobId, RunId};
use serde::{Deserialize, Serialize};

use crate::codec::{from_json, to_json};
use crate::StoreError;

pub(crate) const TREE: &str = "cold_rows";
const BY_ID: u8 = b'd';
const BY_POSITION: u8 = b'p';

fn job_prefix(job: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.as_str().len() + 6);
    k.extend_from_slice(job.as_str().as_bytes());
    k.push(0);
    k
}

fn run_prefix(job: &JobId, run: RunId, tag: u8) -> Vec<u8> {
    let mut k = job_prefix(job);
    k.extend_from_slice(&run.0.to_be_bytes());
    k.push(tag);
    k
}

fn id_key(job: &JobId, run: RunId, device: &DeviceId) -> Vec<u8> {
    let mut k = run_prefix(job, run, BY_ID);
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

fn position_key(job: &JobId, run: RunId, pos: u32) -> Vec<u8> {
    let mut k = run_prefix(job, run, BY_POSITION);
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

/// Makes the changes `ops` describe, in order; writing rows that are there already rewrites the
/// same bytes. Returns how many rows were written.
pub(crate) fn write_ops(tree: &sled::Tree, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
    write(tree, ops, false)
}

/// [`write_ops`] for a restore: a run whose rows are there already (a run is written in one
/// batch, so its last position key is there only if all of it is) is not written again.
pub(crate) fn restore_ops(tree: &sled::Tree, ops: Vec<ColdOp>) -> Result<usize, StoreError> {
    write(tree, ops, true)
}

fn write(tree: &sled::Tree, ops: Vec<ColdOp>, skip_written: bool) -> Result<usize, StoreError> {
    let mut n = 0;
    for op in ops {
        let mut batch = sled::Batch::default();
        match op {
            ColdOp::Write { job, run, rows } => {
                let last = rows.len().checked_sub(1).map(|p| p as u32);
                if let (true, Some(last)) = (skip_written, last) {
                    if tree.contains_key(position_key(&job, run, last))? {
                        continue;
                    }
                }
                for (pos, row) in rows.iter().enumerate() {
                    let pos = pos as u32;
                    let mut value = pos.to_be_bytes().to_vec();
                    value.extend_from_slice(&to_json(row)?);
                    batch.insert(id_key(&job, run, &row.device), value);
                    batch.insert(position_key(&job, run, pos), row.device.as_str().as_bytes());
                    n += 1;
                }
            }
            ColdOp::DropJob { job } => {
                for key in tree.scan_prefix(job_prefix(&job)).keys() {
                    batch.remove(key?);
                }
            }
        }
        tree.apply_batch(batch)?;
    }
    Ok(n)
}

fn decode_row(value: &[u8]) -> Result<(u32, DeviceRun), StoreError> {
    let Some((pos, json)) = value.split_first_chunk::<4>() else {
        return Err(StoreError::corrupt("cold row", "shorter than its position"));
    };
    Ok((u32::from_be_bytes(*pos), from_json("cold row", json)?))
}

fn cold_err(e: StoreError) -> DomainError {
    DomainError::ColdRows(e.to_string())
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

    /// Every run's rows in run order, for a snapshot.
    pub(crate) fn export(&self) -> Result<Vec<SnapshotRun>, StoreError> {
        let mut out: Vec<SnapshotRun> = Vec::new();
        for kv in self.tree.iter() {
            let (key, value) = kv?;
            // Position keys: `job \0 run p pos`.
            let Some(nul) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let rest = &key[nul + 1..];
            if rest.len() != 9 || rest[4] != BY_POSITION {
                continue;
            }
            let job = std::str::from_utf8(&key[..nul])
                .ok()
                .and_then(|s| JobId::new(s).ok())
                .ok_or_else(|| StoreError::corrupt("cold row key", "not a job id"))?;
            let run = RunId(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
            let device = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| DeviceId::new(s).ok())
                .ok_or_else(|| StoreError::corrupt("cold row", "not a device id"))?;
            let Some(bytes) = self.tree.get(id_key(&job, run, &device))? else {
                continue;
            };
            let (_, row) = decode_row(&bytes)?;
            match out.last_mut() {
                Some(r) if r.job == job && r.run == run.0 => r.rows.push(row),
                _ => out.push(SnapshotRun {
                    job,
                    run: run.0,
                    rows: vec![row],
                }),
            }
        }
        Ok(out)
    }
}

/// One run's cold rows as a snapshot carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRun {
    pub(crate) job: JobId,
    pub(crate) run: u32,
    pub(crate) rows: Vec<DeviceRun>,
}

impl SnapshotRun {
    pub(crate) fn into_op(self) -> ColdOp {
        ColdOp::Write {
            job: self.job,
            run: RunId(self.run),
            rows: self.rows,
        }
    }
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
        let iter = match after {
            Some(a) => {
                let mut from = id_key(job, run, a);
                from.push(0);
                self.tree.range(from..)
            }
            None => self.tree.range(prefix.clone()..),
        };
        for kv in iter {
            let (key, value) = kv.map_err(|e| cold_err(e.into()))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (_, row) = decode_row(&value).map_err(cold_err)?;
            if !visit(row) {
                break;
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
        for kv in self.tree.range(position_key(job, run, from)..) {
            let (key, value) = kv.map_err(|e| cold_err(e.into()))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let device = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| DeviceId::new(s).ok())
                .ok_or_else(|| DomainError::ColdRows("a cold row names no device".into()))?;
            let Some(bytes) = self
                .tree
                .get(id_key(job, run, &device))
                .map_err(|e| cold_err(e.into()))?
            else {
                continue;
            };
            let (pos, row) = decode_row(&bytes).map_err(cold_err)?;
            if !visit(pos, row) {
                break;
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
        let Some(bytes) = self
            .tree
            .get(id_key(job, run, device))
            .map_err(|e| cold_err(e.into()))?
        else {
            return Ok(None);
        };
        Ok(Some(decode_row(&bytes).map_err(cold_err)?.1))
    }
}
