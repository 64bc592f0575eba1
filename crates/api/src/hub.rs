//! IoT Hub's jobs (`/jobs/v2`) and twins (`/twins/{id}`) REST shapes, as the second seed shows
//! them.
//!
//! # Request (`PUT /jobs/v2/{jobId}`)
//!
//! `{jobId, type, cloudToDeviceMethod, updateTwin, queryCondition | deviceIds, startTime,
//! maxExecutionTimeInSeconds}`:
//!
//! * `type`: `scheduleDeviceMethod` (or the seed's `scheduleDirectRequest`) needs
//!   `cloudToDeviceMethod {methodName, payload, responseTimeoutInSeconds,
//!   connectTimeoutInSeconds}` (the seed's `timeoutInSeconds` is read as
//!   `responseTimeoutInSeconds`); defaults: payload `null`, response timeout
//!   [`DEFAULT_RESPONSE_TIMEOUT_SECS`] (30 s, IoT Hub's default), connect timeout 0 (an offline
//!   device fails at once, IoT Hub's default).
//!   `scheduleUpdateTwin` (or `scheduleTwinUpdate`) needs `updateTwin {tags, properties:
//!   {desired}}` (`deviceId` and `etag`, which the SDKs send as `"*"`, are accepted and ignored);
//!   `properties.desired` becomes [`Operation::PatchDesired`], `tags` [`Operation::PatchTags`].
//! * `queryCondition` is the WHERE part of a device query (`tags.building = '43'`), wrapped as
//!   `SELECT * FROM devices WHERE <cond>`; a full `SELECT ...` is taken as it is. `deviceIds` is
//!   an explicit list. Exactly one of the two.
//! * `startTime`: RFC 3339 / ISO-8601 (absent: start now). `maxExecutionTimeInSeconds`: a whole
//!   number >= 1 (absent: no limit).
//! * The job's display name is its id; there is no description, batching, threshold or retry.
//!
//! # Response
//!
//! `{jobId, queryCondition, createdTime, startTime, endTime, maxExecutionTimeInSeconds, type,
//! cloudToDeviceMethod, updateTwin, status, failureReason, statusMessage, deviceJobStatistics}`;
//! fields without a value are left out. Status: `Scheduled` -> `scheduled`, `Pending` ->
//! `pending`, `Running` -> `running`, **`Stopped` -> `running`** with a `statusMessage` saying it is
//! stopped (IoT Hub has no stopped status; a stopped job is not finished and may still record
//! answers, and IoT Hub clients poll until a final status), `Completed` -> `completed`, `Failed` ->
//! `failed`, `Cancelled` -> `cancelled`.
//!
//! `deviceJobStatistics` counts the current run: `failedCount` is failed + timed out +
//! **cancelled** (IoT Hub has no cancelled counter; a cancelled device did not get the operation,
//! so it did not succeed), which keeps `deviceCount` = failed + succeeded + running + pending.

use muster_domain::registry::merge_patch;
use muster_domain::{
    CancelReason, Job, JobFailure, JobSpec, JobStatus, MethodCall, Operation, RetryPolicy, Rollout,
    Schedule, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId, Timestamp};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::json::{check_name, domain_error, kind, operation_field, parse_body, quote, Fields};

/// `api-version` values IoT Hub's service API accepts here (the seed's is `2016-09-30-preview`).
pub const HUB_API_VERSIONS: &[&str] = &[
    "2021-04-12",
    "2020-09-30",
    "2020-03-13",
    "2018-06-30",
    "2016-11-14",
    "2016-09-30-preview",
];

/// Response timeout of a direct method when the request gives none (IoT Hub's default).
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u32 = 30;
/// Connect timeout of a direct method when the request gives none (IoT Hub's default).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 0;
/// Longest method timeouts accepted (the domain's bound).
pub const MAX_METHOD_TIMEOUT_SECS: u32 = 3600;

const METHOD_TYPES: &[&str] = &["scheduleDeviceMethod", "scheduleDirectRequest"];
const TWIN_TYPES: &[&str] = &["scheduleUpdateTwin", "scheduleTwinUpdate"];
const JOB_STATUSES: &[&str] = &[
    "pending",
    "scheduled",
    "running",
    "cancelled",
    "failed",
    "completed",
];
/// What [`job_spec_from_hub`] prefixes to a bare condition.
const QUERY_PREFIX: &str = "SELECT * FROM devices WHERE ";

