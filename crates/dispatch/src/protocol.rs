//! The MQTT device protocol's topics (design.md, "MQTT device protocol"), as pure functions so the
//! wire format is tested without a broker.
//!
//! ```text
//! method request   devices/{id}/methods/POST/{method}/?$rid={rid}
//! method reply     devices/{id}/methods/res/{status}/?$rid={rid}
//! desired patch    devices/{id}/twin/PATCH/properties/desired/?$version={v}
//! reported patch   devices/{id}/twin/PATCH/properties/reported/?$rid={rid}
//! presence         devices/{id}/presence              (retained `online`, will `offline`)
//! ```

use serde_json::Value;

/// What the dispatcher subscribes to (on every broker): replies, presence and reported properties
/// of every device. Wildcards keep it to three subscriptions whatever the fleet size.
pub const REPLY_FILTER: &str = "devices/+/methods/res/#";
pub const PRESENCE_FILTER: &str = "devices/+/presence";
pub const REPORTED_FILTER: &str = "devices/+/twin/PATCH/properties/reported/#";

/// Presence payloads.
pub const ONLINE: &[u8] = b"online";
pub const OFFLINE: &[u8] = b"offline";

pub fn method_request_topic(device: &str, method: &str, rid: &str) -> String {
    format!("devices/{device}/methods/POST/{method}/?$rid={rid}")
}

pub fn method_reply_topic(device: &str, status: i32, rid: &str) -> String {
    format!("devices/{device}/methods/res/{status}/?$rid={rid}")
}

pub fn desired_patch_topic(device: &str, version: u64) -> String {
    format!("devices/{device}/twin/PATCH/properties/desired/?$version={version}")
}

pub fn reported_patch_topic(device: &str, rid: &str) -> String {
    format!("devices/{device}/twin/PATCH/properties/reported/?$rid={rid}")
}

pub fn presence_topic(device: &str) -> String {
    format!("devices/{device}/presence")
}

/// Whether a string may be placed in a topic *name*. MQTT forbids the wildcards `+` and `#` in
/// the topic of a PUBLISH (a broker disconnects a client that sends one), and `/` would shift
/// the levels. Device ids cannot contain any of them, but job ids (and so rids) and method names
/// can contain `+` or `#`; such requests fail at dispatch instead of costing the connection.
pub fn topic_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#', '/', '\0'])
}

/// A message the dispatcher receives from a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// An answer to a method request. `payload` is the body as JSON, or the body as a JSON string
    /// when it is not JSON, so nothing the device said is lost.
    Reply {
        device: String,
        status: i32,
        rid: String,
        payload: Value,
    },
    Presence {
        device: String,
        online: bool,
    },
    /// A reported-properties patch; `None` when the body is not a JSON object (ignored upstream).
    Reported {
        device: String,
        patch: Option<Value>,
    },
}

/// Reads an incoming message; `None` for topics that are not ours or are malformed.
pub fn parse_inbound(topic: &str, payload: &[u8]) -> Option<Inbound> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    if device.is_empty() {
        return None;
    }
    if rest == "presence" {
        let online = match payload {
            ONLINE => true,
            OFFLINE => false,
            _ => return None,
        };
        return Some(Inbound::Presence {
            device: device.to_string(),
            online,
        });
    }
    if let Some(rest) = rest.strip_prefix("methods/res/") {
        let (status, query) = rest.split_once('/')?;
        let status: i32 = status.parse().ok()?;
        let rid = query_value(query, "$rid")?;
        return Some(Inbound::Reply {
            device: device.to_string(),
            status,
            rid: rid.to_string(),
            payload: body_json(payload),
        });
    }
    if rest.starts_with("twin/PATCH/properties/reported/") {
        let patch = serde_json::from_slice::<Value>(payload)
            .ok()
            .filter(Value::is_object);
        return Some(Inbound::Reported {
            device: device.to_string(),
            patch,
        });
    }
    None
}

