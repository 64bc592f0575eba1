#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Fuzz targets for what the store decodes from outside its own process: the Raft wire frames a
//! peer sends (`wire::decode_entries`) and the event segments and records read from disk
//! (`segment::split_segment`, `muster_proto::record_seq_and_event`). Random bytes rarely get past
//! the first length, so most cases start from real encodings and damage them (change, cut,
//! insert bytes). Each input must give a value or an error, never a panic.
//!
//! CI runs proptest's default number of cases; a longer run is `PROPTEST_CASES=200000 cargo test
//! -p muster-store --test fuzz --release`.

mod common;

use common::{create_job, entry, register, workload};
use muster_store::segment::{join_segment, split_segment};
use muster_store::wire::{decode_entries, encode_entries};
use proptest::prelude::*;

/// Real frames: single entries and batches of the test workload's commands.
fn frames() -> Vec<Vec<u8>> {
    let cmds = workload();
    let mut out = vec![
        encode_entries(&[]).unwrap(),
        encode_entries(&[entry(1, register(0, 3, 1))]).unwrap(),
        encode_entries(&[entry(7, create_job("j", 3, 2))]).unwrap(),
    ];
    let entries: Vec<_> = cmds
        .iter()
        .take(6)
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c.clone()))
        .collect();
    out.push(encode_entries(&entries).unwrap());
    out
}

/// Real segments: records of encoded events, one and several to a segment.
fn segments() -> Vec<Vec<u8>> {
    let (_, events) = common::expected(&workload());
    let records: Vec<Vec<u8>> = events
        .iter()
        .take(12)
        .enumerate()
        .map(|(i, e)| {
            muster_proto::EventRecordBytes {
                seq: i as u64 + 1,
                event: muster_proto::encode_event(e),
                hash: vec![7; 32],
                principal: if i % 2 == 0 {
                    String::new()
                } else {
                    "policy:ops".into()
                },
            }
            .encode_to_vec()
        })
        .collect();
    vec![
        join_segment(&records[..1]).unwrap(),
        join_segment(&records).unwrap(),
        records[0].clone(),
    ]
}

fn damage(mut bytes: Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
    for (at, byte, op) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let i = at.index(bytes.len());
        match op {
            0 => bytes[i] = byte,
            1 => bytes.truncate(i),
            2 => bytes.insert(i, byte),
            _ => {
                // A length field overwritten with a huge value.
                let end = (i + 4).min(bytes.len());
                bytes[i..end].fill(0xff);
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8)
}

#[test]
fn real_frames_and_segments_decode() {
    for f in frames() {
        decode_entries(&f).unwrap();
    }
    for s in segments() {
        for record in split_segment(&s).unwrap() {
            let (_, event) = muster_proto::record_seq_and_event(&record).unwrap();
            muster_proto::decode_event(&event).unwrap();
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_entries(&bytes);
        let _ = split_segment(&bytes);
        let _ = muster_proto::record_seq_and_event(&bytes);
    }

    #[test]
    fn damaged_frames_never_panic(sample in any::<prop::sample::Index>(), edits in edits()) {
        let frames = frames();
        let bytes = damage(frames[sample.index(frames.len())].clone(), edits);
        if let Ok(entries) = decode_entries(&bytes) {
            // What decodes must encode again: nothing half-read gets through.
            encode_entries(&entries).unwrap();
        }
    }

    #[test]
    fn damaged_segments_never_panic(sample in any::<prop::sample::Index>(), edits in edits()) {
        let segments = segments();
        let bytes = damage(segments[sample.index(segments.len())].clone(), edits);
        if let Ok(records) = split_segment(&bytes) {
            for r in records {
                if let Ok((_, event)) = muster_proto::record_seq_and_event(&r) {
                    let _ = muster_proto::decode_event(&event);
                }
            }
        }
    }
}
