//! IoT Central's routes: `/api/jobs`, `/api/deviceGroups`, `/api/devices`.
//!
//! Every route requires `api-version` (one of [`CENTRAL_API_VERSIONS`]), as IoT Central does.
//! Lists answer `{"value": [...], "nextLink": "http://<Host>/...&$skiptoken=..."}` in id order,
//! `nextLink` absent on the last page; `maxpagesize` (1..=1000, default 100) sets the page size
//! and is carried in the link. `GET /api/devices` also takes `filter` and `orderby` (see
//! [`crate::central_filter`]), carried in the link too. `GET /api/jobs/{id}/events` (muster's own addition) pages through
//! a job's history the same way, its token being the seq the page ended with.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use muster_domain::auth::Permission;
use muster_domain::{Command, DeviceRun, DeviceStatus, FailureReason, TargetSelector};
use muster_types::{DeviceId, GroupId, JobId, RerunId};
use serde_json::Value;

use super::errors::{internal, DEVICE, GROUP, JOB, RERUN};
use super::extract::{base_url, Caller, JsonText, Params, PathParams};
use super::guard::Routes;
use super::{ok_json, page, path_id, token, App};
use crate::access::Access::Need;
use crate::central::{
    central_device_group_json, central_device_json, central_device_status, central_job_device_json,
    central_job_json, central_page, check_api_version, device_group_from_central,
    device_registration_from_central, job_request_from_central, job_template, next_link,
    percent_encode, CENTRAL_API_VERSIONS, NEXT_LINK_TOKEN_PARAM,
};
use crate::central::{central_properties_json, device_patch_from_central, properties_from_central};
use crate::central_filter::{self, DeviceFields};
use crate::error::ApiError;
use crate::history::event_json;
use muster_cluster::{now, EventLog};
use std::collections::BTreeMap;

/// Page size of a list when `maxpagesize` is not given.
const DEFAULT_PAGE: usize = 100;
/// Largest `maxpagesize` accepted.
const MAX_PAGE: usize = 1000;

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
        .put(
            "/api/jobs/{id}/rerun/{rerun_id}",
            Need(JobsWrite),
            rerun_job,
        )
        .get("/api/deviceGroups", Need(DevicesRead), list_groups)
        .get("/api/deviceGroups/{id}", Need(DevicesRead), get_group)
        .put("/api/deviceGroups/{id}", Need(GroupsWrite), put_group)
        .delete("/api/deviceGroups/{id}", Need(GroupsWrite), delete_group)
        .get("/api/devices", Need(DevicesRead), list_devices)
        .get("/api/devices/{id}", Need(DevicesRead), get_device)
        .put("/api/devices/{id}", Need(DevicesWrite), put_device)
        .patch("/api/devices/{id}", Need(DevicesWrite), patch_device)
        .delete("/api/devices/{id}", Need(DevicesWrite), delete_device)
        .get(
            "/api/devices/{id}/properties",
            Need(DevicesRead),
            get_properties,
        )
        .put(
            "/api/devices/{id}/properties",
            Need(TwinsWrite),
            put_properties,
        )
        .patch(
            "/api/devices/{id}/properties",
            Need(TwinsWrite),
            patch_properties,
        )
}

/// The checked `api-version`, kept for the `nextLink`.
pub(super) fn version(q: &Params) -> Result<String, ApiError> {
    let v = q.get("api-version");
    check_api_version(v, CENTRAL_API_VERSIONS)?;
    Ok(v.unwrap_or_default().to_string())
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    path_id(s, |s: &str| JobId::new(s), "id", "job id")
}

fn group_id(s: &str) -> Result<GroupId, ApiError> {
    path_id(s, |s: &str| GroupId::new(s), "id", "device group id")
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    path_id(s, |s: &str| DeviceId::new(s), "id", "device id")
}

fn job_not_found(id: &JobId) -> ApiError {
    ApiError::new(
        404,
        "JobNotFound",
        format!("job {id} does not exist; check the id in the URL (GET /api/jobs lists the jobs)"),
    )
}

