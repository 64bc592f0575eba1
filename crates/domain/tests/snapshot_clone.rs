//! What taking a snapshot's copy of the state costs (issue 14: "building a snapshot must not
//! stall applying for more than a few milliseconds", "peak extra memory under 25% of the
//! state"). The store clones the state under its lock and encodes the clone outside it, so the
//! clone is the stall, and the clone plus what writes copy while the encoder still holds it is
//! the extra memory.
//!
//! The state: 100,000 registered, connected devices with a small reported twin (as `muster
//! devsim` reports), and one method job over all of them, dispatched, half answered. Measured
//! with a counting allocator: the state's live heap, one clone's time and bytes, and what
//! 10,000 results and 10,000 twin reports cost while a clone is alive compared with none.
//! Figures print with `--nocapture`; BENCHMARKS.md keeps them.
//!
//! `cargo test --release -p muster-domain --test snapshot_clone -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::{Duration, Instant};

use muster_domain::{
    Command, ConnectionChange, DeviceRegistration, DeviceResult, JobSpec, MethodCall, Operation,
    Outcome, PropertyReport, RetryPolicy, Rollout, Schedule, State, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::json;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 100_000;
const T0: i64 = 1_700_000_000_000;
/// Devices each write workload touches (results and twin reports each).
const TOUCHED: usize = 10_000;

/// Live heap bytes (requested sizes, not the allocator's rounding).
fn live() -> isize {
    let s = GLOBAL.stats();
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

fn report(i: usize, round: u32) -> PropertyReport {
    PropertyReport {
        device: device(i),
        patch: json!({"firmware": "1.4.2", "uptime": 1000 + round, "temperature": 21.5}),
    }
}

/// Results for devices `from..to` (each answered with its own payload, as devsim does).
fn results(s: &mut State, from: usize, to: usize, at: Timestamp) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(1_000) {
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
                        payload: json!({"device": device(i), "ok": true}).into(),
                    },
                })
                .collect(),
            at,
        })
        .unwrap();
    }
}

/// Twin reports of devices `from..to`.
fn reports(s: &mut State, from: usize, to: usize, round: u32, at: Timestamp) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(1_000) {
        s.execute(&Command::ReportPropertiesBatch {
            reports: chunk.iter().map(|&i| report(i, round)).collect(),
            at,
        })
        .unwrap();
    }
}

/// Runs `writes` and returns the heap it added and how long it took.
fn measured(s: &mut State, writes: impl FnOnce(&mut State)) -> (isize, Duration) {
    let before = live();
    let t = Instant::now();
    writes(s);
    (live() - before, t.elapsed())
}

#[test]
fn a_snapshot_clone_is_cheap_and_writes_after_it_copy_little() {
    let at = Timestamp(T0);
    let base = live();
    let mut s = State::default();
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        s.execute(&Command::RegisterDevices {
            devices: chunk
                .iter()
                .map(|&i| DeviceRegistration {
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
        s.execute(&Command::SetConnections {
            changes: chunk
                .iter()
                .map(|&i| ConnectionChange {
                    device: device(i),
                    connected: true,
                })
                .collect(),
            at,
        })
        .unwrap();
    }
    reports(&mut s, 0, N, 0, at);
    let registry = live() - base;

    s.execute(&Command::CreateJob {
        id: job(),
        spec: spec(),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        s.execute(&Command::MarkDispatched {
            job: job(),
            run: RunId(0),
            devices: chunk.iter().map(|&i| device(i)).collect(),
            at: at.plus_millis(10),
        })
        .unwrap();
    }
    // Half answered; the other half stays in flight, so the job's rows stay hot.
    results(&mut s, N / 2, N, at.plus_millis(500));
    let state = live() - base;

    // Writes with no clone alive: what they cost anyway.
    let later = at.plus_millis(1_000);
    let (plain, plain_time) = measured(&mut s, |s| {
        results(s, 0, TOUCHED, later);
        reports(s, 0, TOUCHED, 1, later);
    });

    // The snapshot's copy: the stall is the clone; the same writes on other devices while it is
    // alive copy what they touch.
    let before = live();
    let t = Instant::now();
    let copy = s.clone();
    let stall = t.elapsed();
    let clone_bytes = live() - before;
    let (shared, shared_time) = measured(&mut s, |s| {
        results(s, TOUCHED, 2 * TOUCHED, later);
        reports(s, TOUCHED, 2 * TOUCHED, 1, later);
    });
    let copied = shared - plain;
    let peak = clone_bytes + copied;
    assert_eq!(
        copy.jobs[&job()].stats().succeeded,
        (N / 2 + TOUCHED) as u64
    );
    assert_eq!(
        s.jobs[&job()].stats().succeeded,
        (N / 2 + 2 * TOUCHED) as u64
    );
    drop(copy);

    let mib = |b: isize| b as f64 / (1024.0 * 1024.0);
    println!(
        "state: {N} devices ({} B/device registered), one running {N}-device job: {:.1} MiB",
        registry / N as isize,
        mib(state)
    );
    println!(
        "clone: {:.0} µs, {:.1} MiB; {TOUCHED} results + {TOUCHED} twin reports: {:.1} ms \
         ({:.1} ms with no clone alive), copying {:.1} MiB; peak extra {:.1} MiB = {:.1}% of \
         the state",
        stall.as_secs_f64() * 1e6,
        mib(clone_bytes),
        shared_time.as_secs_f64() * 1e3,
        plain_time.as_secs_f64() * 1e3,
        mib(copied),
        mib(peak),
        100.0 * peak as f64 / state as f64
    );
}
