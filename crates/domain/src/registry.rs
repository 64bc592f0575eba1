//! The device registry: devices with their twins, and device groups as saved queries.
//!
//! Jobs are planned against the registry, and continuous jobs watch it, so it lives in the same
//! replicated state as the jobs and changes only through events.

use muster_types::{DeviceId, GroupId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::doc::Doc;
use crate::query::Query;
use crate::text::Text;

/// What a caller supplies to register (or, with upsert, update) a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistration {
    pub id: DeviceId,
    pub display_name: String,
    /// IoT Central's device template / IoT Plug and Play model id.
    pub model_id: Option<String>,
    pub enabled: bool,
    /// Initial tags; merged into existing tags on upsert. A `Doc`, not a `Value`: a bulk import
    /// gives thousands of devices the same tags, and a command and its events wait in the
    /// log's cache and the applied-events channel; as `Value`s each device's tags were ~600
    /// bytes of map nodes there (the import's memory peak at a million devices, session 15).
    pub tags: Doc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConnectionState {
    /// The device has never reported presence; jobs treat it as reachable and let the response
    /// timeout decide.
    #[default]
    Unknown,
    Connected,
    Disconnected,
}

impl ConnectionState {
    /// What a presence message (`online` / `offline`) says.
    pub fn from_connected(connected: bool) -> Self {
        if connected {
            ConnectionState::Connected
        } else {
            ConnectionState::Disconnected
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Unknown => "Unknown",
            ConnectionState::Connected => "Connected",
            ConnectionState::Disconnected => "Disconnected",
        }
    }
}

/// A registered device and its twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    /// Shares the id's text when it is the id (see [`Text`]).
    pub display_name: Text,
    /// Interned: a fleet has few models.
    pub model_id: Option<Text>,
    pub enabled: bool,
    pub tags: Doc,
    pub desired: Doc,
    pub desired_version: u64,
    pub reported: Doc,
    pub reported_version: u64,
    pub cloud_properties: Doc,
    /// Bumped on every change of the twin (an ETag for optimistic concurrency).
    pub version: u64,
    pub connection: ConnectionState,
    pub registered_at: Timestamp,
    pub last_activity: Option<Timestamp>,
    /// Why the device has its status (IoT Hub's `statusReason`), as its owner last set it.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// When `enabled` last changed; `None` until it first does.
    #[serde(default)]
    pub status_updated: Option<Timestamp>,
    /// When `connection` last changed; `None` until it first does.
    #[serde(default)]
    pub connection_updated: Option<Timestamp>,
    /// The device's own SAS keys; `None` for devices registered before identities had keys, or
    /// through an API that does not set them (IoT Central, gRPC `RegisterDevice`).
    /// Boxed: most devices of a large fleet have none, and inline they were a sixth of the
    /// device.
    #[serde(default)]
    pub keys: Option<Box<DeviceKeys>>,
    /// IoT Hub's `capabilities.iotEdge`, kept as given.
    #[serde(default)]
    pub iot_edge: bool,
    /// Bumped on every change of the identity (status, keys, display name, template): the
    /// device's ETag, apart from the twin's `version`, as IoT Hub keeps the two apart.
    #[serde(default = "first_version")]
    pub identity_version: u64,
    /// When each desired property was last set and at which desired `$version`: the tree
    /// IoT Hub shows as `properties.desired.$metadata` (see [`touch_metadata`]).
    #[serde(default = "Doc::null")]
    pub desired_meta: Doc,
    /// As `desired_meta`, for the reported properties (no versions per property).
    #[serde(default = "Doc::null")]
    pub reported_meta: Doc,
    /// The desired `$version` last pushed to the device (see `crate::push`).
    #[serde(default)]
    pub desired_sent: u64,
    /// Every key of the desired documents since the last recorded push (that document
    /// included), kept only while the device is behind (`None`: up to date, or never patched).
    #[serde(default)]
    pub desired_base: Option<Box<Value>>,
}

fn first_version() -> u64 {
    1
}

/// A device's two symmetric keys (base64), either of which signs its SAS tokens. They are part
/// of the replicated state (every node checks device tokens), so snapshots hold them; `Debug`
/// does not show them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub primary: String,
    pub secondary: String,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKeys(<redacted>)")
    }
}

