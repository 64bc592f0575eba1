//! The cold tier: finished runs' per-device rows leave the [`State`] for storage.
//!
//! Memory should follow what is running, not everything that ever ran: a finished 50,000-device
//! job kept ~60 MiB of `DeviceRun`s in RAM for good. Once a run's job is final nothing `decide` or
//! `actions` does reads its rows, so [`State::spill`] moves them out (pure: it returns the rows,
//! the store writes them) and leaves a [`ColdRun`] summary with the little `decide` still needs
//! (the failed devices a rerun takes; every device of a continuous job, which never joins twice).
//! Readers go through [`RunRows`] (the store implements it over sled, [`MemRows`] in memory), and
//! the `Run` helpers here answer from hot rows or cold ones alike, in the same orders.
//!
//! Spilling is a step of its own after an applied command, not part of `evolve`: the meaning of an
//! event stays the same with or without a cold tier (the property tests run both), and a state
//! that was never spilled (an old snapshot, `State::replay`) is still a complete state.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

use muster_types::{DeviceId, JobId, RunId};
use serde::{Deserialize, Serialize};

use crate::cow::CowVec;
use crate::error::DomainError;
use crate::event::Event;
use crate::job::{DeviceRun, DeviceStatus, Job, Run};
use crate::State;

/// What stays in RAM of a run whose rows are cold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ColdRun {
    /// How many rows went to the cold tier (the run's device count).
    pub rows: u32,
    /// Devices that ended failed or timed out, in run order: what a rerun takes.
    pub failed: Vec<DeviceId>,
    /// Every device of the run, sorted; kept only for a continuous job, whose joins skip a device
    /// any run already had.
    pub members: Vec<DeviceId>,
}

impl ColdRun {
    pub fn has_member(&self, id: &DeviceId) -> bool {
        self.members.binary_search(id).is_ok()
    }
}

/// One change to the cold tier, in the order the store must make them.
#[derive(Debug, Clone, PartialEq)]
pub enum ColdOp {
    /// A finished run's rows, in run order (position = index in `rows`). The run's own
    /// chunks, moved, not copied: a million rows are ~130 MB.
    Write {
        job: JobId,
        run: RunId,
        rows: CowVec<DeviceRun>,
    },
    /// Forget every cold row of a job (retention).
    DropJob { job: JobId },
}

/// Reading cold rows. Every method visits rows of one (job, run); `visit` returns `false` to stop.
pub trait RunRows {
    /// Rows in device-id order, from the first device after `after`.
    fn scan_by_id(
        &self,
        job: &JobId,
        run: RunId,
        after: Option<&DeviceId>,
        visit: &mut dyn FnMut(DeviceRun) -> bool,
    ) -> Result<(), DomainError>;

    /// Rows in run order (dispatch order), from position `from`, with their position.
    fn scan_by_position(
        &self,
        job: &JobId,
        run: RunId,
        from: u32,
        visit: &mut dyn FnMut(u32, DeviceRun) -> bool,
    ) -> Result<(), DomainError>;

