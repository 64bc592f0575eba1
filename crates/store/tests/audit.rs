//! The hash chain over the event log and the offline reader `muster audit` uses: an intact log
//! verifies, and a changed, removed or reordered event is reported at its seq.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{expected, log_id, register, workload, Node};
use muster_domain::{Principal, State};
use muster_proto::EventRecordBytes;
use muster_store::audit::{AuditLog, ExportFilter, ExportFormat, ReplayTo};
use muster_store::segment::{edit_segments, join_segment, split_segment};
use muster_store::{EventLog, StoreError};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

/// Runs the workload in `dir`, with a snapshot half-way; returns the snapshot's seq and the
/// number of events.
async fn build(dir: &Path) -> (u64, u64) {
    let cmds = workload();
    let half = cmds.len() / 2;
    let mut node = Node::open(dir).await;
    for c in &cmds[..half] {
        node.propose(c.clone()).await;
    }
    let snap = node.sm.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(half as u64)));
    let snap_seq = node.sm.reader().last_seq();
    for c in &cmds[half..] {
        node.propose(c.clone()).await;
    }
    let last = node.sm.reader().last_seq();
    drop(node);
    (snap_seq, last)
}

fn tamper(dir: &Path, f: impl FnOnce(&mut Records)) {
    // The store or reader dropped just before may hold its files for a moment longer: sled's
    // lock is the sign.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    edit_segments(dir, |segments| {
        let mut records = Records(std::mem::take(segments));
        f(&mut records);
        *segments = records.0;
    })
    .unwrap();
    drop(db);
}

/// The stored event records, one by one, whatever segments hold them (see
/// `muster_store::segment`).
struct Records(BTreeMap<u64, Vec<u8>>);

impl Records {
    /// The key of the segment holding `seq` and its records.
    fn segment(&self, seq: u64) -> (u64, Vec<Vec<u8>>) {
        let (k, v) = self.0.range(..=seq).next_back().unwrap();
        (*k, split_segment(v).unwrap())
    }

    fn get(&self, seq: u64) -> Vec<u8> {
        let (k, records) = self.segment(seq);
        records[(seq - k) as usize].clone()
    }

    fn set(&mut self, seq: u64, record: Vec<u8>) {
        let (k, mut records) = self.segment(seq);
        records[(seq - k) as usize] = record;
        self.0.insert(k, join_segment(&records).unwrap());
    }

    fn remove(&mut self, seq: u64) {
        let (k, mut records) = self.segment(seq);
        records.remove((seq - k) as usize);
        if records.is_empty() {
            self.0.remove(&k);
        } else {
            self.0.insert(k, join_segment(&records).unwrap());
        }
    }
}

fn first_bad(dir: &Path) -> Option<u64> {
    let v = AuditLog::open(dir).unwrap().verify().unwrap();
    v.failure.map(|b| b.seq)
}

#[tokio::test]
async fn an_intact_log_verifies_and_replays_to_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let (snap_seq, last) = build(dir.path()).await;
    let (want_state, want_events) = expected(&workload());
    assert_eq!(last, want_events.len() as u64);

    let audit = AuditLog::open(dir.path()).unwrap();
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    assert_eq!(v.checked, last);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains(&format!("stored snapshot at seq {snap_seq}"))),
        "{:?}",
        v.notes
    );

    let full = audit.replay(ReplayTo::End).unwrap();
    assert_eq!(full.state, want_state);
    assert_eq!(full.last_seq, last);

    let part = audit.replay(ReplayTo::Seq(10)).unwrap();
    assert_eq!(part.state, State::replay(&want_events[..10]));
    let t = want_events[20].at();
    let by_time = audit.replay(ReplayTo::Time(t)).unwrap();
    let n = want_events.iter().take_while(|e| e.at() <= t).count();
    assert_eq!(by_time.state, State::replay(&want_events[..n]));
    assert_eq!(by_time.last_seq, n as u64);

    let exported: Vec<_> = audit
        .events(1, u64::MAX)
        .unwrap()
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(exported, want_events);
}

