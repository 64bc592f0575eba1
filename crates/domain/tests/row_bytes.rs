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

mod common;

use common::{device, dispatch_all, job, live, register, results, start_job, N, T0};
use muster_types::Timestamp;
use serde_json::{json, Value};

/// The goal for one device's row in a running job, index and response included.
const BUDGET: isize = 200;

/// What `muster devsim` answers: unique per device.
fn answer(i: usize) -> Value {
    json!({"device": device(i), "method": "reboot", "ok": true})
}

#[test]
fn a_running_jobs_device_costs_at_most_200_bytes() {
    let at = Timestamp(T0);
    let mut s = muster_domain::State::default();
    register(&mut s, 0..N, at);
    let registered = live();

    start_job(&mut s, at);
    let pending = live();

    dispatch_all(&mut s, at.plus_millis(10));
    let running = live();

    // Leave one device running so the job (and its rows) stays hot.
    results(&mut s, 1..N, at.plus_millis(1_000), answer);
    let answered = live();
    let j = &s.jobs[&job()];
    assert_eq!(j.stats().succeeded, N as u64 - 1);
    assert_eq!(j.stats().running, 1);

    let per = |from: isize, to: isize| (to - from) / N as isize;
    // The response is the device's data, not the row's: its text (one shared allocation) is
    // counted apart. The issue lets it leave RAM altogether; here it stays, as compact text.
    let text = answer(1).to_string().len() as isize;
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
