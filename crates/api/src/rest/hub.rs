//! IoT Hub's routes: `/jobs/v2/{jobId}`, `/jobs/v2/{jobId}/cancel`, `/jobs/v2/query`,
//! `/devices`, `/devices/{deviceId}`, `/twins/{deviceId}`. Every route requires `api-version`
//! (one of [`HUB_API_VERSIONS`]).
//!
//! # Device identities and ETags
//!
//! `PUT /devices/{id}` without `If-Match` creates (409 `DeviceAlreadyExists` if the id is
//! taken); with `If-Match: *` it replaces the identity of a device that exists, with
//! `If-Match: "<etag>"` only at that etag (412 `PreconditionFailed` otherwise); both are 404
//! `DeviceNotFound` for a device that does not exist. `DELETE /devices/{id}` (204) takes the
//! same `If-Match` (absent or `*`: unconditional). Twins (`PATCH`/`PUT /twins/{id}`) use the
//! twin's own etag the same way. Keys left out of a PUT are generated here and carried in the
//! command; the core keeps an existing device's keys (see `muster_domain`'s `PutDeviceIdentity`).
//!
//! # Job query paging
//!
//! `GET /jobs/v2/query` answers the reference's `QueryResult`: `{"type": "jobResponse", "items":
//! [jobs...], "continuationToken": "..."}` (the token only when more jobs follow), in job id
//! order, and the same token in the `x-ms-continuation` response header. The next request passes
//! it back either in the `x-ms-continuation` request header (what the SDKs do) or as the
//! `continuationToken` query parameter (what the seed shows); the query parameter wins if both are
//! sent. The page size is `pageSize` or, as the SDKs send it, the `x-ms-max-item-count` header
//! (1..=1000, default 100). `jobType` takes `scheduleDeviceMethod` / `scheduleUpdateTwin` (and
//! the seed's names); `jobStatus` takes IoT Hub's statuses (`queued` and `enqueued` mean
//! `pending`). A token belongs to its query's `jobType` and `jobStatus`: sent with others it is
//! a 400 saying it belongs to another listing ([`muster_domain::page_token`]).
//!
//! A job whose id is `query` cannot be read through `GET /jobs/v2/query` (that path is the
//! query); it can through IoT Central's `GET /api/jobs/query`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_domain::{page_token, Command, Device, DeviceKeys, IdentityCondition, Job};
use muster_types::{DeviceId, JobId};
use serde_json::{json, Value};

use super::errors::{internal, DEVICE, JOB};
use super::extract::{Caller, JsonText, Params, PathParams};
use super::guard::Routes;
use super::{ok_json, page, path_id, token, App};
use crate::access::Access::Need;
use crate::central::check_api_version;
use crate::error::ApiError;
use crate::hub::{
    device_identity_from_hub, etag_version, hub_device_json, hub_job_json, hub_twin_json,
    job_spec_from_hub, page_size, twin_patch_from_hub, twin_replace_from_hub, HubJobFilter,
    HUB_API_VERSIONS,
};
use crate::hub_devices::device_etag;

/// IoT Hub's continuation header, in requests and responses.
pub(super) const CONTINUATION: HeaderName = HeaderName::from_static("x-ms-continuation");
/// IoT Hub's page-size header (the SDKs' way of sending `pageSize`).
const MAX_ITEM_COUNT: HeaderName = HeaderName::from_static("x-ms-max-item-count");
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/jobs/v2/query", Need(JobsRead), query_jobs)
        .put("/jobs/v2/{job_id}", Need(JobsWrite), put_job)
        .get("/jobs/v2/{job_id}", Need(JobsRead), get_job)
        .post("/jobs/v2/{job_id}/cancel", Need(JobsWrite), cancel_job)
        .get("/twins/{device_id}", Need(DevicesRead), get_twin)
        .patch("/twins/{device_id}", Need(TwinsWrite), patch_twin)
        .put("/twins/{device_id}", Need(TwinsWrite), replace_twin)
        .get("/devices", Need(DevicesRead), list_devices)
        .get("/devices/{device_id}", Need(DevicesRead), get_device)
        .put("/devices/{device_id}", Need(DevicesWrite), put_device)
        .delete("/devices/{device_id}", Need(DevicesWrite), delete_device)
}

/// Largest `top` of `GET /devices` (IoT Hub's limit).
const MAX_DEVICES_LISTED: usize = 1000;

