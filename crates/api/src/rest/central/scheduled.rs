//! IoT Central's `/api/scheduledJobs` routes (2022-07-31): a job template that creates a job at
//! each occurrence of its schedule (`muster_domain::schedule`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_domain::schedule::ScheduledJobSpec;
use muster_domain::Command;
use muster_types::{JobId, ScheduledJobId};

use super::{if_match, version, ListRequest, ParseId};
use crate::access::Access::Need;
use crate::central::central_job_json;
use crate::central_schedule::{render, scheduled_job_from_central, scheduled_job_patch};
use crate::error::ApiError;
use crate::rest::errors::Codes;
use crate::rest::extract::{Caller, JsonText, Params, PathParams};
use crate::rest::guard::Routes;
use crate::rest::{ok_json, page, path_id, App};

const SCHEDULED: Codes = Codes {
    not_found: "ScheduledJobNotFound",
    exists: "ScheduledJobExists",
};

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/api/scheduledJobs", Need(JobsRead), list)
        .get("/api/scheduledJobs/{id}", Need(JobsRead), get)
        .put("/api/scheduledJobs/{id}", Need(JobsWrite), put)
        .patch("/api/scheduledJobs/{id}", Need(JobsWrite), patch)
        .delete("/api/scheduledJobs/{id}", Need(JobsWrite), delete)
        .get("/api/scheduledJobs/{id}/jobs", Need(JobsRead), jobs)
}

fn scheduled_id(s: &str) -> Result<ScheduledJobId, ApiError> {
    path_id(
        s,
        |s: &str| ScheduledJobId::new(s),
        "id",
        "scheduled job id",
    )
}

fn not_found(id: &ScheduledJobId) -> ApiError {
    ApiError::new(
        404,
        "ScheduledJobNotFound",
        format!("scheduled job {id} does not exist; check the id in the URL (GET /api/scheduledJobs lists them)"),
    )
}

impl ParseId<muster_types::IdError> for ScheduledJobId {
    fn parse_id(s: &str) -> Result<Self, muster_types::IdError> {
        ScheduledJobId::new(s)
    }
}

/// `GET /api/scheduledJobs`, in id order, paged with `maxpagesize` like the other lists.
async fn list(State(app): State<App>, list: ListRequest) -> Result<Response, ApiError> {
    let p = list.page("GET /api/scheduledJobs", &[], ScheduledJobId::parse_id)?;
    let (items, next) = app
        .read(|s| {
            page(&s.schedules, p.after.as_ref(), p.size, |_, j| {
                Some(render(j))
            })
        })
        .await?;
    Ok(list.answer(&p, items, next))
}

async fn get(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = scheduled_id(&id)?;
    app.read(|s| s.schedules.get(&id).map(render))
        .await?
        .map(ok_json)
        .ok_or_else(|| not_found(&id))
}

/// `PUT /api/scheduledJobs/{id}`: creates the scheduled job or replaces it. The body's `etag`
/// (or `If-Match`) makes it replace only the version read (412 otherwise, 404 if none).
async fn put(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let sid = scheduled_id(&id)?;
    let req = scheduled_job_from_central(&body, &id)?;
    let if_version = if_match(&headers)?.or(req.etag);
    save(&app, &caller, sid, req.spec, if_version).await
}

/// `PATCH /api/scheduledJobs/{id}`: a JSON merge patch (e.g. `{"enabled": false}`); 404 for a
/// scheduled job that does not exist. Made on the version read (or the `etag` given), so a
/// concurrent save is a 412, never overwritten.
async fn patch(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let sid = scheduled_id(&id)?;
    let current = app
        .read(|s| s.schedules.get(&sid).cloned())
        .await?
        .ok_or_else(|| not_found(&sid))?;
    let req = scheduled_job_patch(&current, &body, &id)?;
    let wanted = if_match(&headers)?.or(req.etag);
    save(
        &app,
        &caller,
        sid,
        req.spec,
        Some(wanted.unwrap_or(current.version)),
    )
    .await
}

async fn save(
    app: &App,
    caller: &Caller,
    id: ScheduledJobId,
    spec: ScheduledJobSpec,
    if_version: Option<u64>,
) -> Result<Response, ApiError> {
    app.write(
        caller,
        Command::SaveScheduledJob {
            id: id.clone(),
            spec,
            if_version,
            at: now(),
        },
        SCHEDULED,
    )
    .await?;
    app.read_applied(|s| s.schedules.get(&id).map(render))
        .map(ok_json)
        .ok_or_else(|| not_found(&id))
}

/// `DELETE /api/scheduledJobs/{id}`: 204; the jobs it created stay.
async fn delete(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = scheduled_id(&id)?;
    app.write(
        &caller,
        Command::DeleteScheduledJob { id, at: now() },
        SCHEDULED,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/scheduledJobs/{id}/jobs`: the jobs it created that retention has not removed, in
/// id order, paged with `maxpagesize`, each as `GET /api/jobs/{id}` shows it.
async fn jobs(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    list: ListRequest,
) -> Result<Response, ApiError> {
    let p = list.page("GET /api/scheduledJobs/{id}/jobs", &[], |s: &str| {
        JobId::new(s)
    })?;
    let sid = scheduled_id(&id)?;
    let found = app
        .read(|s| {
            s.schedules.get(&sid).map(|sj| {
                let mine: std::collections::BTreeMap<&JobId, ()> =
                    sj.jobs.iter().map(|j| (j, ())).collect();
                let after = p.after.as_ref();
                page(&mine, after.as_ref(), p.size, |j, _| {
                    s.jobs.get(*j).map(|job| central_job_json(job, None))
                })
            })
        })
        .await?;
    let (items, next) = found.ok_or_else(|| not_found(&sid))?;
    Ok(list.answer(&p, items, next))
}