#[tokio::test]
async fn a_flipped_byte_fails_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (snap_seq, last) = build(dir.path()).await;
    for seq in [1, last / 2, last] {
        let mut original = Vec::new();
        tamper(dir.path(), |events| {
            original = events.get(seq);
            let mut bytes = original.clone();
            // A byte inside the event (past the seq field and the event's length).
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            events.set(seq, bytes);
        });
        assert_eq!(first_bad(dir.path()), Some(seq));
        // The server refuses to start on a damaged tail too (events the snapshot covers are
        // not read at start).
        if seq > snap_seq {
            assert!(matches!(
                muster_store::Store::open(dir.path()),
                Err(StoreError::Corrupt { .. })
            ));
        }
        tamper(dir.path(), |events| {
            events.set(seq, original);
        });
        assert_eq!(first_bad(dir.path()), None);
    }
}

#[tokio::test]
async fn a_deleted_event_fails_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (_, last) = build(dir.path()).await;
    tamper(dir.path(), |events| {
        events.remove(7);
    });
    assert_eq!(first_bad(dir.path()), Some(7));

    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await;
    tamper(dir.path(), |events| {
        events.remove(last);
    });
    assert_eq!(first_bad(dir.path()), Some(last));
}

#[tokio::test]
async fn a_record_stored_twice_fails_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await;
    // The first command's segment holds seqs 1..=20; a second copy of seq 3 under its own key.
    tamper(dir.path(), |events| {
        let three = events.get(3);
        events.0.insert(3, three);
    });
    let v = AuditLog::open(dir.path()).unwrap().verify().unwrap();
    let failure = v.failure.unwrap();
    assert_eq!(failure.seq, 3);
    assert!(failure.reason.contains("stored twice"), "{failure:?}");
}

#[tokio::test]
async fn swapped_events_fail_at_the_first_of_them() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await;
    tamper(dir.path(), |events| {
        let (a, b) = (events.get(5), events.get(9));
        events.set(5, b);
        events.set(9, a);
    });
    assert_eq!(first_bad(dir.path()), Some(5));
}

#[tokio::test]
async fn a_replica_seeded_by_a_snapshot_continues_the_chain() {
    let cmds = workload();
    let last = cmds.len() - 1;
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Node::open(leader_dir.path()).await;
    for c in &cmds[..last] {
        leader.propose(c.clone()).await;
    }
    let snap = leader.sm.build_snapshot().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Node::open(dir.path()).await;
    follower.propose(register(0, 2, 0)).await;
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    *buf = *snap.snapshot;
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    follower.next_index = last as u64 + 1;
    let who = Principal::Token("ops-1".into());
    follower.propose_as(cmds[last].clone(), who.clone()).await;
    leader.propose_as(cmds[last].clone(), who.clone()).await;
    assert_eq!(
        follower.sm.reader().chain_head(),
        leader.sm.reader().chain_head()
    );
    // The replica holds the principal of what it applied after the snapshot.
    let after = {
        let reader = follower.sm.reader();
        reader
            .read_records(reader.first_seq_available(), usize::MAX)
            .unwrap()
    };
    assert!(!after.is_empty());
    assert!(after.iter().all(|r| r.principal == who), "{after:?}");
    drop((leader, follower));

    let v = AuditLog::open(dir.path()).unwrap().verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    let v = AuditLog::open(leader_dir.path()).unwrap().verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    let (want_state, _) = expected(&cmds);
    let replayed = AuditLog::open(dir.path())
        .unwrap()
        .replay(ReplayTo::End)
        .unwrap();
    assert_eq!(replayed.state, want_state);
}

#[tokio::test]
async fn a_directory_in_use_or_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    assert!(matches!(
        AuditLog::open(dir.path()),
        Err(StoreError::InUse(_))
    ));
    drop(node);
    assert!(AuditLog::open(dir.path()).is_ok());

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        AuditLog::open(empty.path()),
        Err(StoreError::NotADataDir(_))
    ));
    assert!(matches!(
        AuditLog::open(&empty.path().join("nothing")),
        Err(StoreError::NotADataDir(_))
    ));
}

/// The workload with every fourth command written on behalf of someone (the rest `system`):
/// each event is stored with its command's principal, read back by every reader, and survives a
/// restart; returns the seqs by principal.
async fn build_with_principals(dir: &Path) -> Vec<(u64, Principal)> {
    let who = |i: usize| match i % 4 {
        0 => Principal::Policy("iothubowner".into()),
        1 => Principal::Token("ops-1".into()),
        2 => Principal::Certificate("CN=ops, O=x".into()),
        _ => Principal::System,
    };
    let mut node = Node::open(dir).await;
    let mut want = Vec::new();
    for (i, c) in workload().into_iter().enumerate() {
        let principal = if i % 2 == 0 {
            who(i / 2)
        } else {
            Principal::System
        };
        let before = node.sm.reader().last_seq();
        node.propose_as(c, principal.clone()).await.result.unwrap();
        let after = node.sm.reader().last_seq();
        want.extend((before + 1..=after).map(|seq| (seq, principal.clone())));
    }
    let read: Vec<(u64, Principal)> = node
        .sm
        .reader()
        .read_records(1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.principal))
        .collect();
    assert_eq!(read, want);
    drop(node);
    want
}

