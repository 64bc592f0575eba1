//! Offline audit speed over a log of about a million events written by the real store (issue 6).
//!
//! `cargo bench -p muster-benches --bench replay -- --warm-up-time 1 --measurement-time 10`
//!
//! Setup (not timed): a Raft-of-one `Cluster` on sled in a temporary directory under
//! `target/bench-data` (or `MUSTER_BENCH_DIR`) registers 10,000 devices and runs 50 method jobs
//! over all of them: each job is created and started, every device dispatched (10,000 per
//! entry) and answered (1,000 results per entry, every tenth a device error with a body). That
//! is 10,000 + 50 x (3 + 20,000) ~ 1.01 M events. The node is shut down, then each benchmark
//! reads the directory with `muster_store::audit` as `muster audit` does, from disk (sled's
//! page cache warm after the first iteration, as on a machine that has the log in memory):
//! - `replay`: rebuild the whole state (`audit replay`: two threads read and decode, one applies);
//! - `decode_only`: reading and decoding every event, nothing applied (what `replay`'s reader
//!   threads do between them);
//! - `apply_only`: applying every event, decoded beforehand (what `replay`'s main thread does);
//! - `verify`: hash chain + replay + comparison (`audit verify`);
//! - `export_jsonl`, `export_csv`: every event written to a sink (`audit export`);
//! - `replay_export`: rebuild the state from the JSON Lines export in memory.
//!
//! Criterion's throughput is events per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use muster_benches::{procs, raft_of_one, register_fleet, start_job_on_all};
use muster_cluster::now;
use muster_domain::{Command, DeviceResult, Outcome};
use muster_store::audit::{replay_export, AuditLog, ExportFilter, ExportFormat, ReplayTo};
use muster_store::StoreError;
use muster_types::{JobId, RunId};
use serde_json::json;

/// The `muster` binary's allocator, so the figures are what `muster audit` gets.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 10_000;
const JOBS: usize = 50;

/// The number of jobs, `JOBS` unless `MUSTER_REPLAY_JOBS` says otherwise (a smaller log for
/// profiling and quick iterations; published figures use the default).
fn jobs() -> usize {
    std::env::var("MUSTER_REPLAY_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(JOBS)
}
const RESULTS_PER_ENTRY: usize = 1_000;

async fn write_log(dir: &std::path::Path) {
    let c = raft_of_one(dir).await;
    register_fleet(&c, "r", DEVICES).await;
    for j in 0..jobs() {
        let id = JobId::new(format!("replay-{j}")).unwrap();
        let devices = start_job_on_all(&c, &id).await;
        assert_eq!(devices.len(), DEVICES);
        c.write(Command::MarkDispatched {
            job: id.clone(),
            run: RunId(0),
            devices: devices.clone(),
            at: now(),
        })
        .await
        .unwrap();
        for (n, chunk) in devices.chunks(RESULTS_PER_ENTRY).enumerate() {
            let results = chunk
                .iter()
                .enumerate()
                .map(|(i, d)| DeviceResult {
                    job: id.clone(),
                    run: RunId(0),
                    device: d.clone(),
                    attempt: 1,
                    outcome: if (n * RESULTS_PER_ENTRY + i) % 10 == 9 {
                        Outcome::Responded {
                            status: 503,
                            payload: json!({"error": "busy", "retry_after_s": 30}).into(),
                        }
                    } else {
                        Outcome::Responded {
                            status: 200,
                            payload: json!({"ok": true, "uptime_s": i}).into(),
                        }
                    },
                })
                .collect();
            c.write(Command::RecordDeviceResults { results, at: now() })
                .await
                .unwrap();
        }
    }
    c.shutdown().await;
}

/// Opens the directory once the node's sled has let go of it.
fn open(dir: &std::path::Path) -> AuditLog {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match AuditLog::open(dir) {
            Ok(log) => return log,
            Err(StoreError::InUse(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn audit(c: &mut Criterion) {
    let dir = procs::bench_dir().unwrap();
    let t0 = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(write_log(dir.path()));
    let log = open(dir.path());
    let events = log.info().unwrap().last_seq;
    eprintln!(
        "replay bench: {events} events written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let mut jsonl = Vec::new();
    log.export(&ExportFilter::default(), ExportFormat::Jsonl, &mut jsonl)
        .unwrap();

    let mut g = c.benchmark_group("audit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    // The rebuilt state is freed outside the timing (`muster audit replay` prints it and exits;
    // freeing half a million device runs is no part of replaying).
    g.bench_function("replay", |b| {
        b.iter_with_large_drop(|| {
            let r = log.replay(ReplayTo::End).unwrap();
            assert_eq!(r.last_seq, events);
            r
        });
    });
    // Reading and decoding alone (what the reader threads do).
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            log.events(1, u64::MAX)
                .unwrap()
                .map(|e| e.unwrap().0)
                .sum::<u64>()
        });
    });
    // Applying alone (what the replaying thread does with what the readers decoded): the
    // decoded events are made before each iteration, untimed.
    g.bench_function("apply_only", |b| {
        b.iter_batched(
            || {
                log.events(1, u64::MAX)
                    .unwrap()
                    .map(|e| e.unwrap().1)
                    .collect::<Vec<_>>()
            },
            |decoded| {
                let mut state = muster_domain::State::default();
                for event in decoded {
                    muster_domain::apply(&mut state, event);
                }
                state
            },
            criterion::BatchSize::PerIteration,
        );
    });
    g.bench_function("verify", |b| {
        b.iter(|| {
            let v = log.verify().unwrap();
            assert!(v.failure.is_none());
            v
        });
    });
    g.bench_function("export_jsonl", |b| {
        b.iter(|| {
            log.export(
                &ExportFilter::default(),
                ExportFormat::Jsonl,
                std::io::sink(),
            )
            .unwrap()
        });
    });
    g.bench_function("export_csv", |b| {
        b.iter(|| {
            log.export(&ExportFilter::default(), ExportFormat::Csv, std::io::sink())
                .unwrap()
        });
    });
    g.bench_function("replay_export", |b| {
        b.iter(|| {
            let r = replay_export(&jsonl[..], ReplayTo::End).unwrap();
            assert_eq!(r.replayed.last_seq, events);
            r
        });
    });
    g.finish();
    eprintln!(
        "replay bench: jsonl export of {events} events is {:.0} MB",
        jsonl.len() as f64 / 1e6
    );
}

criterion_group!(benches, audit);
criterion_main!(benches);
