//! IoT Central's `/api/jobs` routes, and muster's additions to them (`progress`, device
//! filters, `/events`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_cluster::{now, EventLog};
use muster_domain::auth::Permission;
use muster_domain::{Command, DeviceRun, DeviceStatus, FailureReason, TargetSelector};
use muster_types::{DeviceId, JobId, RerunId};
use serde_json::Value;

use super::{job_id, job_not_found, version, ListRequest, Page};
use crate::access::Access::Need;
use crate::central::{
    central_device_status, central_job_device_json, central_job_json, job_request_from_central,
    job_template,
};
use crate::error::ApiError;
use crate::history::event_json;
use crate::rest::errors::{internal, JOB, RERUN};
use crate::rest::extract::{Caller, JsonText, Params, PathParams};
use crate::rest::guard::Routes;
use crate::rest::{ok_json, page, page_rows, App};

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/api/jobs", Need(JobsRead), list_jobs)
        .get("/api/jobs/{id}", Need(JobsRead), get_job)
        .put("/api/jobs/{id}", Need(JobsWrite), put_job)
        .get("/api/jobs/{id}/devices", Need(JobsRead), job_devices)
        .get("/api/jobs/{id}/events", Need(EventsRead), job_events)
        .post("/api/jobs/{id}/stop", Need(JobsWrite), stop_job)
        .post("/api/jobs/{id}/resume", Need(JobsWrite), resume_job)
        .post("/api/jobs/{id}/continue", Need(JobsWrite), continue_job)
        .put(
            "/api/jobs/{id}/rerun/{rerun_id}",
            Need(JobsWrite),
            rerun_job,
        )
}

/// A job in Central's shape with `data[*].target` recovered from its devices' template (only a
/// group job has one: a job from the IoT Hub shape targets devices or a query).
fn render_job(
    job: &muster_domain::Job,
    state: &muster_domain::State,
    cold: &dyn muster_domain::RunRows,
) -> Value {
    let template = match job.spec.target.selector {
        TargetSelector::Group(_) => job_template(job, &state.registry, cold),
        _ => None,
    };
    let mut v = central_job_json(job, template);
    crate::window::add_state(&mut v, job, now());
    v
}

async fn list_jobs(State(app): State<App>, list: ListRequest) -> Result<Response, ApiError> {
    let mut p = list.page("GET /api/jobs", &[], |s: &str| JobId::new(s))?;
    let progress = flag(&list.q, "progress")?;
    let (items, next) = app
        .read_cold(|s, cold| {
            page(&s.jobs, p.after.as_ref(), p.size, |_, j| {
                Some(with_progress(render_job(j, s, cold), j, progress))
            })
        })
        .await?;
    if progress {
        p.carry("progress", "true");
    }
    Ok(list.answer(&p, items, next))
}

async fn get_job(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    let progress = flag(&q, "progress")?;
    app.read_cold(|s, cold| {
        s.jobs
            .get(&id)
            .map(|j| with_progress(render_job(j, s, cold), j, progress))
    })
    .await?
    .map(ok_json)
    .ok_or_else(|| job_not_found(&id))
}

/// `PUT /api/jobs/{id}`: creates the job (409 if the id is taken: a job's definition does not
/// change once it runs). The answer is the job as the create command left it, `pending` as the
/// seed shows, even if the leader has started it in the meantime; GET shows the live status.
async fn put_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    job_id(&id)?;
    let req = job_request_from_central(&body, &id)?;
    let id = req.id;
    app.write(
        &caller,
        Command::CreateJob {
            id: id.clone(),
            spec: req.spec,
            at: now(),
        },
        JOB,
    )
    .await?;
    let json = app.read_applied(|s| {
        s.jobs.get(&id).map(|j| {
            let mut v = central_job_json(j, req.template.as_deref());
            if let Some(m) = v.as_object_mut() {
                m.insert("status".into(), Value::String("pending".into()));
            }
            v
        })
    });
    json.map(ok_json).ok_or_else(|| {
        internal(&format!(
            "job {id} missing right after its creation applied"
        ))
    })
}

