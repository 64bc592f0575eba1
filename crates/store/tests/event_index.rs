//! The per-job and per-device event index: the same answers as walking the log, from any seq
//! and with any limit; built on open for a data directory written before it existed; cleared
//! with the events by a snapshot install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{device, register, workload, Node};
use muster_store::{scan_records, EventLog, StateReader, StoredEvent};
use muster_types::{DeviceId, JobId};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

fn job(id: &str) -> JobId {
    JobId::new(id).unwrap()
}

fn by_job(r: &StateReader, j: &JobId, from: u64, limit: usize) -> Vec<StoredEvent> {
    r.read_job_records(j, from, limit).unwrap()
}

fn scan_job(r: &StateReader, j: &JobId, from: u64, limit: usize) -> Vec<StoredEvent> {
    scan_records(r, from, limit, |e| e.job() == Some(j)).unwrap()
}

fn by_device(r: &StateReader, d: &DeviceId, from: u64, limit: usize) -> Vec<StoredEvent> {
    r.read_device_records(d, from, limit).unwrap()
}

fn scan_device(r: &StateReader, d: &DeviceId, from: u64, limit: usize) -> Vec<StoredEvent> {
    scan_records(r, from, limit, |e| e.device() == Some(d)).unwrap()
}

/// Every id, from every seq, with a few limits: index == scan; for devices both before the
/// background indexer has written the seqs (memory and log) and after (the tree).
async fn assert_index_matches_scan(r: &StateReader) {
    assert_reads_match_scan(r);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while r.device_index_watermark() < r.last_seq() {
        assert!(
            std::time::Instant::now() < deadline,
            "the device index stays at {} of {}",
            r.device_index_watermark(),
            r.last_seq()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_reads_match_scan(r);
}

fn assert_reads_match_scan(r: &StateReader) {
    let last = r.last_seq();
    let jobs = [job("reboot-1"), job("reboot-2"), job("never")];
    for from in (0..=last + 1).step_by(7) {
        for limit in [1, 3, 50, usize::MAX] {
            for j in &jobs {
                assert_eq!(
                    by_job(r, j, from, limit),
                    scan_job(r, j, from, limit),
                    "job {j} from {from} limit {limit}"
                );
            }
            for i in [0, 1, 5, 19, 99] {
                let d = device(i);
                assert_eq!(
                    by_device(r, &d, from, limit),
                    scan_device(r, &d, from, limit),
                    "device {d} from {from} limit {limit}"
                );
            }
        }
    }
}

#[tokio::test]
async fn index_reads_equal_a_walk_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    for c in workload() {
        node.propose(c).await;
    }
    let r = node.sm.reader();
    let all = by_job(&r, &job("reboot-1"), 1, usize::MAX);
    assert!(all.len() > 20, "the workload runs reboot-1: {}", all.len());
    assert!(all.iter().all(|s| s.event.job() == Some(&job("reboot-1"))));
    assert_index_matches_scan(&r).await;
}

/// A device with more events than one index entry holds: its open entry fills, is closed under
/// its first seq and the next one opens; reads across the closed and the open entries, from any
/// seq and with any limit, still equal a walk of the log.
#[tokio::test]
async fn a_long_device_history_reads_across_closed_and_open_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    node.propose(register(0, 2, 1_000)).await;
    let r = node.sm.reader();
    // Each round is its own flush: 60 one-byte deltas, so the second fills the open entry
    // (96 bytes) and the third closes it.
    for round in 0..3 {
        for i in 0..60 {
            let mut c = register(0, 1, 2_000 + round * 100 + i);
            if let muster_domain::Command::RegisterDevices {
                devices, upsert, ..
            } = &mut c
            {
                *upsert = true;
                devices[0].display_name = format!("round {round} step {i}");
            }
            node.propose(c).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while r.device_index_watermark() < r.last_seq() {
            assert!(
                std::time::Instant::now() < deadline,
                "the indexer stays behind"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let d = device(0);
    let all = by_device(&r, &d, 1, usize::MAX);
    assert_eq!(all.len(), 181, "a registration and 180 updates");
    for from in (0..=r.last_seq() + 1).step_by(5) {
        for limit in [1, 7, 100, usize::MAX] {
            assert_eq!(
                by_device(&r, &d, from, limit),
                scan_device(&r, &d, from, limit),
                "device {d} from {from} limit {limit}"
            );
        }
    }
}

#[tokio::test]
async fn a_data_directory_without_the_index_is_indexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    for c in workload() {
        node.propose(c).await;
    }
    let want = by_job(&node.sm.reader(), &job("reboot-1"), 1, usize::MAX);
    drop(node);
    // What an older release left: no index trees, no completion mark.
    {
        let db = common::open_db(dir.path());
        db.drop_tree("events_by_job").unwrap();
        db.drop_tree("events_by_device").unwrap();
        db.open_tree("sm_meta")
            .unwrap()
            .remove("event_index")
            .unwrap();
        db.flush().unwrap();
    }
    let node = Node::open(dir.path()).await;
    let r = node.sm.reader();
    assert_eq!(by_job(&r, &job("reboot-1"), 1, usize::MAX), want);
    assert_index_matches_scan(&r).await;
}

#[tokio::test]
async fn an_installed_snapshot_clears_the_index_with_the_events() {
    let cmds = workload();
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Node::open(leader_dir.path()).await;
    let half = cmds.len() / 2;
    for c in &cmds[..half] {
        leader.propose(c.clone()).await;
    }
    let snap = leader.sm.build_snapshot().await.unwrap();
    let snap_seq = leader.sm.reader().last_seq();

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Node::open(dir.path()).await;
    for c in &cmds[..3] {
        follower.propose(c.clone()).await;
    }
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    *buf = *snap.snapshot;
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    let r = follower.sm.reader();
    assert!(by_job(&r, &job("reboot-1"), 1, usize::MAX).is_empty());
    assert!(by_device(&r, &device(0), 1, usize::MAX).is_empty());

    follower.next_index = half as u64 + 1;
    for c in &cmds[half..] {
        follower.propose(c.clone()).await;
    }
    let held = by_job(&r, &job("reboot-1"), 1, usize::MAX);
    assert!(held.iter().all(|s| s.seq > snap_seq));
    assert_index_matches_scan(&r).await;
}

/// A replica seeded from a snapshot back-fills the history before it from a peer, chunk by
/// chunk (surviving a restart in between), and then holds seq 1 onwards: the same records,
/// index included.
#[tokio::test]
async fn a_back_fill_restores_the_history_before_the_snapshot() {
    use muster_store::{BackfillStep, HistoryChunk};

    let cmds = workload();
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Node::open(leader_dir.path()).await;
    let half = cmds.len() / 2;
    for c in &cmds[..half] {
        leader.propose(c.clone()).await;
    }
    let snap = leader.sm.build_snapshot().await.unwrap();
    let snap_seq = leader.sm.reader().last_seq();

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Node::open(dir.path()).await;
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    *buf = *snap.snapshot;
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    follower.next_index = half as u64 + 1;
    for c in &cmds[half..] {
        leader.propose(c.clone()).await;
        follower.propose(c.clone()).await;
    }
    let source = leader.sm.reader();
    let r = follower.sm.reader();
    let need = r.backfill_need().unwrap().unwrap();
    assert_eq!((need.next, need.until), (1, snap_seq));

    // A tampered chunk is refused and changes nothing.
    let mut bad: HistoryChunk = source.history_records(1, 5).unwrap();
    bad.records[3][4] ^= 1;
    assert!(r.backfill(need, &bad.records).is_err());
    assert_eq!(r.backfill_need().unwrap(), Some(need));

    // Two chunks, then a restart, then the rest.
    let mut need = need;
    for _ in 0..2 {
        let chunk = source.history_records(need.next, 7).unwrap();
        match r.backfill(need, &chunk.records).unwrap() {
            BackfillStep::More(n) => need = n,
            BackfillStep::Done => panic!("done too early"),
        }
    }
    assert_eq!(need.next, 15);
    assert_eq!(r.first_seq_available(), snap_seq + 1);
    drop((follower, r));
    let follower = Node::open(dir.path()).await;
    let r = follower.sm.reader();
    assert_eq!(r.backfill_need().unwrap(), Some(need));
    // A power cut that lost the back-filled files but not the progress: it starts over
    // instead of resuming past a hole.
    drop((follower, r));
    std::fs::remove_dir_all(dir.path().join("events").join("history")).unwrap();
    let follower = Node::open(dir.path()).await;
    let r = follower.sm.reader();
    need = r.backfill_need().unwrap().unwrap();
    assert_eq!((need.next, need.until), (1, snap_seq));
    loop {
        let chunk = source.history_records(need.next, 7).unwrap();
        match r.backfill(need, &chunk.records).unwrap() {
            BackfillStep::More(n) => need = n,
            BackfillStep::Done => break,
        }
    }
    assert_eq!(r.first_seq_available(), 1);
    assert_eq!(r.backfill_need().unwrap(), None);
    assert_eq!(
        r.read_records(1, usize::MAX).unwrap(),
        source.read_records(1, usize::MAX).unwrap()
    );
    assert_eq!(
        by_job(&r, &job("reboot-1"), 1, usize::MAX),
        by_job(&source, &job("reboot-1"), 1, usize::MAX)
    );
    assert_index_matches_scan(&r).await;
    drop((follower, r));
    let follower = Node::open(dir.path()).await;
    assert_eq!(follower.sm.reader().first_seq_available(), 1);
    assert_eq!(
        follower.sm.reader().read_records(1, usize::MAX).unwrap(),
        source.read_records(1, usize::MAX).unwrap()
    );
}

/// `muster audit export --job` and `timeline` read through the index: the same rows as the
/// full export filtered by job.
#[tokio::test]
async fn offline_job_exports_read_the_index() {
    use muster_store::audit::{AuditLog, ExportFilter, ExportFormat};

    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    for c in workload() {
        node.propose(c).await;
    }
    drop(node);
    let mut tries = 0;
    let log = loop {
        match AuditLog::open(dir.path()) {
            Ok(log) => break log,
            Err(e) if tries < 500 => {
                tries += 1;
                eprintln!("{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let export = |job: Option<&str>, from: u64| {
        let mut out = Vec::new();
        let filter = ExportFilter {
            from_seq: from,
            to_seq: None,
            job: job.map(str::to_string),
        };
        log.export(&filter, ExportFormat::Jsonl, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    for from in [0, 1, 40, 90] {
        let all = export(None, from);
        let want: Vec<&str> = all
            .lines()
            .filter(|l| l.contains("\"job\":\"reboot-2\""))
            .collect();
        assert!(!want.is_empty() || from > 1);
        assert_eq!(
            export(Some("reboot-2"), from).lines().collect::<Vec<_>>(),
            want
        );
    }
    let t = log.timeline(&job("reboot-1")).unwrap();
    assert!(!t.entries.is_empty());
}
