//! Which MQTT topics a device may use, and whether a device's open session still stands.
//!
//! One rule, three enforcers: Mosquitto's ACL file (`muster device credentials` writes these
//! suffixes as `pattern` lines for devices logged in as themselves), and muster's device gateway,
//! which logs every device in to Mosquitto under one gateway identity and therefore checks each
//! PUBLISH, SUBSCRIBE and will of the device against [`device_may_publish`] and
//! [`device_may_subscribe`] itself, closing the connection on the first one outside (as IoT Hub
//! does with a topic it does not serve).

use crate::registry::{DeviceKeys, Registry};
use muster_types::DeviceId;

/// The topics a device receives, below `devices/{id}/`: method calls and desired patches.
pub const DEVICE_RECEIVES: [&str; 2] = ["methods/POST/#", "twin/PATCH/properties/desired/#"];

/// The topics a device publishes, below `devices/{id}/`: method answers, reported properties and
/// its presence (its will included).
pub const DEVICE_SENDS: [&str; 3] = [
    "methods/res/#",
    "twin/PATCH/properties/reported/#",
    "presence",
];

/// The part of `topic` below `devices/{device}/`, if it is there.
fn own_suffix<'a>(device: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("devices/")?
        .strip_prefix(device)?
        .strip_prefix('/')
}

/// Whether `topic` (a PUBLISH topic or a will topic; wildcards are never valid there) is one
/// `device` may publish to.
pub fn device_may_publish(device: &str, topic: &str) -> bool {
    if device.is_empty() || topic.contains(['+', '#', '\0']) {
        return false;
    }
    let Some(rest) = own_suffix(device, topic) else {
        return false;
    };
    DEVICE_SENDS
        .iter()
        .any(|allowed| match allowed.strip_suffix("/#") {
            Some(prefix) => {
                rest == prefix
                    || rest
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with('/'))
            }
            None => rest == *allowed,
        })
}

/// Whether every topic `filter` (a SUBSCRIBE topic filter, wildcards allowed) can match is one
/// `device` may receive: the filter names the device literally and stays below one of
/// [`DEVICE_RECEIVES`].
pub fn device_may_subscribe(device: &str, filter: &str) -> bool {
    if device.is_empty() || filter.contains('\0') {
        return false;
    }
    let Some(rest) = own_suffix(device, filter) else {
        return false;
    };
    DEVICE_RECEIVES.iter().any(|allowed| {
        let prefix = allowed.strip_suffix("/#").unwrap_or(allowed);
        rest == prefix
            || rest
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('/'))
    })
}

/// Whether a session that `device` opened with `keys` still stands: the device exists, is
/// enabled and has the same keys. A device deleted, disabled or given new keys is cut off
/// (its token was checked against what no longer holds).
pub fn device_session_holds(registry: &Registry, device: &DeviceId, keys: &DeviceKeys) -> bool {
    registry
        .devices
        .get(device)
        .is_some_and(|d| d.enabled && d.keys.as_deref() == Some(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_device_publishes_only_its_own_answers_reports_and_presence() {
        for ok in [
            "devices/d1/methods/res/200/?$rid=1",
            "devices/d1/twin/PATCH/properties/reported/?$rid=2",
            "devices/d1/presence",
            "devices/d1/methods/res",
        ] {
            assert!(device_may_publish("d1", ok), "{ok}");
        }
        for bad in [
            "devices/d2/presence",
            "devices/d1/presence/x",
            "devices/d1/methods/POST/ping",
            "devices/d1/twin/PATCH/properties/desired/",
            "devices/d1/methods/resx",
            "devices/d10/presence",
            "devices/d/presence",
            "devices/+/presence",
            "devices/d1/methods/res/#",
            "devices/d1",
            "$SYS/broker",
            "",
        ] {
            assert!(!device_may_publish("d1", bad), "{bad}");
        }
    }

    #[test]
    fn a_device_subscribes_only_below_its_own_calls_and_desired_patches() {
        for ok in [
            "devices/d1/methods/POST/#",
            "devices/d1/methods/POST/+/#",
            "devices/d1/methods/POST",
            "devices/d1/twin/PATCH/properties/desired/#",
        ] {
            assert!(device_may_subscribe("d1", ok), "{ok}");
        }
        for bad in [
            "#",
            "devices/#",
            "devices/+/methods/POST/#",
            "devices/d1/#",
            "devices/d1/+/POST/#",
            "devices/d1/methods/#",
            "devices/d1/methods/res/#",
            "devices/d2/methods/POST/#",
            "devices/d1/twin/PATCH/properties/reported/#",
            "devices/d1/methods/POSTx/#",
            "$SYS/#",
        ] {
            assert!(!device_may_subscribe("d1", bad), "{bad}");
        }
    }

    proptest! {
        /// Nothing a device may publish or subscribe to names another device: every allowed
        /// topic starts with `devices/{its id}/`.
        #[test]
        fn nothing_allowed_names_another_device(
            device in "[a-z0-9]{1,4}",
            topic in "(devices/)?[a-z0-9+#/]{0,12}(/methods/(res|POST)/[a-z0-9+#]{0,3}|/presence)?",
        ) {
            let own = format!("devices/{device}/");
            if device_may_publish(&device, &topic) {
                prop_assert!(topic.starts_with(&own));
                prop_assert!(!topic.contains(['+', '#']));
            }
            if device_may_subscribe(&device, &topic) {
                prop_assert!(topic.starts_with(&own));
                let second = topic.split('/').nth(1);
                prop_assert_eq!(second, Some(device.as_str()));
            }
        }
    }
}