/// An IoT Hub device identity as a caller sets it (`PUT /devices/{id}`). `keys` is `None` when
/// the caller gave none: an existing device keeps its keys, a new one gets the fresh keys the
/// edge drew and carried in the command (so `decide` stays deterministic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub id: DeviceId,
    pub enabled: bool,
    pub status_reason: Option<String>,
    pub keys: Option<DeviceKeys>,
    pub iot_edge: bool,
}

/// When a `PutDeviceIdentity` may apply, from IoT Hub's `If-Match` rules: no header creates
/// (a device that exists is a conflict), `*` replaces whatever identity exists, an ETag replaces
/// only that version (a device that does not exist is not found in both cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityCondition {
    Create,
    Exists,
    Version(u64),
}

/// Which part of the twin a patch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TwinSection {
    Tags,
    Desired,
    Reported,
    CloudProperties,
}

impl Device {
    pub fn new(reg: &DeviceRegistration, at: Timestamp) -> Self {
        Device {
            id: reg.id.clone(),
            display_name: Text::or_id(&reg.display_name, &reg.id),
            model_id: reg.model_id.as_deref().map(Text::interned),
            enabled: reg.enabled,
            tags: if reg.tags.is_object() {
                reg.tags.clone()
            } else {
                Doc::empty()
            },
            desired: Doc::empty(),
            desired_version: 0,
            reported: Doc::empty(),
            reported_version: 0,
            cloud_properties: Doc::empty(),
            version: 1,
            connection: ConnectionState::Unknown,
            registered_at: at,
            last_activity: None,
            status_reason: None,
            status_updated: None,
            connection_updated: None,
            keys: None,
            iot_edge: false,
            identity_version: 1,
            desired_meta: Doc::empty(),
            reported_meta: Doc::empty(),
            desired_sent: 0,
            desired_base: None,
        }
    }

    /// Makes the name share the id's text and the model id an interned one, as the live
    /// registry does: for a device decoded from a snapshot, whose texts came as copies.
    pub fn share_texts(&mut self) {
        if self.display_name == self.id.as_str() {
            self.display_name = Text::or_id(&self.display_name, &self.id);
        }
        if let Some(m) = &self.model_id {
            self.model_id = Some(Text::interned(m));
        }
    }

    /// A device made by an IoT Hub identity PUT: named by its id, no template, no tags.
    pub fn from_identity(identity: &DeviceIdentity, at: Timestamp) -> Self {
        let mut d = Device::new(
            &DeviceRegistration {
                id: identity.id.clone(),
                display_name: identity.id.to_string(),
                model_id: None,
                enabled: identity.enabled,
                tags: Doc::empty(),
            },
            at,
        );
        d.status_reason = identity.status_reason.clone();
        d.keys = identity.keys.clone().map(Box::new);
        d.iot_edge = identity.iot_edge;
        d
    }

    /// Replaces the identity part (status, reason, keys, capabilities) of an existing device.
    pub fn set_identity(&mut self, identity: &DeviceIdentity, at: Timestamp) {
        self.set_enabled(identity.enabled, at);
        self.status_reason = identity.status_reason.clone();
        if identity.keys.is_some() {
            self.keys = identity.keys.clone().map(Box::new);
        }
        self.iot_edge = identity.iot_edge;
        self.identity_version += 1;
    }

    /// Applies a registration to an existing device (IoT Central's PUT and PATCH, bulk upsert):
    /// name, template and status replaced, tags merged when given.
    pub fn update(&mut self, reg: &DeviceRegistration, at: Timestamp) {
        self.display_name = Text::or_id(&reg.display_name, &reg.id);
        self.model_id = reg.model_id.as_deref().map(Text::interned);
        self.set_enabled(reg.enabled, at);
        if reg.tags.as_object().is_some_and(|m| !m.is_empty()) {
            merge_patch(&mut self.tags, &reg.tags);
        }
        self.version += 1;
        self.identity_version += 1;
    }