fn group_not_found(id: &GroupId) -> ApiError {
    ApiError::new(
        404,
        "DeviceGroupNotFound",
        format!("device group {id} does not exist; check the id in the URL (GET /api/deviceGroups lists them)"),
    )
}

/// The properties of the device `id` as IoT Central shows them, or its 404 for the device.
fn properties_view(s: &muster_domain::State, id: &DeviceId) -> Result<Response, ApiError> {
    s.registry
        .devices
        .get(id)
        .map(|d| ok_json(central_properties_json(d)))
        .ok_or_else(|| device_not_found(id))
}

fn device_not_found(id: &DeviceId) -> ApiError {
    ApiError::new(
        404,
        "DeviceNotFound",
        format!("device {id} is not registered; check the id in the URL (PUT /api/devices/{{id}} registers one)"),
    )
}

/// The list paging parameters: page size and the token (`$skiptoken`) parsed by `parse`.
struct Paging<K> {
    size: usize,
    size_given: bool,
    after: Option<K>,
}

impl<K> Paging<K> {
    /// The page size alone, for building the `nextLink`.
    fn map(&self) -> Paging<()> {
        Paging {
            size: self.size,
            size_given: self.size_given,
            after: None,
        }
    }
}

fn paging<K, E>(q: &Params, parse: impl Fn(&str) -> Result<K, E>) -> Result<Paging<K>, ApiError> {
    // IoT Central writes its list options without `$` (`filter`, `orderby`, `maxpagesize`); the
    // `$` spellings and the other OData options are not part of its reference, and answering the
    // whole list as if they had been applied would mislead the caller.
    for option in ["$filter", "$top", "$orderby", "$skip", "$select", "$expand"] {
        if q.get(option).is_some() {
            return Err(ApiError::bad_request(
                option,
                "is not an IoT Central list option; IoT Central's are written without $: maxpagesize (page size), and on GET /api/devices filter and orderby, e.g. ?api-version=2022-07-31&filter=contains(displayName, 'thermostat')&orderby=displayName&maxpagesize=10",
            ));
        }
    }
    let raw = q.get("maxpagesize").filter(|s| !s.is_empty());
    let size = match raw {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "maxpagesize",
                    format!(
                        "must be a whole number from 1 to {MAX_PAGE}, got {}",
                        crate::json::quote(s)
                    ),
                ))
            }
        },
    };
    Ok(Paging {
        size,
        size_given: raw.is_some(),
        after: token(q.get(NEXT_LINK_TOKEN_PARAM), NEXT_LINK_TOKEN_PARAM, parse)?,
    })
}

