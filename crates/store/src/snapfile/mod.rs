//! The snapshot file format (format 4): binary, versioned, written and read one record at a
//! time, so neither side ever holds the encoded snapshot as one buffer.
//!
//! ```text
//! file   = magic "MUSTSNAP" | format u32 | frame* | end frame
//! frame  = tag u8 | length u32 | crc32 u32 (of tag and payload) | payload
//! ```
//! Integers are big-endian. The first frame is the header (log id, membership, seq and chain
//! head), then the state one record per frame: a device, a group, a job (its runs without their
//! device rows), then that job's rows, [`ROWS_PER_FRAME`] per frame, the credentials, the pending
//! direct methods. Then, for each sled tree in [`CARRIED_TREES`], a
//! tree frame naming it and one frame per key/value. The end frame holds the number of frames
//! before it, so a truncated file is an error rather than a smaller state.
//!
//! The cold section is the run files' entry frames copied as they are (`crate::cold::file`),
//! and a restart passes over it unread: the run files hold the same rows.
//!
//! Records are CBOR (serde): self-describing, so a field added with `#[serde(default)]` still
//! reads older files, and it carries twins (`serde_json::Value`) as they are. A change that
//! older files cannot be read into bumps [`FORMAT`]. The encoder and the decoder destructure
//! `State` and `Registry` without `..`: a new field there fails to compile here until the
//! snapshot carries it.

use std::io::Write;

use muster_domain::job::{DeviceRun, Job};
use muster_domain::registry::Registry;
use muster_domain::{CowMap, CowVec, State};
use muster_types::JobId;
use serde::{Deserialize, Serialize};

use crate::chain::Hash;
use crate::cold::ColdRows;
use crate::error::StoreError;
pub use crate::frame::Skip;
use crate::frame::{split_entry, FrameReader, FrameWriter, TAG_END, TAG_ENTRY};
use crate::types::{LogId, StoredMembership};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"MUSTSNAP";
/// The format this release writes (1 and 2 were serde_json in a sled value; 3 wrote a run's
/// index as a map from device id to position, 4 as the positions alone, each job's rows inside
/// its record; 5 writes the rows in frames of their own).
pub const FORMAT: u32 = 5;
/// The oldest format this release reads: a format-3 index reads as its positions.
pub const OLDEST_READ: u32 = 3;

/// The sled trees a snapshot carries beside the state, by name: trees the apply writes that a
/// replica installed from a snapshot must hold too (cold rows, indexes). The build iterates
/// each tree without a point-in-time view, so it may carry entries the apply wrote after the
/// state was captured; a tree listed here must only ever be written with puts that the
/// re-apply of the same entries repeats exactly, and its readers must bound what they read by
/// the applied seq.
pub const CARRIED_TREES: &[&str] = &[crate::cold::TREE];

const TAG_HEADER: u8 = 1;
const TAG_DEVICE: u8 = 2;
const TAG_GROUP: u8 = 3;
const TAG_JOB: u8 = 4;
const TAG_AUTH: u8 = 5;
const TAG_INVOCATIONS: u8 = 6;
const TAG_TREE: u8 = 7;
/// A scheduled job (absent from files of earlier builds: then none).
const TAG_SCHEDULE: u8 = 9;
/// A slice of one run's device rows, after its job's record (format 5).
const TAG_ROWS: u8 = 10;
const WHAT: &str = "snapshot";

/// Device rows per frame. A run of a million devices in one record was a ~150 MB buffer on
/// each side (encoded while the snapshot is built, decoded while it is installed), beside the
/// state; in frames of this many rows the buffers stay under a megabyte.
pub const ROWS_PER_FRAME: usize = 4096;

/// `count` rows of a run from `start`, serialized as a sequence without collecting them.
struct RowSlice<'a> {
    rows: &'a CowVec<DeviceRun>,
    start: usize,
    count: usize,
}

impl Serialize for RowSlice<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.rows.iter_from(self.start).take(self.count))
    }
}

/// What a snapshot is of: the first frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The seq of the newest event the state includes.
    pub last_seq: u64,
    /// The hash-chain link of event `last_seq` (the genesis hash when it is 0).
    pub chain_head: Hash,
}

fn corrupt(detail: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt("snapshot", detail)
}

