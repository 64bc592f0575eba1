#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `EVENT_TYPES` names exactly the event kinds the log can hold, so a REST or gRPC events filter
//! can ask for any of them and a console listing them misses none.
//!
//! The events are muster-proto's samples, one or more of each `Event` variant: its round-trip
//! test matches them exhaustively, so a new variant fails to compile there until it has a
//! sample, and then fails here until its kind is listed.

#[path = "../../proto/tests/samples/mod.rs"]
mod samples;

use std::collections::BTreeSet;

use muster_api::history::EVENT_TYPES;

#[test]
fn event_types_list_every_event_kind_once() {
    let kinds: BTreeSet<&str> = samples::events().iter().map(|(_, e)| e.kind()).collect();
    let listed: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(listed.len(), EVENT_TYPES.len(), "a name is listed twice");
    let unlisted: Vec<_> = kinds.difference(&listed).collect();
    assert!(unlisted.is_empty(), "add {unlisted:?} to EVENT_TYPES");
    let unknown: Vec<_> = listed.difference(&kinds).collect();
    assert!(unknown.is_empty(), "no event has the kind {unknown:?}");
}