    /// Sets the status, stamping `status_updated` when it changes.
    pub fn set_enabled(&mut self, enabled: bool, at: Timestamp) {
        if self.enabled != enabled {
            self.enabled = enabled;
            self.status_updated = Some(at);
        }
    }

    /// Applies a merge patch to one section and bumps the versions that section carries; the
    /// properties' metadata records `at` for every property the patch touched.
    pub fn patch(&mut self, section: TwinSection, patch: &Value, at: Timestamp) {
        let target = match section {
            TwinSection::Tags => &mut self.tags,
            TwinSection::Desired => {
                self.desired_version += 1;
                match &mut self.desired_base {
                    None => self.desired_base = Some(Box::new((*self.desired).clone())),
                    Some(seen) => crate::push::remember(seen, &self.desired),
                }
                touch_metadata(
                    &mut self.desired_meta,
                    patch,
                    at,
                    Some(self.desired_version),
                );
                &mut self.desired
            }
            TwinSection::Reported => {
                self.reported_version += 1;
                touch_metadata(&mut self.reported_meta, patch, at, None);
                &mut self.reported
            }
            TwinSection::CloudProperties => &mut self.cloud_properties,
        };
        merge_patch(target, patch);
        self.version += 1;
    }

    /// Replaces one section whole (IoT Hub's twin PUT); versions and metadata as for a patch
    /// that sets every property anew.
    pub fn replace(&mut self, section: TwinSection, value: &Value, at: Timestamp) {
        let value = object_or_empty(value);
        match section {
            TwinSection::Tags => self.tags = value.into(),
            TwinSection::Desired => {
                self.desired_version += 1;
                match &mut self.desired_base {
                    None => {
                        self.desired_base =
                            Some(Box::new(std::mem::take(&mut self.desired).into_value()))
                    }
                    Some(seen) => crate::push::remember(seen, &self.desired),
                }
                self.desired_meta = Doc::empty();
                touch_metadata(
                    &mut self.desired_meta,
                    &value,
                    at,
                    Some(self.desired_version),
                );
                self.desired = value.into();
            }
            TwinSection::Reported => {
                self.reported_version += 1;
                self.reported_meta = Doc::empty();
                touch_metadata(&mut self.reported_meta, &value, at, None);
                self.reported = value.into();
            }
            TwinSection::CloudProperties => self.cloud_properties = value.into(),
        }
        self.version += 1;
    }

    /// The twin's identity fields exactly as IoT Hub's `GET /twins/{id}` renders them, in its
    /// order: `deviceId`, `modelId`, `etag`, `deviceEtag`, `status`, `statusReason` (when set),
    /// `statusUpdateTime`, `connectionState`, `lastActivityTime`, `cloudToDeviceMessageCount`,
    /// `authenticationType`, `x509Thumbprint`, `version`. The one rendering of them: the REST
    /// twin and the query document both take them from here, so a `WHERE` sees what a GET shows.
    pub fn twin_identity_fields(&self, m: &mut Map<String, Value>) {
        let time = |t: Option<Timestamp>| {
            Value::String(t.map_or_else(|| NEVER.to_string(), |t| t.to_rfc3339()))
        };
        m.insert("deviceId".into(), Value::String(self.id.to_string()));
        m.insert(
            "modelId".into(),
            Value::String(self.model_id.as_deref().unwrap_or_default().to_string()),
        );
        m.insert("etag".into(), Value::String(self.version.to_string()));
        m.insert(
            "deviceEtag".into(),
            Value::String(self.identity_version.to_string()),
        );
        m.insert(
            "status".into(),
            Value::String(if self.enabled { "enabled" } else { "disabled" }.into()),
        );
        if let Some(r) = &self.status_reason {
            m.insert("statusReason".into(), Value::String(r.clone()));
        }
        m.insert("statusUpdateTime".into(), time(self.status_updated));
        // IoT Hub knows only connected and disconnected: a device that never reported presence
        // is disconnected.
        let connection = match self.connection {
            ConnectionState::Connected => "Connected",
            ConnectionState::Disconnected | ConnectionState::Unknown => "Disconnected",
        };
        m.insert("connectionState".into(), Value::String(connection.into()));
        m.insert("lastActivityTime".into(), time(self.last_activity));
        m.insert("cloudToDeviceMessageCount".into(), Value::from(0));
        m.insert("authenticationType".into(), Value::String("sas".into()));
        let mut thumbprints = Map::new();
        thumbprints.insert("primaryThumbprint".into(), Value::Null);
        thumbprints.insert("secondaryThumbprint".into(), Value::Null);
        m.insert("x509Thumbprint".into(), Value::Object(thumbprints));
        m.insert("version".into(), Value::from(self.version));
    }