/// `{"value": [...], "nextLink": ...}` for a page that ended with `next` (`None`: last page).
fn list_page<K>(
    headers: &HeaderMap,
    uri: &Uri,
    api_version: &str,
    paging: &Paging<K>,
    items: Vec<Value>,
    next: Option<String>,
    extra: &str,
) -> Response {
    let link = next_link(
        &base_url(headers, uri),
        uri.path(),
        api_version,
        next.as_deref(),
    )
    .map(|l| {
        let l = format!("{l}{extra}");
        if paging.size_given {
            format!("{l}&maxpagesize={}", paging.size)
        } else {
            l
        }
    });
    ok_json(central_page(items, link))
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// A job in Central's shape with `data[*].target` recovered from its devices' template (only a
/// group job has one: a job from the IoT Hub shape targets devices or a query).
fn render_job(job: &muster_domain::Job, state: &muster_domain::State) -> Value {
    let template = match job.spec.target.selector {
        TargetSelector::Group(_) => job_template(job, &state.registry),
        _ => None,
    };
    let mut v = central_job_json(job, template);
    crate::window::add_state(&mut v, job, now());
    v
}

async fn list_jobs(
    State(app): State<App>,
    q: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let v = version(&q)?;
    device_list_only(&q, "GET /api/jobs")?;
    let p = paging(&q, |s: &str| JobId::new(s))?;
    let progress = flag(&q, "progress")?;
    let (items, next) = app
        .read(|s| {
            page(&s.jobs, p.after.as_ref(), p.size, |_, j| {
                Some(with_progress(render_job(j, s), j, progress))
            })
        })
        .await?;
    let extra = if progress { "&progress=true" } else { "" };
    Ok(list_page(&headers, &uri, &v, &p, items, next, extra))
}

async fn get_job(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    let progress = flag(&q, "progress")?;
    app.read(|s| {
        s.jobs
            .get(&id)
            .map(|j| with_progress(render_job(j, s), j, progress))
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
    q: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let v = version(&q)?;
    let id = job_id(&id)?;
    let p = paging(&q, |s: &str| DeviceId::new(s))?;
    let filter = DeviceFilter::from_params(&q)?;
    let details = flag(&q, "details")?;
    let found = app
        .read(|s| {
            s.jobs.get(&id).map(|j| {
                let run = j.current_run();
                page(&run.index, p.after.as_ref(), p.size, |_, &pos| {
                    run.devices
                        .get(pos as usize)
                        .filter(|d| filter.keeps(d))
                        .map(|d| {
                            if details {
                                job_device_details_json(d, run.number.0)
                            } else {
                                central_job_device_json(d)
                            }
                        })
                })
            })
        })
        .await?;
    let (items, next) = found.ok_or_else(|| job_not_found(&id))?;
    let mut extra = filter.link_params();
    if details {
        extra.push_str("&details=true");
    }
    Ok(list_page(&headers, &uri, &v, &p, items, next, &extra))
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
    fn link_params(&self) -> String {
        let mut s = String::new();
        if let Some(st) = &self.raw_status {
            s.push_str(&format!("&status={}", percent_encode(st)));
        }
        if let Some(q) = &self.search {
            s.push_str(&format!("&search={}", percent_encode(q)));
        }
        s
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
            "payload": &*r.payload,
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

/// Events read from the log per step of a history scan.
const HISTORY_CHUNK: usize = 1024;

/// `GET /api/jobs/{id}/events`: the job's history from this node's event log, in seq order;
/// `$skiptoken` is the seq the previous page ended with.
///
/// The log has no per-job index, so a page scans the log from the token on: cheap for recent
/// jobs and short logs, proportional to the log for an old job in a long one.
async fn job_events(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let v = version(&q)?;
    let id = job_id(&id)?;
    let p = paging(&q, |s: &str| s.parse::<u64>())?;
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
    Ok(list_page(&headers, &uri, &v, &p, items, next, ""))
}

/// Up to `size` of the job's events from seq `start` on, and the token for the next page when
/// at least one more event of the job follows.
fn history_page(
    log: &impl EventLog,
    job: &JobId,
    start: u64,
    size: usize,
) -> Result<(Vec<Value>, Option<String>), muster_cluster::StoreError> {
    let mut items = Vec::new();
    let mut last = 0;
    let mut from = start.max(log.first_seq_available());
    loop {
        let chunk = log.read_records(from, HISTORY_CHUNK)?;
        let Some(end) = chunk.last().map(|r| r.seq) else {
            return Ok((items, None));
        };
        from = end + 1;
        for r in &chunk {
            if r.event.job() != Some(job) {
                continue;
            }
            if items.len() == size {
                return Ok((items, Some(last.to_string())));
            }
            items.push(event_json(r.seq, &r.event, &r.principal));
            last = r.seq;
        }
    }
}

async fn stop_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    app.write(&caller, Command::StopJob { id, at: now() }, JOB)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    app.write(&caller, Command::ResumeJob { id, at: now() }, JOB)
        .await?;
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
    app.read_applied(|s| s.jobs.get(&id).map(|j| render_job(j, s)))
        .map(ok_json)
        .ok_or_else(|| job_not_found(&id))
}

// ---------------------------------------------------------------------------------------------
// Device groups
// ---------------------------------------------------------------------------------------------

async fn list_groups(
    State(app): State<App>,
    q: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let v = version(&q)?;
    device_list_only(&q, "GET /api/deviceGroups")?;
    let p = paging(&q, |s: &str| GroupId::new(s))?;
    let (items, next) = app
        .read(|s| {
            page(&s.registry.groups, p.after.as_ref(), p.size, |_, g| {
                Some(central_device_group_json(g))
            })
        })
        .await?;
    Ok(list_page(&headers, &uri, &v, &p, items, next, ""))
}

async fn get_group(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = group_id(&id)?;
    app.read(|s| s.registry.groups.get(&id).map(central_device_group_json))
        .await?
        .map(ok_json)
        .ok_or_else(|| group_not_found(&id))
}

/// `PUT /api/deviceGroups/{id}`: creates or replaces the group (IoT Central's PUT). Jobs already
/// created on the group keep the filter they were created with.
async fn put_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    group_id(&id)?;
    let g = device_group_from_central(&body, &id)?;
    let gid = g.id.clone();
    app.write(
        &caller,
        Command::SaveGroup {
            id: g.id,
            display_name: g.display_name,
            query: g.filter,
            at: now(),
        },
        GROUP,
    )
    .await?;
    app.read_applied(|s| s.registry.groups.get(&gid).map(central_device_group_json))
        .map(ok_json)
        .ok_or_else(|| group_not_found(&gid))
}

async fn delete_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = group_id(&id)?;
    app.write(&caller, Command::DeleteGroup { id, at: now() }, GROUP)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// `filter` and `orderby` are documented for the device list only; on another list they are
/// refused rather than ignored.
fn device_list_only(q: &Params, route: &str) -> Result<(), ApiError> {
    for option in ["filter", "orderby"] {
        if q.get(option).is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                option,
                format!("IoT Central documents {option} for GET /api/devices only, not for {route}; leave it out and page with maxpagesize"),
            ));
        }
    }
    Ok(())
}

