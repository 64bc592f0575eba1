//! IoT Hub's limits on the size of a whole twin section, not only of one patch: tags at most
//! 8 KB, desired and reported properties at most 32 KB each, counted the way IoT Hub counts
//! them (keys and string values by their UTF-8 length without control characters, numbers as 8
//! bytes, booleans as 4). Without them a twin grew without bound, one accepted patch at a time.
//!
//! A change that would take a section past its limit is refused whole, as IoT Hub does; the
//! caller learns the section, its size after the change and the limit.

use serde_json::Value;

use crate::error::DomainError;
use crate::registry::{merge_patch, Device, TwinSection};

/// IoT Hub's limit for `tags`.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// IoT Hub's limit for `properties.desired` and for `properties.reported`, each.
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;

/// The limit of a section and its name in the API's spelling; cloud properties (an IoT Central
/// extension kept beside the twin) have no twin limit.
pub fn limit(section: TwinSection) -> Option<(&'static str, usize)> {
    match section {
        TwinSection::Tags => Some(("tags", MAX_TAGS_BYTES)),
        TwinSection::Desired => Some(("properties.desired", MAX_PROPERTIES_BYTES)),
        TwinSection::Reported => Some(("properties.reported", MAX_PROPERTIES_BYTES)),
        TwinSection::CloudProperties => None,
    }
}

/// The size IoT Hub charges a JSON value with: the sum over its properties of the key's length
/// and the value's size.
pub fn size(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => text_len(s),
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| text_len(k) + size(v)).sum(),
    }
}

fn text_len(s: &str) -> usize {
    s.chars()
        .filter(|c| !c.is_control())
        .map(char::len_utf8)
        .sum()
}

/// The section of `device` as it is now.
pub fn current(device: &Device, section: TwinSection) -> &Value {
    match section {
        TwinSection::Tags => &device.tags,
        TwinSection::Desired => &device.desired,
        TwinSection::Reported => &device.reported,
        TwinSection::CloudProperties => &device.cloud_properties,
    }
}

/// Refuses `patches` (merge patches applied in order to `current`) if the section would end up
/// past its limit. The exact merge is only computed when the sum of the sizes could exceed the
/// limit: a merge never holds more than the section and the patches together.
pub fn check_patched(
    section: TwinSection,
    current: &Value,
    patches: &[&Value],
) -> Result<(), DomainError> {
    let Some((field, max)) = limit(section) else {
        return Ok(());
    };
    let bound = size(current) + patches.iter().map(|p| size(p)).sum::<usize>();
    if bound <= max {
        return Ok(());
    }
    let mut merged = current.clone();
    for p in patches {
        merge_patch(&mut merged, p);
    }
    within(field, size(&merged), max)
}

/// Refuses `value` as a whole section (a twin PUT, or tags given at registration) past its limit.
pub fn check_whole(section: TwinSection, value: &Value) -> Result<(), DomainError> {
    match limit(section) {
        Some((field, max)) => within(field, size(value), max),
        None => Ok(()),
    }
}

fn within(field: &str, size: usize, max: usize) -> Result<(), DomainError> {
    if size > max {
        return Err(DomainError::TooLarge {
            field: format!("{field} (the whole twin section after this change)"),
            size,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn counts_as_iot_hub_does() {
        // "a"(1) + "xy"(2) = 3; "n"(1) + 8; "b"(1) + 4; "o"(1) + ("k"(1) + "v"(1)).
        let v = json!({"a": "xy", "n": 1.5, "b": true, "o": {"k": "v"}});
        assert_eq!(size(&v), 3 + 9 + 5 + 3);
        // Control characters are not counted; other characters by their UTF-8 length.
        assert_eq!(size(&json!({"k": "a\u{7}é"})), 1 + 1 + 2);
    }

    #[test]
    fn refuses_a_patch_that_takes_the_section_past_its_limit() {
        let big = "x".repeat(5_000);
        let current = json!({"a": big});
        assert!(check_patched(TwinSection::Tags, &current, &[&json!({"b": "y"})]).is_ok());
        let err = check_patched(TwinSection::Tags, &current, &[&json!({"b": big})]).unwrap_err();
        assert!(err.to_string().contains("tags"), "{err}");
        assert!(err.to_string().contains("8192"), "{err}");
        // Replacing the big value with a small one shrinks the section: allowed.
        let shrink = json!({"a": "small", "b": "x".repeat(3_000)});
        assert!(check_patched(TwinSection::Tags, &current, &[&shrink]).is_ok());
        // Desired properties have 32 KB.
        assert!(check_patched(TwinSection::Desired, &current, &[&json!({"b": big})]).is_ok());
    }

    proptest! {
        /// The cheap bound never lets through what the exact merge would refuse.
        #[test]
        fn the_bound_is_sound(a in 0usize..6_000, b in 0usize..6_000, same_key: bool) {
            let current = json!({"k": "x".repeat(a)});
            let key = if same_key { "k" } else { "j" };
            let patch = json!({ key: "y".repeat(b) });
            let mut merged = current.clone();
            merge_patch(&mut merged, &patch);
            let ok = check_patched(TwinSection::Tags, &current, &[&patch]).is_ok();
            prop_assert_eq!(ok, size(&merged) <= MAX_TAGS_BYTES);
        }
    }
}
