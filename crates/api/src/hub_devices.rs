//! IoT Hub's device identities (`/devices/{id}`) and twins (`/twins/{id}`), as the IoT Hub
//! service REST reference (api-version 2021-04-12) shows them.
//!
//! # Device identity
//!
//! `{deviceId, generationId, etag, connectionState, status, statusReason,
//! connectionStateUpdatedTime, statusUpdatedTime, lastActivityTime, cloudToDeviceMessageCount,
//! authentication {symmetricKey {primaryKey, secondaryKey}, x509Thumbprint {primaryThumbprint,
//! secondaryThumbprint}, type}, capabilities {iotEdge}}`.
//!
//! * `etag` is the identity's version as a decimal string (IoT Hub's are opaque; this one
//!   changes whenever the identity does), sent back quoted in `If-Match`.
//! * `generationId` is the registration time in .NET ticks, as IoT Hub's look: a device deleted
//!   and created again under the same id gets a new one.
//! * Times never set are IoT Hub's `0001-01-01T00:00:00Z`; `cloudToDeviceMessageCount` is 0
//!   (muster has no cloud-to-device queue).
//! * Only `sas` authentication exists in muster; `selfSigned`, `certificateAuthority` and `none`
//!   are refused with a 400 saying so. Keys left out are generated (both, or an existing
//!   device's are kept); one key without the other is refused.
//!
//! # Twin
//!
//! [`hub_twin_json`] is the one rendering of a device as IoT Hub's twin document (what
//! `GET /twins/{id}` answers and what a `SELECT * FROM devices` query lists): the identity's
//! status fields, `etag` / `version` (the twin's version), `deviceEtag` (the identity's), `tags`,
//! and `properties.desired` / `properties.reported` each with its `$metadata` (`$lastUpdated` per
//! property, and `$lastUpdatedVersion` for desired ones) and `$version`.

use muster_domain::{ConnectionState, Device, DeviceIdentity, DeviceKeys};
use muster_types::{DeviceId, Timestamp};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::hub::object;
use crate::json::{parse_body, quote, Fields};

/// IoT Hub's "never": the time it shows for something that has not happened yet.
pub use muster_domain::registry::NEVER;

/// Milliseconds from 0001-01-01 to 1970-01-01, to turn a time into .NET ticks.
const EPOCH_FROM_YEAR_ONE_MS: i64 = 62_135_596_800_000;

fn time_or_never(t: Option<Timestamp>) -> Value {
    Value::String(t.map_or_else(|| NEVER.to_string(), |t| t.to_rfc3339()))
}

fn status(d: &Device) -> Value {
    Value::String(if d.enabled { "enabled" } else { "disabled" }.into())
}

/// IoT Hub knows only connected and disconnected: a device that never reported presence is
/// disconnected.
fn connection(d: &Device) -> Value {
    Value::String(
        match d.connection {
            ConnectionState::Connected => "Connected",
            ConnectionState::Disconnected | ConnectionState::Unknown => "Disconnected",
        }
        .into(),
    )
}

fn thumbprints() -> Value {
    let mut t = Map::new();
    t.insert("primaryThumbprint".into(), Value::Null);
    t.insert("secondaryThumbprint".into(), Value::Null);
    Value::Object(t)
}

fn capabilities(d: &Device) -> Value {
    let mut c = Map::new();
    c.insert("iotEdge".into(), Value::Bool(d.iot_edge));
    Value::Object(c)
}

/// The identity's ETag (unquoted).
pub fn device_etag(d: &Device) -> String {
    d.identity_version.to_string()
}

/// A device identity in IoT Hub's shape (`GET /devices/{id}`), keys included: the service API
/// shows them to callers allowed to read the registry, as IoT Hub does.
pub fn hub_device_json(d: &Device) -> Value {
    let mut m = Map::new();
    m.insert("deviceId".into(), Value::String(d.id.to_string()));
    let ticks = (d.registered_at.millis() + EPOCH_FROM_YEAR_ONE_MS).saturating_mul(10_000);
    m.insert("generationId".into(), Value::String(ticks.to_string()));
    m.insert("etag".into(), Value::String(device_etag(d)));
    m.insert("connectionState".into(), connection(d));
    m.insert("status".into(), status(d));
    m.insert(
        "statusReason".into(),
        d.status_reason.clone().map_or(Value::Null, Value::String),
    );
    m.insert(
        "connectionStateUpdatedTime".into(),
        time_or_never(d.connection_updated),
    );
    m.insert("statusUpdatedTime".into(), time_or_never(d.status_updated));
    m.insert("lastActivityTime".into(), time_or_never(d.last_activity));
    m.insert("cloudToDeviceMessageCount".into(), Value::from(0));
    let mut keys = Map::new();
    keys.insert(
        "primaryKey".into(),
        d.keys
            .as_ref()
            .map_or(Value::Null, |k| Value::String(k.primary.clone())),
    );
    keys.insert(
        "secondaryKey".into(),
        d.keys
            .as_ref()
            .map_or(Value::Null, |k| Value::String(k.secondary.clone())),
    );
    let mut auth = Map::new();
    auth.insert("symmetricKey".into(), Value::Object(keys));
    auth.insert("x509Thumbprint".into(), thumbprints());
    auth.insert("type".into(), Value::String("sas".into()));
    m.insert("authentication".into(), Value::Object(auth));
    m.insert("capabilities".into(), capabilities(d));
    Value::Object(m)
}