/// `GET /api/jobs/{id}/devices`: the devices of the job's current run (after a rerun, the rerun's
/// devices), in device id order.
///
/// muster extensions (the console's device table; absent, the answer is IoT Central's):
/// `status=` keeps devices in these statuses (comma-separated; muster's names `pending`,
/// `running`, `succeeded`, `failed`, `timedOut`, `cancelled`, or IoT Central's `completed`,
/// where `failed` also means timed out), `search=` keeps ids containing the text, and
/// `details=true` adds each device's batch, attempts, times, failure and response. The filters
/// run on the server, page by page, so a 100,000-device run is never sent whole.
async fn job_devices(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    list: ListRequest,
) -> Result<Response, ApiError> {
    let route = "GET /api/jobs/{id}/devices";
    let mut p = list.page(route, &[], |s: &str| DeviceId::new(s))?;
    let id = job_id(&id)?;
    let filter = DeviceFilter::from_params(&list.q)?;
    let details = flag(&list.q, "details")?;
    let found = app
        .read_cold(|s, cold| {
            s.jobs.get(&id).map(|j| {
                if j.detail_expired {
                    return Err(detail_expired(&id));
                }
                let run = j.current_run();
                page_rows(&id, run, cold, p.after.as_ref(), p.size, |d| {
                    filter.keeps(d).then(|| {
                        if details {
                            job_device_details_json(d, run.number.0)
                        } else {
                            central_job_device_json(d)
                        }
                    })
                })
                .map_err(ApiError::from)
            })
        })
        .await?;
    let (items, next) = found.ok_or_else(|| job_not_found(&id))??;
    filter.carry(&mut p);
    if details {
        p.carry("details", "true");
    }
    Ok(list.answer(&p, items, next))
}

/// 410 Gone: retention dropped the job's device list; the job itself still answers.
fn detail_expired(id: &JobId) -> ApiError {
    ApiError::new(
        410,
        "JobDetailExpired",
        format!(
            "job {id}: its device detail expired under the retention limit (retention.finished_jobs); GET /api/jobs/{id} still has its summary and GET /api/jobs/{id}/events its history"
        ),
    )
}

/// A muster extension's `true`/`false` query flag (absent: false).
fn flag(q: &Params, name: &str) -> Result<bool, ApiError> {
    match q.get(name) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            name,
            format!("must be true or false, got {}", crate::json::quote(other)),
        )),
    }
}

/// Adds `progress` (the current run's counts, as the console's event stream has them) to a job
/// in Central's shape when the caller asked for it with `progress=true`.
fn with_progress(mut v: Value, job: &muster_domain::Job, progress: bool) -> Value {
    if progress {
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "progress".into(),
                crate::watch::domain_stats_json(&job.stats()),
            );
        }
    }
    v
}

/// The device filter of `GET /api/jobs/{id}/devices` (a muster extension).
struct DeviceFilter {
    statuses: Vec<DeviceStatus>,
    search: Option<String>,
    raw_status: Option<String>,
}

impl DeviceFilter {
    fn from_params(q: &Params) -> Result<DeviceFilter, ApiError> {
        let mut statuses = Vec::new();
        let raw_status = q
            .get("status")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        for name in raw_status.iter().flat_map(|s| s.split(',')) {
            let more: &[DeviceStatus] = match name.trim() {
                "pending" => &[DeviceStatus::Pending],
                "running" => &[DeviceStatus::Running],
                "succeeded" | "completed" => &[DeviceStatus::Succeeded],
                "failed" => &[DeviceStatus::Failed, DeviceStatus::TimedOut],
                "timedOut" => &[DeviceStatus::TimedOut],
                "cancelled" => &[DeviceStatus::Cancelled],
                other => {
                    return Err(ApiError::bad_request(
                        "status",
                        format!(
                            "{} is not a device status; use pending, running, succeeded (or completed), failed, timedOut or cancelled, comma-separated",
                            crate::json::quote(other)
                        ),
                    ))
                }
            };
            statuses.extend_from_slice(more);
        }
        let search = q
            .get("search")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(DeviceFilter {
            statuses,
            search,
            raw_status,
        })
    }