/// Encodes `value` as CBOR into one frame.
fn record<W: Write, T: Serialize + ?Sized>(
    w: &mut FrameWriter<W>,
    tag: u8,
    value: &T,
) -> Result<(), StoreError> {
    let mut buf = std::mem::take(&mut w.buf);
    buf.clear();
    ciborium::into_writer(value, &mut buf).map_err(|e| corrupt(format!("encoding: {e}")))?;
    let r = w.raw(tag, &buf);
    w.buf = buf;
    r
}

/// What a snapshot carries beside the state, each as a named section of entries in key order.
#[derive(Debug, Clone, Copy)]
pub enum Carried<'a> {
    /// A sled tree's entries, under the tree's name.
    Tree(&'a str, &'a sled::Tree),
    /// The cold tier's run files, as the section [`crate::cold::TREE`] (an older release's tree
    /// of that name held the same entries).
    Cold(&'a ColdRows),
}

/// Writes `state` (at `header`) and the `carried` sections as a snapshot file into `out`;
/// returns the bytes written.
pub fn write_snapshot<W: Write>(
    out: W,
    header: &SnapshotHeader,
    state: &State,
    carried: &[Carried<'_>],
) -> Result<u64, StoreError> {
    let State {
        jobs,
        // Derived from the devices (those with a `desired_base`): rebuilt when read.
        registry:
            Registry {
                devices,
                groups,
                desired_unsent: _,
                disconnected: _,
            },
        auth,
        invocations,
        schedules,
    } = state;
    let mut w = FrameWriter::new(out, WHAT);
    w.preamble(MAGIC)?;
    w.preamble(&FORMAT.to_be_bytes())?;
    record(&mut w, TAG_HEADER, header)?;
    for entry in devices {
        record(&mut w, TAG_DEVICE, &entry)?;
    }
    for entry in groups {
        record(&mut w, TAG_GROUP, &entry)?;
    }
    for (id, job) in jobs {
        // The record without rows (runs share their parts with the state: a cheap clone), then
        // the rows a slice at a time.
        let mut head = job.clone();
        for run in &mut head.runs {
            run.devices = CowVec::new();
        }
        record(&mut w, TAG_JOB, &(id, &head))?;
        for (n, run) in job.runs.iter().enumerate() {
            let n = u32::try_from(n).map_err(|_| corrupt("a job with over 2^32 runs"))?;
            for start in (0..run.devices.len()).step_by(ROWS_PER_FRAME) {
                let count = ROWS_PER_FRAME.min(run.devices.len() - start);
                let rows = RowSlice {
                    rows: &run.devices,
                    start,
                    count,
                };
                record(&mut w, TAG_ROWS, &(id, n, rows))?;
            }
        }
    }
    for entry in schedules {
        record(&mut w, TAG_SCHEDULE, &entry)?;
    }
    record(&mut w, TAG_AUTH, auth)?;
    record(&mut w, TAG_INVOCATIONS, invocations)?;
    for section in carried {
        match section {
            Carried::Tree(name, tree) => {
                w.raw(TAG_TREE, name.as_bytes())?;
                w.entries(tree.iter())?;
            }
            Carried::Cold(rows) => {
                w.raw(TAG_TREE, crate::cold::TREE.as_bytes())?;
                let (frames, bytes) = rows.copy_frames(&mut w.out)?;
                w.frames += frames;
                w.bytes += bytes;
            }
        }
    }
    w.end()?;
    Ok(w.bytes)
}

/// Reads a snapshot file: the header and the state; hands each carried tree entry to `entry`
/// (tree name, key, value) as it is read, after `tree` was called with the tree's name.
/// A tree not in `carried` is an error.
pub fn read_snapshot<R: Skip>(
    input: R,
    carried: &[&str],
    tree: impl FnMut(&str) -> Result<(), StoreError>,
    mut entry: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(SnapshotHeader, State), StoreError> {
    read(input, carried, tree, Some(&mut entry))
}

/// [`read_snapshot`] for a reader that has the carried entries already: their frames are
/// passed over unread (a file read through a `BufReader` seeks past them).
pub fn read_snapshot_state<R: Skip>(
    input: R,
    carried: &[&str],
) -> Result<(SnapshotHeader, State), StoreError> {
    read(input, carried, |_| Ok(()), None)
}

type EntryFn<'a> = &'a mut dyn FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError>;

fn read<R: Skip>(
    mut input: R,
    carried: &[&str],
    mut tree: impl FnMut(&str) -> Result<(), StoreError>,
    mut entry: Option<EntryFn<'_>>,
) -> Result<(SnapshotHeader, State), StoreError> {
    let mut start = [0u8; 12];
    input
        .read_exact(&mut start)
        .map_err(|_| corrupt("shorter than its magic and format"))?;
    if &start[..8] != MAGIC {
        return Err(corrupt("not a muster snapshot file (bad magic)"));
    }
    let format = u32::from_be_bytes([start[8], start[9], start[10], start[11]]);
    if !(OLDEST_READ..=FORMAT).contains(&format) {
        return Err(corrupt(format!(
            "format {format} (this release reads {OLDEST_READ} to {FORMAT})"
        )));
    }
    let mut r = FrameReader::new(input, WHAT);
    if r.next()? != Some(TAG_HEADER) {
        return Err(corrupt("the first frame is not the header"));
    }
    let header: SnapshotHeader = r.decode("header")?;
    let mut devices: CowMap<muster_types::DeviceId, muster_domain::Device> = CowMap::new();
    let mut groups = CowMap::new();
    let mut jobs: CowMap<JobId, Job> = CowMap::new();
    let mut schedules = CowMap::new();
    let mut auth = None;
    let mut invocations = None;
    let mut current_tree: Option<String> = None;
    loop {
        let next = match entry {
            Some(_) => r.next()?,
            None => r.next_skipping(TAG_ENTRY)?,
        };
        let Some(tag) = next else {
            return Err(corrupt("the file ends before its end frame"));
        };
        match tag {
            TAG_DEVICE => {
                let (k, mut v): (muster_types::DeviceId, muster_domain::Device) =
                    r.decode("device")?;
                v.share_texts();
                // One allocation of the id for the key and the device (see `share_ids`).
                let k = if k == v.id { v.id.clone() } else { k };
                devices.insert(k, v);
            }
            TAG_GROUP => {
                let (k, v) = r.decode("group")?;
                groups.insert(k, v);
            }
            TAG_JOB => {
                let (k, v) = r.decode("job")?;
                jobs.insert(k, v);
            }
            TAG_ROWS => {
                let (k, n, rows): (JobId, u32, Vec<DeviceRun>) = r.decode("run rows")?;
                let run = jobs
                    .get_mut(&k)
                    .and_then(|j| j.runs.get_mut(n as usize))
                    .ok_or_else(|| corrupt(format!("rows of run {n} of job {k} before its job")))?;
                run.devices.extend(rows);
            }
            TAG_SCHEDULE => {
                let (k, v) = r.decode("scheduled job")?;
                schedules.insert(k, v);
            }
            TAG_AUTH => auth = Some(r.decode("credentials")?),
            TAG_INVOCATIONS => invocations = Some(r.decode("invocations")?),
            TAG_TREE => {
                let name = std::str::from_utf8(&r.buf)
                    .map_err(|_| corrupt("a tree name that is not UTF-8"))?;
                if !carried.contains(&name) {
                    return Err(corrupt(format!("carries tree {name:?}, unknown here")));
                }
                tree(name)?;
                current_tree = Some(name.to_string());
            }
            TAG_ENTRY => {
                let Some(name) = &current_tree else {
                    return Err(corrupt("a tree entry before any tree"));
                };
                if let Some(entry) = &mut entry {
                    let (k, v) = split_entry(WHAT, &r.buf)?;
                    entry(name, k, v)?;
                }
            }
            TAG_END => {
                let count: [u8; 8] = r
                    .buf
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("an end frame of the wrong size"))?;
                if u64::from_be_bytes(count) != r.frames - 1 {
                    return Err(corrupt(
                        "the end frame counts other frames than the file has",
                    ));
                }
                if r.next()?.is_some() {
                    return Err(corrupt("bytes after the end frame"));
                }
                break;
            }
            TAG_HEADER => return Err(corrupt("a second header")),
            other => return Err(corrupt(format!("unknown frame tag {other}"))),
        }
    }
    let (Some(auth), Some(invocations)) = (auth, invocations) else {
        return Err(corrupt("no credentials or invocations record"));
    };
    let desired_unsent = devices
        .values()
        .filter(|d| d.desired_base.is_some())
        .map(|d| d.id.clone())
        .collect();
    let mut state = State {
        jobs,
        registry: Registry {
            disconnected: muster_domain::registry::disconnected_of(&devices),
            devices,
            groups,
            desired_unsent,
        },
        auth,
        invocations,
        schedules,
    };
    state.share_ids();
    Ok((header, state))
}
