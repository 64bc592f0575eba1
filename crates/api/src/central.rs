//! IoT Central's jobs REST shape, exactly as the first seed shows it.
//!
//! ```json
//! {"id": "job-014", "displayName": "...", "description": "...", "group": "833d7a7d-...",
//!  "batch": {"type": "percentage", "value": 25},
//!  "cancellationThreshold": {"type": "percentage", "value": 10, "batch": false},
//!  "data": [{"type": "PropertyJobData", "target": "dtmi:...", "path": "targetTemperature",
//!            "value": "56"}],
//!  "status": "complete"}
//! ```
//!
//! # Mapping to the domain
//!
//! * `group` -> [`TargetSelector::Group`] (not continuous). Required.
//! * `data[i]` -> `operations[i]`, one to one:
//!   * `PropertyJobData` -> [`Operation::PatchDesired`] with the patch `{path: value}`;
//!   * `CommandJobData` -> [`Operation::InvokeMethod`] named `path` with `value` as payload (JSON
//!     `null` when absent), a response timeout of [`COMMAND_RESPONSE_TIMEOUT_SECS`] (30 s, IoT
//!     Central's command timeout) and a connect timeout of [`COMMAND_CONNECT_TIMEOUT_SECS`] (0: an
//!     offline device fails at once, as IoT Central's jobs report offline devices as failed);
//!   * `CloudPropertyJobData` -> [`Operation::SetCloudProperty`] `path` = `value`.
//! * `data[i].target`, the device template (model id): muster targets the **group**, and IoT
//!   Central device groups are defined on one template (their filter reads
//!   `$template = "dtmi:..."`), so the group's filter is what restricts the job to devices of that
//!   template. The template is not stored in the [`JobSpec`]; [`job_request_from_central`] hands it
//!   back so the PUT response can echo it, and [`job_template`] recovers it for later reads from the
//!   model id of the job's devices. All items of one job must name the same template.
//! * `batch` -> [`Rollout::batch`] (`percentage` 1..=100, `number` >= 1);
//!   `cancellationThreshold` -> [`CancellationThreshold`] (`batch: true` counts per batch).
//! * `status` is read-only: accepted in a PUT body (so a GET body can be sent back) and ignored.
//! * Retry policy, schedule and rate limit: the defaults (one attempt, start now, no limit),
//!   unless the muster extension `rollout` sets them (see [`crate::central_rollout`]).
//! * `maintenanceWindow` (muster's extension): see [`crate::window`].
//!
//! # Statuses
//!
//! Job: `Scheduled` and `Pending` -> `pending`, `Running` -> `running`, `Stopped` and `Paused` ->
//! `stopped` (`rolloutState.paused` tells them apart),
//! `Completed` -> `complete`, `Failed` -> `failed`, `Cancelled` -> `cancelled`.
//! Device (`GET /api/jobs/{id}/devices`): `pending`, `running`, `completed` (succeeded), `failed`
//! (failed or timed out), `cancelled`.