/// Reads a `PUT /jobs/v2/{jobId}` body; every refusal is a 400 naming the field (or a 413).
pub fn job_spec_from_hub(body: &str, id_from_path: &str) -> Result<(JobId, JobSpec), ApiError> {
    let value = parse_body(body)?;
    job_spec_from_hub_value(&value, id_from_path)
}

/// [`job_spec_from_hub`] for a body already parsed.
pub fn job_spec_from_hub_value(
    body: &Value,
    id_from_path: &str,
) -> Result<(JobId, JobSpec), ApiError> {
    let f = Fields::of(body, "")?;
    f.only(&[
        "jobId",
        "type",
        "cloudToDeviceMethod",
        "updateTwin",
        "queryCondition",
        "deviceIds",
        "startTime",
        "maxExecutionTimeInSeconds",
    ])?;
    let id = JobId::new(id_from_path).map_err(|e| ApiError::bad_request("jobId", e))?;
    if let Some(body_id) = f.str_opt("jobId")? {
        if body_id != id_from_path {
            return Err(ApiError::bad_request(
                "jobId",
                format!(
                    "the body says {} but the URL says {}; make them equal",
                    quote(body_id),
                    quote(id_from_path)
                ),
            ));
        }
    }

    let kind_name = f.str_req("type")?;
    let operations = if METHOD_TYPES.contains(&kind_name) {
        if f.has("updateTwin") {
            return Err(ApiError::bad_request(
                "updateTwin",
                format!(
                    "is not used by a {kind_name} job; remove it, or use type scheduleUpdateTwin"
                ),
            ));
        }
        let m = f.get("cloudToDeviceMethod").ok_or_else(|| {
            ApiError::bad_request(
                "cloudToDeviceMethod",
                format!(
                    "is required for a {kind_name} job: {{\"methodName\": ..., \"payload\": ...}}"
                ),
            )
        })?;
        vec![Operation::InvokeMethod(method_call(m)?)]
    } else if TWIN_TYPES.contains(&kind_name) {
        if f.has("cloudToDeviceMethod") {
            return Err(ApiError::bad_request(
                "cloudToDeviceMethod",
                format!(
                    "is not used by a {kind_name} job; remove it, or use type scheduleDeviceMethod"
                ),
            ));
        }
        let t = f.get("updateTwin").ok_or_else(|| {
            ApiError::bad_request(
                "updateTwin",
                format!(
                    "is required for a {kind_name} job: {{\"tags\": ..., \"properties\": {{\"desired\": ...}}}}"
                ),
            )
        })?;
        update_twin(t)?
    } else {
        return Err(ApiError::bad_request(
            "type",
            format!(
                "unknown type {}; use scheduleDeviceMethod or scheduleUpdateTwin",
                quote(kind_name)
            ),
        ));
    };

    let selector =
        match (f.get("queryCondition"), f.get("deviceIds")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "deviceIds",
                    "give either queryCondition or deviceIds, not both",
                ))
            }
            (None, None) => return Err(ApiError::bad_request(
                "queryCondition",
                "is required (or deviceIds): the devices to run on, e.g. \"tags.building = '43'\"",
            )),
            (Some(_), None) => {
                let cond = f.str_req("queryCondition")?.trim();
                if cond.is_empty() {
                    return Err(ApiError::bad_request(
                        "queryCondition",
                        "must not be empty; give a condition such as \"tags.building = '43'\"",
                    ));
                }
                TargetSelector::Query(hub_query(cond))
            }
            (None, Some(ids)) => TargetSelector::Devices(device_ids(ids)?),
        };

    let start_at = match f.str_opt("startTime")? {
        None => None,
        Some(s) => {
            Some(Timestamp::parse_rfc3339(s).map_err(|e| ApiError::bad_request("startTime", e))?)
        }
    };
    let max_execution_secs = f.u64_opt("maxExecutionTimeInSeconds", 1, u64::from(u32::MAX))?;

    let spec = JobSpec {
        display_name: id.to_string(),
        description: String::new(),
        target: Target {
            selector,
            continuous: false,
        },
        operations,
        schedule: Schedule {
            start_at,
            max_execution_secs,
            window: None,
        },
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    };
    spec.validate()
        .map_err(|e| domain_error(e, |field| hub_field(&spec, field)))?;
    Ok((id, spec))
}