    /// The twin's `properties` as `GET /twins/{id}` renders them: `desired` and `reported`,
    /// each with its `$metadata` (`$lastUpdated` in RFC 3339 on every node, and
    /// `$lastUpdatedVersion` on desired ones) and `$version`. A section never written shows the
    /// registration time (and version 0 for desired ones), as a new IoT Hub twin does.
    pub fn twin_properties(&self) -> Value {
        let created = self.registered_at;
        let mut props = Map::new();
        props.insert(
            "desired".into(),
            section(
                &self.desired,
                &self.desired_meta,
                self.desired_version,
                true,
                created,
            ),
        );
        props.insert(
            "reported".into(),
            section(
                &self.reported,
                &self.reported_meta,
                self.reported_version,
                false,
                created,
            ),
        );
        Value::Object(props)
    }

    /// The document a query evaluates: [`Device::twin_document`], with the properties'
    /// `$metadata` and `$version` when the query names them (rendering them for every device of
    /// every query would cost each query the metadata trees).
    pub fn query_document(&self, names_metadata: bool) -> Value {
        let mut doc = self.twin_document();
        if names_metadata {
            if let Value::Object(m) = &mut doc {
                m.insert("properties".into(), self.twin_properties());
            }
        }
        doc
    }

    /// The JSON document the query language evaluates: the twin's identity fields as
    /// `GET /twins/{id}` renders them ([`Device::twin_identity_fields`]), `tags`, the desired and
    /// reported properties (without `$metadata`/`$version`; see [`Device::query_document`]),
    /// `capabilities`, and muster's additions IoT Central's device queries use: `displayName`,
    /// `$template`, `cloudProperties`.
    pub fn twin_document(&self) -> Value {
        let mut doc = Map::new();
        self.twin_identity_fields(&mut doc);
        doc.insert(
            "displayName".into(),
            Value::String(self.display_name.to_string()),
        );
        if let Some(m) = &self.model_id {
            doc.insert("$template".into(), Value::String(m.to_string()));
        }
        doc.insert("tags".into(), self.tags.to_value());
        let mut props = Map::new();
        props.insert("desired".into(), self.desired.to_value());
        props.insert("reported".into(), self.reported.to_value());
        doc.insert("properties".into(), Value::Object(props));
        let mut capabilities = Map::new();
        capabilities.insert("iotEdge".into(), Value::Bool(self.iot_edge));
        doc.insert("capabilities".into(), Value::Object(capabilities));
        doc.insert("cloudProperties".into(), self.cloud_properties.to_value());
        Value::Object(doc)
    }
}

/// IoT Hub's "never": the time it shows for something that has not happened yet.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// A device group: a saved query, as IoT Central's device groups are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub display_name: String,
    /// IoT Central's short summary of the group (empty: none).
    #[serde(default)]
    pub description: String,
    pub query: Query,
    pub saved_at: Timestamp,
    /// Counts the saves of this group (1 after the first): its etag.
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "RegistryFields")]
pub struct Registry {
    pub devices: crate::cow::CowMap<DeviceId, Device>,
    pub groups: crate::cow::CowMap<GroupId, Group>,
    /// Devices behind on their desired properties (see `crate::push`).
    #[serde(default)]
    pub desired_unsent: crate::push::Unsent,
    /// The devices whose `connection` is `Disconnected`: derived from `devices` (kept by
    /// `evolve`, rebuilt by [`disconnected_of`] when a registry is read), never written. Computing
    /// actions asks whether a waiting device is offline for every device of a large batch;
    /// at a million devices a lookup in `devices` for each was a third of the node's CPU,
    /// and this set is usually small or empty.
    #[serde(skip_serializing)]
    pub disconnected: crate::cow::CowSet<DeviceId>,
}

