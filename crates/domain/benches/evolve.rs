//! Throughput of the state machine on device results, the bulk of a big job's log.
//!
//! The fixture is one job over 100,000 registered devices, started, with every device dispatched.
//! `evolve/*` applies 100,000 precomputed result events to a fresh clone of that state (the clone
//! is made outside the timing); `apply/*` does the same through the owned-event path, which moves
//! each response into the state; `execute/*` runs `decide` + `evolve` on `RecordDeviceResults`
//! commands of 1,000 results each. Throughput is reported in device results per second.
//!
//! `cargo bench -p muster-domain --bench evolve -- --warm-up-time 1 --measurement-time 5`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use muster_domain::{
    evolve, Command, DeviceRegistration, DeviceResult, Event, FailureReason, JobSpec, MethodCall,
    MethodResponse, Operation, Outcome, RetryPolicy, Rollout, Schedule, State, Target,
    TargetSelector,
};
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::json;

const N: usize = 100_000;
const CHUNK: usize = 1_000;
const T0: i64 = 1_700_000_000_000;

fn job_id() -> JobId {
    JobId::new("fw-rollout").unwrap()
}

fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:06}")).unwrap()
}

fn spec() -> JobSpec {
    JobSpec {
        display_name: "firmware".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query("SELECT * FROM devices".into()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "update".into(),
            payload: json!({"fw": "2.0"}),
            response_timeout_secs: 3600,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    }
}

/// A started job over `N` devices, all of them dispatched (attempt 1 in flight).
fn dispatched_state() -> State {
    let mut s = State::default();
    let at = Timestamp(T0);
    let regs: Vec<DeviceRegistration> = (0..N)
        .map(|i| DeviceRegistration {
            id: device(i),
            display_name: String::new(),
            model_id: None,
            enabled: true,
            tags: json!({"site": "a"}).into(),
        })
        .collect();
    s.execute(&Command::RegisterDevices {
        devices: regs,
        upsert: false,
        at,
    })
    .unwrap();
    s.execute(&Command::CreateJob {
        id: job_id(),
        spec: spec(),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    let ids: Vec<DeviceId> = (0..N).map(device).collect();
    for chunk in ids.chunks(10_000) {
        s.execute(&Command::MarkDispatched {
            job: job_id(),
            run: RunId(0),
            devices: chunk.to_vec(),
            at: at.plus_millis(10),
        })
        .unwrap();
    }
    assert_eq!(s.jobs[&job_id()].stats().running, N as u64);
    s
}

/// One result event per device; every `fail_every`-th one a final device error. Without
/// `with_response` the events carry no method response, which shows what cloning it costs.
fn result_events(fail_every: Option<usize>, with_response: bool) -> Vec<Event> {
    let at = Timestamp(T0 + 1_000);
    (0..N)
        .map(|i| {
            let fail = fail_every.is_some_and(|k| i % k == 0);
            if fail {
                Event::DeviceFailed {
                    job: job_id(),
                    run: RunId(0),
                    device: device(i),
                    attempt: 1,
                    reason: FailureReason::DeviceError { status: 500 },
                    response: with_response.then(|| MethodResponse {
                        status: 500,
                        payload: json!({"error": "flash failed"}).into(),
                    }),
                    retry: false,
                    at,
                }
            } else {
                Event::DeviceSucceeded {
                    job: job_id(),
                    run: RunId(0),
                    device: device(i),
                    attempt: 1,
                    response: with_response.then(|| MethodResponse {
                        status: 200,
                        payload: json!({"fw": "2.0"}).into(),
                    }),
                    at,
                }
            }
        })
        .collect()
}

/// `RecordDeviceResults` commands of `CHUNK` results covering every device.
fn result_commands(fail_every: Option<usize>) -> Vec<Command> {
    let at = Timestamp(T0 + 1_000);
    (0..N)
        .collect::<Vec<_>>()
        .chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| Command::RecordDeviceResults {
            results: chunk
                .iter()
                .map(|&i| {
                    let fail = fail_every.is_some_and(|k| i % k == 0);
                    DeviceResult {
                        job: job_id(),
                        run: RunId(0),
                        device: device(i),
                        attempt: 1,
                        outcome: Outcome::Responded {
                            status: if fail { 500 } else { 200 },
                            payload: json!({"fw": "2.0"}).into(),
                        },
                    }
                })
                .collect(),
            at: at.plus_millis(c as i64),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let base = dispatched_state();

    let mut g = c.benchmark_group("evolve");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, fail_every, with_response) in [
        ("succeeded_100k", None, true),
        ("mixed_10pct_failed_100k", Some(10), true),
        ("succeeded_100k_no_response", None, false),
    ] {
        let events = result_events(fail_every, with_response);
        g.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| {
                    for e in &events {
                        evolve(&mut s, black_box(e));
                    }
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // The owned path: responses move into the state instead of being copied (the events are
    // cloned in the untimed setup, standing in for freshly decoded ones).
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, fail_every) in [
        ("succeeded_100k", None),
        ("mixed_10pct_failed_100k", Some(10)),
    ] {
        let events = result_events(fail_every, true);
        g.bench_function(name, |b| {
            b.iter_batched(
                || (base.clone(), events.clone()),
                |(mut s, events)| {
                    for e in events {
                        muster_domain::apply(&mut s, black_box(e));
                    }
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("execute");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, fail_every) in [
        ("record_results_1000x100_succeeded", None),
        ("record_results_1000x100_mixed", Some(10)),
    ] {
        let commands = result_commands(fail_every);
        g.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| {
                    for cmd in &commands {
                        let events = s.execute(black_box(cmd)).unwrap();
                        black_box(events);
                    }
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
