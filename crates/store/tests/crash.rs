//! Crashes while a replica installs a snapshot from its leader (issue 18), with real sled files
//! and a real process that dies: this test binary runs itself again as a child (the ignored
//! `child_install`), which installs the snapshot with a crash hook
//! ([`muster_store::crashpoint`]) that flushes sled and aborts at the chosen point. The parent
//! then reopens the replica's directory, installs the snapshot again (what the leader does for
//! a follower that is still behind), continues the log, and checks the state and the chain
//! against the leader's and with the audit verifier. The same way, a crash of the device
//! indexer between its entries and their watermark.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use common::{expected, full_state, workload, Node};
use muster_store::audit::AuditLog;
use muster_store::{crashpoint, EventLog};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

const CHILD_ENV: &str = "MUSTER_CRASH_INSTALL";

/// The leader's directory: the whole workload but its last command, and a snapshot of it.
async fn leader(dir: &Path) -> u64 {
    let cmds = workload();
    let mut leader = Node::open(dir).await;
    for c in &cmds[..cmds.len() - 1] {
        leader.propose(c.clone()).await;
    }
    leader.sm.build_snapshot().await.unwrap();
    leader.sm.reader().last_seq()
}

/// Installs the leader's current snapshot into `follower`.
async fn install_from(leader_dir: &Path, follower: &mut Node) {
    let mut leader = Node::open(leader_dir).await;
    let snap = leader.sm.get_current_snapshot().await.unwrap().unwrap();
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    *buf = *snap.snapshot;
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    follower.next_index = snap.meta.last_log_id.unwrap().index + 1;
}

/// The child: a follower that applied the workload's first command, then installs the snapshot
/// and crashes at the point named in the environment.
#[tokio::test]
#[ignore = "a child process of the crash tests"]
async fn child_install() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ' ');
    let point: &'static str = match parts.next().unwrap() {
        p if p == crashpoint::INSTALL_TREES_LOADED => crashpoint::INSTALL_TREES_LOADED,
        p if p == crashpoint::INSTALL_POINTER_WRITTEN => crashpoint::INSTALL_POINTER_WRITTEN,
        p if p == crashpoint::INSTALL_META_WRITTEN => crashpoint::INSTALL_META_WRITTEN,
        other => panic!("unknown point {other}"),
    };
    let leader_dir = PathBuf::from(parts.next().unwrap());
    let follower_dir = PathBuf::from(parts.next().unwrap());
    let mut follower = Node::open(&follower_dir).await;
    follower.propose(workload()[0].clone()).await;
    crash_at(point);
    install_from(&leader_dir, &mut follower).await;
    eprintln!("no crash at {point}");
}

/// Runs this binary's ignored test `child` with `CHILD_ENV` set to `spec`, and checks that it
/// crashed at `point`.
fn crash_child(child: &str, spec: String, point: &str) {
    let out = Process::new(std::env::current_exe().unwrap())
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("crash point {point} reached")),
        "the child did not crash at {point}: {}\n{stderr}",
        out.status
    );
}

/// A hook that makes what was written so far durable and aborts at `point`.
fn crash_at(point: &'static str) {
    crashpoint::set(Box::new(move |passing| {
        if passing.name == point {
            passing.flush();
            eprintln!("crash point {} reached", passing.name);
            std::process::abort();
        }
    }));
}