    fn keeps(&self, d: &DeviceRun) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&d.status))
            && self
                .search
                .as_deref()
                .is_none_or(|s| d.device.as_str().contains(s))
    }

    /// The filter again, for the `nextLink`.
    fn carry<K>(&self, p: &mut Page<K>) {
        if let Some(st) = &self.raw_status {
            p.carry("status", st);
        }
        if let Some(q) = &self.search {
            p.carry("search", q);
        }
    }
}

/// One device of a job run with everything the console's device table and CSV show (the
/// columns of `muster job devices --output csv`).
fn job_device_details_json(d: &DeviceRun, run: u32) -> Value {
    let time = |t: Option<muster_types::Timestamp>| {
        t.map_or(Value::Null, |t| Value::String(t.to_string()))
    };
    serde_json::json!({
        "id": d.device.as_str(),
        "status": central_device_status(d.status),
        "outcome": d.status.as_str(),
        "run": run,
        "batch": d.batch,
        "attempts": d.attempts,
        "dispatchedAt": time(d.dispatched_at),
        "finishedAt": time(d.finished_at),
        "failureReason": d.last_error.as_ref().map(failure_code),
        "lastError": d.last_error.as_ref().map(FailureReason::describe),
        "response": d.response.as_ref().map(|r| serde_json::json!({
            "status": r.status,
            "payload": &r.payload,
        })),
    })
}

/// The short name of a failure, as `muster job devices --output csv` writes it.
fn failure_code(r: &FailureReason) -> &'static str {
    match r {
        FailureReason::DeviceError { .. } => "deviceError",
        FailureReason::Timeout => "timeout",
        FailureReason::NotConnected => "notConnected",
        FailureReason::DeviceNotFound => "deviceNotFound",
        FailureReason::DeviceDisabled => "deviceDisabled",
        FailureReason::DispatchFailed { .. } => "dispatchFailed",
    }
}

/// `GET /api/jobs/{id}/events`: the job's history from this node's event log, in seq order;
/// `$skiptoken` is the seq the previous page ended with.
///
/// Read through the store's per-job index, so a page costs what the job wrote.
async fn job_events(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    list: ListRequest,
) -> Result<Response, ApiError> {
    let p = list.page("GET /api/jobs/{id}/events", &[], |s: &str| s.parse::<u64>())?;
    let id = job_id(&id)?;
    if !app.read(|s| s.jobs.contains_key(&id)).await? {
        return Err(job_not_found(&id));
    }
    let reader = app.cluster.reader().clone();
    let start = p.after.map_or(1, |seq| seq.saturating_add(1));
    let size = p.size;
    let (items, next) =
        tokio::task::spawn_blocking(move || history_page(&reader, &id, start, size))
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| internal(&e))?;
    Ok(list.answer(&p, items, next))
}

/// Up to `size` of the job's events from seq `start` on, and the token for the next page when
/// at least one more event of the job follows. Read through the store's per-job index: a page
/// costs what the job wrote, not the length of the log.
fn history_page(
    log: &impl EventLog,
    job: &JobId,
    start: u64,
    size: usize,
) -> Result<(Vec<Value>, Option<String>), muster_cluster::StoreError> {
    let from = start.max(log.first_seq_available());
    let records = log.read_job_records(job, from, size.saturating_add(1))?;
    let next = (records.len() > size).then(|| {
        let last = size.checked_sub(1).and_then(|i| records.get(i));
        last.map_or(from.saturating_sub(1), |r| r.seq).to_string()
    });
    let items = records
        .iter()
        .take(size)
        .map(|r| event_json(r.seq, &r.event, &r.principal))
        .collect();
    Ok((items, next))
}

async fn stop_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    job_action(&app, &caller, &id, &q, |id, at| Command::StopJob { id, at }).await
}

async fn resume_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    job_action(&app, &caller, &id, &q, |id, at| Command::ResumeJob {
        id,
        at,
    })
    .await
}

/// `POST /api/jobs/{id}/continue` (muster extension): starts the next batch of a job its gate
/// paused between batches.
async fn continue_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    job_action(&app, &caller, &id, &q, |id, at| Command::ContinueJob {
        id,
        at,
    })
    .await
}

