//! IoT Central's `ScheduledJob` body (2022-07-31) to and from the domain's scheduled job.
//!
//! The job fields (`displayName`, `description`, `group`, `batch`, `cancellationThreshold`,
//! `data`, and muster's `rollout` and `maintenanceWindow` extensions) are read and written exactly
//! as `/api/jobs` reads and writes them: one template parser, one renderer. The rest is Central's
//! `schedule` (`start`, `recurrence` daily/weekly/monthly, `end` `{type: date, date}` or
//! `{type: occurrences, occurrences}`), `enabled`, and the read-only `etag`, `completed`.
//!
//! muster extensions inside `schedule` (Central has no field for them): `intervalSeconds` (a
//! period in seconds instead of `recurrence`) and `timeZone` (IANA zone the recurrence steps in;
//! UTC when absent).

use muster_domain::schedule::{
    JobSchedule, Recurrence, ScheduleEnd, ScheduledJob, ScheduledJobSpec,
};
use muster_domain::{Event, State};
use muster_types::{JobId, Timestamp};
use serde_json::{Map, Value};

use crate::central::{central_job_json, job_request_from_central_value};
use crate::error::ApiError;
use crate::json::{parse_body, quote, Fields};

/// The job fields a scheduled job's body shares with a job's.
const TEMPLATE_FIELDS: &[&str] = &[
    "displayName",
    "description",
    "group",
    "batch",
    "cancellationThreshold",
    "data",
    crate::central_rollout::ROLLOUT_FIELD,
    crate::window::FIELD,
];
/// Fields only a scheduled job has (`etag` and `completed` are read-only; accepted so a GET body
/// can be sent back).
const OWN_FIELDS: &[&str] = &["id", "etag", "schedule", "enabled", "completed"];

/// A parsed `PUT /api/scheduledJobs/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledJobRequest {
    pub spec: ScheduledJobSpec,
    /// The body's `etag`, when it has one: the save applies only at that version.
    pub etag: Option<u64>,
}

/// Reads a full body (PUT).
pub fn scheduled_job_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<ScheduledJobRequest, ApiError> {
    let value = parse_body(body)?;
    from_value(&value, id_from_path)
}

/// Reads a PATCH body: a JSON merge patch over the schedule as it is (rendered as GET shows it),
/// so the fields given are read by the same rules as a PUT's.
pub fn scheduled_job_patch(
    current: &ScheduledJob,
    body: &str,
    id_from_path: &str,
) -> Result<ScheduledJobRequest, ApiError> {
    let patch = parse_body(body)?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "body",
            "must be a JSON object with the fields to change",
        ));
    }
    let mut merged = render(current);
    if let Value::Object(m) = &mut merged {
        m.remove("completed");
        m.remove("etag");
    }
    merge(&mut merged, &patch);
    let mut req = from_value(&merged, id_from_path)?;
    req.etag = patch
        .get("etag")
        .map(|e| etag(e).ok_or_else(|| bad_etag(e)))
        .transpose()?;
    Ok(req)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn etag(v: &Value) -> Option<u64> {
    let s = v.as_str()?;
    s.trim_matches('"').parse().ok()
}

fn bad_etag(v: &Value) -> ApiError {
    ApiError::bad_request(
        "etag",
        format!(
            "{} is not an etag of this scheduled job; send the etag GET returned, or leave it out",
            v
        ),
    )
}

fn from_value(body: &Value, id_from_path: &str) -> Result<ScheduledJobRequest, ApiError> {
    let f = Fields::of(body, "")?;
    let mut allowed: Vec<&str> = TEMPLATE_FIELDS.to_vec();
    allowed.extend_from_slice(OWN_FIELDS);
    f.only(&allowed)?;
    if let Some(body_id) = f.str_opt("id")? {
        if body_id != id_from_path {
            return Err(ApiError::bad_request(
                "id",
                format!(
                    "the body says {} but the URL says {}; make them equal or leave id out of the body",
                    quote(body_id),
                    quote(id_from_path)
                ),
            ));
        }
    }
    let etag = match f.get("etag") {
        None => None,
        Some(e) => Some(etag(e).ok_or_else(|| bad_etag(e))?),
    };
    if f.get("completed").is_some_and(|c| !c.is_boolean()) {
        return Err(ApiError::bad_request(
            "completed",
            "is read-only; leave it out (or send the boolean GET returned)",
        ));
    }
    let mut template = Map::new();
    if let Value::Object(m) = body {
        for k in TEMPLATE_FIELDS {
            if let Some(v) = m.get(*k) {
                template.insert((*k).to_string(), v.clone());
            }
        }
    }
    let job = job_request_from_central_value(&Value::Object(template), id_from_path)?;
    let schedule = schedule(&f)?;
    let enabled = f.bool_opt("enabled")?.unwrap_or(true);
    Ok(ScheduledJobRequest {
        spec: ScheduledJobSpec {
            template: job.spec,
            schedule,
            enabled,
        },
        etag,
    })
}

fn time(f: &Fields<'_>, key: &str) -> Result<Timestamp, ApiError> {
    let s = f.str_req(key)?;
    Timestamp::parse_rfc3339(s).map_err(|e| {
        ApiError::bad_request(
            &f.path(key),
            format!("{e}; give an ISO 8601 date and time, e.g. 2026-12-24T08:00:00Z"),
        )
    })
}

