//! Retention, as IoT Hub keeps 30 days of job history: a finished job's per-device rows go once
//! it ended `finished_jobs_ms` ago, the job itself once it ended `jobs_ms` ago.
//!
//! It is decided here, from the time the leader stamps on `Command::ApplyRetention`, so every
//! replica and every replay drop the same jobs at the same log position; the events say what was
//! dropped and the log itself is never rewritten (the audit history stays complete). The leader
//! proposes the command only when [`retention_due`] says something is due.

use muster_types::Timestamp;

use crate::event::Event;
use crate::job::Job;
use crate::State;

/// How long finished jobs keep their detail and themselves; `None` keeps them for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub finished_jobs_ms: Option<u64>,
    pub jobs_ms: Option<u64>,
}

impl Retention {
    /// Whether any limit is set (without one the leader never proposes retention).
    pub fn is_set(&self) -> bool {
        self.finished_jobs_ms.is_some() || self.jobs_ms.is_some()
    }
}

/// What [`retention_due`] tells the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionDue {
    /// Propose `Command::ApplyRetention` now.
    Now,
    /// Nothing is due before this time.
    At(Timestamp),
    /// Nothing will become due until another job ends.
    Never,
}

/// When a limit reaches a finished job: its end plus the limit.
fn expiry(ended: Timestamp, limit: u64) -> Timestamp {
    ended.plus_millis(i64::try_from(limit).unwrap_or(i64::MAX))
}

/// What retention will do to `job` next, and from when: `(detail, at)` for a detail drop,
/// `(false, at)` for the removal. `None` when nothing is left to do.
fn next_step(j: &Job, limits: &Retention) -> Option<(bool, Timestamp)> {
    if !j.status.is_final() {
        return None;
    }
    let ended = j.ended_at?;
    let removal = limits.jobs_ms.map(|l| expiry(ended, l));
    let detail = match limits.finished_jobs_ms {
        Some(l) if !j.detail_expired => Some(expiry(ended, l)),
        _ => None,
    };
    match (detail, removal) {
        // The removal comes first (or at once): it takes the detail with it.
        (Some(d), Some(r)) if r <= d => Some((false, r)),
        (Some(d), _) => Some((true, d)),
        (None, Some(r)) => Some((false, r)),
        (None, None) => None,
    }
}

/// Whether the leader should propose `Command::ApplyRetention` at `now`, or when to look again.
pub fn retention_due(state: &State, limits: &Retention, now: Timestamp) -> RetentionDue {
    let mut next: Option<Timestamp> = None;
    for j in state.jobs.values() {
        if let Some((_, t)) = next_step(j, limits) {
            if t <= now {
                return RetentionDue::Now;
            }
            if next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        }
    }
    next.map_or(RetentionDue::Never, RetentionDue::At)
}

/// The events of `Command::ApplyRetention`: for each finished job past a limit (in job-id
/// order), `JobExpired` past `jobs_ms`, else `JobDetailExpired` past `finished_jobs_ms`.
pub(crate) fn decide(state: &State, limits: &Retention, at: Timestamp) -> Vec<Event> {
    let mut out = Vec::new();
    for j in state.jobs.values() {
        let Some(ended) = j.ended_at.filter(|_| j.status.is_final()) else {
            continue;
        };
        let past = |l: Option<u64>| l.is_some_and(|l| expiry(ended, l) <= at);
        if past(limits.jobs_ms) {
            out.push(Event::JobExpired {
                job: j.id.clone(),
                at,
            });
        } else if !j.detail_expired && past(limits.finished_jobs_ms) {
            out.push(Event::JobDetailExpired {
                job: j.id.clone(),
                at,
            });
        }
    }
    out
}

/// `Event::JobDetailExpired` on a job: every run forgets its rows, hot or cold (the store drops
/// the cold ones, see `State::spill`), and keeps its statistics and batches.
pub(crate) fn drop_detail(j: &mut Job) {
    j.detail_expired = true;
    for run in &mut j.runs {
        run.devices = crate::cow::CowVec::new();
        run.index.clear();
        run.ready.clear();
        run.deadlines.clear();
        run.backoff.clear();
        run.cold = None;
    }
}
