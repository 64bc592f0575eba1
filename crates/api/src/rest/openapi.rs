//! `GET /openapi.json`: an OpenAPI 3.0 description of the gateway, both shapes.
//!
//! The paths, methods and permissions come from the route table the router itself is built
//! from ([`super::route_table`]); [`OPS`] adds what a router cannot know (summary, query
//! parameters, body, success status). A route without an entry in [`OPS`], or an entry for a
//! route that is not served, fails a test, so the document and the router cannot drift apart.
//!
//! Schemas say what the parsers in [`crate::central`] / [`crate::hub`] accept; the parsers stay
//! the authority (they name the field at fault), the schema is a guide for clients and fuzzers.

use std::sync::OnceLock;

use axum::response::Response;
use serde_json::{json, Map, Value};

use super::errors::Shape;
use super::guard::RouteAccess;
use super::ok_json;
use crate::access::Access;
use crate::central::{CENTRAL_API_VERSIONS, NEXT_LINK_TOKEN_PARAM};
use crate::hub::HUB_API_VERSIONS;

/// A query parameter or request header a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P {
    CentralVersion,
    HubVersion,
    MaxPageSize,
    Top,
    SkipToken,
    Filter,
    OrderBy,
    DeviceStatus,
    Search,
    JobType,
    JobStatus,
    PageSize,
    ContinuationToken,
    HubTop,
    IfMatch,
    MaxItemCount,
    Continuation,
}

/// What a successful answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// JSON shaped like this component schema.
    Json(&'static str),
    /// No body (204).
    Empty,
    /// Prometheus text exposition.
    Text,
    /// A console file (HTML, JavaScript, CSS).
    File,
    /// Server-sent events.
    Events,
}

/// What the document says about one route beyond what the router knows.
#[derive(Debug, Clone, Copy)]
struct Op {
    summary: &'static str,
    params: &'static [P],
    /// The component schema of the JSON request body, if the route reads one.
    body: Option<&'static str>,
    ok: u16,
    answer: Answer,
}

const fn op(summary: &'static str, params: &'static [P], ok: u16, answer: Answer) -> Op {
    Op {
        summary,
        params,
        body: None,
        ok,
        answer,
    }
}

const fn with_body(
    summary: &'static str,
    params: &'static [P],
    body: &'static str,
    answer: Answer,
) -> Op {
    Op {
        summary,
        params,
        body: Some(body),
        ok: 200,
        answer,
    }
}

use Answer::{Empty, Events, File, Json, Text};
use P::*;

const C: &[P] = &[CentralVersion];
const C_IF: &[P] = &[CentralVersion, IfMatch];
const H: &[P] = &[HubVersion];
const H_IF: &[P] = &[HubVersion, IfMatch];
const C_LIST: &[P] = &[CentralVersion, MaxPageSize, Top, SkipToken];
const C_FILTERED: &[P] = &[CentralVersion, MaxPageSize, Top, SkipToken, Filter, OrderBy];