fn schedule(body: &Fields<'_>) -> Result<JobSchedule, ApiError> {
    let v = body.get("schedule").ok_or_else(|| {
        ApiError::bad_request(
            "schedule",
            "is required, e.g. {\"start\": \"2026-12-24T08:00:00Z\", \"recurrence\": \"daily\"}",
        )
    })?;
    let f = Fields::of(v, "schedule")?;
    f.only(&["start", "recurrence", "end", "intervalSeconds", "timeZone"])?;
    let start = time(&f, "start")?;
    let interval = f.u32_opt("intervalSeconds", 1, u32::MAX)?;
    let recurrence = match (f.str_opt("recurrence")?, interval) {
        (None, None) => None,
        (None, Some(s)) => Some(Recurrence::Seconds(s)),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "schedule.intervalSeconds",
                "give either recurrence (daily, weekly, monthly) or intervalSeconds, not both",
            ))
        }
        (Some("daily"), None) => Some(Recurrence::Daily),
        (Some("weekly"), None) => Some(Recurrence::Weekly),
        (Some("monthly"), None) => Some(Recurrence::Monthly),
        (Some(other), None) => {
            let hint = "use daily, weekly or monthly (or leave it out to run once)";
            let message = format!("unknown recurrence {}; {hint}", quote(other));
            return Err(ApiError::bad_request("schedule.recurrence", message));
        }
    };
    let end = match f.get("end") {
        None | Some(Value::Null) => None,
        Some(e) => {
            let e = Fields::of(e, "schedule.end")?;
            e.only(&["type", "date", "occurrences"])?;
            Some(match e.str_req("type")? {
                "date" => {
                    e.only(&["type", "date"])?;
                    let s = e.str_req("date")?;
                    // A bare date ends the schedule at the end of that day (UTC).
                    let full = if s.len() == 10 {
                        format!("{s}T23:59:59.999Z")
                    } else {
                        s.to_string()
                    };
                    ScheduleEnd::Date(Timestamp::parse_rfc3339(&full).map_err(|err| {
                        ApiError::bad_request(
                            "schedule.end.date",
                            format!("{err}; give a date (2026-12-31) or a date and time"),
                        )
                    })?)
                }
                "occurrences" => {
                    e.only(&["type", "occurrences"])?;
                    ScheduleEnd::Occurrences(e.u32_req("occurrences", 1, u32::MAX)?)
                }
                other => {
                    return Err(ApiError::bad_request(
                        "schedule.end.type",
                        format!("unknown type {}; use date or occurrences", quote(other)),
                    ))
                }
            })
        }
    };
    let time_zone = f.str_opt("timeZone")?.map(str::to_string);
    let s = JobSchedule {
        start,
        recurrence,
        end,
        time_zone,
    };
    s.validate().map_err(ApiError::from)?;
    Ok(s)
}

/// A scheduled job in IoT Central's shape.
pub fn render(s: &ScheduledJob) -> Value {
    // The template rendered by the job renderer, on a job that exists only for the rendering.
    let mut scratch = State::default();
    let id = JobId::new(s.id.as_str()).ok();
    let mut m = Map::new();
    m.insert("id".into(), Value::String(s.id.to_string()));
    m.insert("etag".into(), Value::String(s.version.to_string()));
    if let Some(id) = id {
        muster_domain::evolve(
            &mut scratch,
            &Event::JobCreated {
                job: id.clone(),
                spec: Box::new(s.spec.template.clone()),
                devices: Vec::new(),
                at: s.created_at,
            },
        );
        if let Some(Value::Object(job)) = scratch.jobs.get(&id).map(|j| central_job_json(j, None)) {
            for (k, v) in job {
                if TEMPLATE_FIELDS.contains(&k.as_str()) {
                    m.insert(k, v);
                }
            }
        }
    }
    m.insert("schedule".into(), render_schedule(&s.spec.schedule));
    m.insert("enabled".into(), Value::Bool(s.spec.enabled));
    m.insert("completed".into(), Value::Bool(s.completed()));
    Value::Object(m)
}

fn render_schedule(s: &JobSchedule) -> Value {
    let mut m = Map::new();
    m.insert("start".into(), Value::String(s.start.to_rfc3339()));
    match s.recurrence {
        None => {}
        Some(Recurrence::Seconds(n)) => {
            m.insert("intervalSeconds".into(), Value::from(n));
        }
        Some(r) => {
            m.insert("recurrence".into(), Value::String(r.name().into()));
        }
    }
    match s.end {
        None => {}
        Some(ScheduleEnd::Date(d)) => {
            m.insert(
                "end".into(),
                serde_json::json!({"type": "date", "date": d.to_rfc3339()}),
            );
        }
        Some(ScheduleEnd::Occurrences(k)) => {
            m.insert(
                "end".into(),
                serde_json::json!({"type": "occurrences", "occurrences": k}),
            );
        }
    }
    if let Some(z) = &s.time_zone {
        m.insert("timeZone".into(), Value::String(z.clone()));
    }
    Value::Object(m)
}