/// [`Registry`] as stored: everything but what is derived.
#[derive(Deserialize)]
struct RegistryFields {
    devices: crate::cow::CowMap<DeviceId, Device>,
    groups: crate::cow::CowMap<GroupId, Group>,
    #[serde(default)]
    desired_unsent: crate::push::Unsent,
}

impl From<RegistryFields> for Registry {
    fn from(f: RegistryFields) -> Registry {
        Registry {
            disconnected: disconnected_of(&f.devices),
            devices: f.devices,
            groups: f.groups,
            desired_unsent: f.desired_unsent,
        }
    }
}

/// The devices of `devices` that are `Disconnected` (see [`Registry::disconnected`]).
pub fn disconnected_of(
    devices: &crate::cow::CowMap<DeviceId, Device>,
) -> crate::cow::CowSet<DeviceId> {
    devices
        .values()
        .filter(|d| d.connection == ConnectionState::Disconnected)
        .map(|d| d.id.clone())
        .collect()
}

impl Registry {
    /// Whether `device` is registered and `Disconnected`.
    pub fn is_disconnected(&self, device: &DeviceId) -> bool {
        !self.disconnected.is_empty() && self.disconnected.contains(device)
    }

    /// Devices matching a query, in id order (the order batches are cut in).
    pub fn select(&self, query: &Query) -> Vec<DeviceId> {
        self.devices
            .values()
            .filter(|d| query.matches(&d.query_document(query.names_metadata())))
            .map(|d| d.id.clone())
            .collect()
    }
}