/// Every route's description, keyed by method and axum path template.
#[rustfmt::skip]
const OPS: &[(&str, &str, Op)] = &[
    ("GET", "/healthz", op("Liveness: the process answers", &[], 200, Json("Status"))),
    ("GET", "/readyz", op("Readiness: a leader is known and credentials are applied", &[], 200, Json("Status"))),
    ("GET", "/metrics", op("Prometheus metrics of this node", &[], 200, Text)),
    ("GET", "/openapi.json", op("This document", &[], 200, Json("Object"))),
    // IoT Central: jobs.
    ("GET", "/api/jobs", op("List jobs", C_LIST, 200, Json("CentralPage"))),
    ("GET", "/api/jobs/{id}", op("Get a job", C, 200, Json("CentralJob"))),
    ("PUT", "/api/jobs/{id}", with_body("Create a job", C, "CentralJob", Json("CentralJob"))),
    ("GET", "/api/jobs/{id}/devices", op("List a job's devices and their status", &[CentralVersion, MaxPageSize, Top, SkipToken, DeviceStatus, Search], 200, Json("CentralPage"))),
    ("GET", "/api/jobs/{id}/events", op("A job's history from the event log (muster extension)", C_LIST, 200, Json("CentralPage"))),
    ("POST", "/api/jobs/{id}/stop", op("Stop a job", C, 204, Empty)),
    ("POST", "/api/jobs/{id}/resume", op("Resume a stopped job", C, 204, Empty)),
    ("POST", "/api/jobs/{id}/continue", op("Continue a job its rollout gate paused (muster extension)", C, 204, Empty)),
    ("PUT", "/api/jobs/{id}/rerun/{rerun_id}", op("Rerun a job on its failed devices", C, 200, Json("CentralJob"))),
    ("GET", "/api/jobs/{id}/watch", op("A job's progress as server-sent events (muster extension)", C, 200, Events)),
    ("GET", "/api/scheduledJobs", op("List scheduled (recurring) jobs", C_LIST, 200, Json("CentralPage"))),
    ("GET", "/api/scheduledJobs/{id}", op("Get a scheduled job", C, 200, Json("Object"))),
    ("PUT", "/api/scheduledJobs/{id}", with_body("Create or replace a scheduled job", C_IF, "Object", Json("Object"))),
    ("PATCH", "/api/scheduledJobs/{id}", with_body("Update a scheduled job (JSON merge patch)", C_IF, "Object", Json("Object"))),
    ("DELETE", "/api/scheduledJobs/{id}", op("Delete a scheduled job (the jobs it created stay)", C, 204, Empty)),
    ("GET", "/api/scheduledJobs/{id}/jobs", op("List the jobs a scheduled job created", C_LIST, 200, Json("CentralPage"))),
    // IoT Central: device groups.
    ("GET", "/api/deviceGroups", op("List device groups (filter and orderby not under api-version 2022-07-31, whose reference has neither)", C_FILTERED, 200, Json("CentralPage"))),
    ("GET", "/api/deviceGroups/{id}", op("Get a device group", C, 200, Json("Object"))),
    ("PUT", "/api/deviceGroups/{id}", with_body("Create or replace a device group", C_IF, "CentralDeviceGroup", Json("Object"))),
    ("PATCH", "/api/deviceGroups/{id}", with_body("Update a device group", C_IF, "CentralDeviceGroup", Json("Object"))),
    ("DELETE", "/api/deviceGroups/{id}", op("Delete a device group", C_IF, 204, Empty)),
    ("GET", "/api/deviceGroups/{id}/devices", op("List a device group's devices", C_LIST, 200, Json("CentralPage"))),
    // IoT Central: devices.
    ("GET", "/api/devices", op("List devices", C_FILTERED, 200, Json("CentralPage"))),
    ("GET", "/api/devices/{id}", op("Get a device", C, 200, Json("Object"))),
    ("PUT", "/api/devices/{id}", with_body("Create or replace a device", C_IF, "CentralDevice", Json("Object"))),
    ("PATCH", "/api/devices/{id}", with_body("Update a device", C_IF, "CentralDevice", Json("Object"))),
    ("DELETE", "/api/devices/{id}", op("Delete a device", C_IF, 204, Empty)),
    ("GET", "/api/devices/{id}/properties", op("Get a device's properties", C, 200, Json("Object"))),
    ("PUT", "/api/devices/{id}/properties", with_body("Replace a device's writable properties", C, "Object", Json("Object"))),
    ("PATCH", "/api/devices/{id}/properties", with_body("Update a device's writable properties", C, "Object", Json("Object"))),
    ("POST", "/api/devices/{device_id}/commands/{command}", with_body("Run a command on a device", C, "CentralCommand", Json("Object"))),
    ("GET", "/api/devices/{device_id}/commands/{command}", op("A command's last runs on a device", C, 200, Json("CentralPage"))),
    // IoT Central: API tokens.
    ("GET", "/api/apiTokens", op("List API tokens", C, 200, Json("CentralPage"))),
    ("GET", "/api/apiTokens/{id}", op("Get an API token (never its secret)", C, 200, Json("Object"))),
    ("PUT", "/api/apiTokens/{id}", with_body("Create an API token", C, "ApiToken", Json("Object"))),
    ("DELETE", "/api/apiTokens/{id}", op("Revoke an API token", C, 204, Empty)),
    // Console extensions.
    ("GET", "/api/me", op("Who this credential is and what it may do", C, 200, Json("Object"))),
    ("GET", "/api/cluster", op("Cluster members and leader", C, 200, Json("Object"))),
    ("GET", "/ui", op("Web console", &[], 200, File)),
    ("GET", "/ui/", op("Web console", &[], 200, File)),
    ("GET", "/ui/{file}", op("A web console file", &[], 200, File)),
    // IoT Hub: jobs.
    ("GET", "/jobs/v2/query", op("Query jobs", &[HubVersion, JobType, JobStatus, PageSize, ContinuationToken], 200, Json("HubJobPage"))),
    ("PUT", "/jobs/v2/{job_id}", with_body("Create a scheduled job", H, "HubJob", Json("Object"))),
    ("GET", "/jobs/v2/{job_id}", op("Get a job", H, 200, Json("Object"))),
    ("POST", "/jobs/v2/{job_id}/cancel", op("Cancel a job", H, 200, Json("Object"))),
    // IoT Hub: twins, identities, methods, queries.
    ("GET", "/twins/{device_id}", op("Get a device twin", H, 200, Json("Object"))),
    ("PATCH", "/twins/{device_id}", with_body("Update a device twin's tags and desired properties", H_IF, "HubTwin", Json("Object"))),
    ("PUT", "/twins/{device_id}", with_body("Replace a device twin's tags and desired properties", H_IF, "HubTwin", Json("Object"))),
    ("POST", "/twins/{device_id}/methods", with_body("Invoke a direct method on a device", H, "HubMethod", Json("Object"))),
    ("GET", "/devices", op("List device identities", &[HubVersion, HubTop], 200, Json("Array"))),
    ("GET", "/devices/{device_id}", op("Get a device identity", H, 200, Json("Object"))),
    ("PUT", "/devices/{device_id}", with_body("Create or update a device identity", H_IF, "HubDevice", Json("Object"))),
    ("DELETE", "/devices/{device_id}", op("Delete a device identity", H_IF, 204, Empty)),
    ("POST", "/devices/query", with_body("Query twins or device jobs", &[HubVersion, MaxItemCount, Continuation], "HubQuery", Json("Array"))),
];