fn version(q: &Params) -> Result<(), ApiError> {
    check_api_version(q.get("api-version"), HUB_API_VERSIONS)
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    path_id(s, |s: &str| JobId::new(s), "jobId", "job id")
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    path_id(s, |s: &str| DeviceId::new(s), "deviceId", "device id")
}

fn job_not_found(id: &JobId) -> ApiError {
    ApiError::new(
        404,
        "JobNotFound",
        format!(
            "job {id} does not exist; check the id in the URL (GET /jobs/v2/query lists the jobs)"
        ),
    )
}

/// `render` of the device `id` as it is in `s`, or IoT Hub's 404 for it.
fn device_view<T>(
    s: &muster_domain::State,
    id: &DeviceId,
    render: impl FnOnce(&muster_domain::registry::Device) -> T,
) -> Result<T, ApiError> {
    s.registry
        .devices
        .get(id)
        .map(render)
        .ok_or_else(|| device_not_found(id))
}

fn device_not_found(id: &DeviceId) -> ApiError {
    ApiError::new(
        404,
        "DeviceNotFound",
        format!("device {id} is not registered; check the id in the URL"),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `PUT /jobs/v2/{jobId}`: creates the job (409 if the id is taken). The answer is the job as
/// the create command left it: `scheduled` with a future `startTime`, otherwise `pending`, every
/// device pending, even if the leader has started it since; GET shows the live state.
async fn put_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    job_id(&id)?;
    let (id, spec) = job_spec_from_hub(&body, &id)?;
    app.write(
        &caller,
        Command::CreateJob {
            id: id.clone(),
            spec,
            at: now(),
        },
        JOB,
    )
    .await?;
    app.read_applied(|s| s.jobs.get(&id).map(as_created))
        .map(ok_json)
        .ok_or_else(|| {
            internal(&format!(
                "job {id} missing right after its creation applied"
            ))
        })
}

fn as_created(j: &Job) -> Value {
    let mut v = hub_job_json(j);
    let scheduled = j.start_at.is_some_and(|t| t > j.created_at);
    let n = j.runs.first().map_or(0, |r| r.stats.devices);
    // `insert` on an existing key keeps its place, so the field order stays the GET order.
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "status".into(),
            json!(if scheduled { "scheduled" } else { "pending" }),
        );
        m.insert(
            "deviceJobStatistics".into(),
            json!({
                "deviceCount": n,
                "failedCount": 0,
                "succeededCount": 0,
                "runningCount": 0,
                "pendingCount": n,
            }),
        );
        m.shift_remove("endTime");
        m.shift_remove("statusMessage");
        m.shift_remove("failureReason");
    }
    v
}

async fn get_job(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    app.read(|s| s.jobs.get(&id).map(hub_job_json))
        .await?
        .map(ok_json)
        .ok_or_else(|| job_not_found(&id))
}

/// `POST /jobs/v2/{jobId}/cancel`: ends the job; devices not yet final are cancelled. Answers the
/// job as it is after the cancel (200), as IoT Hub does.
async fn cancel_job(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = job_id(&id)?;
    app.write(
        &caller,
        Command::CancelJob {
            id: id.clone(),
            at: now(),
        },
        JOB,
    )
    .await?;
    app.read_applied(|s| s.jobs.get(&id).map(hub_job_json))
        .map(ok_json)
        .ok_or_else(|| job_not_found(&id))
}

/// What the job query's continuation tokens are sealed for ([`muster_domain::page_token`]).
const HUB_JOBS_LIST: &str = "hub GET /jobs/v2/query";