#[tokio::test]
async fn principals_are_stored_chained_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let want = build_with_principals(dir.path()).await;
    assert!(want.iter().any(|(_, p)| *p == Principal::System));
    assert!(want.iter().any(|(_, p)| *p != Principal::System));

    // After a restart (the chain is re-checked on open) every event still has its principal.
    let node = Node::open(dir.path()).await;
    let read: Vec<(u64, Principal)> = node
        .sm
        .reader()
        .read_records(1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.principal))
        .collect();
    assert_eq!(read, want);
    drop(node);

    let audit = AuditLog::open(dir.path()).unwrap();
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    assert_eq!(v.checked, want.len() as u64);
    // The export names each event's principal, and replays with the chain checked.
    let mut jsonl = Vec::new();
    audit
        .export(&ExportFilter::default(), ExportFormat::Jsonl, &mut jsonl)
        .unwrap();
    let shown: Vec<String> = String::from_utf8(jsonl.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["principal"].as_str().unwrap().to_string()
        })
        .collect();
    let expected: Vec<String> = want.iter().map(|(_, p)| p.to_string()).collect();
    assert_eq!(shown, expected);
    let replayed = muster_store::audit::replay_export(&jsonl[..], ReplayTo::End).unwrap();
    assert_eq!(replayed.hashes_checked, want.len() as u64);
    assert_eq!(replayed.chain_head, Some(audit.info().unwrap().chain_head));
    let mut csv = Vec::new();
    audit
        .export(&ExportFilter::default(), ExportFormat::Csv, &mut csv)
        .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("seq,time,type,job,device,principal,body\n"));
    assert!(csv.contains(",policy:iothubowner,"), "{csv:.1000}");
    assert!(csv.contains(",\"cert:CN=ops, O=x\","), "{csv:.1000}");
}

#[tokio::test]
async fn a_changed_principal_breaks_the_chain_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let want = build_with_principals(dir.path()).await;
    let named = want
        .iter()
        .find(|(_, p)| *p != Principal::System)
        .unwrap()
        .0;
    let system = want
        .iter()
        .rev()
        .find(|(_, p)| *p == Principal::System)
        .unwrap()
        .0;
    // Another principal, none at all, one added to a `system` event, and one that is no
    // principal's text: each is caught at its seq, by `verify` and by the server's start.
    for (seq, text) in [
        (named, "anonymous"),
        (named, ""),
        (system, "policy:iothubowner"),
        (named, "root"),
        (system, "system"),
    ] {
        let mut original = Vec::new();
        tamper(dir.path(), |events| {
            original = events.get(seq);
            let mut record = EventRecordBytes::decode(&original).unwrap();
            record.principal = text.into();
            events.set(seq, record.encode_to_vec());
        });
        assert_eq!(first_bad(dir.path()), Some(seq), "{text:?} at {seq}");
        assert!(matches!(
            muster_store::Store::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        tamper(dir.path(), |events| events.set(seq, original));
        assert_eq!(first_bad(dir.path()), None);
    }
}

/// A log whose commands all came from `system` (as every log written before principals existed)
/// stores no principal at all: its records are the old bytes, and it verifies and exports as
/// `system`.
#[tokio::test]
async fn a_log_without_principals_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (_, last) = build(dir.path()).await;
    tamper(dir.path(), |events| {
        for seq in 1..=last {
            let record = EventRecordBytes::decode(&events.get(seq)).unwrap();
            assert_eq!(record.principal, "", "seq {seq}");
        }
    });
    let audit = AuditLog::open(dir.path()).unwrap();
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    assert_eq!(v.checked, last);
    let records: Vec<_> = audit.records(1, u64::MAX).unwrap().collect();
    assert_eq!(records.len() as u64, last);
    assert!(records
        .into_iter()
        .all(|r| r.unwrap().principal == Principal::System));
}