/// `GET /openapi.json`.
pub(super) async fn document() -> Response {
    static DOC: OnceLock<Value> = OnceLock::new();
    ok_json(DOC.get_or_init(|| build(&super::route_table())).clone())
}

/// The document for `table`. A route missing from [`OPS`] is still listed, with its path
/// parameters and permission (a test keeps that from happening).
fn build(table: &[RouteAccess]) -> Value {
    let mut paths = Map::new();
    for r in table {
        let entry = paths
            .entry(openapi_path(r.path))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_ascii_lowercase(), operation(r));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "muster REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "IoT Central's (/api/...) and IoT Hub's (/jobs/v2, /twins, /devices) REST shapes as muster serves them, and muster's own routes. Every route but /healthz, /readyz and /ui needs `Authorization: SharedAccessSignature ...`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sas": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "An IoT Hub SAS token (`SharedAccessSignature sr=&sig=&se=&skn=`) or an IoT Central API token",
                }
            },
            "schemas": schemas(),
        },
    })
}

/// axum's `{name}` templates are OpenAPI's already; `{*rest}` wildcards are not used.
fn openapi_path(path: &str) -> String {
    path.to_string()
}

fn describe(method: &str, path: &str) -> Option<&'static Op> {
    OPS.iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, o)| o)
}

fn operation(r: &RouteAccess) -> Value {
    let shape = Shape::of(r.path);
    let described = describe(r.method, r.path);
    let mut params: Vec<Value> = path_params(r.path)
        .into_iter()
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}})
        })
        .collect();
    params.extend(
        described
            .map_or(&[][..], |o| o.params)
            .iter()
            .map(|p| param(*p)),
    );
    let mut o = Map::new();
    o.insert(
        "operationId".into(),
        Value::String(operation_id(r.method, r.path)),
    );
    o.insert(
        "summary".into(),
        Value::String(described.map_or("", |d| d.summary).to_string()),
    );
    o.insert("tags".into(), json!([tag(shape)]));
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = described.and_then(|d| d.body) {
        o.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": reference(body)}}}),
        );
    }
    let mut responses = Map::new();
    if let Some(d) = described {
        responses.insert(d.ok.to_string(), success(d.answer));
    }
    let error = json!({
        "description": "an error: what failed and what to fix",
        "content": {"application/json": {"schema": reference(error_schema(shape))}},
    });
    for status in error_statuses(r, described) {
        responses.insert(status.to_string(), error.clone());
    }
    o.insert("responses".into(), Value::Object(responses));
    match r.access {
        Access::Open => {
            o.insert("security".into(), json!([]));
        }
        Access::Need(p) => {
            o.insert("security".into(), json!([{"sas": []}]));
            o.insert("x-muster-permission".into(), Value::String(p.to_string()));
        }
    }
    Value::Object(o)
}

