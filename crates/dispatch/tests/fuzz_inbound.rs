#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Fuzz target for what devices and brokers send the dispatcher: any topic and any payload is
//! read as one of ours or ignored, never a panic. Topics are built from the real shapes' pieces
//! so the deep branches (status, `$rid`, the reported-properties path) are reached.
//!
//! A longer run: `PROPTEST_CASES=500000 cargo test -p muster-dispatch --test fuzz_inbound --release`.

use muster_dispatch::protocol::{body_json, parse_inbound, query_value, Inbound};
use proptest::prelude::*;

const PIECES: &[&str] = &[
    "devices",
    "/",
    "d1",
    "presence",
    "methods",
    "res",
    "200",
    "-1",
    "99999999999",
    "?$rid=",
    "?",
    "$rid",
    "=",
    "&",
    "&$",
    "twin",
    "PATCH",
    "properties",
    "reported",
    "é",
    "\u{0}",
    "+",
    "#",
];

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,60}",
        prop::collection::vec(prop::sample::select(PIECES), 0..14).prop_map(|p| p.concat()),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"online".to_vec()),
        Just(b"offline".to_vec()),
        Just(br#"{"fw":"1.2","n":{"x":[1,2,null]}}"#.to_vec()),
        "\\PC{0,40}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #[test]
    fn any_message_is_read_or_ignored(topic in topic(), payload in payload()) {
        match parse_inbound(&topic, &payload) {
            Some(Inbound::Reply { device, rid, .. }) => {
                prop_assert!(!device.is_empty() && !device.contains('/'));
                prop_assert!(topic.contains(&rid));
            }
            Some(Inbound::Presence { device, .. }) | Some(Inbound::Reported { device, .. }) => {
                prop_assert!(!device.is_empty() && !device.contains('/'));
            }
            None => {}
        }
        let _ = body_json(&payload);
    }

    #[test]
    fn query_levels_never_panic(level in topic(), key in prop::sample::select(&["$rid", "$version", "", "="][..])) {
        if let Some(v) = query_value(&level, key) {
            prop_assert!(level.contains(v));
        }
    }
}
