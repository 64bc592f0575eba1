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
            snap.snapshot.get_ref().len()
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
