//! The `maintenanceWindow` extension of IoT Central's job body (muster's own; Azure has no such
//! field):
//!
//! ```json
//! "maintenanceWindow": {"cron": "0 1 * * *", "durationSeconds": 10800, "timeZone": "Europe/Berlin",
//!                       "state": "waiting", "until": "2026-01-11T00:00:00.000Z"}
//! ```
//!
//! `state` (`open` or `waiting`) and `until` (when it closes, or opens; absent if it never opens
//! again) are read-only: a GET answers them for a running or scheduled job, a PUT accepts them
//! back and ignores them.

use muster_domain::window::{MaintenanceWindow, WindowState};
use muster_domain::{Job, JobStatus};
use muster_types::Timestamp;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::json::Fields;

pub const FIELD: &str = "maintenanceWindow";

/// Reads `maintenanceWindow` from a job body, if present.
pub(crate) fn parse(body: &Fields<'_>) -> Result<Option<MaintenanceWindow>, ApiError> {
    let Some(v) = body.get(FIELD) else {
        return Ok(None);
    };
    let f = Fields::of(v, FIELD)?;
    f.only(&["cron", "durationSeconds", "timeZone", "state", "until"])?;
    Ok(Some(MaintenanceWindow {
        cron: f.str_req("cron")?.to_string(),
        duration_secs: f.u32_req("durationSeconds", 1, muster_domain::window::MAX_WINDOW_SECS)?,
        time_zone: f.str_opt("timeZone")?.unwrap_or("UTC").to_string(),
    }))
}

/// The spec's window as JSON (without its state).
pub fn render(w: &MaintenanceWindow) -> Value {
    json!({"cron": w.cron, "durationSeconds": w.duration_secs, "timeZone": w.time_zone})
}

/// The window's state at `now` for a job that still dispatches devices: `("open", closes)` or
/// `("waiting", opens)`.
pub fn job_state(job: &Job, now: Timestamp) -> Option<(&'static str, Option<Timestamp>)> {
    if !matches!(
        job.status,
        JobStatus::Scheduled | JobStatus::Pending | JobStatus::Running | JobStatus::Stopped
    ) {
        return None;
    }
    match muster_domain::window::job_window(job, now)? {
        WindowState::Open { until, .. } => Some(("open", Some(until))),
        WindowState::Closed { opens_at } => Some(("waiting", opens_at)),
    }
}

/// Adds `state` and `until` to a rendered job's `maintenanceWindow`.
pub fn add_state(v: &mut Value, job: &Job, now: Timestamp) {
    let Some((state, until)) = job_state(job, now) else {
        return;
    };
    if let Some(Value::Object(w)) = v.get_mut(FIELD) {
        w.insert("state".into(), Value::String(state.into()));
        if let Some(t) = until {
            w.insert("until".into(), Value::String(t.to_rfc3339()));
        }
    }
}

/// Inserts the rendered window into a job object, if the job has one.
pub(crate) fn insert(m: &mut Map<String, Value>, w: Option<&MaintenanceWindow>) {
    if let Some(w) = w {
        m.insert(FIELD.into(), render(w));
    }
}
