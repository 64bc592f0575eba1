//! The device registry: devices with their twins, and device groups as saved queries.
//!
//! Jobs are planned against the registry, and continuous jobs watch it, so it lives in the same
//! replicated state as the jobs and changes only through events.

use std::collections::BTreeMap;

use muster_types::{DeviceId, GroupId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::query::Query;

/// What a caller supplies to register (or, with upsert, update) a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistration {
    pub id: DeviceId,
    pub display_name: String,
    /// IoT Central's device template / IoT Plug and Play model id.
    pub model_id: Option<String>,
    pub enabled: bool,
    /// Initial tags; merged into existing tags on upsert.
    pub tags: Value,
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
    pub display_name: String,
    pub model_id: Option<String>,
    pub enabled: bool,
    pub tags: Value,
    pub desired: Value,
    pub desired_version: u64,
    pub reported: Value,
    pub reported_version: u64,
    pub cloud_properties: Value,
    /// Bumped on every change of the twin (an ETag for optimistic concurrency).
    pub version: u64,
    pub connection: ConnectionState,
    pub registered_at: Timestamp,
    pub last_activity: Option<Timestamp>,
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
            display_name: reg.display_name.clone(),
            model_id: reg.model_id.clone(),
            enabled: reg.enabled,
            tags: object_or_empty(&reg.tags),
            desired: Value::Object(Map::new()),
            desired_version: 0,
            reported: Value::Object(Map::new()),
            reported_version: 0,
            cloud_properties: Value::Object(Map::new()),
            version: 1,
            connection: ConnectionState::Unknown,
            registered_at: at,
            last_activity: None,
        }
    }

    /// Applies a merge patch to one section and bumps the versions that section carries.
    pub fn patch(&mut self, section: TwinSection, patch: &Value) {
        let target = match section {
            TwinSection::Tags => &mut self.tags,
            TwinSection::Desired => {
                self.desired_version += 1;
                &mut self.desired
            }
            TwinSection::Reported => {
                self.reported_version += 1;
                &mut self.reported
            }
            TwinSection::CloudProperties => &mut self.cloud_properties,
        };
        merge_patch(target, patch);
        self.version += 1;
    }

    /// The JSON document the query language evaluates, in IoT Hub's twin shape.
    pub fn twin_document(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("deviceId".into(), Value::String(self.id.to_string()));
        doc.insert(
            "displayName".into(),
            Value::String(self.display_name.clone()),
        );
        if let Some(m) = &self.model_id {
            doc.insert("$template".into(), Value::String(m.clone()));
            doc.insert("modelId".into(), Value::String(m.clone()));
        }
        doc.insert(
            "status".into(),
            Value::String(if self.enabled { "enabled" } else { "disabled" }.into()),
        );
        doc.insert(
            "connectionState".into(),
            Value::String(self.connection.as_str().into()),
        );
        doc.insert("tags".into(), self.tags.clone());
        let mut props = Map::new();
        props.insert("desired".into(), self.desired.clone());
        props.insert("reported".into(), self.reported.clone());
        doc.insert("properties".into(), Value::Object(props));
        doc.insert("cloudProperties".into(), self.cloud_properties.clone());
        Value::Object(doc)
    }
}

/// A device group: a saved query, as IoT Central's device groups are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub display_name: String,
    pub query: Query,
    pub saved_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Registry {
    pub devices: BTreeMap<DeviceId, Device>,
    pub groups: BTreeMap<GroupId, Group>,
}

impl Registry {
    /// Devices matching a query, in id order (the order batches are cut in).
    pub fn select(&self, query: &Query) -> Vec<DeviceId> {
        self.devices
            .values()
            .filter(|d| query.matches(&d.twin_document()))
            .map(|d| d.id.clone())
            .collect()
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
            tags: json!({"site": "b43"}),
        };
        let mut d = Device::new(&reg, Timestamp(5));
        d.patch(TwinSection::Desired, &json!({"fw": "2"}));
        d.patch(TwinSection::Reported, &json!({"fw": "1"}));
        assert_eq!(
            (d.desired_version, d.reported_version, d.version),
            (1, 1, 3)
        );
        let doc = d.twin_document();
        assert_eq!(doc["properties"]["desired"]["fw"], "2");
        assert_eq!(doc["$template"], "dtmi:x;1");
        assert_eq!(doc["tags"]["site"], "b43");
    }
}