/// The error statuses a route may answer besides its success.
fn error_statuses(r: &RouteAccess, d: Option<&Op>) -> Vec<u16> {
    let mut s = Vec::new();
    match r.path {
        "/healthz" => return s,
        "/readyz" => return vec![503],
        p if p.starts_with("/ui") => return vec![404],
        _ => {}
    }
    s.extend([400, 401, 403, 404]);
    let writes = r.method != "GET";
    if writes {
        s.extend([409, 412, 413]);
    }
    if d.is_some_and(|d| d.body.is_some()) {
        s.push(415);
    }
    if r.path.contains("/methods") || r.path.contains("/commands/") {
        s.extend([502, 504]);
    }
    s.push(503);
    s.sort_unstable();
    s.dedup();
    s
}

fn success(a: Answer) -> Value {
    match a {
        Json(schema) => json!({
            "description": "OK",
            "content": {"application/json": {"schema": reference(schema)}},
        }),
        Empty => json!({"description": "done; no body"}),
        Text => json!({
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }),
        File => json!({
            "description": "a console file",
            "content": {
                "text/html": {"schema": {"type": "string"}},
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
            },
        }),
        Events => json!({
            "description": "progress snapshots until the job ends",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }),
    }
}

fn tag(shape: Shape) -> &'static str {
    match shape {
        Shape::Central => "IoT Central",
        Shape::Hub => "IoT Hub",
        Shape::Muster => "muster",
    }
}

