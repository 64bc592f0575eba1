//! Scheduled (recurring) jobs, IoT Central's `scheduledJobs`: a job template plus a schedule
//! (start, an optional daily/weekly/monthly recurrence, an end by date or by a number of
//! occurrences). Each occurrence becomes a job of its own, named `{schedule}-{n}`.
//!
//! Occurrence `i` is a pure function of the schedule; the state keeps only the index of the next
//! one to consider (`next`), so an occurrence is created by the `Advance` that first sees it due,
//! exactly once, whichever node leads. Occurrences that fell due while no leader was there are
//! all created late, in order (one per `Advance`), never skipped: IoT Central's reference says
//! nothing about missed runs, and a recurring maintenance job silently not running is the worse
//! surprise. Those before a schedule was created or changed (less a minute's grace, so "start:
//! now" runs) are not occurrences.

mod decide;
#[cfg(test)]
mod tests;

use jiff::tz::TimeZone;
use jiff::ToSpan;
use muster_types::{JobId, ScheduledJobId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::spec::JobSpec;

pub(crate) use decide::{advance, delete, save};

/// Occurrences up to this long before a schedule is saved still run: a client that says "start
/// now" has its first job created although `now` has passed by the time the command is stamped.
pub const GRACE_MS: i64 = 60_000;
/// The shortest period of the `intervalSeconds` extension.
pub const MIN_INTERVAL_SECS: u32 = 1;
/// The longest period of the `intervalSeconds` extension (a year; longer is a monthly schedule).
pub const MAX_INTERVAL_SECS: u32 = 366 * 24 * 3600;

/// How often a schedule recurs. `Daily`, `Weekly` and `Monthly` are IoT Central's; they step in
/// the schedule's civil time (the `timeZone` extension, UTC by default), so "every day at 09:00
/// Europe/Berlin" stays at 09:00 across DST changes. A monthly occurrence on a day the month lacks
/// falls on its last day (Jan 31, Feb 28, Mar 31). `Seconds` is a muster extension
/// (`intervalSeconds`) for short periods: tests, demos, frequent polling jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    Daily,
    Weekly,
    Monthly,
    Seconds(u32),
}

impl Recurrence {
    pub fn name(self) -> &'static str {
        match self {
            Recurrence::Daily => "daily",
            Recurrence::Weekly => "weekly",
            Recurrence::Monthly => "monthly",
            Recurrence::Seconds(_) => "interval",
        }
    }

    /// A typical period, for estimating which occurrence comes at a given time.
    fn nominal_ms(self) -> i64 {
        match self {
            Recurrence::Daily => 86_400_000,
            Recurrence::Weekly => 7 * 86_400_000,
            Recurrence::Monthly => 2_629_746_000,
            Recurrence::Seconds(s) => i64::from(s.max(1)) * 1000,
        }
    }
}

/// When a schedule stops creating jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleEnd {
    /// No occurrence after this instant.
    Date(Timestamp),
    /// After this many jobs were created.
    Occurrences(u32),
}

/// IoT Central's `JobSchedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSchedule {
    pub start: Timestamp,
    /// `None`: the job runs once, at `start`.
    pub recurrence: Option<Recurrence>,
    pub end: Option<ScheduleEnd>,
    /// IANA zone the recurrence steps in (a muster extension); `None` is UTC.
    pub time_zone: Option<String>,
}

/// What a caller gives: the template each occurrence's job is made from, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledJobSpec {
    pub template: JobSpec,
    pub schedule: JobSchedule,
    /// A disabled schedule creates no jobs; occurrences that fall due meanwhile are skipped.
    pub enabled: bool,
}

/// A schedule in the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledJob {
    pub id: ScheduledJobId,
    pub spec: ScheduledJobSpec,
    /// Counts saves; the etag.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Index of the next occurrence to consider.
    pub next: u32,
    /// When the last occurrence considered (created or missed) was due: a changed schedule never
    /// creates another at or before it.
    pub last_due: Option<Timestamp>,
    /// Jobs created so far (the occurrences end counts these).
    pub created: u32,
    /// The jobs it created that are still in the state (retention removes expired ones).
    pub jobs: Vec<JobId>,
}

