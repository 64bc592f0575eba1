//! Bad input gives an error that names the field, and no input bytes make decoding panic.

// The helpers below are test code too; clippy.toml's test allowances only cover `#[test]` fns.
#![allow(clippy::expect_used, clippy::panic)]

mod samples;

use muster_proto::pb;
use muster_proto::{decode_command, decode_event, encode_command, encode_event, ProtoError};
use proptest::prelude::*;
use prost::Message;

fn event_error(e: pb::Event) -> ProtoError {
    decode_event(&e.encode_to_vec()).expect_err("decoding should fail")
}

fn job_created() -> pb::Event {
    let (_, event) = samples::events().remove(0);
    pb::Event::from(&event)
}

fn with_job_created(f: impl FnOnce(&mut pb::event::JobCreated)) -> pb::Event {
    let mut e = job_created();
    let Some(pb::event::Kind::JobCreated(m)) = e.kind.as_mut() else {
        panic!("sample 0 is not JobCreated");
    };
    f(m);
    e
}

#[test]
fn empty_bytes_are_an_event_without_a_kind() {
    let err = decode_event(&[]).unwrap_err();
    assert!(matches!(err, ProtoError::Missing { .. }));
    assert_eq!(err.field(), Some("Event.kind"));
    assert_eq!(err.to_string(), "Event.kind is missing");
    assert_eq!(
        decode_command(&[]).unwrap_err().field(),
        Some("Command.kind")
    );
}

#[test]
fn garbage_is_a_decode_error() {
    let err = decode_event(&[0xff, 0xff, 0xff]).unwrap_err();
    assert!(matches!(err, ProtoError::Decode(_)), "{err:?}");
    assert!(err.to_string().starts_with("not a valid protobuf encoding"));
}

#[test]
fn bad_ids_name_the_field() {
    let err = event_error(with_job_created(|m| m.job_id = "a b".into()));
    assert_eq!(err.field(), Some("Event.job_created.job_id"));
    assert!(err.to_string().contains("job id contains ' '"), "{err}");

    let err = event_error(with_job_created(|m| m.device_ids[2] = String::new()));
    assert_eq!(err.field(), Some("Event.job_created.device_ids[2]"));

    let err = event_error(with_job_created(|m| {
        let target = m.spec.as_mut().unwrap().target.as_mut().unwrap();
        target.selector = Some(pb::target::Selector::GroupId("a/b".into()));
    }));
    assert_eq!(err.field(), Some("Event.job_created.spec.target.group_id"));
}

#[test]
fn bad_json_names_the_field() {
    let err = event_error(with_job_created(|m| {
        let spec = m.spec.as_mut().unwrap();
        spec.operations.push(pb::Operation {
            kind: Some(pb::operation::Kind::PatchDesired(
                pb::operation::PatchDesired {
                    patch_json: "{\"a\": ".into(),
                },
            )),
        });
    }));
    assert!(matches!(err, ProtoError::InvalidJson { .. }));
    assert_eq!(
        err.field(),
        Some("Event.job_created.spec.operations[1].patch_desired.patch_json")
    );

    // An empty string is not JSON: every encoder writes at least `null`.
    let err = event_error(with_job_created(|m| {
        let spec = m.spec.as_mut().unwrap();
        let Some(pb::operation::Kind::InvokeMethod(call)) = spec.operations[0].kind.as_mut() else {
            panic!("not a method");
        };
        call.payload_json.clear();
    }));
    assert_eq!(
        err.field(),
        Some("Event.job_created.spec.operations[0].invoke_method.payload_json")
    );
}

#[test]
fn missing_oneofs_and_messages_name_the_field() {
    type Edit = fn(&mut pb::JobSpec);
    let cases: Vec<(Edit, &str)> = vec![
        (|s| s.target = None, "Event.job_created.spec.target"),
        (
            |s| s.target.as_mut().unwrap().selector = None,
            "Event.job_created.spec.target.selector",
        ),
        (|s| s.schedule = None, "Event.job_created.spec.schedule"),
        (|s| s.rollout = None, "Event.job_created.spec.rollout"),
        (|s| s.retry = None, "Event.job_created.spec.retry"),
        (
            |s| s.operations[0].kind = None,
            "Event.job_created.spec.operations[0].kind",
        ),
        (
            |s| s.rollout.as_mut().unwrap().batch.as_mut().unwrap().kind = None,
            "Event.job_created.spec.rollout.batch.kind",
        ),
        (
            |s| s.cancellation.as_mut().unwrap().limit = None,
            "Event.job_created.spec.cancellation.limit",
        ),
        (
            |s| {
                s.cancellation
                    .as_mut()
                    .unwrap()
                    .limit
                    .as_mut()
                    .unwrap()
                    .kind = None
            },
            "Event.job_created.spec.cancellation.limit.kind",
        ),
    ];
    for (edit, field) in cases {
        let err = event_error(with_job_created(|m| edit(m.spec.as_mut().unwrap())));
        assert!(
            matches!(err, ProtoError::Missing { .. }),
            "{field}: {err:?}"
        );
        assert_eq!(err.field(), Some(field));
        assert_eq!(err.to_string(), format!("{field} is missing"));
    }

    let err = event_error(with_job_created(|m| m.spec = None));
    assert_eq!(err.field(), Some("Event.job_created.spec"));

    let failed = pb::Event {
        kind: Some(pb::event::Kind::DeviceFailed(pb::event::DeviceFailed {
            job_id: "j".into(),
            device_id: "d".into(),
            reason: Some(pb::FailureReason { kind: None }),
            ..Default::default()
        })),
    };
    assert_eq!(
        event_error(failed).field(),
        Some("Event.device_failed.reason.kind")
    );
}

