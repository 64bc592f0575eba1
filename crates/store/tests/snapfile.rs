//! The snapshot file format (`muster_store::snapfile`): golden bytes, round trips, carried trees,
//! and damaged files as errors.
//!
//! `tests/golden/snapshot_v5.hex` holds the bytes of the workload's state at format 5
//! (`snapshot_v3.hex` and `snapshot_v4.hex` those of formats 3 and 4, which must still read into
//! the same state). If the
//! test fails on the bytes, a record's encoding changed: if files of this format can no longer
//! be read (a field renamed or retyped, a field added without `#[serde(default)]`), bump
//! `snapfile::FORMAT` and keep a reader for the old one; if the change is compatible (a field
//! added with a default), delete the file and run
//! `MUSTER_UPDATE_GOLDEN=1 cargo test -p muster-store --test snapfile` to regenerate it. The
//! stored bytes must always decode (the first check).

// Helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{expected, workload};
use muster_domain::State;
use muster_store::chain::GENESIS;
use muster_store::snapfile::{read_snapshot, write_snapshot, Carried, SnapshotHeader, MAGIC};
use muster_store::{LogId, StoredMembership};
use openraft::CommittedLeaderId;

fn header(last_seq: u64) -> SnapshotHeader {
    SnapshotHeader {
        last_applied: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
        membership: StoredMembership::default(),
        last_seq,
        chain_head: [7; 32],
    }
}