/// The body-less job actions (stop, resume, continue): one command, answered 204.
async fn job_action(
    app: &App,
    caller: &Caller,
    id: &str,
    q: &Params,
    command: impl FnOnce(JobId, muster_types::Timestamp) -> Command,
) -> Result<StatusCode, ApiError> {
    version(q)?;
    let id = job_id(id)?;
    app.write(caller, command(id, now()), JOB).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/jobs/{id}/rerun/{rerunId}`: a new run over the devices that failed or timed out in
/// the last one; answers the job (200) as it is after the rerun was applied.
async fn rerun_job(
    State(app): State<App>,
    caller: Caller,
    PathParams((id, rerun)): PathParams<(String, String)>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    let rerun_id = RerunId::new(rerun)
        .map_err(|e| ApiError::bad_request("rerunId", format!("{e} (the rerun id in the URL)")))?;
    app.write(
        &caller,
        Command::RerunJob {
            id: id.clone(),
            rerun_id,
            at: now(),
        },
        RERUN,
    )
    .await?;
    app.read_applied_cold(|s, cold| s.jobs.get(&id).map(|j| render_job(j, s, cold)))
        .map(ok_json)
        .ok_or_else(|| job_not_found(&id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use muster_domain::Event;
    use muster_types::Timestamp;

    /// An in-memory log: seq i+first holds events[i].
    struct Log {
        first: u64,
        events: Vec<Event>,
    }

    impl EventLog for Log {
        fn last_seq(&self) -> u64 {
            self.first + self.events.len() as u64 - 1
        }
        fn first_seq_available(&self) -> u64 {
            self.first
        }
        fn read_records(
            &self,
            from_seq: u64,
            limit: usize,
        ) -> Result<Vec<muster_store::StoredEvent>, muster_cluster::StoreError> {
            // History pages show no hashes; any will do.
            Ok((self.first..)
                .zip(self.events.iter().cloned())
                .filter(|(s, _)| *s >= from_seq)
                .take(limit)
                .map(|(seq, event)| muster_store::StoredEvent {
                    seq,
                    event,
                    hash: [0; 32],
                    principal: if seq % 2 == 0 {
                        muster_domain::Principal::Anonymous
                    } else {
                        muster_domain::Principal::System
                    },
                })
                .collect())
        }
    }

    fn stopped(job: &str, at: i64) -> Event {
        Event::JobStopped {
            job: JobId::new(job).unwrap(),
            at: Timestamp::from_millis(at),
        }
    }

    #[test]
    fn history_pages_hold_only_the_job_and_end_without_a_token() {
        // j1 at seqs 1, 3, 5, ..., j2 in between; 2,500 events cross several read chunks.
        let events = (0..2500)
            .map(|i| stopped(if i % 2 == 0 { "j1" } else { "j2" }, i))
            .collect();
        let log = Log { first: 1, events };
        let j1 = JobId::new("j1").unwrap();
        let (page, next) = history_page(&log, &j1, 1, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0]["seq"], 1);
        assert_eq!(page[1]["seq"], 3);
        assert_eq!(page[1]["principal"], "system");
        assert_eq!(next.as_deref(), Some("3"));

        let mut seqs = Vec::new();
        let mut start = 1;
        loop {
            let (page, next) = history_page(&log, &j1, start, 300).unwrap();
            seqs.extend(page.iter().map(|v| v["seq"].as_u64().unwrap()));
            match next {
                Some(t) => start = t.parse::<u64>().unwrap() + 1,
                None => break,
            }
        }
        assert_eq!(seqs, (1..=2500).step_by(2).collect::<Vec<u64>>());

        // Exactly a page's worth left: no token for an empty page.
        let (page, next) = history_page(&log, &j1, 2497, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, None);

        let none = JobId::new("j3").unwrap();
        assert_eq!(history_page(&log, &none, 1, 10).unwrap(), (vec![], None));
    }

    #[test]
    fn history_starts_at_the_oldest_event_held() {
        let log = Log {
            first: 10,
            events: vec![stopped("j1", 0), stopped("j1", 1)],
        };
        let j1 = JobId::new("j1").unwrap();
        let (page, next) = history_page(&log, &j1, 1, 10).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0]["seq"], 10);
        assert_eq!(page[0]["principal"], "anonymous");
        assert_eq!(next, None);
    }
}
