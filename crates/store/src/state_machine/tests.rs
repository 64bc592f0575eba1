#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_domain::{Command, DeviceRegistration};
use muster_types::{DeviceId, Timestamp};
use openraft::{CommittedLeaderId, EntryPayload};
use serde_json::json;

use super::apply::{apply_entries, EVENT_CHUNK};
use super::snapshot::{build_snapshot, install_snapshot};
use super::*;
use crate::chain::chain_hash;
use crate::codec::{decode_record, encode_record, to_json, u64_key};
use crate::segment::{raw_records, SEGMENT_MAX};
use crate::tmpfs::Tmpfs;
use crate::types::Request;

fn open() -> StateMachine {
    let db = sled::Config::new().temporary(true).open().unwrap();
    open_db(&db, &tempfile::tempdir().unwrap().keep())
}

/// The state machine over `db`, with its files (events, snapshots, cold rows) in `dir`.
fn open_db(db: &sled::Db, dir: &std::path::Path) -> StateMachine {
    StateMachine::open(db, GroupFlusher::open(db, dir).unwrap(), dir).unwrap()
}

/// Registers `n` devices from `from` on: one command, `n` events.
fn register(from: usize, n: usize) -> Command {
    Command::RegisterDevices {
        devices: (from..from + n)
            .map(|i| DeviceRegistration {
                id: DeviceId::new(format!("d{i:03}")).unwrap(),
                display_name: format!("Device {i}"),
                model_id: None,
                enabled: true,
                tags: json!({"floor": i % 3}).into(),
            })
            .collect(),
        upsert: false,
        at: Timestamp(1_700_000_000_000 + from as i64),
    }
}

/// Applies one entry per command, with log indexes from `index` on.
fn apply(sm: &StateMachine, index: u64, cmds: Vec<Command>) {
    let entries = (index..)
        .zip(cmds)
        .map(|(i, command)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Request::from(command)),
        })
        .collect();
    for r in apply_entries(&sm.shared, entries).unwrap() {
        r.result.unwrap();
    }
}

/// The chain recomputed from the raw stored bytes, from `prev` (the link before `from`).
fn recomputed(sm: &StateMachine, from: u64, mut prev: Hash) -> Vec<(u64, Hash)> {
    raw_records(&sm.shared.events, from, u64::MAX)
        .map(|r| {
            let r = r.unwrap();
            let record = decode_record(r.bytes()).unwrap();
            assert_eq!(record.seq, r.seq);
            prev = chain_hash(&prev, r.seq, &record.principal, &record.event);
            (r.seq, prev)
        })
        .collect()
}

fn links(records: &[StoredEvent]) -> Vec<(u64, Hash)> {
    records.iter().map(|r| (r.seq, r.hash)).collect()
}

/// An apply of more events than one chunk writes them through the writer thread: every
/// one is stored, in order, with the same chain as when written in one batch.
#[test]
fn large_applies_store_every_event_on_the_chain() {
    let sm = open();
    let reader = sm.reader();
    let n = 3 * EVENT_CHUNK + 7;
    apply(&sm, 1, vec![register(0, n), register(n, 2 * EVENT_CHUNK)]);

    let all = reader.read_records(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 5 * EVENT_CHUNK + 7);
    assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
    assert_eq!(
        reader.chain_head(),
        (all.len() as u64, all[all.len() - 1].hash)
    );
    assert!(all.iter().zip(1..).all(|(r, seq)| r.seq == seq));
    // Segments of at most SEGMENT_MAX records, never shared by two commands.
    let keys: Vec<u64> = sm
        .shared
        .events
        .all_from(0)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let second = n as u64 + 1;
    let m = SEGMENT_MAX as u64;
    assert_eq!(
        keys,
        vec![1, 1 + m, 1 + 2 * m, 1 + 3 * m, second, second + m]
    );
}