/// The value of `key` in a `?k=v&k2=v2` level. `$rid` is read to the end of the level when it is
/// the only property, so a rid holding `&` (job ids may) still round-trips.
pub fn query_value<'a>(level: &'a str, key: &str) -> Option<&'a str> {
    let q = level.strip_prefix('?')?;
    let prefix_len = key.len() + 1;
    if q.len() > prefix_len && q.starts_with(key) && q.as_bytes().get(key.len()) == Some(&b'=') {
        let whole = &q[prefix_len..];
        // Only `$rid` is ever sent alone; if other `$`-properties follow, cut there.
        return Some(whole.split("&$").next().unwrap_or(whole));
    }
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// A response body as JSON: parsed if it is JSON, otherwise kept as a string (lossily decoded
/// UTF-8), and `null` when empty.
pub fn body_json(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// Which of `n` brokers serves a device: FNV-1a (64-bit) of the device id's bytes, modulo `n`.
///
/// The rule is deliberately simple and fixed, so every leader, and a simulated fleet spread over
/// the same brokers, places a device on the same broker without coordination. Changing the broker
/// list moves devices; presence then arrives on the new broker.
pub fn broker_index(device: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (fnv1a(device.as_bytes()) % n as u64) as usize
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_and_reply_topics_round_trip() {
        assert_eq!(
            method_request_topic("d-1", "reboot", "job1:0:1"),
            "devices/d-1/methods/POST/reboot/?$rid=job1:0:1"
        );
        let t = method_reply_topic("d-1", 200, "job1:0:1");
        assert_eq!(t, "devices/d-1/methods/res/200/?$rid=job1:0:1");
        assert_eq!(
            parse_inbound(&t, br#"{"ok":true}"#),
            Some(Inbound::Reply {
                device: "d-1".into(),
                status: 200,
                rid: "job1:0:1".into(),
                payload: json!({"ok": true}),
            })
        );
    }

    #[test]
    fn a_reply_body_that_is_not_json_is_kept_as_a_string() {
        let Some(Inbound::Reply {
            status, payload, ..
        }) = parse_inbound("devices/x/methods/res/500/?$rid=a:0:1", b"boom")
        else {
            panic!("not a reply")
        };
        assert_eq!((status, payload), (500, json!("boom")));
        assert_eq!(body_json(b""), Value::Null);
    }

    #[test]
    fn rids_with_ampersands_survive() {
        let t = method_reply_topic("d", 204, "a&b=c:1:2");
        let Some(Inbound::Reply { rid, .. }) = parse_inbound(&t, b"") else {
            panic!("not a reply")
        };
        assert_eq!(rid, "a&b=c:1:2");
        assert_eq!(query_value("?$version=7", "$version"), Some("7"));
        assert_eq!(query_value("?$rid=1&$version=7", "$version"), Some("7"));
        assert_eq!(query_value("?$rid=1&$version=7", "$rid"), Some("1"));
    }

    #[test]
    fn presence_and_reported() {
        assert_eq!(
            parse_inbound("devices/d/presence", b"offline"),
            Some(Inbound::Presence {
                device: "d".into(),
                online: false
            })
        );
        assert_eq!(parse_inbound("devices/d/presence", b"maybe"), None);
        assert_eq!(
            parse_inbound(&reported_patch_topic("d", "5"), br#"{"fw":"2"}"#),
            Some(Inbound::Reported {
                device: "d".into(),
                patch: Some(json!({"fw": "2"}))
            })
        );
        assert_eq!(
            parse_inbound(&reported_patch_topic("d", "5"), b"[1]"),
            Some(Inbound::Reported {
                device: "d".into(),
                patch: None
            })
        );
    }

    #[test]
    fn foreign_topics_are_ignored() {
        for t in [
            "other/d/presence",
            "devices//presence",
            "devices/d/methods/res/abc/?$rid=1",
            "devices/d/methods/res/200/",
            "devices/d/methods/POST/reboot/?$rid=1",
            "devices/d/twin/PATCH/properties/desired/?$version=1",
        ] {
            assert_eq!(parse_inbound(t, b"online"), None, "{t}");
        }
    }

    #[test]
    fn wildcards_are_not_topic_safe() {
        assert!(topic_safe("job-1:0:1"));
        assert!(!topic_safe("job+1:0:1"));
        assert!(!topic_safe("job#:0:1"));
        assert!(!topic_safe("a/b"));
        assert!(!topic_safe(""));
    }

    #[test]
    fn broker_assignment_is_stable_and_spreads() {
        assert_eq!(broker_index("anything", 1), 0);
        assert_eq!(broker_index("anything", 0), 0);
        // FNV-1a is fixed: these values must never change, or devices move between brokers.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[broker_index(&format!("dev-{i:06}"), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
