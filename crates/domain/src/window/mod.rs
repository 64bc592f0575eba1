//! Maintenance windows: a job's devices are dispatched only while a window is open.
//!
//! A window opens at each occurrence of a cron expression, read in the civil time of an IANA zone
//! (tz rules from the tzdb compiled into the binary, so every replica agrees), and stays open for
//! a fixed duration. Whether it is open is a pure function of the spec and the command's
//! timestamp: `decide` refuses to dispatch outside it, `actions` wakes the leader at its opening,
//! and the edges show "waiting until" from the same function.
//!
//! The log records what a running job lived through: the first command whose stamp finds the
//! window in a state the job's [`WindowMark`] has not recorded (an `Advance` the leader asks for at
//! the opening or closing, or the `MarkDispatched` that dispatches in it) emits
//! `Event::WindowOpened` or `Event::WindowClosed`, once per occurrence, and `evolve` stores the
//! mark, so replay agrees and operators see each window in the audit timeline.

mod cron;

use jiff::tz::TimeZone;
use muster_types::Timestamp;
use serde::{Deserialize, Serialize};

pub use cron::Cron;

use crate::error::DomainError;
use crate::event::Event;
use crate::job::{DeviceRun, Job};

/// The longest window: longer ones are better expressed as no window.
pub const MAX_WINDOW_SECS: u32 = 31 * 24 * 3600;
/// How many back-to-back occurrences are followed to find when an open window closes.
const MAX_CHAIN: usize = 64;
/// Checked at validation: the cron must match at least once after this instant (2000-01-01).
const VALIDATION_EPOCH_MS: i64 = 946_684_800_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// When a window opens: crontab's five fields, or six with seconds first.
    pub cron: String,
    /// How long it stays open.
    pub duration_secs: u32,
    /// IANA zone the cron is read in, e.g. `Europe/Berlin`; `UTC` for UTC.
    pub time_zone: String,
}

/// Whether devices may be dispatched at an instant, and until when that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open since `since` (the occurrence that opened it) until `until`.
    Open { since: Timestamp, until: Timestamp },
    /// Closed; the next window opens at `opens_at` (`None`: never again).
    Closed { opens_at: Option<Timestamp> },
}

impl WindowState {
    pub fn is_open(self) -> bool {
        matches!(self, WindowState::Open { .. })
    }
}

impl MaintenanceWindow {
    /// Checks the cron, the zone and the duration; errors name the field under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), DomainError> {
        let (cron, tz) = self.compile().map_err(|(f, m)| DomainError::Invalid {
            field: format!("{prefix}.{f}"),
            message: m,
        })?;
        if self.duration_secs == 0 || self.duration_secs > MAX_WINDOW_SECS {
            return Err(DomainError::Invalid {
                field: format!("{prefix}.durationSeconds"),
                message: format!(
                    "{} is out of range; give 1 to {MAX_WINDOW_SECS} seconds",
                    self.duration_secs
                ),
            });
        }
        if cron.next_after(VALIDATION_EPOCH_MS, &tz).is_none() {
            return Err(DomainError::Invalid {
                field: format!("{prefix}.cron"),
                message: format!("{:?} never matches a date; check day and month", self.cron),
            });
        }
        Ok(())
    }

    fn compile(&self) -> Result<(Cron, TimeZone), (&'static str, String)> {
        let cron = Cron::parse(&self.cron).map_err(|m| ("cron", m))?;
        let tz = TimeZone::get(&self.time_zone).map_err(|_| {
            (
                "timeZone",
                format!(
                    "{:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)",
                    self.time_zone
                ),
            )
        })?;
        Ok((cron, tz))
    }

    /// The window's state at `now`. A spec that no longer compiles (it was validated when the job
    /// was created, so only a tzdb that dropped a zone) counts as never open.
    pub fn state(&self, now: Timestamp) -> WindowState {
        let Ok((cron, tz)) = self.compile() else {
            return WindowState::Closed { opens_at: None };
        };
        let dur = i64::from(self.duration_secs) * 1000;
        let Some(first) = cron.next_after(now.millis() - dur, &tz) else {
            return WindowState::Closed { opens_at: None };
        };
        if first > now.millis() {
            return WindowState::Closed {
                opens_at: Some(Timestamp::from_millis(first)),
            };
        }
        let mut until = first + dur;
        let mut at = first;
        for _ in 0..MAX_CHAIN {
            match cron.next_after(at, &tz) {
                Some(next) if next <= until => {
                    until = until.max(next + dur);
                    at = next;
                }
                _ => break,
            }
        }
        WindowState::Open {
            since: Timestamp::from_millis(first),
            until: Timestamp::from_millis(until),
        }
    }
}

/// What a job's log last said about its window: the last `WindowOpened` or `WindowClosed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowMark {
    Open { since: Timestamp, until: Timestamp },
    Closed { next_open: Option<Timestamp> },
}