/// Records past `last_seq` (an apply that stopped before its metadata, cut into other
/// segments than the re-apply will cut them) are gone after a restart, and the re-apply's
/// segments are the only ones readers see.
#[test]
fn restart_deletes_records_past_the_applied_seq() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sm = open_db(&db, dir.path());
    apply(&sm, 1, vec![register(0, 5)]);
    let last = sm.reader().last_seq();
    let junk = |seq: u64| {
        let (record, _) = encode_record(seq, &register_event(), "", &GENESIS);
        record
    };
    let pair = crate::segment::join_segment(&[junk(last + 3), junk(last + 4)]).unwrap();
    sm.shared
        .events
        .append(&[(last + 1, &junk(last + 1)), (last + 3, &pair)])
        .unwrap();
    drop(sm);

    let sm = open_db(&db, dir.path());
    let kept = sm.shared.events.all_from(0).unwrap();
    assert!(kept.iter().all(|(k, _)| *k <= last), "nothing after {last}");
    apply(&sm, 2, vec![register(5, 3)]);
    let all = sm.reader().read_records(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 8);
    assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
}

#[test]
fn records_carry_the_chain_from_any_seq() {
    let sm = open();
    let reader = sm.reader();
    apply(&sm, 1, vec![register(0, 3), register(3, 4), register(7, 2)]);

    let all = reader.read_records(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 9);
    assert_eq!(links(&all), recomputed(&sm, 1, GENESIS));
    assert_eq!(reader.chain_head(), (9, all[8].hash));
    // The events are the ones read_events returns.
    let events: Vec<(u64, Event)> = all.iter().map(|r| (r.seq, r.event.clone())).collect();
    assert_eq!(reader.read_events(1, usize::MAX).unwrap(), events);

    // Starting late reads only from there, with the same links; limits hold.
    let tail = reader.read_records(6, 2).unwrap();
    assert_eq!(tail, all[5..7].to_vec());
    assert_eq!(reader.read_records(0, 1).unwrap(), all[..1].to_vec());
    assert!(reader.read_records(10, 5).unwrap().is_empty());
}

#[test]
fn the_live_feed_carries_the_stored_links() {
    let sm = open();
    let reader = sm.reader();
    let mut updates = reader.subscribe();
    apply(&sm, 1, vec![register(0, 2), register(2, 3)]);

    let mut live = Vec::new();
    while let Ok(StateUpdate::Events(applied)) = updates.try_recv() {
        assert_eq!(applied.hashes.len(), applied.events.len());
        live.extend(applied.records().map(|(seq, event, hash)| StoredEvent {
            seq,
            event: event.clone(),
            hash: *hash,
            principal: applied.principal.clone(),
        }));
    }
    assert_eq!(live, reader.read_records(1, usize::MAX).unwrap());
    assert_eq!(links(&live), recomputed(&sm, 1, GENESIS));
}

#[test]
fn a_replica_seeded_from_a_snapshot_holds_the_links_after_it() {
    let leader = open();
    apply(&leader, 1, vec![register(0, 3), register(3, 2)]);
    let snapshot = build_snapshot(&leader.shared).unwrap();
    let (snap_seq, snap_head) = leader.reader().chain_head();
    assert_eq!(snap_seq, 5);

    let follower = open();
    install_snapshot(
        &follower.shared,
        &snapshot.meta,
        snapshot.snapshot.try_into_std().unwrap(),
    )
    .unwrap();
    let mut updates = follower.reader().subscribe();
    apply(&leader, 3, vec![register(5, 2), register(7, 3)]);
    apply(&follower, 3, vec![register(5, 2), register(7, 3)]);

    let reader = follower.reader();
    assert_eq!(reader.first_seq_available(), 6);
    let held = reader.read_records(1, usize::MAX).unwrap();
    assert_eq!(held.first().map(|r| r.seq), Some(6));
    // The same links as the leader's, continuing the chain from the snapshot's head.
    assert_eq!(links(&held), recomputed(&follower, 6, snap_head));
    assert_eq!(held, leader.reader().read_records(6, usize::MAX).unwrap());

    let mut live = Vec::new();
    while let Ok(update) = updates.try_recv() {
        if let StateUpdate::Events(applied) = update {
            live.extend(applied.records().map(|(seq, _, hash)| (seq, *hash)));
        }
    }
    assert_eq!(live, links(&held));
}

#[test]
fn a_record_with_a_bad_hash_length_is_an_error() {
    let (bytes, _) = encode_record(4, &register_event(), "", &GENESIS);
    let mut record = decode_record(&bytes).unwrap();
    assert_eq!(decode_stored(4, &bytes).unwrap().seq, 4);
    assert!(decode_stored(5, &bytes).is_err());
    record.hash.pop();
    assert!(decode_stored(4, &record.encode_to_vec()).is_err());
}