fn encode(state: &State, trees: &[Carried<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = write_snapshot(&mut out, &header(99), state, trees).unwrap();
    assert_eq!(
        n,
        out.len() as u64,
        "the size it reports is the size it wrote"
    );
    out
}

fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, State), muster_store::StoreError> {
    let carried = muster_store::snapfile::CARRIED_TREES;
    read_snapshot(bytes, carried, |_| Ok(()), |_, _, _| Ok(()))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(32) {
        for b in chunk {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A golden file of an older format still reads into the workload's state.
fn older_format_reads(file: &str) {
    let (state, _) = expected(&workload());
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    let golden = from_hex(&std::fs::read_to_string(&path).unwrap());
    let (h, decoded) = decode(&golden).unwrap();
    assert_eq!(h, header(99));
    assert_eq!(decoded, state);
}

#[test]
fn format_3_files_still_read() {
    older_format_reads("snapshot_v3.hex");
}

/// Format 4 kept each run's rows inside its job's record.
#[test]
fn format_4_files_still_read() {
    older_format_reads("snapshot_v4.hex");
}

#[test]
fn golden_bytes_of_format_5() {
    let (state, _) = expected(&workload());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/snapshot_v5.hex");
    if !path.exists() && std::env::var("MUSTER_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, to_hex(&encode(&state, &[]))).unwrap();
    }
    let golden = from_hex(&std::fs::read_to_string(&path).unwrap());
    // Files written at this format stay readable: the promise.
    let (h, decoded) = decode(&golden).unwrap();
    assert_eq!(h, header(99));
    assert_eq!(decoded, state);
    // And this release writes exactly those bytes (see the module docs when this fails).
    assert!(
        encode(&state, &[]) == golden,
        "the encoding of the snapshot changed; see tests/snapfile.rs"
    );
}

/// A run larger than a frame's worth of rows is written in several frames (no frame holds the
/// whole run) and reads back whole, in order.
#[test]
fn a_large_run_travels_in_slices() {
    use muster_domain::job::DeviceRun;
    use muster_store::snapfile::ROWS_PER_FRAME;
    let (mut state, _) = expected(&workload());
    let extra = 2 * ROWS_PER_FRAME + 17;
    let mut grown = false;
    state.jobs.for_each_mut(|_, j| {
        if grown {
            return;
        }
        let run = j.runs.last_mut().unwrap();
        if let Some(first) = run.devices.get(0).cloned() {
            for i in 0..extra {
                let mut row: DeviceRun = first.clone();
                row.attempts = i as u32;
                run.devices.push(row);
            }
            grown = true;
        }
    });
    assert!(grown, "the workload has a job with rows");
    let bytes = encode(&state, &[]);
    let (_, decoded) = decode(&bytes).unwrap();
    assert_eq!(decoded, state);
    // The grown run's rows came in three frames of rows (tag 10), none near the whole file.
    let (mut at, mut largest, mut rows_frames) = (12, 0, 0);
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        if bytes[at] == 10 {
            rows_frames += 1;
        }
        largest = largest.max(len);
        at += 9 + len;
    }
    assert!(rows_frames >= 3, "{rows_frames} frames of rows");
    assert!(
        largest < bytes.len() / 2,
        "a frame of {largest} of {} bytes",
        bytes.len()
    );
}

#[test]
fn a_state_round_trips_and_starts_with_the_magic() {
    let (state, _) = expected(&workload());
    let bytes = encode(&state, &[]);
    assert_eq!(&bytes[..8], MAGIC);
    let (h, decoded) = decode(&bytes).unwrap();
    assert_eq!(h, header(99));
    assert_eq!(decoded, state);
    let empty = encode(&State::default(), &[]);
    assert_eq!(decode(&empty).unwrap().1, State::default());
    let mut h0 = header(0);
    h0.chain_head = GENESIS;
    let mut out = Vec::new();
    write_snapshot(&mut out, &h0, &State::default(), &[]).unwrap();
    assert_eq!(decode(&out).unwrap().0, h0);
}

/// A job's window mark (`Job::window`, issue 16's window events) travels in the job record; a
/// job without one writes nothing for it, so older files and the golden bytes stay as they are.
#[test]
fn window_marks_round_trip() {
    use muster_domain::window::WindowMark;
    use muster_types::Timestamp;
    let (mut state, _) = expected(&workload());
    let marks = [
        WindowMark::Open {
            since: Timestamp(1_000),
            until: Timestamp(5_000),
        },
        WindowMark::Closed {
            next_open: Some(Timestamp(9_000)),
        },
        WindowMark::Closed { next_open: None },
    ];
    let mut marks = marks.into_iter();
    let mut marked = 0;
    state.jobs.for_each_mut(|_, j| {
        if let Some(m) = marks.next() {
            j.window = Some(m);
            marked += 1;
        }
    });
    assert!(marked >= 2, "the workload has jobs to mark");
    let (_, decoded) = decode(&encode(&state, &[])).unwrap();
    assert_eq!(decoded, state);
}

#[test]
fn carried_trees_travel_with_the_state() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let cold = db.open_tree("cold").unwrap();
    for i in 0u32..1000 {
        cold.insert(i.to_be_bytes(), format!("row {i}").as_bytes())
            .unwrap();
    }
    let index = db.open_tree("index").unwrap();
    index.insert(b"", b"empty key").unwrap();
    let (state, _) = expected(&workload());
    let bytes = encode(
        &state,
        &[Carried::Tree("cold", &cold), Carried::Tree("index", &index)],
    );

    let mut got: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut trees = Vec::new();
    let (_, decoded) = read_snapshot(
        bytes.as_slice(),
        &["cold", "index"],
        |name| {
            trees.push(name.to_string());
            Ok(())
        },
        |name, k, v| {
            got.push((name.to_string(), k.to_vec(), v.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(decoded, state);
    assert_eq!(trees, ["cold", "index"]);
    let want: Vec<(String, Vec<u8>, Vec<u8>)> = cold
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| ("cold".to_string(), k.to_vec(), v.to_vec()))
        .chain([("index".to_string(), Vec::new(), b"empty key".to_vec())])
        .collect();
    assert_eq!(got, want);
    // A reader that does not know a tree refuses the file rather than dropping it.
    assert!(read_snapshot(bytes.as_slice(), &["cold"], |_| Ok(()), |_, _, _| Ok(())).is_err());
}

/// Creates job `id` on devices 0..`n` at `ms`, dispatches the first `sent` of them and cancels
/// it: its run's rows go cold.
async fn finished_job(node: &mut common::Node, id: &str, n: usize, sent: usize, ms: i64) {
    use muster_domain::Command;
    let id = muster_types::JobId::new(id).unwrap();
    let cmds = [
        common::create_job(id.as_str(), n, ms),
        Command::Advance { at: common::at(ms) },
        Command::MarkDispatched {
            job: id.clone(),
            run: muster_types::RunId(0),
            devices: (0..sent).map(common::device).collect(),
            at: common::at(ms),
        },
        Command::CancelJob {
            id,
            at: common::at(ms + 1),
        },
    ];
    for c in cmds {
        node.propose(c).await.into_result().unwrap();
    }
}

/// The run files of the data directory `dir`, by name.
fn run_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("cold"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// A node in `dir` with 700 devices and two finished jobs (`a` on all of them, none sent;
/// `b` on 300, 100 sent): two runs' rows in run files.
async fn with_finished_jobs(dir: &std::path::Path) -> common::Node {
    let mut node = common::Node::open(dir).await;
    node.propose(common::register(0, 700, 0)).await;
    finished_job(&mut node, "a", 700, 0, 10).await;
    finished_job(&mut node, "b", 300, 100, 500).await;
    node
}

/// A snapshot's cold section is the leader's run files copied as they are; a follower that
/// installs it holds the same files byte for byte and the same rows, and still does after a
/// restart (which passes over the section unread).
#[tokio::test]
async fn an_install_writes_the_run_files_the_build_copied_byte_for_byte() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = with_finished_jobs(leader_dir.path()).await;
    finished_job(&mut leader, "a-2", 600, 600, 700).await;
    let snap = leader.sm.build_snapshot().await.unwrap();
    let want = common::full_state(&leader.sm.reader());
    let files = run_files(leader_dir.path());
    assert_eq!(
        files.len(),
        3,
        "one file per finished run: {:?}",
        files.keys()
    );

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = common::Node::open(follower_dir.path()).await;
    let mut buf = follower.sm.begin_receiving_snapshot().await.unwrap();
    *buf = *snap.snapshot;
    follower.sm.install_snapshot(&snap.meta, buf).await.unwrap();
    assert!(
        run_files(follower_dir.path()) == files,
        "the same run files"
    );
    assert_eq!(common::full_state(&follower.sm.reader()), want);
    drop(follower);
    let follower = common::Node::open(follower_dir.path()).await;
    assert_eq!(common::full_state(&follower.sm.reader()), want);
    assert!(run_files(follower_dir.path()) == files);
}

/// A data directory of an older release kept the cold rows in sled's `cold_rows` tree: `open`
/// moves them into run files once, and they read as before.
#[tokio::test]
async fn an_older_release_cold_tree_moves_into_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let node = with_finished_jobs(dir.path()).await;
    let want = common::full_state(&node.sm.reader());
    drop(node);
    // Put the rows back where an older release kept them.
    let files = run_files(dir.path());
    {
        let db = common::open_db(dir.path());
        let tree = db.open_tree("cold_rows").unwrap();
        let mut state = State::default();
        let header = header(0);
        let mut bytes = Vec::new();
        let rows = muster_store::ColdRows::open_dir(&dir.path().join("cold")).unwrap();
        write_snapshot(&mut bytes, &header, &state, &[Carried::Cold(&rows)]).unwrap();
        (_, state) = read_snapshot(
            bytes.as_slice(),
            &["cold_rows"],
            |_| Ok(()),
            |_, k, v| {
                tree.insert(k, v).unwrap();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(state, State::default());
        db.flush().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("cold")).unwrap();
    let node = common::Node::open(dir.path()).await;
    assert_eq!(common::full_state(&node.sm.reader()), want);
    assert!(
        run_files(dir.path()) == files,
        "the same files as written live"
    );
    drop(node);
    let db = common::open_db(dir.path());
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"cold_rows"),
        "the tree is gone"
    );
}

#[test]
fn damaged_or_truncated_files_are_errors_not_states() {
    let (state, _) = expected(&workload());
    let bytes = encode(&state, &[]);
    // Every truncation fails (the end frame is missing or cut).
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(decode(&bytes[..len]).is_err(), "truncated to {len} bytes");
    }
    // A flipped bit anywhere fails (magic, format, a frame header or a checksummed payload).
    for at in (0..bytes.len()).step_by(89) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        assert!(decode(&bad).is_err(), "bit flipped at {at}");
    }
    // Trailing bytes after the end frame fail too.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer).is_err());
    // Another format version is named in the error.
    let mut other = bytes;
    other[11] = 2;
    let e = decode(&other).unwrap_err().to_string();
    assert!(e.contains("format 2"), "{e}");
}

/// A restart decodes the newest snapshot file while sled opens; when that file is not the one
/// the store names current (a damaged stray here), it reads the current one instead.
#[tokio::test]
async fn a_restart_reads_the_current_snapshot_file_whatever_is_newest() {
    use openraft::storage::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::Node::open(dir.path()).await;
    node.propose(common::register(0, 300, 0)).await;
    finished_job(&mut node, "a", 300, 100, 10).await;
    node.sm.build_snapshot().await.unwrap();
    node.propose(common::register(300, 5, 20)).await;
    let want = common::full_state(&node.sm.reader());
    drop(node);
    let node = common::Node::open(dir.path()).await;
    assert_eq!(common::full_state(&node.sm.reader()), want);
    drop(node);

    // A stray file, newer than the current one: the read ahead takes it, `open` must not.
    let stray = dir.path().join("snapshots").join("zz-stray.snap");
    std::fs::write(&stray, b"not a snapshot").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let node = common::Node::open(dir.path()).await;
    assert_eq!(common::full_state(&node.sm.reader()), want);
}
