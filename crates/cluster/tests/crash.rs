//! Crashes at the storage boundaries (issue 18), on a real one-node cluster: real openraft, real
//! sled files, a real process that dies.
//!
//! Each test runs this test binary again as a child process (the `child_*` tests, ignored in a
//! normal run) that starts a node on a data directory, installs a crash hook
//! ([`muster_store::crashpoint`]) and writes batches of device registrations until the hook
//! aborts the process at the chosen point, after flushing sled (so the disk holds exactly what
//! the store had written: the hardest state to recover from). Each acknowledged write is
//! recorded in a file as it is acknowledged. A second child restarts the node on the directory
//! and checks: every acknowledged write is there with the seqs it was acknowledged with, no
//! device was registered twice, a write that was not acknowledged is there whole or not at all,
//! and new writes are accepted. Then the test verifies the directory as `muster audit verify`
//! does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use muster_cluster::{Cluster, ClusterConfig, EventLog, MusterNode};
use muster_domain::{Command, DeviceRegistration, Event};
use muster_store::crashpoint;
use muster_types::DeviceId;

/// Which child a process is, and its settings: `MODE`, then `POINT NTH SNAPSHOT_AFTER`.
const CHILD_ENV: &str = "MUSTER_CRASH_CHILD";
const DIR_ENV: &str = "MUSTER_CRASH_DIR";

/// Devices per batch: more than one segment (256 records) and more than one writer chunk, so
/// an apply is multi-segment and written in several batches.
const BATCH: usize = 600;
/// Batches a crashing child writes at most.
const MAX_BATCHES: usize = 12;

fn device(batch: usize, i: usize) -> DeviceId {
    DeviceId::new(format!("b{batch:02}-d{i:04}")).unwrap()
}

fn register(batch: usize) -> Command {
    Command::RegisterDevices {
        devices: (0..BATCH)
            .map(|i| DeviceRegistration {
                id: device(batch, i),
                display_name: format!("device {i} of batch {batch}"),
                model_id: None,
                enabled: true,
                tags: serde_json::json!({"batch": batch}).into(),
            })
            .collect(),
        upsert: false,
        at: muster_cluster::now(),
    }
}

fn config(dir: &Path, snapshot_after: u64) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(1, dir.join("data"), MusterNode::default());
    cfg.snapshot_after = snapshot_after;
    cfg
}

async fn start(cfg: ClusterConfig) -> Cluster {
    let c = Cluster::start(cfg).await.unwrap();
    c.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    c
}

/// `batch first_seq last_seq` per acknowledged write.
fn read_acks(dir: &Path) -> BTreeMap<usize, (u64, u64)> {
    let text = std::fs::read_to_string(dir.join("acks")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (v[0] as usize, (v[1], v[2]))
        })
        .collect()
}

/// The child that writes until it crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the crash tests"]
async fn child_crash() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let parts: Vec<&str> = spec.split(' ').collect();
    let point: &'static str = match parts[1] {
        p if p == crashpoint::APPLY_EVENTS_WRITTEN => crashpoint::APPLY_EVENTS_WRITTEN,
        p if p == crashpoint::APPLY_CHUNK_WRITTEN => crashpoint::APPLY_CHUNK_WRITTEN,
        p if p == crashpoint::SNAPSHOT_BUILT => crashpoint::SNAPSHOT_BUILT,
        p if p == crashpoint::SNAPSHOT_PUBLISHED => crashpoint::SNAPSHOT_PUBLISHED,
        other => panic!("unknown point {other}"),
    };
    let nth: u32 = parts[2].parse().unwrap();
    let snapshot_after: u64 = parts[3].parse().unwrap();
    static HITS: AtomicU32 = AtomicU32::new(0);
    crashpoint::set(Box::new(move |passing| {
        if passing.name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            passing.flush();
            eprintln!("crash point {} reached", passing.name);
            std::process::abort();
        }
    }));
    let c = start(config(&dir, snapshot_after)).await;
    let mut acks = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("acks"))
        .unwrap();
    for batch in 0..MAX_BATCHES {
        let range = c.write(register(batch)).await.unwrap();
        writeln!(acks, "{batch} {} {}", range.first_seq, range.last_seq).unwrap();
        acks.flush().unwrap();
    }
    // Snapshots are built in the background: give a pending one time to reach the point.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("no crash at {point}");
}