/// A device's place in a list sorted by `orderby=displayName`: its display name, then its id so
/// equal names keep one order across pages. The page token is this key, so the next page starts
/// right after the last device shown even if devices were added or removed in between.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NameKey {
    name: String,
    id: DeviceId,
    desc: bool,
}

impl Ord for NameKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let o = (self.name.as_str(), &self.id).cmp(&(other.name.as_str(), &other.id));
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }
}

impl PartialOrd for NameKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The token: the percent-encoded name (which then holds no `/`), a `/`, and the id (device ids
/// never hold a `/`).
impl std::fmt::Display for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", percent_encode(&self.name), self.id)
    }
}

fn name_key(token: &str, desc: bool) -> Result<NameKey, ()> {
    let (name, id) = token.split_once('/').ok_or(())?;
    Ok(NameKey {
        name: central_filter::percent_decode(name).ok_or(())?,
        id: DeviceId::new(id).map_err(|_| ())?,
        desc,
    })
}

fn device_fields(d: &muster_domain::Device) -> DeviceFields<'_> {
    DeviceFields {
        id: d.id.as_str(),
        display_name: &d.display_name,
        template: d.model_id.as_deref(),
        enabled: d.enabled,
        provisioned: d.connection != muster_domain::ConnectionState::Unknown,
        simulated: false,
    }
}