fn error_schema(shape: Shape) -> &'static str {
    match shape {
        Shape::Central => "CentralError",
        Shape::Hub => "HubError",
        Shape::Muster => "MusterError",
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `GET /api/jobs/{id}` -> `get_api_jobs_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(
            part.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    if path.ends_with('/') && path.len() > 1 {
        id.push_str("_index");
    }
    id
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn param(p: P) -> Value {
    let int = |min: u64, max: Option<u64>| {
        let mut s = json!({"type": "integer", "minimum": min});
        if let Some(max) = max {
            s["maximum"] = json!(max);
        }
        s
    };
    let string = json!({"type": "string"});
    #[rustfmt::skip]
    let (name, place, required, schema, description) = match p {
        CentralVersion => ("api-version", "query", true, json!({"type": "string", "enum": CENTRAL_API_VERSIONS}), "IoT Central's API version"),
        HubVersion => ("api-version", "query", true, json!({"type": "string", "enum": HUB_API_VERSIONS}), "IoT Hub's API version"),
        MaxPageSize => ("maxpagesize", "query", false, int(1, Some(1000)), "page size (default 100)"),
        Top => ("top", "query", false, int(1, None), "at most this many items in all"),
        SkipToken => (NEXT_LINK_TOKEN_PARAM, "query", false, string, "the page token from the previous page's nextLink"),
        Filter => ("filter", "query", false, string, "an IoT Central filter expression, e.g. contains(displayName, 'x')"),
        OrderBy => ("orderby", "query", false, json!({"type": "string", "enum": ["displayName", "displayName asc", "displayName desc"]}), "sort order"),
        DeviceStatus => ("status", "query", false, string, "comma-separated device statuses: pending, running, succeeded, failed, timedOut, cancelled"),
        Search => ("search", "query", false, string, "device ids containing this text"),
        JobType => ("jobType", "query", false, string, "scheduleDeviceMethod or scheduleUpdateTwin"),
        JobStatus => ("jobStatus", "query", false, string, "a job status"),
        PageSize => ("pageSize", "query", false, int(1, None), "page size"),
        ContinuationToken => ("continuationToken", "query", false, string, "the token from the previous page"),
        HubTop => ("top", "query", false, int(1, Some(1000)), "at most this many identities"),
        IfMatch => ("If-Match", "header", false, string, "the etag the write is conditional on, or *"),
        MaxItemCount => ("x-ms-max-item-count", "header", false, int(1, None), "page size"),
        Continuation => ("x-ms-continuation", "header", false, string, "the token from the previous page's x-ms-continuation header"),
    };
    let mut p = json!({"name": name, "in": place, "required": required, "schema": schema, "description": description});
    if place == "query" && !required {
        // An empty value is read as an absent one (`?top=` is the default page).
        p["allowEmptyValue"] = Value::Bool(true);
    }
    p
}

/// The request bodies among [`schemas`].
const BODIES: &[&str] = &[
    "CentralJob",
    "CentralDeviceGroup",
    "CentralDevice",
    "CentralCommand",
    "ApiToken",
    "HubJob",
    "HubMethod",
    "HubTwin",
    "HubDevice",
    "HubQuery",
];

/// The component schemas: bodies as the parsers read them, errors as each shape writes them.
fn schemas() -> Value {
    let mut all = shapes();
    for name in BODIES {
        if let Some(body) = all.get_mut(*name) {
            nullable_optionals(body);
        }
    }
    all
}

/// The body readers take `null` for an optional field as its absence (`json::Fields::get`), as
/// Azure's services do; the schema says so, or a client generated from it could not send it.
fn nullable_optionals(schema: &mut Value) {
    let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            nullable_optionals(prop);
            if !required.contains(&Value::String(name.clone())) {
                if let Value::Object(p) = prop {
                    p.insert("nullable".into(), Value::Bool(true));
                    // OpenAPI 3.0.3: an enum admits null only when it lists it.
                    if let Some(Value::Array(e)) = p.get_mut("enum") {
                        e.push(Value::Null);
                    }
                }
            }
        }
    }
    if let Some(items) = schema.get_mut("items") {
        nullable_optionals(items);
    }
}

fn shapes() -> Value {
    let text = |max: u64| json!({"type": "string", "maxLength": max});
    let size = json!({
        "type": "object",
        "required": ["type", "value"],
        "properties": {
            "type": {"type": "string", "enum": ["percentage", "number"]},
            "value": {"type": "integer", "minimum": 1},
        },
    });
    let mut threshold = size.clone();
    threshold["properties"]["batch"] = json!({"type": "boolean"});
    json!({
        "Object": {"type": "object"},
        "Array": {"type": "array", "items": {}},
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "CentralPage": {
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"type": "array", "items": {}}, "nextLink": {"type": "string"}},
        },
        "HubJobPage": {
            "type": "object",
            "required": ["type", "items"],
            "properties": {
                "type": {"type": "string", "enum": ["jobResponse"]},
                "items": {"type": "array", "items": {"type": "object"}},
                "continuationToken": {"type": "string"},
            },
        },
        "CentralJob": {
            "type": "object",
            "required": ["group", "data"],
            "properties": {
                "id": {"type": "string"},
                "displayName": text(256),
                "description": text(4096),
                "group": {"type": "string", "description": "the device group's id"},
                "batch": size,
                "cancellationThreshold": threshold,
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "path"],
                        "properties": {
                            "type": {"type": "string", "enum": ["PropertyJobData", "CommandJobData", "CloudPropertyJobData"]},
                            "target": text(512),
                            "path": {"type": "string"},
                            "value": {},
                        },
                    },
                },
                "status": {"type": "string", "readOnly": true},
                "rollout": {"type": "object", "description": "muster extension: exponential rate, gate, abort criteria, retry"},
                "rolloutState": {"type": "object", "readOnly": true},
                "maintenanceWindow": {"type": "object", "description": "muster extension: when dispatch may run"},
            },
        },
        "CentralDeviceGroup": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "displayName": text(256),
                "filter": {"type": "string", "description": "an IoT Central device query, e.g. SELECT * FROM devices WHERE ..."},
                "description": text(4096),
                "etag": {"type": "string"},
            },
        },
        "CentralDevice": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "displayName": text(256),
                "template": text(512),
                "enabled": {"type": "boolean"},
                "simulated": {"type": "boolean"},
                "etag": {"type": "string"},
                "provisioned": {"type": "boolean", "readOnly": true},
            },
        },
        "CentralCommand": {
            "type": "object",
            "properties": {
                "request": {},
                "responseTimeout": {"type": "integer", "minimum": 0, "maximum": crate::hub::MAX_METHOD_TIMEOUT_SECS},
                "connectionTimeout": {"type": "integer", "minimum": 0, "maximum": crate::hub::MAX_METHOD_TIMEOUT_SECS},
            },
        },
        "ApiToken": {
            "type": "object",
            "required": ["roles"],
            "properties": {
                "roles": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}},
                },
                "expiry": {"type": "string", "format": "date-time"},
            },
        },
        "HubJob": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "jobId": {"type": "string"},
                "type": {"type": "string", "enum": ["scheduleDeviceMethod", "scheduleUpdateTwin", "scheduleDirectRequest", "scheduleTwinUpdate"]},
                "cloudToDeviceMethod": {"allOf": [{"$ref": "#/components/schemas/HubMethod"}]},
                "updateTwin": {"allOf": [{"$ref": "#/components/schemas/HubTwin"}]},
                "queryCondition": {"type": "string"},
                "deviceIds": {"type": "array", "items": {"type": "string"}},
                "startTime": {"type": "string", "format": "date-time"},
                "maxExecutionTimeInSeconds": {"type": "integer", "minimum": 0},
            },
        },
        "HubMethod": {
            "type": "object",
            "required": ["methodName"],
            "properties": {
                "methodName": {"type": "string"},
                "payload": {},
                "responseTimeoutInSeconds": {"type": "integer", "minimum": 0, "maximum": crate::hub::MAX_METHOD_TIMEOUT_SECS},
                "connectTimeoutInSeconds": {"type": "integer", "minimum": 0, "maximum": crate::hub::MAX_METHOD_TIMEOUT_SECS},
            },
        },
        "HubTwin": {
            "type": "object",
            "properties": {
                "deviceId": {"type": "string"},
                "etag": {"type": "string"},
                "tags": {"type": "object"},
                "properties": {"type": "object", "properties": {"desired": {"type": "object"}}},
            },
        },
        "HubDevice": {
            "type": "object",
            "properties": {
                "deviceId": {"type": "string"},
                "status": {"type": "string", "enum": ["enabled", "disabled"]},
                "statusReason": {"type": "string"},
                "authentication": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": ["sas"]},
                        "symmetricKey": {"type": "object", "properties": {"primaryKey": {"type": "string"}, "secondaryKey": {"type": "string"}}},
                    },
                },
                "capabilities": {"type": "object", "properties": {"iotEdge": {"type": "boolean"}}},
            },
        },
        "HubQuery": {
            "type": "object",
            "required": ["query"],
            "properties": {"query": {"type": "string", "description": "SELECT ... FROM devices | devices.jobs [WHERE ...]"}},
        },
        "CentralError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "requestId": {"type": "string"},
                    "time": {"type": "string"},
                },
            }},
        },
        "HubError": {
            "type": "object",
            "required": ["Message"],
            "properties": {"Message": {"type": "string"}, "ExceptionMessage": {"type": "string"}},
        },
        "MusterError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }},
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The document lists exactly the routes the router serves, each described in [`OPS`],
    /// and [`OPS`] describes nothing that is not served.
    #[test]
    fn document_and_router_list_the_same_routes() {
        let table = super::super::route_table();
        let served: BTreeSet<(String, String)> = table
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let described: BTreeSet<(String, String)> = OPS
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            served.difference(&described).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not described in OPS"
        );
        assert_eq!(
            described.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "described in OPS but not served"
        );
        assert_eq!(OPS.len(), described.len(), "a route described twice");

        let doc = build(&table);
        let mut in_doc = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                in_doc.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        assert_eq!(in_doc, served);
    }

    /// Every operation has a unique id, a summary, a success answer, its path parameters and
    /// a security requirement matching its permission; every `$ref` resolves.
    #[test]
    fn every_operation_is_complete() {
        let table = super::super::route_table();
        let doc = build(&table);
        let mut ids = BTreeSet::new();
        for r in &table {
            let o = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            let id = o["operationId"].as_str().unwrap_or_default().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            assert!(
                !o["summary"].as_str().unwrap_or_default().is_empty(),
                "{id}"
            );
            let responses = o["responses"].as_object().cloned().unwrap_or_default();
            assert!(responses.keys().any(|k| k.starts_with('2')), "{id}");
            let names: BTreeSet<&str> = o["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(names, path_params(r.path).into_iter().collect(), "{id}");
            match r.access {
                Access::Open => assert_eq!(o["security"], json!([]), "{id}"),
                Access::Need(_) => {
                    assert_eq!(o["security"], json!([{"sas": []}]), "{id}");
                    assert!(responses.contains_key("401"), "{id}");
                }
            }
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }
}