/// Read-only identity fields a client may send back from a GET; a PUT ignores them.
const IDENTITY_READ_ONLY: &[&str] = &[
    "generationId",
    "etag",
    "connectionState",
    "connectionStateUpdatedTime",
    "statusUpdatedTime",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
];

/// Reads a `PUT /devices/{id}` body. `deviceId` must equal the URL's; `status` is `enabled`
/// (default) or `disabled`; keys are `None` when left out (see the module docs).
pub fn device_identity_from_hub(
    body: &str,
    id_from_path: &str,
) -> Result<DeviceIdentity, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    let mut allowed = IDENTITY_READ_ONLY.to_vec();
    allowed.extend([
        "deviceId",
        "status",
        "statusReason",
        "authentication",
        "capabilities",
        "deviceScope",
        "parentScopes",
    ]);
    f.only(&allowed)?;
    let id = DeviceId::new(id_from_path).map_err(|e| ApiError::bad_request("deviceId", e))?;
    if let Some(body_id) = f.str_opt("deviceId")? {
        if body_id != id_from_path {
            return Err(ApiError::bad_request(
                "deviceId",
                format!(
                    "the body says {} but the URL says {}; make them equal",
                    quote(body_id),
                    quote(id_from_path)
                ),
            ));
        }
    }
    let enabled = match f.str_opt("status")? {
        None | Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "status",
                format!("unknown status {}; use enabled or disabled", quote(other)),
            ))
        }
    };
    let status_reason = f.str_opt("statusReason")?.map(str::to_string);
    for k in IDENTITY_READ_ONLY {
        // Read-only fields may be echoed back, but must still have their type.
        if *k == "cloudToDeviceMessageCount" {
            f.u64_opt(k, 0, u64::MAX)?;
        } else {
            f.str_opt(k)?;
        }
    }
    if f.str_opt("deviceScope")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "deviceScope",
            "muster has no IoT Edge parent/child scopes; leave deviceScope out",
        ));
    }
    match f.get("parentScopes") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "parentScopes",
                "muster has no IoT Edge parent/child scopes; leave parentScopes out",
            ))
        }
    }
    let iot_edge = match f.get("capabilities") {
        None => false,
        Some(c) => {
            let c = Fields::of(c, "capabilities")?;
            c.only(&["iotEdge"])?;
            c.bool_opt("iotEdge")?.unwrap_or(false)
        }
    };
    let keys = match f.get("authentication") {
        None => None,
        Some(a) => authentication(a)?,
    };
    Ok(DeviceIdentity {
        id,
        enabled,
        status_reason,
        keys,
        iot_edge,
    })
}

fn authentication(a: &Value) -> Result<Option<DeviceKeys>, ApiError> {
    let f = Fields::of(a, "authentication")?;
    f.only(&["symmetricKey", "x509Thumbprint", "type"])?;
    match f.str_opt("type")? {
        None | Some("sas") => {}
        Some(t @ ("selfSigned" | "certificateAuthority" | "none")) => {
            return Err(ApiError::bad_request(
                "authentication.type",
                format!(
                    "{} is not supported: muster authenticates devices with SAS keys only; use sas",
                    quote(t)
                ),
            ))
        }
        Some(t) => {
            return Err(ApiError::bad_request(
                "authentication.type",
                format!("unknown type {}; use sas", quote(t)),
            ))
        }
    }
    if let Some(x) = f.get("x509Thumbprint") {
        let x = Fields::of(x, "authentication.x509Thumbprint")?;
        x.only(&["primaryThumbprint", "secondaryThumbprint"])?;
        if x.str_opt("primaryThumbprint")?.is_some() || x.str_opt("secondaryThumbprint")?.is_some()
        {
            return Err(ApiError::bad_request(
                "authentication.x509Thumbprint",
                "muster authenticates devices with SAS keys only; leave the thumbprints out",
            ));
        }
    }
    let Some(k) = f.get("symmetricKey") else {
        return Ok(None);
    };
    let k = Fields::of(k, "authentication.symmetricKey")?;
    k.only(&["primaryKey", "secondaryKey"])?;
    let primary = k.str_opt("primaryKey")?.filter(|s| !s.is_empty());
    let secondary = k.str_opt("secondaryKey")?.filter(|s| !s.is_empty());
    match (primary, secondary) {
        (None, None) => Ok(None),
        (Some(p), Some(s)) => Ok(Some(DeviceKeys {
            primary: p.to_string(),
            secondary: s.to_string(),
        })),
        (Some(_), None) => Err(ApiError::bad_request(
            "authentication.symmetricKey.secondaryKey",
            "is required with primaryKey; give both keys, or neither to have them generated",
        )),
        (None, Some(_)) => Err(ApiError::bad_request(
            "authentication.symmetricKey.primaryKey",
            "is required with secondaryKey; give both keys, or neither to have them generated",
        )),
    }
}

