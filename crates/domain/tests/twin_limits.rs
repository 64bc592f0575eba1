#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! IoT Hub's limits on whole twin sections (tags 8 KB, desired and reported 32 KB each) hold
//! whatever sequence of patches arrives: through the service API, device reports in batches, and
//! jobs that patch twins.

use muster_domain::twin_size::{self, MAX_PROPERTIES_BYTES, MAX_TAGS_BYTES};
use muster_domain::*;
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

fn dev(i: usize) -> DeviceId {
    DeviceId::new(format!("d{i}")).unwrap()
}

fn with_devices(n: usize) -> State {
    let mut state = State::default();
    let devices = (0..n)
        .map(|i| DeviceRegistration {
            id: dev(i),
            display_name: format!("Device {i}"),
            model_id: None,
            enabled: true,
            tags: Value::Null.into(),
        })
        .collect();
    state
        .execute(&Command::RegisterDevices {
            devices,
            upsert: false,
            at: Timestamp(1),
        })
        .unwrap();
    state
}

fn within_limits(state: &State) {
    for d in state.registry.devices.values() {
        assert!(twin_size::size(&d.tags) <= MAX_TAGS_BYTES, "{}: tags", d.id);
        assert!(twin_size::size(&d.desired) <= MAX_PROPERTIES_BYTES);
        assert!(twin_size::size(&d.reported) <= MAX_PROPERTIES_BYTES);
    }
}

/// One patch: a key out of a few (so patches overwrite each other too) and a value of some size.
fn patch() -> impl Strategy<Value = Value> {
    (0u8..6, 0usize..20_000).prop_map(|(k, n)| json!({ format!("k{k}"): "x".repeat(n) }))
}

#[derive(Debug, Clone)]
enum Op {
    Tags(usize, Value),
    Desired(usize, Value),
    Reports(Vec<(usize, Value)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..2, patch()).prop_map(|(d, p)| Op::Tags(d, p)),
        (0usize..2, patch()).prop_map(|(d, p)| Op::Desired(d, p)),
        prop::collection::vec((0usize..2, patch()), 1..6).prop_map(Op::Reports),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No sequence of accepted changes takes a section past its limit, and a refused one changes
    /// nothing.
    #[test]
    fn sections_never_pass_their_limits(ops in prop::collection::vec(op(), 1..25)) {
        let mut state = with_devices(2);
        for (t, op) in ops.into_iter().enumerate() {
            let at = Timestamp(10 + t as i64);
            let cmd = match op {
                Op::Tags(d, p) => Command::UpdateTwin {
                    device: dev(d), tags: Some(p), desired: None, if_version: None, at,
                },
                Op::Desired(d, p) => Command::UpdateTwin {
                    device: dev(d), tags: None, desired: Some(p), if_version: None, at,
                },
                Op::Reports(rs) => Command::ReportPropertiesBatch {
                    reports: rs
                        .into_iter()
                        .map(|(d, patch)| PropertyReport { device: dev(d), patch })
                        .collect(),
                    at,
                },
            };
            let before = state.clone();
            if let Err(e) = state.execute(&cmd) {
                prop_assert!(matches!(e, DomainError::TooLarge { .. }), "{e}");
                prop_assert_eq!(&state.registry, &before.registry);
            }
            within_limits(&state);
        }
    }
}

#[test]
fn the_probe_case_300_patches_of_30_kb_stop_at_the_limit() {
    let mut state = with_devices(1);
    let mut accepted = 0;
    for i in 0..300 {
        let cmd = Command::UpdateTwin {
            device: dev(0),
            tags: None,
            desired: Some(json!({ format!("p{i}"): "y".repeat(30 * 1024 - 16) })),
            if_version: None,
            at: Timestamp(10 + i),
        };
        match state.execute(&cmd) {
            Ok(_) => accepted += 1,
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("properties.desired"), "{text}");
                assert!(text.contains("32768"), "{text}");
            }
        }
    }
    assert_eq!(accepted, 1);
    within_limits(&state);
}

#[test]
fn a_job_patch_that_would_overflow_fails_that_device_only() {
    let mut state = with_devices(2);
    state
        .execute(&Command::UpdateTwin {
            device: dev(0),
            tags: Some(json!({"big": "z".repeat(6_000)})),
            desired: None,
            if_version: None,
            at: Timestamp(5),
        })
        .unwrap();
    let job = JobId::new("tags-job").unwrap();
    let spec = JobSpec {
        display_name: "tags".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Devices(vec![dev(0), dev(1)]),
            continuous: false,
        },
        operations: vec![Operation::PatchTags {
            patch: json!({"more": "w".repeat(4_000)}),
        }],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    };
    state
        .execute(&Command::CreateJob {
            id: job.clone(),
            spec,
            at: Timestamp(10),
        })
        .unwrap();
    state
        .execute(&Command::Advance { at: Timestamp(11) })
        .unwrap();
    state
        .execute(&Command::MarkDispatched {
            job: job.clone(),
            run: RunId(0),
            devices: vec![dev(0), dev(1)],
            at: Timestamp(11),
        })
        .unwrap();
    let run = state.jobs[&job].current_run();
    let status = |d: usize| {
        let i = run.position(&dev(d)).unwrap();
        run.devices[i as usize].clone()
    };
    assert_eq!(status(0).status, DeviceStatus::Failed);
    let reason = status(0).last_error.unwrap().describe();
    assert!(reason.contains("tags"), "{reason}");
    assert_eq!(status(1).status, DeviceStatus::Succeeded);
    within_limits(&state);
}
