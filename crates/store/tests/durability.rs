//! What survives a restart: applied state, the event log with its seqs, snapshots, and a real
//! crash (a child process that aborts without any shutdown).

mod common;

use common::*;
use muster_store::{ErrorKind, EventLog, StateUpdate, Store};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::StorageHelper;

#[tokio::test]
async fn applied_state_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = workload();
    let (want_state, want_events) = expected(&cmds);
    assert!(
        want_events.len() > 50,
        "workload too small: {}",
        want_events.len()
    );

    let mut node = Node::open(dir.path()).await;
    let reader = node.sm.reader();
    let mut next_seq = 1;
    for c in &cmds {
        let r = node.propose(c.clone()).await.into_result().unwrap();
        assert_eq!(r.first_seq, next_seq);
        next_seq = r.last_seq + 1;
    }
    assert_eq!(full_state(&reader), want_state);
    assert_eq!(reader.last_seq(), want_events.len() as u64);
    let before = events_of(&reader);
    drop((node, reader));

    let node = Node::open(dir.path()).await;
    let reader = node.sm.reader();
    assert_eq!(full_state(&reader), want_state);
    let after = events_of(&reader);
    assert_eq!(after, before);
    let numbered: Vec<_> = (1..).zip(want_events).collect();
    assert_eq!(after, numbered);
    assert_eq!(reader.first_seq_available(), 1);
    assert_eq!(reader.last_applied(), Some(log_id(cmds.len() as u64)));
}

#[tokio::test]
async fn rejected_command_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    let reader = node.sm.reader();
    node.propose(register(0, 3, 0)).await.into_result().unwrap();
    let created = node
        .propose(create_job("j", 3, 1))
        .await
        .into_result()
        .unwrap();
    let seq = reader.last_seq();
    assert_eq!(created.last_seq, seq);
    let state = reader.read(|s| s.clone());

    let err = node
        .propose(create_job("j", 3, 2))
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert!(err.message.contains("already exists"), "{}", err.message);
    assert_eq!(reader.last_seq(), seq);
    assert_eq!(events_of(&reader).len() as u64, seq);
    assert_eq!(reader.read(|s| s.clone()), state);
    // The entry was still applied: openraft must not see it again.
    assert_eq!(reader.last_applied(), Some(log_id(3)));

    let err = node
        .propose(muster_domain::Command::StopJob {
            id: muster_types::JobId::new("nope").unwrap(),
            at: at(3),
        })
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(reader.last_seq(), seq);
}

#[tokio::test]
async fn subscribers_see_applied_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    let mut rx = node.sm.reader().subscribe();
    let cmds = workload();
    let (_, want) = expected(&cmds);
    for c in cmds {
        node.propose(c).await;
    }
    let mut got = Vec::new();
    while let Ok(update) = rx.try_recv() {
        match update {
            StateUpdate::Events(batch) => got.extend(batch.iter().map(|(seq, e)| (seq, e.clone()))),
            StateUpdate::SnapshotInstalled { .. } => panic!("no snapshot was installed"),
        }
    }
    assert_eq!(got, (1..).zip(want).collect::<Vec<_>>());
}

#[tokio::test]
async fn restart_is_snapshot_plus_event_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = workload();
    let (want_state, want_events) = expected(&cmds);
    let half = cmds.len() / 2;

    let mut node = Node::open(dir.path()).await;
    for c in &cmds[..half] {
        node.propose(c.clone()).await;
    }
    let snap = node.sm.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(half as u64)));
    let snap_seq = node.sm.reader().last_seq();
    for c in &cmds[half..] {
        node.propose(c.clone()).await;
    }
    drop(node);

    // Remove the events the snapshot covers, behind the store's back: if restart still yields
    // the full state, it came from the snapshot plus the tail.
    {
        muster_store::segment::edit_segments(dir.path(), |segments| {
            segments.retain(|first, _| *first > snap_seq)
        })
        .unwrap();
    }

    let mut node = Node::open(dir.path()).await;
    let reader = node.sm.reader();
    assert_eq!(full_state(&reader), want_state);
    assert_eq!(reader.last_seq(), want_events.len() as u64);
    let current = node.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(
        bytes_of(current.snapshot).await,
        bytes_of(snap.snapshot).await
    );
}