/// `GET /jobs/v2/query?jobType=&jobStatus=&pageSize=&continuationToken=`: see the module docs.
async fn query_jobs(
    State(app): State<App>,
    q: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    version(&q)?;
    let filter = HubJobFilter::from_query(q.get("jobType"), q.get("jobStatus"))?;
    let size = page_size(
        q.get("pageSize")
            .or_else(|| header_str(&headers, &MAX_ITEM_COUNT)),
        DEFAULT_PAGE,
        MAX_PAGE,
    )?;
    let raw_token = q
        .get("continuationToken")
        .filter(|s| !s.is_empty())
        .or_else(|| header_str(&headers, &CONTINUATION));
    // The filter as sent (trimmed): a token continues only the query it came from.
    let listing = page_token::Listing::new(HUB_JOBS_LIST)
        .with("jobType", q.get("jobType").unwrap_or_default().trim())
        .with("jobStatus", q.get("jobStatus").unwrap_or_default().trim());
    let after = token(raw_token, "continuationToken", &listing, |s: &str| {
        JobId::new(s)
    })?;
    let (items, next) = app
        .read(|s| {
            page(&s.jobs, after.as_ref(), size, |_, j| {
                filter.matches(j).then(|| hub_job_json(j))
            })
        })
        .await?;
    let next = next.map(|position| page_token::seal(&listing, &position));
    let mut result = serde_json::Map::new();
    result.insert("type".into(), Value::String("jobResponse".into()));
    result.insert("items".into(), Value::Array(items));
    if let Some(next) = &next {
        result.insert("continuationToken".into(), Value::String(next.clone()));
    }
    let mut resp = ok_json(Value::Object(result));
    if let Some(next) = next {
        // A page token is URL-safe base64, always a valid header value.
        match HeaderValue::from_str(&next) {
            Ok(v) => {
                resp.headers_mut().insert(CONTINUATION, v);
            }
            Err(e) => return Err(internal(&e)),
        }
    }
    Ok(resp)
}

/// The twin with its `ETag` header (the twin's version, quoted), for conditional PATCHes.
fn twin_response(d: &Device) -> Response {
    let mut resp = ok_json(hub_twin_json(d));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", d.version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let raw = headers
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    etag_version(raw.as_deref())
}

/// The identity with its `ETag` header.
fn device_response(d: &Device) -> Response {
    let mut resp = ok_json(hub_device_json(d));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", device_etag(d))) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `GET /devices?top=N`: up to `top` identities (default and maximum 1000) in id order, as a
/// JSON array, as IoT Hub answers.
async fn list_devices(State(app): State<App>, q: Params) -> Result<Response, ApiError> {
    version(&q)?;
    let top = match q.get("top").filter(|s| !s.is_empty()) {
        None => MAX_DEVICES_LISTED,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_DEVICES_LISTED).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "top",
                    format!(
                        "must be a whole number from 1 to {MAX_DEVICES_LISTED}, got {}",
                        crate::json::quote(s)
                    ),
                ))
            }
        },
    };
    let items = app
        .read(|s| {
            s.registry
                .devices
                .values()
                .take(top)
                .map(hub_device_json)
                .collect()
        })
        .await?;
    Ok(ok_json(Value::Array(items)))
}

async fn get_device(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| device_view(s, &id, device_response)).await?
}

/// `PUT /devices/{id}`: see the module docs for `If-Match`.
async fn put_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    device_id(&id)?;
    let condition = match headers.get(header::IF_MATCH) {
        None => IdentityCondition::Create,
        Some(_) => match if_match(&headers)? {
            None => IdentityCondition::Exists,
            Some(v) => IdentityCondition::Version(v),
        },
    };
    let identity = device_identity_from_hub(&body, &id)?;
    let did = identity.id.clone();
    let fresh_keys = DeviceKeys {
        primary: crate::credentials::random_key()?,
        secondary: crate::credentials::random_key()?,
    };
    app.write(
        &caller,
        Command::PutDeviceIdentity {
            identity,
            condition,
            fresh_keys,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| device_view(s, &did, device_response))
}

/// `DELETE /devices/{id}`: 204; the device's twin goes with it. Jobs that still list the device
/// fail it as not registered when they reach it.
async fn delete_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let if_version = if_match(&headers)?;
    app.write(
        &caller,
        Command::DeleteDevice {
            device: id,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /twins/{id}`: replaces tags and desired properties whole (`If-Match` as for PATCH).
async fn replace_twin(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let if_version = if_match(&headers)?;
    let (tags, desired) = twin_replace_from_hub(&body)?;
    app.write(
        &caller,
        Command::ReplaceTwin {
            device: id.clone(),
            tags: Some(tags),
            desired,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| device_view(s, &id, twin_response))
}

async fn get_twin(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| device_view(s, &id, twin_response)).await?
}

/// `PATCH /twins/{deviceId}`: merges `tags` and `properties.desired` (JSON merge patch) in one
/// command. `If-Match` with the twin's ETag makes it conditional: 412 if the twin changed since
/// (`*` or no header: unconditional).
async fn patch_twin(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let if_version = if_match(&headers)?;
    let (tags, desired) = twin_patch_from_hub(&body)?;
    app.write(
        &caller,
        Command::UpdateTwin {
            device: id.clone(),
            tags,
            desired,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| device_view(s, &id, twin_response))
        .map(IntoResponse::into_response)
}