fn register_event() -> Event {
    let mut state = State::default();
    state.execute(&register(0, 1)).unwrap().remove(0)
}

/// The snapshot files in a state machine's folder.
fn snapshot_files(sm: &StateMachine) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&sm.shared.snapshot_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Only the current snapshot's file is kept, whether built here or installed from a leader,
/// and nothing is left half-written.
#[test]
fn only_the_current_snapshot_file_is_kept() {
    let leader = open();
    apply(&leader, 1, vec![register(0, 3)]);
    build_snapshot(&leader.shared).unwrap();
    apply(&leader, 2, vec![register(3, 2)]);
    let snapshot = build_snapshot(&leader.shared).unwrap();
    let file = format!("{}.snap", snapshot.meta.snapshot_id);
    assert!(file.starts_with("1-1-2-2-"), "{file}");
    assert_eq!(snapshot_files(&leader), [file.as_str()]);

    let follower = open();
    apply(&follower, 1, vec![register(0, 3)]);
    build_snapshot(&follower.shared).unwrap();
    install_snapshot(
        &follower.shared,
        &snapshot.meta,
        snapshot.snapshot.try_into_std().unwrap(),
    )
    .unwrap();
    assert_eq!(snapshot_files(&follower), [file.as_str()]);
    assert_eq!(
        follower.reader().read(|s| s.clone()),
        leader.reader().read(|s| s.clone())
    );
}

/// Two members that snapshot the same log with the same count of builds give their files
/// different ids, so a follower's chunked transfer cannot continue one member's file with
/// another's.
#[test]
fn two_members_snapshots_of_the_same_log_have_different_ids() {
    let a = open();
    let b = open();
    for sm in [&a, &b] {
        apply(sm, 1, vec![register(0, 3)]);
    }
    let sa = build_snapshot(&a.shared).unwrap();
    let sb = build_snapshot(&b.shared).unwrap();
    assert_eq!(sa.meta.last_log_id, sb.meta.last_log_id);
    assert_ne!(sa.meta.snapshot_id, sb.meta.snapshot_id);
    // Nor do two builds of one member share one.
    let again = build_snapshot(&a.shared).unwrap();
    assert_ne!(again.meta.snapshot_id, sa.meta.snapshot_id);
}

/// Below the disk reserve a requested snapshot is not written: openraft gets the current one
/// (or, with none yet, one without a log id), which it ignores as not newer (issue 18).
#[test]
fn below_the_disk_reserve_no_snapshot_is_written() {
    let sm = open();
    apply(&sm, 1, vec![register(0, 3)]);
    sm.set_min_free_disk(u64::MAX);
    let skipped = build_snapshot(&sm.shared).unwrap();
    assert_eq!(skipped.meta.last_log_id, None);
    assert!(snapshot_files(&sm).is_empty());

    sm.set_min_free_disk(0);
    let built = build_snapshot(&sm.shared).unwrap();
    assert!(built.meta.last_log_id.is_some());
    let file = format!("{}.snap", built.meta.snapshot_id);
    assert_eq!(snapshot_files(&sm), [file.as_str()]);

    apply(&sm, 2, vec![register(3, 2)]);
    sm.set_min_free_disk(u64::MAX);
    let kept = build_snapshot(&sm.shared).unwrap();
    assert_eq!(kept.meta, built.meta);
    assert_eq!(snapshot_files(&sm), [file.as_str()]);
}

/// The disk filling up while a snapshot is written (after the reserve check passed) is no error
/// that stops Raft: the build keeps what there was, leaves no partial file, and the next build
/// after space returns writes one.
#[test]
fn a_disk_that_fills_during_a_snapshot_build_keeps_the_current_one() {
    let Some(fs) = Tmpfs::mount(1) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let db = sled::Config::new().temporary(true).open().unwrap();
    // The events elsewhere: only the snapshot files meet the full disk.
    let events = tempfile::tempdir().unwrap();
    let flusher = GroupFlusher::open(&db, events.path()).unwrap();
    let sm = StateMachine::open(&db, flusher, &fs.0).unwrap();
    apply(&sm, 1, vec![register(0, 20_000)]);
    let kept = build_snapshot(&sm.shared).unwrap();
    assert_eq!(kept.meta.last_log_id, None);
    assert!(snapshot_files(&sm).is_empty(), "{:?}", snapshot_files(&sm));

    fs.resize(64);
    let built = build_snapshot(&sm.shared).unwrap();
    assert!(built.meta.last_log_id.is_some());
    assert_eq!(snapshot_files(&sm).len(), 1);

    apply(&sm, 2, vec![register(20_000, 20_000)]);
    fs.fill();
    let kept = build_snapshot(&sm.shared).unwrap();
    assert_eq!(kept.meta, built.meta);
    assert_eq!(snapshot_files(&sm).len(), 1);
}