/// The window event a running job owes its log at `now`, given its window's state then (`None`:
/// the mark already says it). Callers ask only for running jobs: a stopped or paused job
/// dispatches nothing, so its log does not follow the window until it runs again.
///
/// An open window is the occurrence already recorded if it opened at the recorded `since`, or
/// while `now` is before the recorded `until` (back-to-back occurrences merge, so the earliest
/// occurrence still covering `now` moves on inside one open stretch). A closed window is the one
/// recorded if it opens next at the recorded `next_open`. A close missed (the job was stopped
/// across it) is not recorded late: the next opening says the earlier one ended.
pub fn event_due(job: &Job, state: WindowState, now: Timestamp) -> Option<Event> {
    match (state, job.window) {
        (WindowState::Open { since, .. }, Some(WindowMark::Open { since: s, until: u }))
            if s == since || now < u =>
        {
            None
        }
        (WindowState::Open { since, until }, _) => Some(Event::WindowOpened {
            job: job.id.clone(),
            since,
            until,
            at: now,
        }),
        (WindowState::Closed { opens_at }, Some(WindowMark::Closed { next_open }))
            if next_open == opens_at =>
        {
            None
        }
        (WindowState::Closed { opens_at }, _) => Some(Event::WindowClosed {
            job: job.id.clone(),
            next_open: opens_at,
            at: now,
        }),
    }
}

/// When the recorded window changes next (its close, or its next opening): the leader's wake-up
/// for the next window event of a running job whose log is up to date.
pub fn next_change(job: &Job) -> Option<Timestamp> {
    match job.window? {
        WindowMark::Open { until, .. } => Some(until),
        WindowMark::Closed { next_open } => next_open,
    }
}

/// The job's window state at `now`, or `None` if it has no window (always open).
pub fn job_window(job: &Job, now: Timestamp) -> Option<WindowState> {
    job.spec.schedule.window.as_ref().map(|w| w.state(now))
}

/// [`event_due`] for the job's own window at `now` (`None` too when it has no window).
pub fn job_event_due(job: &Job, now: Timestamp) -> Option<Event> {
    job_window(job, now).and_then(|w| event_due(job, w, now))
}

/// Whether the job may dispatch devices at `now`.
pub fn dispatch_open(job: &Job, now: Timestamp) -> bool {
    job_window(job, now).is_none_or(WindowState::is_open)
}

/// When the wait for an offline device to connect began, counting only time inside the window:
/// `None` while the window is closed (nobody is waiting for it then). Without a window, the job's
/// [`Job::effective_ready_since`].
pub fn connect_wait_since(job: &Job, d: &DeviceRun, now: Timestamp) -> Option<Timestamp> {
    let since = job.effective_ready_since(d)?;
    match job_window(job, now) {
        None => Some(since),
        Some(WindowState::Open { since: opened, .. }) => Some(since.max(opened)),
        Some(WindowState::Closed { .. }) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn nightly() -> MaintenanceWindow {
        MaintenanceWindow {
            cron: "0 1 * * *".into(),
            duration_secs: 3 * 3600,
            time_zone: "Europe/Berlin".into(),
        }
    }

    #[test]
    fn nightly_window_opens_and_closes() {
        let w = nightly();
        assert_eq!(
            w.state(ts("2026-01-10T12:00:00Z")),
            WindowState::Closed {
                opens_at: Some(ts("2026-01-11T00:00:00Z"))
            }
        );
        assert_eq!(
            w.state(ts("2026-01-11T02:59:59Z")),
            WindowState::Open {
                since: ts("2026-01-11T00:00:00Z"),
                until: ts("2026-01-11T03:00:00Z")
            }
        );
        assert!(!w.state(ts("2026-01-11T03:00:00Z")).is_open());
    }

    #[test]
    fn overlapping_occurrences_merge() {
        let w = MaintenanceWindow {
            cron: "*/10 * * * * *".into(),
            duration_secs: 15,
            time_zone: "UTC".into(),
        };
        match w.state(ts("2026-01-01T00:00:01Z")) {
            WindowState::Open { until, .. } => assert!(until > ts("2026-01-01T00:05:00Z")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut w = nightly();
        w.time_zone = "Mars/Olympus".into();
        let e = w.validate("maintenanceWindow").unwrap_err();
        assert!(
            e.to_string().starts_with("maintenanceWindow.timeZone"),
            "{e}"
        );
        let mut w = nightly();
        w.duration_secs = 0;
        assert!(w
            .validate("mw")
            .unwrap_err()
            .to_string()
            .starts_with("mw.durationSeconds"));
        let mut w = nightly();
        w.cron = "0 0 30 2 *".into();
        assert!(w
            .validate("mw")
            .unwrap_err()
            .to_string()
            .contains("never matches"));
        assert!(nightly().validate("mw").is_ok());
    }
}