/// One properties section with its `$metadata` and `$version` (see [`Device::twin_properties`]).
fn section(props: &Value, meta: &Value, version: u64, desired: bool, created: Timestamp) -> Value {
    let mut map = match props {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut meta = render_meta(meta);
    if let Value::Object(root) = &mut meta {
        if !root.contains_key(META_UPDATED) {
            root.insert(META_UPDATED.into(), Value::String(created.to_rfc3339()));
        }
        if desired && !root.contains_key(META_VERSION) {
            root.insert(META_VERSION.into(), Value::from(version));
        }
    }
    map.insert("$metadata".into(), meta);
    map.insert("$version".into(), Value::from(version));
    Value::Object(map)
}

/// The stored metadata tree with its times (ms) written as RFC 3339.
fn render_meta(meta: &Value) -> Value {
    match meta {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        (META_UPDATED, Value::Number(n)) => {
                            Value::String(Timestamp(n.as_i64().unwrap_or_default()).to_rfc3339())
                        }
                        _ => render_meta(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    }
}

/// Key of a metadata node's time (ms since the epoch; the edge renders it as IoT Hub's
/// `$lastUpdated`).
pub const META_UPDATED: &str = "$lastUpdated";
/// Key of a desired metadata node's version (IoT Hub's `$lastUpdatedVersion`).
pub const META_VERSION: &str = "$lastUpdatedVersion";

/// Records in the metadata tree `meta` that `patch` was applied at `at` (and, for desired
/// properties, at `version`): the root and every object on the way get the time, every property
/// the patch sets gets a fresh node, and every property it removes (`null`) loses its node. The
/// tree mirrors the properties' shape, so it is as deterministic as the patches themselves.
pub fn touch_metadata(meta: &mut Value, patch: &Value, at: Timestamp, version: Option<u64>) {
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(node) = meta else { return };
    node.insert(META_UPDATED.into(), Value::from(at.millis()));
    if let Some(v) = version {
        node.insert(META_VERSION.into(), Value::from(v));
    }
    let Value::Object(patch_map) = patch else {
        return;
    };
    for (k, v) in patch_map {
        match v {
            Value::Null => {
                node.remove(k);
            }
            Value::Object(_) => {
                let child = node.entry(k.clone()).or_insert(Value::Null);
                touch_metadata(child, v, at, version);
            }
            _ => {
                let mut leaf = Map::new();
                leaf.insert(META_UPDATED.into(), Value::from(at.millis()));
                if let Some(ver) = version {
                    leaf.insert(META_VERSION.into(), Value::from(ver));
                }
                node.insert(k.clone(), Value::Object(leaf));
            }
        }
    }
}

fn object_or_empty(v: &Value) -> Value {
    match v {
        Value::Object(_) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` removes a key, anything else
/// replaces. This is how both IoT Hub and IoT Central patch twins.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Serialize for Query {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text())
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Query::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A registered device is one allocation of at most 256 bytes with its reference counts
    /// (the registry holds it behind an `Arc`): a million devices, a quarter GiB. A field that
    /// pushes it over belongs in a box or a shared text.
    #[test]
    fn a_device_fits_its_allocation_class() {
        assert!(
            std::mem::size_of::<Device>() + 16 <= 256,
            "{}",
            std::mem::size_of::<Device>()
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
        merge_patch(&mut doc, &json!({"b": 7}));
        assert_eq!(doc, json!({"b": 7, "e": [1]}));
    }

    #[test]
    fn patches_bump_the_right_versions() {
        let reg = DeviceRegistration {
            id: DeviceId::new("d1").unwrap(),
            display_name: "one".into(),
            model_id: Some("dtmi:x;1".into()),
            enabled: true,
            tags: json!({"site": "b43"}).into(),
        };
        let mut d = Device::new(&reg, Timestamp(5));
        d.patch(TwinSection::Desired, &json!({"fw": "2"}), Timestamp(6));
        d.patch(TwinSection::Reported, &json!({"fw": "1"}), Timestamp(7));
        assert_eq!(
            (d.desired_version, d.reported_version, d.version),
            (1, 1, 3)
        );
        let doc = d.twin_document();
        assert_eq!(doc["properties"]["desired"]["fw"], "2");
        assert_eq!(doc["$template"], "dtmi:x;1");
        assert_eq!(doc["tags"]["site"], "b43");
    }

    /// A WHERE over `$version` and `$metadata` sees them as `GET /twins/{id}` renders them.
    #[test]
    fn queries_see_versions_and_metadata() {
        let reg = DeviceRegistration {
            id: DeviceId::new("d1").unwrap(),
            display_name: "one".into(),
            model_id: None,
            enabled: true,
            tags: json!({}).into(),
        };
        let mut d = Device::new(&reg, Timestamp(5));
        d.patch(
            TwinSection::Desired,
            &json!({"fw": "2"}),
            Timestamp(86_400_000),
        );
        d.patch(
            TwinSection::Desired,
            &json!({"mode": "eco"}),
            Timestamp(2 * 86_400_000),
        );
        d.patch(
            TwinSection::Reported,
            &json!({"fw": "1"}),
            Timestamp(3 * 86_400_000),
        );
        let q = |w: &str| Query::parse(&format!("SELECT * FROM devices WHERE {w}")).expect(w);
        for (w, want) in [
            ("properties.desired.$version = 2", true),
            ("properties.desired.$version = 1", false),
            ("properties.reported.$version = 1", true),
            (
                "properties.desired.$metadata.fw.$lastUpdatedVersion = 1",
                true,
            ),
            (
                "properties.desired.$metadata.mode.$lastUpdatedVersion = 2",
                true,
            ),
            (
                "properties.desired.$metadata.fw.$lastUpdated = '1970-01-02T00:00:00.000Z'",
                true,
            ),
            (
                "properties.reported.$metadata.$lastUpdated > '1970-01-03T00:00:00Z'",
                true,
            ),
            ("properties.desired.fw = '2'", true),
        ] {
            let query = q(w);
            assert!(query.names_metadata() || !w.contains('$'), "{w}");
            let doc = d.query_document(query.names_metadata());
            assert_eq!(query.matches(&doc), want, "{w}: {doc}");
        }
        // The same rendering as the twin's properties.
        assert_eq!(d.query_document(true)["properties"], d.twin_properties());
        assert!(d.twin_document()["properties"]["desired"]
            .get("$version")
            .is_none());
    }

    /// A WHERE sees the twin fields as `GET /twins/{id}` renders them: IoT Hub's connection
    /// state (never connected is `Disconnected`), times in RFC 3339 or IoT Hub's "never", the
    /// status reason, the etags and versions.
    #[test]
    fn queries_see_the_rendered_twin_fields() {
        let reg = DeviceRegistration {
            id: DeviceId::new("d1").unwrap(),
            display_name: "one".into(),
            model_id: None,
            enabled: false,
            tags: json!({}).into(),
        };
        let mut d = Device::new(&reg, Timestamp(5));
        d.status_reason = Some("retired".into());
        let q = |w: &str| Query::parse(&format!("SELECT * FROM devices WHERE {w}")).expect(w);
        let doc = d.twin_document();
        for w in [
            "connectionState = 'Disconnected'",
            "lastActivityTime = '0001-01-01T00:00:00Z'",
            "statusReason = 'retired'",
            "status = 'disabled'",
            "etag = '1'",
            "deviceEtag = '1'",
            "version = 1",
            "cloudToDeviceMessageCount = 0",
            "authenticationType = 'sas'",
            "capabilities.iotEdge = false",
        ] {
            assert!(q(w).matches(&doc), "{w}: {doc}");
        }
        d.connection = ConnectionState::Connected;
        d.last_activity = Some(Timestamp(1_000));
        let doc = d.twin_document();
        assert!(q("connectionState = 'Connected'").matches(&doc));
        assert!(
            q("lastActivityTime > '1970-01-01T00:00:00Z'").matches(&doc),
            "{doc}"
        );
        let mut identity = Map::new();
        d.twin_identity_fields(&mut identity);
        for (k, v) in &identity {
            assert_eq!(&doc[k.as_str()], v, "{k}");
        }
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_follows_patches_and_replaces() {
        let mut d = Device::new(
            &DeviceRegistration {
                id: DeviceId::new("d1").unwrap(),
                display_name: "d1".into(),
                model_id: None,
                enabled: true,
                tags: json!({}).into(),
            },
            Timestamp(1),
        );
        d.patch(
            TwinSection::Desired,
            &json!({"fw": "2", "net": {"ssid": "a"}}),
            Timestamp(10),
        );
        d.patch(TwinSection::Desired, &json!({"fw": null}), Timestamp(20));
        assert_eq!(
            d.desired_meta,
            json!({"$lastUpdated": 20, "$lastUpdatedVersion": 2,
                   "net": {"$lastUpdated": 10, "$lastUpdatedVersion": 1,
                           "ssid": {"$lastUpdated": 10, "$lastUpdatedVersion": 1}}})
        );
        d.replace(TwinSection::Desired, &json!({"x": 1}), Timestamp(30));
        assert_eq!(d.desired, json!({"x": 1}));
        assert_eq!(d.desired_version, 3);
        assert_eq!(
            d.desired_meta,
            json!({"$lastUpdated": 30, "$lastUpdatedVersion": 3,
                   "x": {"$lastUpdated": 30, "$lastUpdatedVersion": 3}})
        );
        d.patch(TwinSection::Reported, &json!({"fw": "1"}), Timestamp(40));
        assert_eq!(
            d.reported_meta,
            json!({"$lastUpdated": 40, "fw": {"$lastUpdated": 40}})
        );
    }

    #[test]
    fn status_time_moves_only_when_the_status_changes() {
        let keys = DeviceKeys {
            primary: "p".into(),
            secondary: "s".into(),
        };
        let identity = DeviceIdentity {
            id: DeviceId::new("d1").unwrap(),
            enabled: true,
            status_reason: None,
            keys: Some(keys.clone()),
            iot_edge: false,
        };
        let mut d = Device::from_identity(&identity, Timestamp(1));
        assert_eq!((d.status_updated, d.identity_version), (None, 1));
        d.set_identity(&identity, Timestamp(2));
        assert_eq!((d.status_updated, d.identity_version), (None, 2));
        let off = DeviceIdentity {
            enabled: false,
            status_reason: Some("stolen".into()),
            ..identity
        };
        d.set_identity(&off, Timestamp(3));
        assert_eq!(d.status_updated, Some(Timestamp(3)));
        assert_eq!(d.status_reason.as_deref(), Some("stolen"));
        assert!(!d.enabled);
        assert_eq!(format!("{:?}", d.keys), "Some(DeviceKeys(<redacted>))");
    }
}