/// `GET /api/devices`, with IoT Central's `filter`, `orderby` and `maxpagesize`; the `nextLink`
/// carries all three, so every page of a filtered, sorted list holds the next devices of it.
async fn list_devices(
    State(app): State<App>,
    q: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let v = version(&q)?;
    let raw_filter = q.get("filter").unwrap_or_default().to_string();
    let raw_order = q.get("orderby").unwrap_or_default().to_string();
    let filter = central_filter::parse_filter(&raw_filter)?;
    let order = central_filter::parse_orderby(&raw_order)?;
    let keeps =
        |d: &muster_domain::Device| filter.as_ref().is_none_or(|f| f.keeps(&device_fields(d)));
    let mut extra = String::new();
    if filter.is_some() {
        extra.push_str(&format!("&filter={}", percent_encode(&raw_filter)));
    }
    if order.is_some() {
        extra.push_str(&format!("&orderby={}", percent_encode(raw_order.trim())));
    }
    let (items, next, p) = match order {
        None => {
            let p = paging(&q, |s: &str| DeviceId::new(s))?;
            let (items, next) = app
                .read(|s| {
                    page(&s.registry.devices, p.after.as_ref(), p.size, |_, d| {
                        keeps(d).then(|| central_device_json(d))
                    })
                })
                .await?;
            (items, next, p.map())
        }
        Some(o) => {
            let p = paging(&q, |s: &str| name_key(s, o.desc))?;
            let (items, next) = app
                .read(|s| {
                    let sorted: BTreeMap<NameKey, &muster_domain::Device> = s
                        .registry
                        .devices
                        .values()
                        .filter(|d| keeps(d))
                        .map(|d| {
                            let k = NameKey {
                                name: d.display_name.clone(),
                                id: d.id.clone(),
                                desc: o.desc,
                            };
                            (k, d)
                        })
                        .collect();
                    page(&sorted, p.after.as_ref(), p.size, |_, d| {
                        Some(central_device_json(d))
                    })
                })
                .await?;
            (items, next, p.map())
        }
    };
    Ok(list_page(&headers, &uri, &v, &p, items, next, &extra))
}

async fn get_device(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| s.registry.devices.get(&id).map(central_device_json))
        .await?
        .map(ok_json)
        .ok_or_else(|| device_not_found(&id))
}

/// `PUT /api/devices/{id}`: registers the device, or updates its display name, template and
/// enabled flag if it exists (IoT Central's create-or-update); its twin is kept.
async fn put_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    device_id(&id)?;
    let reg = device_registration_from_central(&body, &id)?;
    let did = reg.id.clone();
    app.write(
        &caller,
        Command::RegisterDevices {
            devices: vec![reg],
            upsert: true,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| s.registry.devices.get(&did).map(central_device_json))
        .map(ok_json)
        .ok_or_else(|| device_not_found(&did))
}

/// `If-Match` with a device's etag makes a write conditional (412 if it changed since).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = headers
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    crate::hub::etag_version(raw.as_deref())
}

/// `PATCH /api/devices/{id}`: changes only the fields given (`displayName`, `template`,
/// `enabled`); 404 for a device that does not exist.
async fn patch_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let did = device_id(&id)?;
    let if_version = if_match(&headers)?;
    let p = device_patch_from_central(&body, &id)?;
    app.write(
        &caller,
        Command::UpdateDevice {
            device: did.clone(),
            display_name: p.display_name,
            model_id: p.template,
            enabled: p.enabled,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| s.registry.devices.get(&did).map(central_device_json))
        .map(ok_json)
        .ok_or_else(|| device_not_found(&did))
}

/// `DELETE /api/devices/{id}`: 204; jobs that still list the device fail it as not registered.
async fn delete_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let did = device_id(&id)?;
    let if_version = if_match(&headers)?;
    app.write(
        &caller,
        Command::DeleteDevice {
            device: did,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_properties(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| properties_view(s, &id)).await?
}

/// `PUT /api/devices/{id}/properties`: the values given become the device's whole set of
/// properties set from the service (desired properties), replacing the previous set.
async fn put_properties(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let desired = properties_from_central(&body, true)?;
    app.write(
        &caller,
        Command::ReplaceTwin {
            device: id.clone(),
            tags: None,
            desired,
            if_version: None,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| properties_view(s, &id))
}

/// `PATCH /api/devices/{id}/properties`: sets the values given (JSON merge patch of the
/// desired properties; `null` removes one).
async fn patch_properties(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let desired = properties_from_central(&body, false)?;
    app.write(
        &caller,
        Command::UpdateTwin {
            device: id.clone(),
            tags: None,
            desired: Some(desired),
            if_version: None,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| properties_view(s, &id))
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