    /// One device's row.
    fn get(
        &self,
        job: &JobId,
        run: RunId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRun>, DomainError>;
}

/// No cold tier: for a state that never spilled.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoColdRows;

impl RunRows for NoColdRows {
    fn scan_by_id(
        &self,
        _: &JobId,
        _: RunId,
        _: Option<&DeviceId>,
        _: &mut dyn FnMut(DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        Ok(())
    }
    fn scan_by_position(
        &self,
        _: &JobId,
        _: RunId,
        _: u32,
        _: &mut dyn FnMut(u32, DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        Ok(())
    }
    fn get(&self, _: &JobId, _: RunId, _: &DeviceId) -> Result<Option<DeviceRun>, DomainError> {
        Ok(None)
    }
}

/// The cold tier in memory: what tests (and the property tests' replay) use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemRows {
    runs: BTreeMap<(JobId, u32), MemRun>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct MemRun {
    by_id: BTreeMap<DeviceId, DeviceRun>,
    by_position: Vec<DeviceId>,
}

impl MemRows {
    /// Makes the changes `ops` describe; writing the same rows again changes nothing.
    pub fn absorb(&mut self, ops: impl IntoIterator<Item = ColdOp>) {
        for op in ops {
            match op {
                ColdOp::Write { job, run, rows } => {
                    let t = MemRun {
                        by_position: rows.iter().map(|r| r.device.clone()).collect(),
                        by_id: rows
                            .into_vec()
                            .into_iter()
                            .map(|r| (r.device.clone(), r))
                            .collect(),
                    };
                    self.runs.insert((job, run.0), t);
                }
                ColdOp::DropJob { job } => self.runs.retain(|(j, _), _| *j != job),
            }
        }
    }

    /// Rows held, over every run.
    pub fn len(&self) -> usize {
        self.runs.values().map(|r| r.by_id.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn run(&self, job: &JobId, run: RunId) -> Option<&MemRun> {
        self.runs.get(&(job.clone(), run.0))
    }
}

impl RunRows for MemRows {
    fn scan_by_id(
        &self,
        job: &JobId,
        run: RunId,
        after: Option<&DeviceId>,
        visit: &mut dyn FnMut(DeviceRun) -> bool,
    ) -> Result<(), DomainError> {
        let Some(t) = self.run(job, run) else {
            return Ok(());
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        for (_, row) in t.by_id.range((lower, Bound::Unbounded)) {
            if !visit(row.clone()) {
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
        let Some(t) = self.run(job, run) else {
            return Ok(());
        };
        for (pos, d) in t.by_position.iter().enumerate().skip(from as usize) {
            if let Some(row) = t.by_id.get(d) {
                if !visit(pos as u32, row.clone()) {
                    break;
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
        Ok(self
            .run(job, run)
            .and_then(|t| t.by_id.get(device).cloned()))
    }
}

impl Run {
    /// Whether this run's rows are in the cold tier.
    pub fn is_cold(&self) -> bool {
        self.cold.is_some()
    }

    /// Visits the run's rows in device-id order after `after`, from RAM or the cold tier.
    pub fn scan_by_id(
        &self,
        job: &JobId,
        cold: &dyn RunRows,
        after: Option<&DeviceId>,
        visit: &mut dyn FnMut(Cow<'_, DeviceRun>) -> bool,
    ) -> Result<(), DomainError> {
        if self.is_cold() {
            return cold.scan_by_id(job, self.number, after, &mut |r| visit(Cow::Owned(r)));
        }
        let from = match after {
            Some(id) => match self.index.find(&self.devices, id) {
                Ok(k) => k + 1,
                Err(k) => k,
            },
            None => 0,
        };
        for &i in &self.index.positions()[from..] {
            if let Some(d) = self.devices.get(i as usize) {
                if !visit(Cow::Borrowed(d)) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Visits the run's rows in run order from position `from`, with their position.
    pub fn scan_by_position(
        &self,
        job: &JobId,
        cold: &dyn RunRows,
        from: u32,
        visit: &mut dyn FnMut(u32, Cow<'_, DeviceRun>) -> bool,
    ) -> Result<(), DomainError> {
        if self.is_cold() {
            return cold
                .scan_by_position(job, self.number, from, &mut |p, r| visit(p, Cow::Owned(r)));
        }
        for (i, d) in (from..).zip(self.devices.iter_from(from as usize)) {
            if !visit(i, Cow::Borrowed(d)) {
                break;
            }
        }
        Ok(())
    }

    /// One device's row, from RAM or the cold tier.
    pub fn row<'a>(
        &'a self,
        job: &JobId,
        cold: &dyn RunRows,
        device: &DeviceId,
    ) -> Result<Option<Cow<'a, DeviceRun>>, DomainError> {
        if self.is_cold() {
            return Ok(cold.get(job, self.number, device)?.map(Cow::Owned));
        }
        Ok(self.device(device).map(Cow::Borrowed))
    }

    /// Whether the device is part of this run (hot, or a cold run that kept its members).
    pub fn has_device(&self, device: &DeviceId) -> bool {
        match &self.cold {
            Some(c) => c.has_member(device),
            None => self.position(device).is_some(),
        }
    }

    /// The devices that ended failed or timed out, in run order: what a rerun takes.
    pub fn failed_devices(&self) -> Vec<DeviceId> {
        match &self.cold {
            Some(c) => c.failed.clone(),
            None => self
                .devices
                .iter()
                .filter(|d| matches!(d.status, DeviceStatus::Failed | DeviceStatus::TimedOut))
                .map(|d| d.device.clone())
                .collect(),
        }
    }

    /// Moves the rows out, leaving the summary; `members` keeps every id (continuous jobs).
    fn spill(&mut self, members: bool) -> CowVec<DeviceRun> {
        let failed = self.failed_devices();
        let mut ids: Vec<DeviceId> = Vec::new();
        if members {
            ids = self
                .index
                .positions()
                .iter()
                .map(|&i| self.devices[i as usize].device.clone())
                .collect();
        }
        let rows = std::mem::take(&mut self.devices);
        self.index.clear();
        self.ready.clear();
        self.deadlines.clear();
        self.cold = Some(ColdRun {
            rows: rows.len() as u32,
            failed,
            members: ids,
        });
        rows
    }
}

impl Job {
    /// Spills every finished run not spilled yet: all runs but the current one (a rerun's
    /// predecessors) and, once the job is final, the current one.
    fn spill(&mut self) -> Vec<ColdOp> {
        let members = self.watch.is_some();
        let last = self.runs.len().saturating_sub(1);
        let final_ = self.status.is_final();
        let mut ops = Vec::new();
        if self.detail_expired {
            return ops;
        }
        for (k, run) in self.runs.iter_mut().enumerate() {
            if run.is_cold() || (k == last && !final_) {
                continue;
            }
            let rows = run.spill(members);
            ops.push(ColdOp::Write {
                job: self.id.clone(),
                run: run.number,
                rows,
            });
        }
        ops
    }
}

impl State {
    /// Moves the rows of every finished run that the `events` just ended out of the state, and
    /// drops the cold rows of jobs retention expired (`evolve` already dropped their hot rows).
    /// The store calls it after each applied command and writes what it returns before the
    /// command counts as applied.
    pub fn spill(&mut self, events: &[Event]) -> Vec<ColdOp> {
        let mut ops = Vec::new();
        for e in events {
            match e {
                Event::JobCompleted { job, .. }
                | Event::JobCancelled { job, .. }
                | Event::JobFailed { job, .. } => {
                    if let Some(j) = self.jobs.get_mut(job) {
                        ops.extend(j.spill());
                    }
                }
                Event::JobDetailExpired { job, .. } | Event::JobExpired { job, .. } => {
                    ops.push(ColdOp::DropJob { job: job.clone() });
                }
                _ => {}
            }
        }
        ops
    }

    /// Puts every cold run's rows back from `cold`: the complete state, as it was before any
    /// spill (tests compare it with a replay that never spilled).
    pub fn restore_rows(&mut self, cold: &dyn RunRows) -> Result<(), DomainError> {
        let mut result = Ok(());
        self.jobs.for_each_mut(|_, j| {
            for run in &mut j.runs {
                if run.cold.is_none() || result.is_err() {
                    continue;
                }
                let mut rows = crate::cow::CowVec::new();
                result = cold.scan_by_position(&j.id, run.number, 0, &mut |_, r| {
                    rows.push(r);
                    true
                });
                run.index = crate::job::RunIndex::of(&rows);
                run.devices = rows;
                run.cold = None;
            }
        });
        result
    }

    /// Spills every finished run: after a restore (a snapshot of an older build, or events
    /// replayed), so the state is as the live one was. Writing the rows again is harmless.
    pub fn spill_all(&mut self) -> Vec<ColdOp> {
        let mut ops = Vec::new();
        self.jobs.for_each_mut(|_, j| ops.extend(j.spill()));
        ops
    }
}