/// A store in the layout before the `applied` record and the snapshot pointer (one key per
/// field, written in sled batches) opens to the same state; `open` rewrites the metadata as the
/// record, and the pointer's older keys still name the snapshot.
#[test]
fn the_layout_before_the_applied_record_still_opens() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let open_here = || open_db(&db, &dir);
    let sm = open_here();
    apply(&sm, 1, vec![register(0, 3)]);
    let snapshot = build_snapshot(&sm.shared).unwrap();
    apply(&sm, 2, vec![register(3, 2)]);
    let reader = sm.reader();
    let (state, head) = (reader.read(|s| s.clone()), reader.chain_head());
    let (record, legacy) = AppliedMeta::read(&sm.shared.meta).unwrap();
    assert!(!legacy);
    let file = snapshot::Pointer::read(&sm.shared.snapshot)
        .unwrap()
        .file
        .unwrap();
    drop((reader, sm));

    let meta = db.open_tree("sm_meta").unwrap();
    meta.remove(meta::APPLIED).unwrap();
    meta.insert("last_applied", to_json(&record.last_applied).unwrap())
        .unwrap();
    meta.insert("membership", to_json(&record.membership).unwrap())
        .unwrap();
    meta.insert("last_seq", &u64_key(record.last_seq)).unwrap();
    meta.insert("first_seq", &u64_key(record.first_seq))
        .unwrap();
    meta.insert("chain_head", &record.chain_head).unwrap();
    let tree = db.open_tree("snapshot").unwrap();
    tree.remove("current").unwrap();
    tree.insert("meta", to_json(&snapshot.meta).unwrap())
        .unwrap();
    tree.insert("file", file.as_bytes()).unwrap();

    let sm = open_here();
    let reader = sm.reader();
    assert_eq!(reader.read(|s| s.clone()), state);
    assert_eq!(reader.chain_head(), head);
    assert_eq!(AppliedMeta::read(&meta).unwrap(), (record, false));
    for key in [
        "last_applied",
        "membership",
        "last_seq",
        "first_seq",
        "chain_head",
    ] {
        assert!(!meta.contains_key(key).unwrap(), "{key} left behind");
    }
    let current = current_snapshot(&sm.shared).unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

/// A data directory of a release that kept the events in the sled tree `events` opens to the
/// same state and records: the tree moves into the event files once and is gone.
#[test]
fn an_events_tree_of_an_older_release_moves_into_files() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sm = open_db(&db, dir.path());
    apply(&sm, 1, vec![register(0, 3), register(3, 2 * EVENT_CHUNK)]);
    build_snapshot(&sm.shared).unwrap();
    apply(&sm, 3, vec![register(600, 4)]);
    let reader = sm.reader();
    let (state, records) = (
        reader.read(|s| s.clone()),
        reader.read_records(1, usize::MAX).unwrap(),
    );
    // The older layout: the same segments in the tree, no event files.
    let tree = db.open_tree("events").unwrap();
    for (k, v) in sm.shared.events.all_from(0).unwrap() {
        tree.insert(u64_key(k), v).unwrap();
    }
    sm.shared.events.clear().unwrap();
    drop((sm, reader, tree));

    let sm = open_db(&db, dir.path());
    assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"events"));
    let reader = sm.reader();
    assert_eq!(reader.read(|s| s.clone()), state);
    assert_eq!(reader.read_records(1, usize::MAX).unwrap(), records);
    drop((sm, reader));
    let sm = open_db(&db, dir.path());
    assert_eq!(sm.reader().read_records(1, usize::MAX).unwrap(), records);
}