impl JobSchedule {
    /// Checks the schedule; errors name the field under `schedule`.
    pub fn validate(&self) -> Result<(), DomainError> {
        let bad = |f: &str, m: String| DomainError::Invalid {
            field: format!("schedule.{f}"),
            message: m,
        };
        if !self.start.in_rfc3339_range() {
            return Err(bad(
                "start",
                "give a time between years 0000 and 9999".into(),
            ));
        }
        if let Some(name) = &self.time_zone {
            TimeZone::get(name).map_err(|_| {
                bad(
                    "timeZone",
                    format!("{name:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"),
                )
            })?;
        }
        if let Some(Recurrence::Seconds(s)) = self.recurrence {
            if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&s) {
                return Err(bad(
                    "intervalSeconds",
                    format!("{s} is out of range; give {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS}"),
                ));
            }
        }
        match self.end {
            Some(ScheduleEnd::Date(d)) if !d.in_rfc3339_range() => Err(bad(
                "end.date",
                "give a date between years 0000 and 9999".into(),
            )),
            Some(ScheduleEnd::Date(d)) if d < self.start => Err(bad(
                "end.date",
                format!(
                    "{} is before the start {}; give a later end",
                    d.to_rfc3339(),
                    self.start.to_rfc3339()
                ),
            )),
            Some(ScheduleEnd::Occurrences(0)) => {
                Err(bad("end.occurrences", "give at least 1 occurrence".into()))
            }
            _ => Ok(()),
        }
    }

    fn zone(&self) -> TimeZone {
        self.time_zone
            .as_deref()
            .and_then(|n| TimeZone::get(n).ok())
            .unwrap_or(TimeZone::UTC)
    }

    /// When occurrence `i` is due, ignoring the end (`None`: there is no such occurrence, or it
    /// is past year 9999).
    fn raw(&self, i: u32) -> Option<i64> {
        let start = self.start.millis();
        let t = match self.recurrence {
            // The start itself, even when its civil time is ambiguous (the second 02:30 of a
            // DST fall-back would otherwise map to the first, an hour before the start).
            _ if i == 0 => Some(start),
            None => None,
            Some(Recurrence::Seconds(s)) => {
                start.checked_add(i64::from(i).checked_mul(i64::from(s) * 1000)?)
            }
            Some(r) => {
                let tz = self.zone();
                let civil = jiff::Timestamp::from_millisecond(start)
                    .ok()?
                    .to_zoned(tz.clone())
                    .datetime();
                let n = i64::from(i);
                let span = match r {
                    Recurrence::Daily => n.days(),
                    Recurrence::Weekly => n.weeks(),
                    _ => n.months(),
                };
                let stepped = civil.checked_add(span).ok()?;
                let z = tz.to_ambiguous_zoned(stepped).compatible().ok()?;
                Some(z.timestamp().as_millisecond())
            }
        }?;
        Timestamp::from_millis(t).in_rfc3339_range().then_some(t)
    }

    /// When occurrence `i` is due, or `None` when the schedule has none (past its end date).
    /// The occurrences end depends on the jobs created, so [`ScheduledJob::due`] applies it.
    pub fn occurrence(&self, i: u32) -> Option<Timestamp> {
        let t = self.raw(i)?;
        match self.end {
            Some(ScheduleEnd::Date(end)) if t > end.millis() => None,
            _ => Some(Timestamp::from_millis(t)),
        }
    }

    /// The first occurrence index due at or after `t` (ignoring the end).
    pub fn first_at_or_after(&self, t: Timestamp) -> u32 {
        let t = t.millis();
        let start = self.start.millis();
        if start >= t {
            return 0;
        }
        let Some(r) = self.recurrence else {
            return 1;
        };
        let guess = ((t - start) / r.nominal_ms()).clamp(0, i64::from(u32::MAX - 1)) as u32;
        let mut i = guess;
        while i > 0 && self.raw(i - 1).is_some_and(|x| x >= t) {
            i -= 1;
        }
        while i < u32::MAX && self.raw(i).is_some_and(|x| x < t) {
            i += 1;
        }
        i
    }
}

impl ScheduledJob {
    /// The occurrence that may be created now or later, with when it is due, if the schedule
    /// has one (enabled, not ended).
    pub fn upcoming(&self) -> Option<(u32, Timestamp)> {
        if !self.spec.enabled || self.ended_by_count() {
            return None;
        }
        let t = self.spec.schedule.occurrence(self.next)?;
        Some((self.next, t))
    }

    /// The occurrence to create at `now`, if one is due.
    pub fn due(&self, now: Timestamp) -> Option<(u32, Timestamp)> {
        self.upcoming().filter(|&(_, t)| t <= now)
    }

    fn ended_by_count(&self) -> bool {
        matches!(self.spec.schedule.end, Some(ScheduleEnd::Occurrences(k)) if self.created >= k)
    }

    /// IoT Central's `completed`: the schedule will create no more jobs, whether enabled or not.
    pub fn completed(&self) -> bool {
        self.ended_by_count() || self.spec.schedule.occurrence(self.next).is_none()
    }

    /// The id of the job for the `n`th created occurrence (1-based): at most 48 + 1 + 10
    /// characters, always a job id.
    pub fn job_id(id: &ScheduledJobId, n: u32) -> Option<JobId> {
        JobId::new(format!("{id}-{n}")).ok()
    }
}

/// Applies a schedule event.
pub(crate) fn evolve(state: &mut crate::State, event: &crate::event::Event) {
    use crate::event::Event;
    match event {
        Event::ScheduledJobSaved { id, spec, next, at } => match state.schedules.get_mut(id) {
            Some(s) => {
                s.spec = (**spec).clone();
                s.version += 1;
                s.updated_at = *at;
                s.next = *next;
            }
            None => {
                state.schedules.insert(
                    id.clone(),
                    ScheduledJob {
                        id: id.clone(),
                        spec: (**spec).clone(),
                        version: 1,
                        created_at: *at,
                        updated_at: *at,
                        next: *next,
                        last_due: None,
                        created: 0,
                        jobs: Vec::new(),
                    },
                );
            }
        },
        Event::ScheduledJobDeleted { id, .. } => {
            state.schedules.remove(id);
        }
        Event::ScheduledJobOccurred {
            id,
            occurrence,
            due,
            job,
            ..
        } => {
            if let Some(s) = state.schedules.get_mut(id) {
                s.next = occurrence.saturating_add(1);
                s.last_due = Some(*due);
                s.created = s.created.saturating_add(1);
                s.jobs.push(job.clone());
            }
        }
        Event::ScheduledJobMissed {
            id,
            occurrence,
            due,
            ..
        } => {
            if let Some(s) = state.schedules.get_mut(id) {
                s.next = occurrence.saturating_add(1);
                s.last_due = Some(*due);
            }
        }
        _ => {}
    }
}

/// Retention removed `job`: the schedule that created it no longer lists it.
pub(crate) fn forget_job(state: &mut crate::State, job: &JobId) {
    let owner = state
        .schedules
        .iter()
        .find(|(_, s)| s.jobs.contains(job))
        .map(|(id, _)| id.clone());
    if let Some(s) = owner.and_then(|id| state.schedules.get_mut(&id)) {
        if let Some(i) = s.jobs.iter().position(|j| j == job) {
            s.jobs.remove(i);
        }
    }
}