fn method_call(v: &Value) -> Result<MethodCall, ApiError> {
    let m = Fields::of(v, "cloudToDeviceMethod")?;
    m.only(&[
        "methodName",
        "payload",
        "responseTimeoutInSeconds",
        "connectTimeoutInSeconds",
        "timeoutInSeconds",
    ])?;
    let name = m.str_req("methodName")?;
    check_name(&m.path("methodName"), name)?;
    let response = m.u32_opt("responseTimeoutInSeconds", 1, MAX_METHOD_TIMEOUT_SECS)?;
    let alias = m.u32_opt("timeoutInSeconds", 1, MAX_METHOD_TIMEOUT_SECS)?;
    let response =
        match (response, alias) {
            (Some(a), Some(b)) if a != b => return Err(ApiError::bad_request(
                &m.path("timeoutInSeconds"),
                "is another name for responseTimeoutInSeconds and disagrees with it; give only one",
            )),
            (a, b) => a.or(b).unwrap_or(DEFAULT_RESPONSE_TIMEOUT_SECS),
        };
    let connect = m
        .u32_opt("connectTimeoutInSeconds", 0, MAX_METHOD_TIMEOUT_SECS)?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
    Ok(MethodCall {
        name: name.to_string(),
        payload: m.get("payload").cloned().unwrap_or(Value::Null),
        response_timeout_secs: response,
        connect_timeout_secs: connect,
    })
}

fn update_twin(v: &Value) -> Result<Vec<Operation>, ApiError> {
    let t = Fields::of(v, "updateTwin")?;
    t.only(&["deviceId", "etag", "tags", "properties"])?;
    t.str_opt("deviceId")?;
    t.str_opt("etag")?;
    let mut ops = Vec::new();
    if let Some(props) = t.get("properties") {
        let p = Fields::of(props, "updateTwin.properties")?;
        p.only(&["desired", "reported"])?;
        if p.has("reported") {
            return Err(ApiError::bad_request(
                "updateTwin.properties.reported",
                "reported properties are written by the device, not by a job; set properties.desired",
            ));
        }
        if let Some(d) = p.get("desired") {
            ops.push(Operation::PatchDesired {
                patch: object(d, "updateTwin.properties.desired")?,
            });
        }
    }
    if let Some(tags) = t.get("tags") {
        ops.push(Operation::PatchTags {
            patch: object(tags, "updateTwin.tags")?,
        });
    }
    if ops.is_empty() {
        return Err(ApiError::bad_request(
            "updateTwin",
            "set tags and/or properties.desired",
        ));
    }
    Ok(ops)
}

pub(crate) fn object(v: &Value, field: &str) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        other => Err(ApiError::bad_request(
            field,
            format!(
                "must be a JSON object such as {{\"fw\": \"1.2\"}}, got {}",
                kind(other)
            ),
        )),
    }
}

fn device_ids(v: &Value) -> Result<Vec<DeviceId>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::bad_request(
            "deviceIds",
            format!(
                "must be an array of device ids, got {}; for a condition use queryCondition",
                kind(v)
            ),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "deviceIds",
            "list at least one device id",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("deviceIds[{i}]");
            match item {
                Value::String(s) => {
                    DeviceId::new(s.as_str()).map_err(|e| ApiError::bad_request(&field, e))
                }
                other => Err(ApiError::bad_request(
                    &field,
                    format!("must be a device id string, got {}", kind(other)),
                )),
            }
        })
        .collect()
}

/// A bare condition becomes `SELECT * FROM devices WHERE <cond>`; a `SELECT` is kept.
fn hub_query(cond: &str) -> String {
    let is_select = cond
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("select"))
        && cond[6..].starts_with(|c: char| c.is_whitespace());
    if is_select {
        cond.to_string()
    } else {
        format!("{QUERY_PREFIX}{cond}")
    }
}

/// The domain's field names, as an IoT Hub caller wrote them.
fn hub_field(spec: &JobSpec, field: &str) -> String {
    if let Some((i, rest)) = operation_field(field) {
        return match spec.operations.get(i) {
            Some(Operation::InvokeMethod(_)) => {
                let leaf = rest.split('.').next().unwrap_or("");
                format!("cloudToDeviceMethod.{leaf}")
            }
            Some(Operation::PatchTags { .. }) => "updateTwin.tags".into(),
            _ => "updateTwin.properties.desired".into(),
        };
    }
    match field {
        "target.query" => "queryCondition".into(),
        "target.devices" => "deviceIds".into(),
        "schedule.maxExecutionTimeInSeconds" => "maxExecutionTimeInSeconds".into(),
        "operations" => "type".into(),
        "displayName" => "jobId".into(),
        other => other.to_string(),
    }
}