use muster_domain::{
    BatchSize, CancellationThreshold, Device, DeviceRegistration, DeviceRun, DeviceStatus, Group,
    Job, JobSpec, JobStatus, MethodCall, Operation, Registry, RetryPolicy, Rollout, Schedule,
    Target, TargetSelector, Threshold,
};
use muster_types::{DeviceId, GroupId, JobId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::json::{
    check_name, check_text, domain_error, operation_field, parse_body, quote, Fields,
};

/// `api-version` values IoT Central's jobs, device groups and devices APIs accept.
pub const CENTRAL_API_VERSIONS: &[&str] = &["preview", "2022-07-31", "2022-10-31-preview"];

/// Response timeout given to a `CommandJobData` command (IoT Central's command timeout).
pub const COMMAND_RESPONSE_TIMEOUT_SECS: u32 = 30;
/// Connect timeout given to a `CommandJobData` command: offline devices fail at once.
pub const COMMAND_CONNECT_TIMEOUT_SECS: u32 = 0;

/// The query parameter that carries the page token in a `nextLink`.
pub const NEXT_LINK_TOKEN_PARAM: &str = "$skiptoken";

const JOB_FIELDS: &[&str] = &[
    "id",
    "displayName",
    "description",
    "group",
    "batch",
    "cancellationThreshold",
    "data",
    "status",
    crate::central_rollout::ROLLOUT_FIELD,
    crate::central_rollout::ROLLOUT_STATE_FIELD,
    crate::window::FIELD,
];
const DATA_TYPES: &str = "PropertyJobData, CommandJobData or CloudPropertyJobData";

/// A job as IoT Central shows it; field names and order are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CentralJob {
    pub id: String,
    pub display_name: String,
    pub description: String,
    /// Absent for a job created through the IoT Hub shape (it targets devices or a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<CentralBatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_threshold: Option<CentralThreshold>,
    pub data: Vec<CentralJobData>,
    pub status: String,
    /// muster extension: the rollout controls (see `central_rollout`); absent when none is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Value>,
    /// muster extension, read-only: the rate in force, why the job is paused or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_state: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralBatch {
    /// `percentage` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralThreshold {
    /// `percentage` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: u32,
    pub batch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CentralJobData {
    /// `PropertyJobData`, `CommandJobData` or `CloudPropertyJobData`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The device template (model id); absent when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub path: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
}

/// A parsed `PUT /api/jobs/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CentralJobRequest {
    pub id: JobId,
    pub spec: JobSpec,
    /// The device template the `data` items name (`data[*].target`), if they name one.
    pub template: Option<String>,
}

/// Reads a `PUT /api/jobs/{id}` body. See the module docs for the mapping; every refusal is a 400
/// naming the field as the caller wrote it (`data[0].type`, `batch.value`, `group`), or a 413.
pub fn job_spec_from_central(body: &str, id_from_path: &str) -> Result<(JobId, JobSpec), ApiError> {
    let req = job_request_from_central(body, id_from_path)?;
    Ok((req.id, req.spec))
}

/// [`job_spec_from_central`], also returning the device template named by `data[*].target`.
pub fn job_request_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<CentralJobRequest, ApiError> {
    let value = parse_body(body)?;
    job_request_from_central_value(&value, id_from_path)
}

