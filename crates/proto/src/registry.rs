//! Conversions of the device registry's parts: registrations and twin sections.

use muster_domain::{DeviceIdentity, DeviceKeys, DeviceRegistration, TwinSection};

use crate::error::ProtoError;
use crate::fields::{id, json, json_text};
use crate::pb;

impl From<&DeviceRegistration> for pb::DeviceRegistration {
    fn from(d: &DeviceRegistration) -> Self {
        pb::DeviceRegistration {
            device_id: d.id.to_string(),
            display_name: d.display_name.clone(),
            model_id: d.model_id.clone(),
            enabled: d.enabled,
            tags_json: json_text(&d.tags),
        }
    }
}

impl TryFrom<pb::DeviceRegistration> for DeviceRegistration {
    type Error = ProtoError;

    fn try_from(d: pb::DeviceRegistration) -> Result<Self, ProtoError> {
        Ok(DeviceRegistration {
            id: id("device_id", d.device_id)?,
            display_name: d.display_name,
            model_id: d.model_id,
            enabled: d.enabled,
            tags: json("tags_json", &d.tags_json)?.into(),
        })
    }
}

impl From<TwinSection> for pb::TwinSection {
    fn from(s: TwinSection) -> Self {
        match s {
            TwinSection::Tags => pb::TwinSection::Tags,
            TwinSection::Desired => pb::TwinSection::Desired,
            TwinSection::Reported => pb::TwinSection::Reported,
            TwinSection::CloudProperties => pb::TwinSection::CloudProperties,
        }
    }
}

/// Reads an enum field holding a `TwinSection`. Prost keeps enum fields as `i32` so that values
/// from a newer schema survive decoding; here such values, and `UNSPECIFIED`, are refused.
pub(crate) fn twin_section(field: &str, value: i32) -> Result<TwinSection, ProtoError> {
    match pb::TwinSection::try_from(value) {
        Ok(pb::TwinSection::Tags) => Ok(TwinSection::Tags),
        Ok(pb::TwinSection::Desired) => Ok(TwinSection::Desired),
        Ok(pb::TwinSection::Reported) => Ok(TwinSection::Reported),
        Ok(pb::TwinSection::CloudProperties) => Ok(TwinSection::CloudProperties),
        Ok(pb::TwinSection::Unspecified) | Err(_) => Err(ProtoError::UnknownEnum {
            field: field.to_string(),
            value,
        }),
    }
}

impl From<&DeviceIdentity> for pb::DeviceIdentity {
    fn from(d: &DeviceIdentity) -> Self {
        pb::DeviceIdentity {
            device_id: d.id.to_string(),
            enabled: d.enabled,
            status_reason: d.status_reason.clone(),
            primary_key: d
                .keys
                .as_ref()
                .map(|k| k.primary.clone())
                .unwrap_or_default(),
            secondary_key: d
                .keys
                .as_ref()
                .map(|k| k.secondary.clone())
                .unwrap_or_default(),
            iot_edge: d.iot_edge,
        }
    }
}

/// Reads a `DeviceIdentity`; `field` is its path for errors.
pub(crate) fn identity(field: &str, d: pb::DeviceIdentity) -> Result<DeviceIdentity, ProtoError> {
    Ok(DeviceIdentity {
        id: id(&format!("{field}.device_id"), d.device_id)?,
        enabled: d.enabled,
        status_reason: d.status_reason,
        keys: (!d.primary_key.is_empty() || !d.secondary_key.is_empty()).then_some(DeviceKeys {
            primary: d.primary_key,
            secondary: d.secondary_key,
        }),
        iot_edge: d.iot_edge,
    })
}