/// Read-only twin fields a client may send back from a GET; a PATCH or PUT ignores them.
const TWIN_READ_ONLY: &[&str] = &[
    "deviceId",
    "moduleId",
    "etag",
    "deviceEtag",
    "version",
    "status",
    "statusReason",
    "statusUpdateTime",
    "connectionState",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
    "authenticationType",
    "x509Thumbprint",
    "capabilities",
    "modelId",
    "deviceScope",
    "parentScopes",
];

/// A device as IoT Hub's twin document; see the module docs.
pub fn hub_twin_json(d: &Device) -> Value {
    let mut m = Map::new();
    d.twin_identity_fields(&mut m);
    m.insert("tags".into(), as_object(&d.tags));
    m.insert("properties".into(), d.twin_properties());
    m.insert("capabilities".into(), capabilities(d));
    Value::Object(m)
}

fn as_object(v: &Value) -> Value {
    match v {
        Value::Object(_) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// `properties.desired` of a twin body with its read-only `$version` / `$metadata` removed.
fn desired_of(p: &Value, reported_allowed: bool) -> Result<Option<Value>, ApiError> {
    let p = Fields::of(p, "properties")?;
    p.only(&["desired", "reported"])?;
    if p.has("reported") && !reported_allowed {
        return Err(ApiError::bad_request(
            "properties.reported",
            "reported properties are written by the device; set properties.desired",
        ));
    }
    match p.get("desired") {
        None => Ok(None),
        Some(d) => {
            let mut d = object(d, "properties.desired")?;
            if let Value::Object(map) = &mut d {
                map.remove("$version");
                map.remove("$metadata");
            }
            Ok(Some(d))
        }
    }
}

/// Reads a `PATCH /twins/{id}` body into `(tags, desired)` merge patches, either of which may be
/// absent but not both. Read-only twin fields (a GET body sent back) are ignored, and so are
/// `$version` / `$metadata` inside `properties.desired`; `properties.reported` is refused (the
/// device writes it).
#[allow(clippy::type_complexity)]
pub fn twin_patch_from_hub(body: &str) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    let mut allowed = TWIN_READ_ONLY.to_vec();
    allowed.extend(["tags", "properties"]);
    f.only(&allowed)?;
    twin_ids(&f)?;
    let tags = match f.get("tags") {
        None => None,
        Some(t) => Some(object(t, "tags")?),
    };
    let desired = match f.get("properties") {
        None => None,
        Some(p) => desired_of(p, false)?,
    };
    let non_empty = |v: Option<Value>| v.filter(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    let (tags, desired) = (non_empty(tags), non_empty(desired));
    if tags.is_none() && desired.is_none() {
        return Err(ApiError::bad_request(
            "body",
            "nothing to change; set tags and/or properties.desired",
        ));
    }
    Ok((tags, desired))
}

/// `deviceId` and `etag` of a twin body are ignored (the URL and `If-Match` decide) but must
/// still be strings, as a job's `updateTwin` checks them: a schema-driven fuzz run found an
/// `"etag": {}` accepted.
fn twin_ids(f: &Fields<'_>) -> Result<(), ApiError> {
    f.str_opt("deviceId")?;
    f.str_opt("etag")?;
    Ok(())
}

/// Reads a `PUT /twins/{id}` body into the whole new `(tags, desired)`: what is left out becomes
/// empty, as IoT Hub's replace does. `properties.reported` (a GET body sent back) is ignored:
/// the device owns it.
pub fn twin_replace_from_hub(body: &str) -> Result<(Value, Value), ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    let mut allowed = TWIN_READ_ONLY.to_vec();
    allowed.extend(["tags", "properties"]);
    f.only(&allowed)?;
    twin_ids(&f)?;
    let tags = match f.get("tags") {
        None => Value::Object(Map::new()),
        Some(t) => object(t, "tags")?,
    };
    let desired = match f.get("properties") {
        None => None,
        Some(p) => desired_of(p, true)?,
    };
    Ok((tags, desired.unwrap_or_else(|| Value::Object(Map::new()))))
}

/// Reads an `If-Match` header into the version it names: `*` (or no header) is `None`
/// (unconditional); `"5"`, `5` and `W/"5"` are `Some(5)`. Anything else is a 400. Microsoft's
/// Python SDK quotes whatever it sends, `*` included, so `"*"` is `*` too.
pub fn etag_version(if_match: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = if_match.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let tag = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    if tag == "*" {
        return Ok(None);
    }
    tag.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "If-Match",
            format!(
                "{} is not an etag of this service; send the etag from the last GET, or *",
                quote(raw)
            ),
        )
    })
}