/// The child that restarts the node and checks what it recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the crash tests"]
async fn child_recover() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let snapshot_after: u64 = spec.split(' ').nth(3).unwrap().parse().unwrap();
    let acks = read_acks(&dir);
    let c = start(config(&dir, snapshot_after)).await;
    c.linearizable().await.unwrap();
    let reader = c.reader();

    // Every acknowledged write, at the seqs it was acknowledged with.
    for (batch, (first, last)) in &acks {
        let records = reader
            .read_records(*first, (last - first + 1) as usize)
            .unwrap();
        assert_eq!(
            records.len(),
            BATCH,
            "batch {batch}: events {first}..={last}"
        );
        for (i, r) in records.iter().enumerate() {
            match &r.event {
                Event::DeviceRegistered { device: d, .. } => {
                    assert_eq!(d.id, device(*batch, i), "seq {}", r.seq)
                }
                other => panic!(
                    "seq {}: {other:?} where batch {batch} was acknowledged",
                    r.seq
                ),
            }
        }
    }
    // Nothing twice, no gaps, and each batch whole or absent.
    let all = reader.read_records(1, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, reader.last_seq(), "the log has a gap");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    let mut per_batch: BTreeMap<usize, usize> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in &all {
        if let Event::DeviceRegistered { device: d, .. } = &r.event {
            assert!(seen.insert(d.id.clone()), "{} registered twice", d.id);
            let batch: usize = d.id.as_str()[1..3].parse().unwrap();
            *per_batch.entry(batch).or_default() += 1;
        }
    }
    for (batch, n) in &per_batch {
        assert_eq!(*n, BATCH, "batch {batch} is there in part");
    }
    let devices = reader.read(|s| s.registry.devices.len());
    assert_eq!(devices, seen.len(), "the state and the log disagree");
    for batch in acks.keys() {
        assert!(
            per_batch.contains_key(batch),
            "acknowledged batch {batch} lost"
        );
    }
    // The node takes writes again.
    let next = per_batch.keys().max().map_or(0, |b| b + 1);
    c.write(register(next)).await.unwrap();
    println!(
        "RECOVERED acknowledged={} present={} seq={}",
        acks.len(),
        per_batch.len() + 1,
        reader.last_seq()
    );
    c.shutdown().await;
}

fn run_child(test: &str, spec: &str, dir: &Path) -> std::process::Output {
    Process::new(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .env(DIR_ENV, dir)
        .output()
        .unwrap()
}

/// Crash at `point` on its `nth` pass, restart, check (see the module docs).
fn crash_and_recover(point: &str, nth: u32, snapshot_after: u64) {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("crash {point} {nth} {snapshot_after}");
    let crashed = run_child("child_crash", &spec, dir.path());
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        !crashed.status.success() && stderr.contains(&format!("crash point {point} reached")),
        "the child did not crash at {point}: {}\n{stderr}",
        crashed.status
    );
    let acked = read_acks(dir.path()).len();
    assert!(
        acked >= 1 || nth == 1,
        "nothing was acknowledged before the crash"
    );

    let recovered = run_child("child_recover", &spec, dir.path());
    let stdout = String::from_utf8_lossy(&recovered.stdout);
    assert!(
        recovered.status.success() && stdout.contains("RECOVERED"),
        "recovery after a crash at {point} failed: {}\n{stdout}\n{}",
        recovered.status,
        String::from_utf8_lossy(&recovered.stderr)
    );

    // What `muster audit verify` checks: the whole hash chain, and replay == the snapshot.
    let audit = muster_store::audit::AuditLog::open(&dir.path().join("data")).unwrap();
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None, "audit verify after a crash at {point}");
    assert!(v.checked >= (acked * BATCH) as u64);
}

#[test]
fn a_crash_between_event_segments_and_their_metadata_loses_no_acknowledged_write() {
    crash_and_recover(crashpoint::APPLY_EVENTS_WRITTEN, 3, 20_000);
}

#[test]
fn a_crash_half_way_through_a_multi_segment_apply_applies_nothing_twice() {
    // Each batch of 600 events is written in chunks of 256, 256 and 88: the 5th chunk is the
    // 2nd of the second batch.
    crash_and_recover(crashpoint::APPLY_CHUNK_WRITTEN, 5, 20_000);
}

#[test]
fn a_crash_while_a_snapshot_file_is_written_recovers_from_the_previous_one() {
    crash_and_recover(crashpoint::SNAPSHOT_BUILT, 2, 3);
}

#[test]
fn a_crash_after_a_snapshot_file_is_named_but_not_recorded_recovers() {
    crash_and_recover(crashpoint::SNAPSHOT_PUBLISHED, 2, 3);
}