/// IoT Hub's name of a job status (see the module docs for `Stopped`).
pub fn hub_job_status(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Scheduled => "scheduled",
        JobStatus::Pending => "pending",
        JobStatus::Running | JobStatus::Stopped | JobStatus::Paused => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// IoT Hub's job type: `scheduleDeviceMethod` when the job invokes a method, otherwise
/// `scheduleUpdateTwin` (a job from IoT Central that sets properties or cloud properties).
pub fn hub_job_type(spec: &JobSpec) -> &'static str {
    if spec.needs_device() {
        "scheduleDeviceMethod"
    } else {
        "scheduleUpdateTwin"
    }
}

/// A job in IoT Hub's `JobResponse` shape. A job from IoT Central with several commands shows
/// the first as `cloudToDeviceMethod`; its desired-property patches are merged into one
/// `updateTwin.properties.desired`; cloud properties have no IoT Hub form and are left out. A
/// group target (IoT Central) has no `queryCondition`.
pub fn hub_job_json(job: &Job) -> Value {
    let spec = &job.spec;
    let mut m = Map::new();
    m.insert("jobId".into(), Value::String(job.id.to_string()));
    match &spec.target.selector {
        TargetSelector::Query(q) => {
            let cond = q.strip_prefix(QUERY_PREFIX).unwrap_or(q);
            m.insert("queryCondition".into(), Value::String(cond.to_string()));
        }
        TargetSelector::Devices(ids) => {
            m.insert(
                "queryCondition".into(),
                Value::String(device_list_condition(ids)),
            );
        }
        TargetSelector::Group(_) => {}
    }
    m.insert(
        "createdTime".into(),
        Value::String(job.created_at.to_rfc3339()),
    );
    let start = job
        .start_at
        .or(spec.schedule.start_at)
        .or(job.started_at)
        .unwrap_or(job.created_at);
    m.insert("startTime".into(), Value::String(start.to_rfc3339()));
    if let Some(end) = job.ended_at {
        m.insert("endTime".into(), Value::String(end.to_rfc3339()));
    }
    if let Some(secs) = spec.schedule.max_execution_secs {
        m.insert("maxExecutionTimeInSeconds".into(), Value::from(secs));
    }
    m.insert("type".into(), Value::String(hub_job_type(spec).into()));
    if let Some(call) = spec.methods().next() {
        let mut c = Map::new();
        c.insert("methodName".into(), Value::String(call.name.clone()));
        c.insert("payload".into(), call.payload.clone());
        c.insert(
            "responseTimeoutInSeconds".into(),
            Value::from(call.response_timeout_secs),
        );
        c.insert(
            "connectTimeoutInSeconds".into(),
            Value::from(call.connect_timeout_secs),
        );
        m.insert("cloudToDeviceMethod".into(), Value::Object(c));
    }
    let mut desired: Option<Value> = None;
    let mut tags: Option<Value> = None;
    for op in &spec.operations {
        match op {
            Operation::PatchDesired { patch } => merge_patch(
                desired.get_or_insert_with(|| Value::Object(Map::new())),
                patch,
            ),
            Operation::PatchTags { patch } => {
                merge_patch(tags.get_or_insert_with(|| Value::Object(Map::new())), patch)
            }
            _ => {}
        }
    }
    if desired.is_some() || tags.is_some() {
        let mut t = Map::new();
        t.insert("deviceId".into(), Value::String("*".into()));
        t.insert("etag".into(), Value::String("*".into()));
        if let Some(tags) = tags {
            t.insert("tags".into(), tags);
        }
        if let Some(desired) = desired {
            let mut p = Map::new();
            p.insert("desired".into(), desired);
            t.insert("properties".into(), Value::Object(p));
        }
        m.insert("updateTwin".into(), Value::Object(t));
    }
    m.insert(
        "status".into(),
        Value::String(hub_job_status(job.status).into()),
    );
    if let (JobStatus::Failed, Some(JobFailure::MaxExecutionTimeExceeded)) =
        (job.status, &job.failure)
    {
        let limit = spec
            .schedule
            .max_execution_secs
            .map_or_else(String::new, |s| format!(" ({s} seconds)"));
        m.insert(
            "failureReason".into(),
            Value::String(format!(
                "the job did not finish within maxExecutionTimeInSeconds{limit}"
            )),
        );
    }
    if let Some(msg) = status_message(job) {
        m.insert("statusMessage".into(), Value::String(msg));
    }
    let s = job.stats();
    let mut st = Map::new();
    st.insert("deviceCount".into(), Value::from(s.devices));
    st.insert(
        "failedCount".into(),
        Value::from(s.failed + s.timed_out + s.cancelled),
    );
    st.insert("succeededCount".into(), Value::from(s.succeeded));
    st.insert("runningCount".into(), Value::from(s.running));
    st.insert("pendingCount".into(), Value::from(s.pending));
    m.insert("deviceJobStatistics".into(), Value::Object(st));
    Value::Object(m)
}

