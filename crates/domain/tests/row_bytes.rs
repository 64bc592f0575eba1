//! What one device taking part in a running job costs in RAM (issue 14: at most ~200 bytes).
//!
//! A counting allocator (`stats_alloc`) measures the live heap of a state over 100,000 registered devices before
//! the job and after each stage of one method job over all of them: created (pending), dispatched
//! (running), answered (each device with its own response, as `muster devsim` answers; the
//! response's text is counted apart from the row). The figures print with `--nocapture`;
//! BENCHMARKS.md keeps them.
//!
//! `cargo test --release -p muster-domain --test row_bytes -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use muster_domain::{
    Command, DeviceRegistration, DeviceResult, JobSpec, MethodCall, Operation, Outcome,
    RetryPolicy, Rollout, Schedule, State, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::json;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 100_000;
const T0: i64 = 1_700_000_000_000;
/// The goal for one device's row in a running job, index and response included.
const BUDGET: isize = 200;

/// Live heap bytes (requested sizes, not the allocator's rounding).
fn live() -> isize {
    let s = GLOBAL.stats();
    // Growth by `realloc` is in `bytes_allocated` already (and shrinking in `bytes_deallocated`).
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("sim-{i:07}")).unwrap()
}

fn job() -> JobId {
    JobId::new("reboot-all").unwrap()
}

fn spec() -> JobSpec {
    JobSpec {
        display_name: "reboot".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query("SELECT * FROM devices".into()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!({}),
            response_timeout_secs: 3600,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    }
}

#[test]
fn a_running_jobs_device_costs_at_most_200_bytes() {
    let at = Timestamp(T0);
    let mut s = State::default();
    s.execute(&Command::RegisterDevices {
        devices: (0..N)
            .map(|i| DeviceRegistration {
                id: device(i),
                display_name: String::new(),
                model_id: None,
                enabled: true,
                tags: json!({}),
            })
            .collect(),
        upsert: false,
        at,
    })
    .unwrap();
    let registered = live();

    s.execute(&Command::CreateJob {
        id: job(),
        spec: spec(),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    let pending = live();

    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        s.execute(&Command::MarkDispatched {
            job: job(),
            run: RunId(0),
            devices: chunk.iter().map(|&i| device(i)).collect(),
            at: at.plus_millis(10),
        })
        .unwrap();
    }
    let running = live();

    // Leave one device running so the job (and its rows) stays hot.
    for chunk in (1..N).collect::<Vec<_>>().chunks(1_000) {
        s.execute(&Command::RecordDeviceResults {
            results: chunk
                .iter()
                .map(|&i| DeviceResult {
                    job: job(),
                    run: RunId(0),
                    device: device(i),
                    attempt: 1,
                    outcome: Outcome::Responded {
                        status: 200,
                        // What `muster devsim` answers: unique per device.
                        payload: json!({"device": device(i), "method": "reboot", "ok": true})
                            .into(),
                    },
                })
                .collect(),
            at: at.plus_millis(1_000),
        })
        .unwrap();
    }
    let answered = live();
    let j = &s.jobs[&job()];
    assert_eq!(j.stats().succeeded, N as u64 - 1);
    assert_eq!(j.stats().running, 1);

    let per = |from: isize, to: isize| (to - from) / N as isize;
    // The response is the device's data, not the row's: its text (one shared allocation) is
    // counted apart. The issue lets it leave RAM altogether; here it stays, as compact text.
    let text = json!({"device": device(1), "method": "reboot", "ok": true})
        .to_string()
        .len() as isize;
    let response = text + 16;
    println!(
        "registry {} B/device; running job over {N} devices, per device: pending {} B, \
         dispatched {} B, answered {} B (of which the {text}-byte response text {response} B)",
        registered / N as isize,
        per(registered, pending),
        per(registered, running),
        per(registered, answered),
    );
    for (stage, bytes) in [
        ("pending", per(registered, pending)),
        ("dispatched", per(registered, running)),
        (
            "answered, without the response text",
            per(registered, answered) - response,
        ),
    ] {
        assert!(
            bytes <= BUDGET,
            "{stage}: {bytes} bytes per device, over the {BUDGET}-byte budget"
        );
    }
}
