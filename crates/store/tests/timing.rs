//! Rough timings of `append` (write batch + blocking flush + callback). Not a benchmark; run
//! with `cargo test --release -p muster-store --test timing -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use muster_domain::{Command, DeviceResult, Outcome};
use muster_store::Store;
use muster_types::{JobId, RunId};

use openraft::storage::RaftLogStorageExt;
use serde_json::json;

fn result_command(job: &JobId, i: u64) -> Command {
    Command::RecordDeviceResults {
        results: vec![DeviceResult {
            job: job.clone(),
            run: RunId(1),
            device: device(i as usize % 1000),
            attempt: 1,
            outcome: Outcome::Responded {
                status: 200,
                payload: json!({"rebooted": true, "uptime": i}).into(),
            },
        }],
        at: at(i as i64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints timings; run by hand"]
async fn append_timings() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = Store::open(dir.path()).unwrap();
    let mut index = 0;
    let job = JobId::new("reboot-1").unwrap();
    for (n, rounds) in [(1u64, 50), (100, 20), (1000, 10)] {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..rounds {
            let entries: Vec<_> = (0..n)
                .map(|_| {
                    index += 1;
                    entry(index, result_command(&job, index))
                })
                .collect();
            let t = Instant::now();
            log.blocking_append(entries).await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "append {n:>4} entries: median {:>8.3} ms, min {:>8.3} ms, max {:>8.3} ms ({:.1} µs/entry)",
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e6 / n as f64,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints timings; run by hand"]
async fn snapshot_timings() {
    use muster_store::EventLog;
    use openraft::storage::RaftSnapshotBuilder;

    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let snap_seq;
    {
        let mut node = Node::open(dir.path()).await;
        for chunk in 0..n / 1000 {
            node.propose(register(chunk * 1000, 1000, 0)).await;
        }
        let Command::CreateJob {
            id,
            mut spec,
            at: created,
        } = create_job("fleet", 1, 1)
        else {
            unreachable!()
        };
        spec.target.selector = muster_domain::TargetSelector::Query("SELECT * FROM devices".into());
        let t = Instant::now();
        node.propose(Command::CreateJob {
            id,
            spec,
            at: created,
        })
        .await
        .into_result()
        .unwrap();
        println!("create a {n}-device job: {:?}", t.elapsed());
        let t = Instant::now();
        let snap = node.sm.build_snapshot().await.unwrap();
        println!(
            "snapshot of {n} devices + a {n}-device job: {:?}, {} bytes",
            t.elapsed(),
            snap.snapshot.metadata().await.unwrap().len()
        );
        snap_seq = node.sm.reader().last_seq();
        node.propose(Command::Advance { at: at(2) }).await;
        let acts = node
            .sm
            .reader()
            .read(|s| muster_domain::actions(s, at(3), usize::MAX));
        for a in acts {
            if let muster_domain::Action::Dispatch { job, run, devices } = a {
                node.propose(Command::MarkDispatched {
                    job,
                    run,
                    devices,
                    at: at(3),
                })
                .await;
            }
        }
    }
    let t = Instant::now();
    let node = Node::open(dir.path()).await;
    println!(
        "open (snapshot + {} tail events): {:?}",
        node.sm.reader().last_seq() - snap_seq,
        t.elapsed()
    );
}

/// Resident set size and its peak (VmHWM) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Snapshot figures for BENCHMARKS.md ("Streamed snapshots"): `MUSTER_SNAP_DEVICES` (100,000)
/// registered devices and a finished job over all of them; build time, the longest apply while
/// building (the stall), peak extra RSS while building, size, install time on a fresh replica;
/// and the same for the format-2 path (clone + serde_json) for comparison. Run with
/// `cargo test --release -p muster-store --test timing snapshot_stream_figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
async fn snapshot_stream_figures() {
    use muster_domain::{actions, Action};
    use muster_store::EventLog;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

    let n: usize = std::env::var("MUSTER_SNAP_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    for chunk in 0..n.div_ceil(1000) {
        node.propose(register(chunk * 1000, 1000.min(n - chunk * 1000), 0))
            .await;
    }
    let Command::CreateJob { id, mut spec, .. } = create_job("fleet", 1, 1) else {
        unreachable!()
    };
    spec.target.selector = muster_domain::TargetSelector::Query("SELECT * FROM devices".into());
    node.propose(Command::CreateJob {
        id,
        spec,
        at: at(1),
    })
    .await
    .into_result()
    .unwrap();
    let mut now = 100;
    for _ in 0..50 {
        let acts = node.sm.reader().read(|s| actions(s, at(now), usize::MAX));
        let mut round = Vec::new();
        let mut results = Vec::new();
        for a in acts {
            match a {
                Action::Advance => round.push(Command::Advance { at: at(now) }),
                Action::Dispatch { job, run, devices } => round.push(Command::MarkDispatched {
                    job,
                    run,
                    devices,
                    at: at(now),
                }),
                Action::Send(req) => results.push(DeviceResult {
                    job: req.job.clone(),
                    run: req.run,
                    device: req.device.clone(),
                    attempt: req.attempt,
                    outcome: Outcome::Responded {
                        status: 200,
                        payload: json!({"rebooted": true}).into(),
                    },
                }),
                _ => {}
            }
        }
        if round.is_empty() && results.is_empty() {
            break;
        }
        for c in round {
            node.propose(c).await;
        }
        while !results.is_empty() {
            let rest = results.split_off(results.len().min(1000));
            node.propose(Command::RecordDeviceResults {
                results,
                at: at(now + 5),
            })
            .await;
            results = rest;
        }
        now += 1000;
    }
    let events = node.sm.reader().last_seq();
    println!("state: {n} devices + a finished {n}-device job ({events} events)");

    // Before: the format-2 path (clone under the lock, then serde_json of it).
    reset_peak();
    let (base, _) = rss_kib();
    let t = Instant::now();
    let clone = node.sm.reader().read(|s| s.clone());
    let clone_time = t.elapsed();
    let json = serde_json::to_vec(&clone).unwrap();
    let json_time = t.elapsed();
    let (_, peak) = rss_kib();
    drop(clone);
    let t = Instant::now();
    let back: muster_domain::State = serde_json::from_slice(&json).unwrap();
    let json_decode = t.elapsed();
    drop(back);
    println!(
        "format 2 (JSON): clone {clone_time:?} (the apply stall), clone + encode {json_time:?}, \
         {} bytes, peak extra RSS {} MiB, decode {json_decode:?}",
        json.len(),
        (peak.saturating_sub(base)) / 1024
    );
    drop(json);

    // Applies alone: the longest of 100 (the baseline of the stall).
    let mut extra = n;
    let mut max_alone = Duration::ZERO;
    for _ in 0..100 {
        let t = Instant::now();
        node.propose(register(extra, 1, now)).await;
        max_alone = max_alone.max(t.elapsed());
        extra += 1;
    }

    // After: build a format-3 snapshot while applying one command after another.
    reset_peak();
    let (base, _) = rss_kib();
    let mut builder = node.sm.clone();
    let t = Instant::now();
    let build = tokio::spawn(async move {
        let snap = builder.build_snapshot().await.unwrap();
        (snap, t.elapsed())
    });
    let mut max_during = Duration::ZERO;
    let mut applied = 0;
    while !build.is_finished() {
        let t = Instant::now();
        node.propose(register(extra, 1, now)).await;
        max_during = max_during.max(t.elapsed());
        extra += 1;
        applied += 1;
    }
    let (snap, build_time) = build.await.unwrap();
    let (_, peak) = rss_kib();
    let size = snap.snapshot.metadata().await.unwrap().len();
    println!(
        "format 3: build {build_time:?}, {size} bytes, peak extra RSS {} MiB; {applied} applies \
         while building, longest {max_during:?} (longest of 100 alone: {max_alone:?})",
        (peak.saturating_sub(base)) / 1024
    );

    // Install on a fresh replica: chunks copied into its receiving file, then decoded.
    let fdir = tempfile::tempdir().unwrap();
    let mut follower = Node::open(fdir.path()).await;
    let t = Instant::now();
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    let mut from = snap.snapshot;
    tokio::io::copy(&mut from, &mut *buf).await.unwrap();
    let copied = t.elapsed();
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    println!(
        "format 3: install on a new replica {:?} (of which receiving the file {copied:?})",
        t.elapsed()
    );
    assert!(follower.sm.reader().read(|s| s.registry.devices.len()) >= n);
}