fn status_message(job: &Job) -> Option<String> {
    match job.status {
        JobStatus::Stopped => Some(format!(
            "stopped: nothing new is sent until the job is resumed (POST /api/jobs/{}/resume)",
            job.id
        )),
        JobStatus::Paused => Some(format!(
            "paused by its rollout gate: nothing new is sent until the job is continued (POST /api/jobs/{}/continue)",
            job.id
        )),
        JobStatus::Cancelled => Some(match &job.cancel_reason {
            Some(CancelReason::Threshold {
                failures,
                population,
                batch,
            }) => {
                let scope = batch.map_or_else(|| "the job".to_string(), |b| format!("batch {b}"));
                format!(
                    "cancelled: {failures} of {population} devices in {scope} failed, more than the cancellation threshold allows"
                )
            }
            Some(r @ (CancelReason::Criterion { .. } | CancelReason::Gate { .. })) => {
                format!("cancelled: {}", r.describe())
            }
            _ => "cancelled by the user".to_string(),
        }),
        _ => None,
    }
}

/// `deviceId IN ['a', 'b']`, the condition the IoT Hub SDKs build from a device list. A device id
/// may contain `'` but never `"`, so such ids are double-quoted.
fn device_list_condition(ids: &[DeviceId]) -> String {
    let quoted: Vec<String> = ids
        .iter()
        .map(|d| {
            if d.as_str().contains('\'') {
                format!("\"{d}\"")
            } else {
                format!("'{d}'")
            }
        })
        .collect();
    format!("deviceId IN [{}]", quoted.join(", "))
}

/// The `jobType` / `jobStatus` filters of `GET /jobs/v2/query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubJobFilter {
    /// `scheduleDeviceMethod` or `scheduleUpdateTwin` (the seed's names are accepted as aliases).
    pub job_type: Option<&'static str>,
    pub job_status: Option<&'static str>,
}

impl HubJobFilter {
    /// Reads the query parameters (`None` or empty: no filter); unknown values are a 400 listing
    /// the accepted ones.
    pub fn from_query(job_type: Option<&str>, job_status: Option<&str>) -> Result<Self, ApiError> {
        let job_type = match job_type.filter(|s| !s.is_empty()) {
            None => None,
            Some(t) if METHOD_TYPES.contains(&t) => Some("scheduleDeviceMethod"),
            Some(t) if TWIN_TYPES.contains(&t) => Some("scheduleUpdateTwin"),
            Some(t) => {
                return Err(ApiError::bad_request(
                    "jobType",
                    format!(
                        "unknown job type {}; use scheduleDeviceMethod or scheduleUpdateTwin",
                        quote(t)
                    ),
                ))
            }
        };
        let job_status = match job_status.filter(|s| !s.is_empty()) {
            None => None,
            // The reference's JobResponse names a job waiting to start `queued`/`enqueued`.
            Some("queued" | "enqueued") => Some("pending"),
            Some(s) => match JOB_STATUSES.iter().find(|k| **k == s) {
                Some(k) => Some(*k),
                None => {
                    return Err(ApiError::bad_request(
                        "jobStatus",
                        format!(
                            "unknown job status {}; use one of {}",
                            quote(s),
                            JOB_STATUSES.join(", ")
                        ),
                    ))
                }
            },
        };
        Ok(HubJobFilter {
            job_type,
            job_status,
        })
    }

    pub fn matches(&self, job: &Job) -> bool {
        self.job_type.is_none_or(|t| t == hub_job_type(&job.spec))
            && self
                .job_status
                .is_none_or(|s| s == hub_job_status(job.status))
    }
}

/// Reads `pageSize`: absent or empty gives `default`; otherwise a whole number in `1..=max`.
pub fn page_size(value: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match value.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "pageSize",
                format!("must be a whole number from 1 to {max}, got {}", quote(s)),
            )),
        },
    }
}

pub use crate::hub_devices::{
    device_identity_from_hub, etag_version, hub_device_json, hub_twin_json, twin_patch_from_hub,
    twin_replace_from_hub,
};
