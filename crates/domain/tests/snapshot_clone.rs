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

mod common;

use std::ops::Range;
use std::time::{Duration, Instant};

use common::{device, dispatch_all, job, live, register, results, start_job, N, T0};
use muster_domain::{Command, ConnectionChange, PropertyReport, State};
use muster_types::Timestamp;
use serde_json::{json, Value};

/// Devices each write workload touches (results and twin reports each).
const TOUCHED: usize = 10_000;

fn report(i: usize, round: u32) -> PropertyReport {
    PropertyReport {
        device: device(i),
        patch: json!({"firmware": "1.4.2", "uptime": 1000 + round, "temperature": 21.5}),
    }
}

/// Each device's answer, its own payload as devsim's.
fn answer(i: usize) -> Value {
    json!({"device": device(i), "ok": true})
}

/// Twin reports of `devices`.
fn reports(s: &mut State, devices: Range<usize>, round: u32, at: Timestamp) {
    for chunk in devices.collect::<Vec<_>>().chunks(1_000) {
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
    for from in (0..N).step_by(10_000) {
        let chunk = from..from + 10_000;
        register(&mut s, chunk.clone(), at);
        s.execute(&Command::SetConnections {
            changes: chunk
                .map(|i| ConnectionChange {
                    device: device(i),
                    connected: true,
                })
                .collect(),
            at,
        })
        .unwrap();
    }
    reports(&mut s, 0..N, 0, at);
    let registry = live() - base;

    start_job(&mut s, at);
    dispatch_all(&mut s, at.plus_millis(10));
    // Half answered; the other half stays in flight, so the job's rows stay hot.
    results(&mut s, N / 2..N, at.plus_millis(500), answer);
    let state = live() - base;

    // Writes with no clone alive: what they cost anyway.
    let later = at.plus_millis(1_000);
    let (plain, plain_time) = measured(&mut s, |s| {
        results(s, 0..TOUCHED, later, answer);
        reports(s, 0..TOUCHED, 1, later);
    });

    // The snapshot's copy: the stall is the clone; the same writes on other devices while it is
    // alive copy what they touch.
    let before = live();
    let t = Instant::now();
    let copy = s.clone();
    let stall = t.elapsed();
    let clone_bytes = live() - before;
    let (shared, shared_time) = measured(&mut s, |s| {
        results(s, TOUCHED..2 * TOUCHED, later, answer);
        reports(s, TOUCHED..2 * TOUCHED, 1, later);
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