#[test]
fn unknown_and_unspecified_enum_values_are_refused() {
    for value in [0, 99, -1] {
        let e = pb::Event {
            kind: Some(pb::event::Kind::TwinPatched(pb::event::TwinPatched {
                device_id: "d1".into(),
                section: value,
                patch_json: "{}".into(),
                at_ms: 0,
            })),
        };
        let err = event_error(e);
        assert!(
            matches!(err, ProtoError::UnknownEnum { value: v, .. } if v == value),
            "{err:?}"
        );
        assert_eq!(err.field(), Some("Event.twin_patched.section"));
    }
}

#[test]
fn command_errors_name_nested_fields() {
    let results = pb::Command {
        kind: Some(pb::command::Kind::RecordDeviceResults(
            pb::command::RecordDeviceResults {
                results: vec![
                    pb::DeviceResult {
                        job_id: "j".into(),
                        device_id: "d".into(),
                        outcome: Some(pb::Outcome {
                            kind: Some(pb::outcome::Kind::Responded(pb::outcome::Responded {
                                status: 200,
                                payload_json: "{}".into(),
                            })),
                        }),
                        ..Default::default()
                    },
                    pb::DeviceResult {
                        job_id: "j".into(),
                        device_id: "d".into(),
                        outcome: None,
                        ..Default::default()
                    },
                ],
                at_ms: 0,
            },
        )),
    };
    let err = decode_command(&results.encode_to_vec()).unwrap_err();
    assert_eq!(
        err.field(),
        Some("Command.record_device_results.results[1].outcome")
    );

    let twin = pb::Command {
        kind: Some(pb::command::Kind::UpdateTwin(pb::command::UpdateTwin {
            device_id: "d".into(),
            tags_json: Some("nope".into()),
            ..Default::default()
        })),
    };
    let err = decode_command(&twin.encode_to_vec()).unwrap_err();
    assert_eq!(err.field(), Some("Command.update_twin.tags_json"));
    assert!(err
        .to_string()
        .starts_with("Command.update_twin.tags_json is not valid JSON text"));
}

/// Every encoding of every sample, for the mutation test below.
fn sample_encodings() -> Vec<Vec<u8>> {
    samples::events()
        .iter()
        .map(|(_, e)| encode_event(e))
        .chain(samples::commands().iter().map(|(_, c)| encode_command(c)))
        .collect()
}

proptest! {
    #[test]
    fn decode_event_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_event(&bytes);
    }

    #[test]
    fn decode_command_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_command(&bytes);
    }

    /// Random bytes rarely get past the first tag; damaged real entries reach the conversions.
    #[test]
    fn damaged_entries_never_panic(
        sample in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let encodings = sample_encodings();
        let mut bytes = encodings[sample.index(encodings.len())].clone();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        let _ = decode_event(&bytes);
        let _ = decode_command(&bytes);
    }

    /// JSON numbers read back bit for bit (serde_json's `float_roundtrip`), so a replica that
    /// decodes an entry holds exactly what the leader encoded.
    #[test]
    fn json_numbers_round_trip_exactly(f in any::<f64>(), i in any::<i64>(), u in any::<u64>()) {
        let payload = serde_json::json!({"f": f, "i": i, "u": u});
        let event = muster_domain::Event::TwinPatched {
            device: samples::dev(1),
            section: muster_domain::TwinSection::Reported,
            patch: payload,
            at: samples::at(0),
        };
        prop_assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
    }
}

#[test]
fn bad_entries_of_a_batch_name_their_index() {
    let command = |kind| pb::Command { kind: Some(kind) };
    let changes = pb::command::SetConnections {
        changes: vec![
            pb::command::ConnectionChange {
                device_id: "ok".into(),
                connected: true,
            },
            pb::command::ConnectionChange {
                device_id: "not ok".into(),
                connected: false,
            },
        ],
        at_ms: 1,
    };
    let bytes = command(pb::command::Kind::SetConnections(changes)).encode_to_vec();
    let err = decode_command(&bytes).expect_err("a bad id");
    assert_eq!(
        err.field(),
        Some("Command.set_connections.changes[1].device_id")
    );

    let reports = pb::command::ReportPropertiesBatch {
        reports: vec![pb::command::PropertyReport {
            device_id: "d1".into(),
            patch_json: "{".into(),
        }],
        at_ms: 1,
    };
    let bytes = command(pb::command::Kind::ReportPropertiesBatch(reports)).encode_to_vec();
    let err = decode_command(&bytes).expect_err("bad JSON");
    assert_eq!(
        err.field(),
        Some("Command.report_properties_batch.reports[0].patch_json")
    );
}
