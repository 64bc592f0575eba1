//! The workload the memory tests measure, and how they measure it: a counting allocator
//! (`stats_alloc`) and 100,000 registered devices with one method job over all of them.

use std::alloc::System;
use std::ops::Range;

use muster_domain::{
    Command, DeviceRegistration, DeviceResult, JobSpec, MethodCall, Operation, Outcome,
    RetryPolicy, Rollout, Schedule, State, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::{json, Value};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Devices in the workload.
pub const N: usize = 100_000;
pub const T0: i64 = 1_700_000_000_000;

/// Live heap bytes (requested sizes, not the allocator's rounding).
pub fn live() -> isize {
    let s = GLOBAL.stats();
    // Growth by `realloc` is in `bytes_allocated` already (and shrinking in `bytes_deallocated`).
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

pub fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("sim-{i:07}")).unwrap()
}

pub fn job() -> JobId {
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

/// Registers devices `devices` (enabled, no tags) in one command.
pub fn register(s: &mut State, devices: Range<usize>, at: Timestamp) {
    s.execute(&Command::RegisterDevices {
        devices: devices
            .map(|i| DeviceRegistration {
                id: device(i),
                display_name: String::new(),
                model_id: None,
                enabled: true,
                tags: json!({}).into(),
            })
            .collect(),
        upsert: false,
        at,
    })
    .unwrap();
}

/// Creates the method job over every registered device and starts it (its rows pending).
pub fn start_job(s: &mut State, at: Timestamp) {
    s.execute(&Command::CreateJob {
        id: job(),
        spec: spec(),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
}

/// Marks all `N` devices dispatched, 10,000 a command.
pub fn dispatch_all(s: &mut State, at: Timestamp) {
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        s.execute(&Command::MarkDispatched {
            job: job(),
            run: RunId(0),
            devices: chunk.iter().map(|&i| device(i)).collect(),
            at,
        })
        .unwrap();
    }
}

/// Results for `devices`, 1,000 a command, each answered with status 200 and `answer(i)`.
pub fn results(s: &mut State, devices: Range<usize>, at: Timestamp, answer: fn(usize) -> Value) {
    for chunk in devices.collect::<Vec<_>>().chunks(1_000) {
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
                        payload: answer(i).into(),
                    },
                })
                .collect(),
            at,
        })
        .unwrap();
    }
}