/// [`job_request_from_central`] for a body already parsed.
pub fn job_request_from_central_value(
    body: &Value,
    id_from_path: &str,
) -> Result<CentralJobRequest, ApiError> {
    let f = Fields::of(body, "")?;
    f.only(JOB_FIELDS)?;
    let id = path_id(&f, id_from_path)?;
    let display_name = match f.str_opt("displayName")? {
        Some(s) => s.to_string(),
        None => id.to_string(),
    };
    check_text("displayName", &display_name, 256)?;
    let description = f.str_opt("description")?.unwrap_or_default().to_string();
    check_text("description", &description, 4096)?;
    if let Some(s) = f.get("status") {
        // Read-only; a GET body sent back as it is carries it.
        if !s.is_string() {
            return Err(ApiError::bad_request(
                "status",
                "is read-only; leave it out (or send it as the string GET returned)",
            ));
        }
    }

    let group = f.str_opt("group")?.ok_or_else(|| {
        ApiError::bad_request(
            "group",
            "is required: the id of the device group the job runs on (see GET /api/deviceGroups)",
        )
    })?;
    let group = GroupId::new(group).map_err(|e| ApiError::bad_request("group", e))?;

    let batch = match f.get("batch") {
        None => None,
        Some(b) => {
            let b = Fields::of(b, "batch")?;
            b.only(&["type", "value"])?;
            Some(match size_kind(&b)? {
                SizeKind::Percentage => BatchSize::Percentage(b.u32_req("value", 1, 100)?),
                SizeKind::Number => BatchSize::Count(b.u32_req("value", 1, u32::MAX)?),
            })
        }
    };
    let cancellation = match f.get("cancellationThreshold") {
        None => None,
        Some(t) => {
            let t = Fields::of(t, "cancellationThreshold")?;
            t.only(&["type", "value", "batch"])?;
            let limit = match size_kind(&t)? {
                SizeKind::Percentage => Threshold::Percentage(t.u32_req("value", 1, 100)?),
                SizeKind::Number => Threshold::Count(t.u32_req("value", 1, u32::MAX)?),
            };
            Some(CancellationThreshold {
                limit,
                per_batch: t.bool_opt("batch")?.unwrap_or(false),
            })
        }
    };

    let (operations, template) = data_items(&f)?;
    let window = crate::window::parse(&f)?;
    let mut spec = JobSpec {
        display_name,
        description,
        target: Target {
            selector: TargetSelector::Group(group),
            continuous: false,
        },
        operations,
        schedule: Schedule {
            window,
            ..Schedule::default()
        },
        rollout: Rollout {
            batch,
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation,
        retry: RetryPolicy::default(),
    };
    if let Some(r) = f.get(crate::central_rollout::ROLLOUT_FIELD) {
        crate::central_rollout::read(r, &mut spec.rollout, &mut spec.retry)?;
    }
    spec.validate()
        .map_err(|e| domain_error(e, central_field))?;
    Ok(CentralJobRequest { id, spec, template })
}

/// The body's `id`, if it has one, must be the id in the URL.
fn same_id(f: &Fields<'_>, id_from_path: &str) -> Result<(), ApiError> {
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
    Ok(())
}

/// The id in the URL, and the body's `id` if it has one: they must agree.
fn path_id(f: &Fields<'_>, id_from_path: &str) -> Result<JobId, ApiError> {
    let id = JobId::new(id_from_path).map_err(|e| ApiError::bad_request("id", e))?;
    same_id(f, id_from_path)?;
    Ok(id)
}

enum SizeKind {
    Percentage,
    Number,
}

fn size_kind(f: &Fields<'_>) -> Result<SizeKind, ApiError> {
    match f.str_req("type")? {
        "percentage" => Ok(SizeKind::Percentage),
        "number" => Ok(SizeKind::Number),
        other => Err(ApiError::bad_request(
            &f.path("type"),
            format!("unknown type {}; use percentage or number", quote(other)),
        )),
    }
}

fn data_items(f: &Fields<'_>) -> Result<(Vec<Operation>, Option<String>), ApiError> {
    let items = match f.get("data") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::bad_request(
                "data",
                format!(
                    "must be an array of operations, got {}",
                    crate::json::kind(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                "data",
                format!("is required: an array of at least one operation ({DATA_TYPES})"),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "data",
            format!("give at least one operation ({DATA_TYPES})"),
        ));
    }
    if items.len() > muster_domain::spec::MAX_OPERATIONS {
        return Err(ApiError::bad_request(
            "data",
            format!(
                "{} operations given; at most {} are allowed per job",
                items.len(),
                muster_domain::spec::MAX_OPERATIONS
            ),
        ));
    }
    let mut ops = Vec::with_capacity(items.len());
    let mut template: Option<(usize, String)> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("data[{i}]");
        let d = Fields::of(item, &at)?;
        d.only(&["type", "target", "path", "value"])?;
        let kind = d.str_req("type")?;
        if let Some(t) = d.str_opt("target")? {
            if t.is_empty() {
                return Err(ApiError::bad_request(
                    &d.path("target"),
                    "must not be empty; give the device template id (a model id such as dtmi:com:example:Thermostat;1) or leave it out",
                ));
            }
            check_text(&d.path("target"), t, 512)?;
            match &template {
                None => template = Some((i, t.to_string())),
                Some((first, known)) if known != t => {
                    return Err(ApiError::bad_request(
                        &d.path("target"),
                        format!(
                            "names template {} but data[{first}].target names {}; a job runs on one device group, which has one template: create one job per template",
                            quote(t),
                            quote(known)
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let path = d.str_req("path")?;
        check_name(&d.path("path"), path)?;
        let value = d.get("value");
        let need_value = || {
            ApiError::bad_request(
                &d.path("value"),
                "is required: the value to set (any JSON value)",
            )
        };
        let op = match kind {
            "PropertyJobData" => {
                let mut patch = Map::new();
                patch.insert(path.to_string(), value.ok_or_else(need_value)?.clone());
                Operation::PatchDesired {
                    patch: Value::Object(patch),
                }
            }
            "CommandJobData" => Operation::InvokeMethod(MethodCall {
                name: path.to_string(),
                payload: value.cloned().unwrap_or(Value::Null),
                response_timeout_secs: COMMAND_RESPONSE_TIMEOUT_SECS,
                connect_timeout_secs: COMMAND_CONNECT_TIMEOUT_SECS,
            }),
            "CloudPropertyJobData" => Operation::SetCloudProperty {
                name: path.to_string(),
                value: value.ok_or_else(need_value)?.clone(),
            },
            other => {
                return Err(ApiError::bad_request(
                    &d.path("type"),
                    format!("unknown type {}; use {DATA_TYPES}", quote(other)),
                ))
            }
        };
        ops.push(op);
    }
    Ok((ops, template.map(|(_, t)| t)))
}

/// The domain's field names, as a Central caller wrote them: `operations[i]` is `data[i]`.
fn central_field(field: &str) -> String {
    if let Some((i, rest)) = operation_field(field) {
        let leaf = match rest.split('.').next().unwrap_or("") {
            "methodName" | "path" => "path",
            _ => "value",
        };
        return format!("data[{i}].{leaf}");
    }
    match field {
        "operations" => "data".into(),
        "target.query" | "target.devices" | "target.continuous" => "group".into(),
        other => other.to_string(),
    }
}

/// The IoT Central name of a job status.
pub fn central_status(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Scheduled | JobStatus::Pending => "pending",
        JobStatus::Running => "running",
        // Paused has no IoT Central name; `stopped` is the nearest (nothing new is sent until an
        // operator acts), and `POST .../resume` continues a paused job.
        JobStatus::Stopped | JobStatus::Paused => "stopped",
        JobStatus::Completed => "complete",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// The IoT Central name of one device's status in a job; a timeout is a failure there.
pub fn central_device_status(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Pending => "pending",
        DeviceStatus::Running => "running",
        DeviceStatus::Succeeded => "completed",
        DeviceStatus::Failed | DeviceStatus::TimedOut => "failed",
        DeviceStatus::Cancelled => "cancelled",
    }
}

/// The device template of a job for rendering `data[*].target`: the model id of the first of the
/// job's devices that has one (an IoT Central group holds devices of one template).
///
/// A finished run's rows are read from `cold`, at most [`TEMPLATE_PROBE`] of them: a job list
/// renders this per job, and a group's devices share one template, so the first few decide.
/// A cold read that fails leaves the template out (it only fills in a display field).
pub fn job_template<'a>(
    job: &Job,
    registry: &'a Registry,
    cold: &dyn muster_domain::RunRows,
) -> Option<&'a str> {
    let model = |d: &DeviceId| registry.devices.get(d).and_then(|d| d.model_id.as_deref());
    for run in &job.runs {
        if !run.is_cold() {
            if let Some(m) = run.devices.iter().find_map(|d| model(&d.device)) {
                return Some(m);
            }
            continue;
        }
        let mut found = None;
        let mut seen = 0;
        let _ = run.scan_by_position(&job.id, cold, 0, &mut |_, d| {
            seen += 1;
            found = model(&d.device);
            found.is_none() && seen < TEMPLATE_PROBE
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// How many rows of a cold run [`job_template`] looks at.
pub const TEMPLATE_PROBE: usize = 64;

/// A job in IoT Central's shape. `template` fills `data[*].target` (from the PUT body, or
/// [`job_template`]); without it `target` is left out.
///
/// Operations IoT Central has no type for (a tags patch, from the IoT Hub shape) are left out of
/// `data`; a desired-property patch of several properties becomes one `PropertyJobData` each.
pub fn central_job(job: &Job, template: Option<&str>) -> CentralJob {
    let spec = &job.spec;
    let target = template.map(str::to_string);
    let mut data = Vec::new();
    for op in &spec.operations {
        match op {
            Operation::PatchDesired { patch } => {
                if let Value::Object(map) = patch {
                    for (k, v) in map {
                        data.push(CentralJobData {
                            kind: "PropertyJobData".into(),
                            target: target.clone(),
                            path: k.clone(),
                            value: v.clone(),
                        });
                    }
                }
            }
            Operation::InvokeMethod(m) => data.push(CentralJobData {
                kind: "CommandJobData".into(),
                target: target.clone(),
                path: m.name.clone(),
                value: m.payload.clone(),
            }),
            Operation::SetCloudProperty { name, value } => data.push(CentralJobData {
                kind: "CloudPropertyJobData".into(),
                target: target.clone(),
                path: name.clone(),
                value: value.clone(),
            }),
            Operation::PatchTags { .. } => {}
        }
    }
    CentralJob {
        id: job.id.to_string(),
        display_name: spec.display_name.clone(),
        description: spec.description.clone(),
        group: match &spec.target.selector {
            TargetSelector::Group(g) => Some(g.to_string()),
            _ => None,
        },
        batch: spec.rollout.batch.map(|b| match b {
            BatchSize::Percentage(p) => CentralBatch {
                kind: "percentage".into(),
                value: p,
            },
            BatchSize::Count(c) => CentralBatch {
                kind: "number".into(),
                value: c,
            },
        }),
        cancellation_threshold: spec.cancellation.map(|t| {
            let (kind, value) = match t.limit {
                Threshold::Percentage(p) => ("percentage", p),
                Threshold::Count(c) => ("number", c),
            };
            CentralThreshold {
                kind: kind.into(),
                value,
                batch: t.per_batch,
            }
        }),
        data,
        status: central_status(job.status).into(),
        rollout: crate::central_rollout::write(job),
        rollout_state: crate::central_rollout::state(job),
    }
}

/// [`central_job`] as JSON, for `GET /api/jobs/{id}` and the PUT response.
pub fn central_job_json(job: &Job, template: Option<&str>) -> Value {
    let mut v = serde_json::to_value(central_job(job, template)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        crate::window::insert(m, job.spec.schedule.window.as_ref());
    }
    v
}

/// One entry of `GET /api/jobs/{id}/devices`: `{"id": ..., "status": ...}`.
pub fn central_job_device_json(d: &DeviceRun) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(d.device.to_string()));
    m.insert(
        "status".into(),
        Value::String(central_device_status(d.status).into()),
    );
    Value::Object(m)
}

/// A page of a list: `{"value": [...], "nextLink": "..."}`, `nextLink` absent on the last page.
pub fn central_page(items: Vec<Value>, next_link: Option<String>) -> Value {
    let mut m = Map::new();
    m.insert("value".into(), Value::Array(items));
    if let Some(link) = next_link {
        m.insert("nextLink".into(), Value::String(link));
    }
    Value::Object(m)
}

/// The full URL of the next page, or `None` on the last page (no token). `base_url` is the scheme
/// and host (`https://app.example.com`), `path` the route (`/api/jobs`); the token goes in
/// [`NEXT_LINK_TOKEN_PARAM`], percent-encoded.
pub fn next_link(
    base_url: &str,
    path: &str,
    api_version: &str,
    token: Option<&str>,
) -> Option<String> {
    let token = token?;
    let base = base_url.trim_end_matches('/');
    let sep = if path.starts_with('/') { "" } else { "/" };
    Some(format!(
        "{base}{sep}{path}?api-version={}&{NEXT_LINK_TOKEN_PARAM}={}",
        percent_encode(api_version),
        percent_encode(token)
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks the `api-version` query parameter (`value` is its value, `None` when missing) against
/// the versions a shape accepts. Missing: 400 `MissingApiVersionParameter`; unknown: 400
/// `UnsupportedApiVersion`; both messages list the accepted versions.
pub fn check_api_version(value: Option<&str>, accepted: &[&str]) -> Result<(), ApiError> {
    let list = accepted.join(", ");
    match value {
        None | Some("") => Err(ApiError::new(
            400,
            "MissingApiVersionParameter",
            format!("the api-version query parameter is required; add ?api-version= with one of: {list}"),
        )),
        Some(v) if accepted.contains(&v) => Ok(()),
        Some(v) => Err(ApiError::new(
            400,
            "UnsupportedApiVersion",
            format!("api-version {} is not supported; use one of: {list}", quote(v)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Device groups: /api/deviceGroups/{id}
// ---------------------------------------------------------------------------------------------

/// A parsed `PUT /api/deviceGroups/{id}` body: what `Command::SaveGroup` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralDeviceGroup {
    pub id: GroupId,
    pub display_name: String,
    pub description: String,
    /// The query, already checked to parse (`SELECT * FROM devices WHERE ...`).
    pub filter: String,
    /// The body's `etag`: save only the group at that version.
    pub etag: Option<u64>,
}

/// What a `PATCH /api/deviceGroups/{id}` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CentralDeviceGroupPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub filter: Option<String>,
    pub etag: Option<u64>,
}

/// Reads a device group: `id` (optional, must equal the URL's), `displayName` (required),
/// `filter` (required; IoT Central's device query, e.g.
/// `SELECT * FROM devices WHERE $template = "dtmi:..."`), `description`, `etag` (the group's
/// etag: the save is conditional on it, 412 otherwise) and `organizations` (only `[]`: muster has
/// no organizations, and saving a group as if it belonged to one would mislead).
pub fn device_group_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<CentralDeviceGroup, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    let p = group_fields(&f, id_from_path)?;
    let id = GroupId::new(id_from_path).map_err(|e| ApiError::bad_request("id", e))?;
    Ok(CentralDeviceGroup {
        id,
        display_name: p
            .display_name
            .ok_or_else(|| ApiError::bad_request("displayName", "is required"))?,
        description: p.description.unwrap_or_default(),
        filter: p
            .filter
            .ok_or_else(|| ApiError::bad_request("filter", "is required"))?,
        etag: p.etag,
    })
}

/// Reads a `PATCH /api/deviceGroups/{id}` body: the fields of the PUT, each optional.
pub fn device_group_patch_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<CentralDeviceGroupPatch, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    group_fields(&f, id_from_path)
}

fn group_fields(f: &Fields<'_>, id_from_path: &str) -> Result<CentralDeviceGroupPatch, ApiError> {
    f.only(&[
        "id",
        "displayName",
        "filter",
        "description",
        "etag",
        "organizations",
    ])?;
    same_id(f, id_from_path)?;
    let display_name = f.str_opt("displayName")?.map(str::to_string);
    if let Some(n) = &display_name {
        check_text("displayName", n, 256)?;
    }
    let description = f.str_opt("description")?.map(str::to_string);
    if let Some(d) = &description {
        check_text("description", d, 4096)?;
    }
    let filter = f.str_opt("filter")?.map(str::to_string);
    if let Some(q) = &filter {
        muster_domain::query::Query::parse(q)
            .map_err(|e| ApiError::bad_request("filter", e.message()))?;
    }
    let etag = crate::hub_devices::etag_version(f.str_opt("etag")?).map_err(|_| {
        ApiError::bad_request(
            "etag",
            "is not an etag of this service; send the etag from the last GET, or leave it out",
        )
    })?;
    match f.get("organizations") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "organizations",
                "muster has no organizations; leave organizations out or send []",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "organizations",
                format!(
                    "must be an array of organization ids, got {}",
                    crate::json::kind(other)
                ),
            ))
        }
    }
    Ok(CentralDeviceGroupPatch {
        display_name,
        description,
        filter,
        etag,
    })
}

/// A device group in IoT Central's shape: `{"id", "etag", "displayName", "filter",
/// "description"}` (`description` only when set; `organizations` never, as muster has none).
pub fn central_device_group_json(g: &Group) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(g.id.to_string()));
    m.insert("etag".into(), Value::String(g.version.to_string()));
    m.insert("displayName".into(), Value::String(g.display_name.clone()));
    m.insert("filter".into(), Value::String(g.query.text().to_string()));
    if !g.description.is_empty() {
        m.insert("description".into(), Value::String(g.description.clone()));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Devices: /api/devices/{id}
// ---------------------------------------------------------------------------------------------

/// Reads a `PUT /api/devices/{id}` body into a registration (to be applied with `upsert`):
/// `id` (optional, must equal the URL's), `displayName` (default: the id), `template` (the model
/// id; optional), `enabled` (default true). `etag` and `provisioned` (read-only) are accepted and
/// ignored; `simulated` may only be false, as muster does not simulate devices.
pub fn device_registration_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<DeviceRegistration, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    f.only(&[
        "id",
        "displayName",
        "template",
        "enabled",
        "simulated",
        "etag",
        "provisioned",
        "organizations",
    ])?;
    no_organizations(&f)?;
    let id = DeviceId::new(id_from_path).map_err(|e| ApiError::bad_request("id", e))?;
    same_id(&f, id_from_path)?;
    let display_name = f
        .str_opt("displayName")?
        .map_or_else(|| id.to_string(), str::to_string);
    check_text("displayName", &display_name, 256)?;
    let template = f.str_opt("template")?.map(str::to_string);
    if let Some(t) = &template {
        if t.is_empty() {
            return Err(ApiError::bad_request(
                "template",
                "must not be empty; give a model id such as dtmi:com:example:Thermostat;1 or leave it out",
            ));
        }
        check_text("template", t, 512)?;
    }
    let enabled = f.bool_opt("enabled")?.unwrap_or(true);
    if f.bool_opt("simulated")? == Some(true) {
        return Err(ApiError::bad_request(
            "simulated",
            "muster does not simulate devices; send false or leave it out",
        ));
    }
    f.str_opt("etag")?;
    f.bool_opt("provisioned")?;
    Ok(DeviceRegistration {
        id,
        display_name,
        model_id: template,
        enabled,
        tags: muster_domain::Doc::empty(),
    })
}

/// A device in IoT Central's shape (2022-07-31): `{"id", "etag", "displayName", "simulated",
/// "provisioned", "template", "enabled"}`. `template` is absent when the device has none;
/// `simulated` is always false (muster simulates no devices in the registry); `provisioned` says
/// whether the device has ever connected; `etag` changes whenever the device's identity does.
pub fn central_device_json(d: &Device) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(d.id.to_string()));
    m.insert(
        "etag".into(),
        Value::String(crate::hub_devices::device_etag(d)),
    );
    m.insert(
        "displayName".into(),
        Value::String(d.display_name.to_string()),
    );
    m.insert("simulated".into(), Value::Bool(false));
    m.insert(
        "provisioned".into(),
        Value::Bool(d.connection != muster_domain::ConnectionState::Unknown),
    );
    if let Some(t) = &d.model_id {
        m.insert("template".into(), Value::String(t.to_string()));
    }
    m.insert("enabled".into(), Value::Bool(d.enabled));
    Value::Object(m)
}

/// What a `PATCH /api/devices/{id}` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CentralDevicePatch {
    pub display_name: Option<String>,
    pub template: Option<String>,
    pub enabled: Option<bool>,
}

/// Reads a `PATCH /api/devices/{id}` body: the fields of the PUT, each optional; the read-only
/// ones (`etag`, `provisioned`) are accepted and ignored, `simulated` may only be false.
pub fn device_patch_from_central(
    body: &str,
    id_from_path: &str,
) -> Result<CentralDevicePatch, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    f.only(&[
        "id",
        "displayName",
        "template",
        "enabled",
        "simulated",
        "etag",
        "provisioned",
        "organizations",
    ])?;
    same_id(&f, id_from_path)?;
    let display_name = f.str_opt("displayName")?.map(str::to_string);
    if let Some(n) = &display_name {
        check_text("displayName", n, 256)?;
    }
    let template = f.str_opt("template")?.map(str::to_string);
    if let Some(t) = &template {
        if t.is_empty() {
            return Err(ApiError::bad_request(
                "template",
                "must not be empty; give a model id such as dtmi:com:example:Thermostat;1 or leave it out",
            ));
        }
        check_text("template", t, 512)?;
    }
    let enabled = f.bool_opt("enabled")?;
    if f.bool_opt("simulated")? == Some(true) {
        return Err(ApiError::bad_request(
            "simulated",
            "muster does not simulate devices; send false or leave it out",
        ));
    }
    f.str_opt("etag")?;
    f.bool_opt("provisioned")?;
    no_organizations(&f)?;
    if display_name.is_none() && template.is_none() && enabled.is_none() {
        return Err(ApiError::bad_request(
            "body",
            "nothing to change; set displayName, template and/or enabled",
        ));
    }
    Ok(CentralDevicePatch {
        display_name,
        template,
        enabled,
    })
}

/// `organizations` may be sent empty (IoT Central's default); muster has no organizations.
fn no_organizations(f: &Fields<'_>) -> Result<(), ApiError> {
    match f.get("organizations") {
        None => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "organizations",
            "muster has no organizations; leave organizations out or send []",
        )),
    }
}