/// Crashes at `point` during an install; `finished` says whether `open` must come back with the
/// snapshot's state (the install got far enough that only finishing it is consistent).
async fn crash_during_install(point: &str, finished: bool) {
    let leader_dir = tempfile::tempdir().unwrap();
    let snap_seq = leader(leader_dir.path()).await;
    let follower_dir = tempfile::tempdir().unwrap();
    crash_child(
        "child_install",
        format!(
            "{point} {} {}",
            leader_dir.path().display(),
            follower_dir.path().display()
        ),
        point,
    );

    // The replica opens: either still its old state, or the snapshot's, never a mixture.
    let cmds = workload();
    let mut follower = Node::open(follower_dir.path()).await;
    {
        let reader = follower.sm.reader();
        let state = full_state(&reader);
        if finished {
            assert_eq!(reader.last_seq(), snap_seq, "after a crash at {point}");
        }
        if reader.last_seq() == snap_seq {
            assert_eq!(reader.first_seq_available(), snap_seq + 1);
            assert_eq!(state, expected(&cmds[..cmds.len() - 1]).0);
            // The local events older than the snapshot are gone, as a finished install leaves it.
            assert!(reader.read_records(1, usize::MAX).unwrap().is_empty());
        } else {
            assert_eq!(state, expected(&cmds[..1]).0, "after a crash at {point}");
        }
    }
    // The leader sends the snapshot again; the replica then follows the log.
    install_from(leader_dir.path(), &mut follower).await;
    let last = cmds[cmds.len() - 1].clone();
    follower.propose(last.clone()).await;
    let mut leader = Node::open(leader_dir.path()).await;
    leader.propose(last).await;
    let (reader, leader_reader) = (follower.sm.reader(), leader.sm.reader());
    assert_eq!(reader.chain_head(), leader_reader.chain_head());
    assert_eq!(full_state(&reader), expected(&cmds).0);
    assert_eq!(full_state(&reader), full_state(&leader_reader));
    drop((reader, leader_reader, follower, leader));

    let v = AuditLog::open(follower_dir.path())
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(v.failure, None, "{v:?}");
}

#[tokio::test]
async fn a_crash_after_an_installing_snapshot_replaced_the_carried_trees_recovers() {
    crash_during_install(crashpoint::INSTALL_TREES_LOADED, false).await;
}

#[tokio::test]
async fn a_crash_before_an_installed_snapshot_dropped_the_older_events_recovers() {
    crash_during_install(crashpoint::INSTALL_META_WRITTEN, true).await;
}

/// The pointer names the new snapshot, the applied record is the old one: `open` finishes the
/// install rather than refusing a snapshot ahead of the applied state.
#[tokio::test]
async fn a_crash_between_an_installs_pointer_and_its_metadata_finishes_the_install() {
    crash_during_install(crashpoint::INSTALL_POINTER_WRITTEN, true).await;
}

/// The child of the device-index crash: applies the workload and waits for the background
/// indexer to write its entries, crashing before their watermark.
#[tokio::test]
#[ignore = "a child process of the crash tests"]
async fn child_index() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    crash_at(crashpoint::INDEX_ENTRIES_WRITTEN);
    let mut node = Node::open(Path::new(&dir)).await;
    for c in workload() {
        node.propose(c).await;
    }
    // The indexer writes within seconds (`FLUSH_AFTER`); the hook ends the process there.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    eprintln!("no crash at {}", crashpoint::INDEX_ENTRIES_WRITTEN);
}

/// Every device's history through the index equals a walk of the log.
fn assert_device_reads_match_walk(reader: &muster_store::StateReader) {
    for i in 0..21 {
        let d = common::device(i);
        let indexed = reader.read_device_records(&d, 1, usize::MAX).unwrap();
        let walked =
            muster_store::scan_records(reader, 1, usize::MAX, |e| e.device() == Some(&d)).unwrap();
        assert_eq!(indexed, walked, "device {d}");
    }
}

/// A crash between the device indexer's entries and its watermark: on reopen the indexer
/// writes those seqs again (entries that overlap), and reads still equal a walk of the log,
/// before and after it caught up.
#[tokio::test]
async fn a_crash_between_device_index_entries_and_their_watermark_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let point = crashpoint::INDEX_ENTRIES_WRITTEN;
    crash_child("child_index", dir.path().display().to_string(), point);

    let node = Node::open(dir.path()).await;
    let reader = node.sm.reader();
    assert!(reader.last_seq() > 0);
    assert_device_reads_match_walk(&reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reader.device_index_watermark() < reader.last_seq() {
        assert!(
            std::time::Instant::now() < deadline,
            "the device index stays at {} of {}",
            reader.device_index_watermark(),
            reader.last_seq()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_device_reads_match_walk(&reader);
}