#[tokio::test]
async fn installed_snapshot_starts_the_event_log_at_its_seq() {
    let cmds = workload();
    let (want_state, _) = expected(&cmds);
    let last = cmds.len() - 1;

    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Node::open(leader_dir.path()).await;
    for c in &cmds[..last] {
        leader.propose(c.clone()).await;
    }
    let snap = leader.sm.build_snapshot().await.unwrap();
    let snap_seq = leader.sm.reader().last_seq();

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Node::open(dir.path()).await;
    // A few local events from before, which the snapshot supersedes.
    follower.propose(register(0, 2, 0)).await;
    let reader = follower.sm.reader();
    let mut rx = reader.subscribe();
    // Received as openraft does: the leader's file copied into the follower's receiving file.
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    let mut from = snap.snapshot;
    tokio::io::copy(&mut from, &mut *buf).await.unwrap();
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    assert!(matches!(
        rx.try_recv().unwrap(),
        StateUpdate::SnapshotInstalled { last_seq } if last_seq == snap_seq
    ));
    assert_eq!(reader.first_seq_available(), snap_seq + 1);
    assert_eq!(reader.last_seq(), snap_seq);
    assert!(events_of(&reader).is_empty());

    // The next entry continues the leader's numbering.
    follower.next_index = last as u64 + 1;
    let r = follower
        .propose(cmds[last].clone())
        .await
        .into_result()
        .unwrap();
    let leader_r = leader
        .propose(cmds[last].clone())
        .await
        .into_result()
        .unwrap();
    assert_eq!(r, leader_r);
    assert_eq!(full_state(&reader), want_state);
    let tail = events_of(&reader);
    drop((follower, reader));

    let follower = Node::open(dir.path()).await;
    let reader = follower.sm.reader();
    assert_eq!(full_state(&reader), want_state);
    assert_eq!(reader.first_seq_available(), snap_seq + 1);
    assert_eq!(events_of(&reader), tail);
    assert_eq!(tail.first().map(|(s, _)| *s), Some(snap_seq + 1));
}

const CRASH_DIR: &str = "MUSTER_STORE_CRASH_DIR";

/// The child half of `crash_recovery`: writes through the store, then aborts the process (no
/// destructors, no sled shutdown flush). Does nothing when run on its own.
#[tokio::test]
#[ignore = "run by crash_recovery in a child process"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let cmds = workload();
    let mut node = Node::open(std::path::Path::new(&dir)).await;
    let (applied, committed_only) = cmds.split_at(cmds.len() - 3);
    for c in applied {
        node.propose(c.clone()).await;
    }
    // Durable and committed in the log, never applied: openraft re-applies these on restart.
    for c in committed_only {
        node.commit(c.clone()).await;
    }
    std::process::abort();
}

#[tokio::test]
async fn crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env(CRASH_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");

    let cmds = workload();
    let (want_state, want_events) = expected(&cmds);
    let (mut log, mut sm) = Store::open(dir.path()).unwrap();
    // What openraft does on startup: re-apply committed entries after last_applied.
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    let reader = sm.reader();
    assert_eq!(reader.last_applied(), Some(log_id(cmds.len() as u64)));
    assert_eq!(full_state(&reader), want_state);
    assert_eq!(
        events_of(&reader),
        (1..).zip(want_events).collect::<Vec<_>>()
    );
}

/// The whole content of a snapshot file, from its start.
#[allow(clippy::unwrap_used)]
async fn bytes_of(mut file: Box<tokio::fs::File>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    file.rewind().await.unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// A data directory of a release before snapshot files (a format-2 JSON snapshot in the
/// `snapshot` tree) still starts: the JSON is read once, written as a snapshot file and removed,
/// and the state is the snapshot plus the tail.
#[tokio::test]
async fn an_old_json_snapshot_is_converted_into_a_file_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = workload();
    let (want_state, _) = expected(&cmds);
    let half = cmds.len() / 2;

    let mut node = Node::open(dir.path()).await;
    for c in &cmds[..half] {
        node.propose(c.clone()).await;
    }
    let reader = node.sm.reader();
    let (snap_seq, head) = reader.chain_head();
    let last_applied = reader.last_applied();
    let membership = reader.membership();
    let half_state = reader.read(|s| s.clone());
    for c in &cmds[half..] {
        node.propose(c.clone()).await;
    }
    drop(reader);
    drop(node);

    // What an older release stored: meta + serde_json payload, no file; the events the
    // snapshot covers are gone, so the state can only come from it.
    {
        let db = common::open_db(dir.path());
        let snapshot = db.open_tree("snapshot").unwrap();
        snapshot.clear().unwrap();
        let meta = openraft::SnapshotMeta::<u64, muster_store::MusterNode> {
            last_log_id: last_applied,
            last_membership: membership.clone(),
            snapshot_id: "old-1".into(),
        };
        snapshot
            .insert("meta", serde_json::to_vec(&meta).unwrap())
            .unwrap();
        let payload = serde_json::json!({
            "format": 2,
            "last_applied": last_applied,
            "membership": membership,
            "last_seq": snap_seq,
            "chain_head": head,
            "state": half_state,
        });
        snapshot
            .insert("data", serde_json::to_vec(&payload).unwrap())
            .unwrap();
        db.flush().unwrap();
        muster_store::segment::edit_segments(dir.path(), |segments| {
            segments.retain(|first, _| *first > snap_seq)
        })
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(dir.path().join("snapshots"));

    let mut node = Node::open(dir.path()).await;
    assert_eq!(full_state(&node.sm.reader()), want_state);
    let current = node.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, "old-1");
    assert_eq!(&bytes_of(current.snapshot).await[..8], b"MUSTSNAP");
    drop(node);
    {
        let db = common::open_db(dir.path());
        let snapshot = db.open_tree("snapshot").unwrap();
        assert!(
            snapshot.get("data").unwrap().is_none(),
            "the JSON is removed"
        );
        assert!(snapshot.get("file").unwrap().is_some());
    }
    // And it starts again from the file.
    let node = Node::open(dir.path()).await;
    assert_eq!(full_state(&node.sm.reader()), want_state);
}