/// A device's properties in IoT Central's shape (`GET /api/devices/{id}/properties`): each
/// property's value (what the device reported, else what was last set for it), and
/// `$metadata` with, per property, `lastUpdateTime` and, for a property set from the service,
/// `desiredValue` and `desiredVersion`. These are the twin's desired and reported properties,
/// the same data `GET /twins/{id}` shows.
pub fn central_properties_json(d: &Device) -> Value {
    let desired = d.desired.as_object();
    let reported = d.reported.as_object();
    let mut names: Vec<&String> = desired
        .into_iter()
        .chain(reported)
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Map::new();
    let mut meta = Map::new();
    let updated = |tree: &Value, name: &str| {
        tree.get(name)
            .and_then(|n| n.get(muster_domain::registry::META_UPDATED))
            .and_then(Value::as_i64)
    };
    for name in names {
        let r = reported.and_then(|m| m.get(name));
        let w = desired.and_then(|m| m.get(name));
        if let Some(v) = r.or(w) {
            out.insert(name.clone(), v.clone());
        }
        let mut pm = Map::new();
        let time = updated(&d.reported_meta, name)
            .into_iter()
            .chain(updated(&d.desired_meta, name))
            .max();
        if let Some(t) = time {
            pm.insert(
                "lastUpdateTime".into(),
                Value::String(muster_types::Timestamp(t).to_rfc3339()),
            );
        }
        if let Some(w) = w {
            pm.insert("desiredValue".into(), w.clone());
            pm.insert("desiredVersion".into(), Value::from(d.desired_version));
        }
        meta.insert(name.clone(), Value::Object(pm));
    }
    out.insert("$metadata".into(), Value::Object(meta));
    Value::Object(out)
}

/// Reads a `PUT`/`PATCH /api/devices/{id}/properties` body: an object of property values to set
/// (they become desired properties, which the device is sent); `$metadata` (a GET body sent
/// back) is ignored. `allow_empty`: a PUT may clear every property, a PATCH must change one.
pub fn properties_from_central(body: &str, allow_empty: bool) -> Result<Value, ApiError> {
    let value = parse_body(body)?;
    let Value::Object(mut m) = value else {
        return Err(ApiError::bad_request(
            "body",
            "must be a JSON object of property values such as {\"targetTemperature\": 21}",
        ));
    };
    m.remove("$metadata");
    if m.is_empty() && !allow_empty {
        return Err(ApiError::bad_request(
            "body",
            "nothing to change; give at least one property such as {\"targetTemperature\": 21}",
        ));
    }
    Ok(Value::Object(m))
}
