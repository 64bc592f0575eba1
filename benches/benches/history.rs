//! One job's (or device's) history on a long log: walking the log (what `GET
//! /api/jobs/{id}/events` and a job-filtered `Subscribe` did before the per-job index) against
//! reading it through the store's index (issue 14).
//!
//! `cargo bench -p muster-benches --bench history`
//!
//! Setup (not timed): a Raft-of-one `Cluster` on sled registers `MUSTER_HISTORY_DEVICES`
//! devices (default 20,000) and runs `MUSTER_HISTORY_JOBS` method jobs (default 20) over all of
//! them (create, start, dispatch all, results 1,000 per entry): 20 x (3 + 2 x 20,000) + 20,000
//! ~ 820,000 events. Then, on the running node's `StateReader`, median of 5 runs each:
//! - `page`: the first page (100 events) of the last job's history, as the REST route reads it;
//! - `job`: the whole history of the first job;
//! - `device`: the whole history of one device (one dispatch and one result per job).
//!
//! Each line prints the walk, the index read and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use muster_benches::{device, median, raft_of_one, register_fleet, start_job_on_all};
use muster_cluster::now;
use muster_domain::{Command, DeviceResult, Outcome};
use muster_store::{scan_records, EventLog, StateReader, StoredEvent};
use muster_types::{JobId, RunId};
use serde_json::json;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 5;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed(f: impl Fn() -> Vec<StoredEvent>) -> (f64, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        n = f().len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(times), n)
}

fn compare(what: &str, walk: impl Fn() -> Vec<StoredEvent>, index: impl Fn() -> Vec<StoredEvent>) {
    let (w, wn) = timed(walk);
    let (i, inn) = timed(index);
    assert_eq!(wn, inn, "{what}: the walk and the index disagree");
    println!(
        "{what:<40} {wn:>7} events   walk {w:>10.2} ms   index {i:>8.2} ms   {:>8.0}x",
        w / i.max(0.0001)
    );
}

fn main() {
    let devices = env("MUSTER_HISTORY_DEVICES", 20_000);
    let jobs = env("MUSTER_HISTORY_JOBS", 20);
    let base = std::env::var("MUSTER_BENCH_DIR").unwrap_or_else(|_| "target/bench-data".into());
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let c = raft_of_one(dir.path()).await;
        register_fleet(&c, "h", devices).await;
        for j in 0..jobs {
            let id = JobId::new(format!("history-{j}")).unwrap();
            let all = start_job_on_all(&c, &id).await;
            c.write(Command::MarkDispatched {
                job: id.clone(),
                run: RunId(0),
                devices: all.clone(),
                at: now(),
            })
            .await
            .unwrap();
            for chunk in all.chunks(1_000) {
                let results = chunk
                    .iter()
                    .map(|d| DeviceResult {
                        job: id.clone(),
                        run: RunId(0),
                        device: d.clone(),
                        attempt: 1,
                        outcome: Outcome::Responded {
                            status: 200,
                            payload: json!({"ok": true}).into(),
                        },
                    })
                    .collect();
                c.write(Command::RecordDeviceResults { results, at: now() })
                    .await
                    .unwrap();
            }
        }
        let reader: StateReader = c.reader().clone();
        println!(
            "log: {} events ({jobs} jobs x {devices} devices), written in {:.1} s",
            reader.last_seq(),
            t.elapsed().as_secs_f64()
        );
        let first = JobId::new("history-0").unwrap();
        let last = JobId::new(format!("history-{}", jobs - 1)).unwrap();
        let d = device("h", devices / 2);
        let r = &reader;
        compare(
            "page: first 100 events of the last job",
            || scan_records(r, 1, 100, |e| e.job() == Some(&last)).unwrap(),
            || r.read_job_records(&last, 1, 100).unwrap(),
        );
        compare(
            "job: whole history of the first job",
            || scan_records(r, 1, usize::MAX, |e| e.job() == Some(&first)).unwrap(),
            || r.read_job_records(&first, 1, usize::MAX).unwrap(),
        );
        compare(
            "device: whole history of one device",
            || scan_records(r, 1, usize::MAX, |e| e.device() == Some(&d)).unwrap(),
            || r.read_device_records(&d, 1, usize::MAX).unwrap(),
        );
        c.shutdown().await;
    });
}
