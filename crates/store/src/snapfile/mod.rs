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
//! A build may copy the cold tree's unchanged runs from the previous file instead of reading
//! them from sled ([`Previous`], `reuse.rs`): the same bytes, without sled's pages.
//!
//! Records are CBOR (serde): self-describing, so a field added with `#[serde(default)]` still
//! reads older files, and it carries twins (`serde_json::Value`) as they are. A change that
//! older files cannot be read into bumps [`FORMAT`]. The encoder and the decoder destructure
//! `State` and `Registry` without `..`: a new field there fails to compile here until the
//! snapshot carries it.

use std::io::{Read, Write};

use muster_domain::job::{DeviceRun, Job};
use muster_domain::registry::Registry;
use muster_domain::{CowMap, CowVec, State};
use muster_types::JobId;
use serde::{Deserialize, Serialize};

mod reuse;
pub use reuse::Previous;

use crate::chain::Hash;
use crate::error::StoreError;
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

/// A frame larger than this is corrupt.
const MAX_FRAME: u32 = 1 << 30;

const TAG_HEADER: u8 = 1;
const TAG_DEVICE: u8 = 2;
const TAG_GROUP: u8 = 3;
const TAG_JOB: u8 = 4;
const TAG_AUTH: u8 = 5;
const TAG_INVOCATIONS: u8 = 6;
const TAG_TREE: u8 = 7;
const TAG_ENTRY: u8 = 8;
/// A scheduled job (absent from files of earlier builds: then none).
const TAG_SCHEDULE: u8 = 9;
/// A slice of one run's device rows, after its job's record (format 5).
const TAG_ROWS: u8 = 10;
const TAG_END: u8 = 0xFF;

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

/// Writes frames into `out`, encoding each record into one reused buffer.
struct FrameWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    frames: u64,
    bytes: u64,
}

impl<W: Write> FrameWriter<W> {
    fn raw(&mut self, tag: u8, payload: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| corrupt(format!("a record of {} bytes", payload.len())))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[tag]);
        crc.update(payload);
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&crc.finalize().to_be_bytes())?;
        self.out.write_all(payload)?;
        self.frames += 1;
        self.bytes += 9 + u64::from(len);
        Ok(())
    }

    /// One entry frame per key and value.
    fn entries(&mut self, kvs: sled::Iter) -> Result<(), StoreError> {
        let mut payload = Vec::new();
        for kv in kvs {
            let (k, v) = kv?;
            let klen = u32::try_from(k.len()).map_err(|_| corrupt("a key over 4 GiB"))?;
            payload.clear();
            payload.extend_from_slice(&klen.to_be_bytes());
            payload.extend_from_slice(&k);
            payload.extend_from_slice(&v);
            self.raw(TAG_ENTRY, &payload)?;
        }
        Ok(())
    }

    fn record<T: Serialize + ?Sized>(&mut self, tag: u8, value: &T) -> Result<(), StoreError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        ciborium::into_writer(value, &mut buf).map_err(|e| corrupt(format!("encoding: {e}")))?;
        let r = self.raw(tag, &buf);
        self.buf = buf;
        r
    }
}

/// Writes `state` (at `header`) and the carried `trees` (name and tree) as a snapshot file into
/// `out`; returns the bytes written.
pub fn write_snapshot<W: Write>(
    out: W,
    header: &SnapshotHeader,
    state: &State,
    trees: &[(&str, &sled::Tree)],
) -> Result<u64, StoreError> {
    write_snapshot_reusing(out, header, state, trees, None)
}

/// [`write_snapshot`], copying the cold runs `previous` holds from its file instead of reading
/// them from sled; the bytes written are the same.
pub fn write_snapshot_reusing<W: Write>(
    out: W,
    header: &SnapshotHeader,
    state: &State,
    trees: &[(&str, &sled::Tree)],
    previous: Option<&Previous>,
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
    let mut w = FrameWriter {
        out,
        buf: Vec::new(),
        frames: 0,
        bytes: 12,
    };
    w.out.write_all(MAGIC)?;
    w.out.write_all(&FORMAT.to_be_bytes())?;
    w.record(TAG_HEADER, header)?;
    for entry in devices {
        w.record(TAG_DEVICE, &entry)?;
    }
    for entry in groups {
        w.record(TAG_GROUP, &entry)?;
    }
    for (id, job) in jobs {
        // The record without rows (runs share their parts with the state: a cheap clone), then
        // the rows a slice at a time.
        let mut head = job.clone();
        for run in &mut head.runs {
            run.devices = CowVec::new();
        }
        w.record(TAG_JOB, &(id, &head))?;
        for (n, run) in job.runs.iter().enumerate() {
            let n = u32::try_from(n).map_err(|_| corrupt("a job with over 2^32 runs"))?;
            for start in (0..run.devices.len()).step_by(ROWS_PER_FRAME) {
                let count = ROWS_PER_FRAME.min(run.devices.len() - start);
                let rows = RowSlice {
                    rows: &run.devices,
                    start,
                    count,
                };
                w.record(TAG_ROWS, &(id, n, rows))?;
            }
        }
    }
    for entry in schedules {
        w.record(TAG_SCHEDULE, &entry)?;
    }
    w.record(TAG_AUTH, auth)?;
    w.record(TAG_INVOCATIONS, invocations)?;
    for (name, tree) in trees {
        w.raw(TAG_TREE, name.as_bytes())?;
        match previous {
            Some(p) if *name == crate::cold::TREE => p.write_cold(&mut w, tree)?,
            _ => w.entries(tree.iter())?,
        }
    }
    let frames = w.frames;
    w.raw(TAG_END, &frames.to_be_bytes())?;
    w.out.flush()?;
    Ok(w.bytes)
}

/// The key and the value of an entry frame's payload.
fn split_entry(b: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let klen = b
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or_else(|| corrupt("a tree entry shorter than its key length"))?;
    if b.len() - 4 < klen {
        return Err(corrupt("a tree entry shorter than its key"));
    }
    Ok(b[4..].split_at(klen))
}

/// Reads frames from `input`, checking each one's crc.
struct FrameReader<R: Read> {
    input: R,
    buf: Vec<u8>,
    frames: u64,
}

impl<R: Read> FrameReader<R> {
    /// The next frame's tag; its payload is in `self.buf`. `None` at a clean end of input.
    fn next(&mut self) -> Result<Option<u8>, StoreError> {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            match self.input.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(corrupt("the file ends inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let crc = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        if len > MAX_FRAME {
            return Err(corrupt(format!("a frame of {len} bytes")));
        }
        self.buf.clear();
        // `take` + `read_to_end` grows the buffer as bytes arrive, so a damaged length cannot
        // allocate a gigabyte up front.
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.buf)?;
        if self.buf.len() != len as usize {
            return Err(corrupt(format!(
                "the file ends inside frame {} (tag {tag})",
                self.frames
            )));
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&[tag]);
        h.update(&self.buf);
        if h.finalize() != crc {
            return Err(corrupt(format!(
                "frame {} (tag {tag}) fails its checksum",
                self.frames
            )));
        }
        self.frames += 1;
        Ok(Some(tag))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, StoreError> {
        ciborium::from_reader(self.buf.as_slice())
            .map_err(|e| corrupt(format!("{what} record {}: {e}", self.frames - 1)))
    }
}

/// Reads a snapshot file: the header and the state; hands each carried tree entry to `entry`
/// (tree name, key, value) as it is read, after `tree` was called with the tree's name.
/// A tree not in `carried` is an error.
pub fn read_snapshot<R: Read>(
    mut input: R,
    carried: &[&str],
    mut tree: impl FnMut(&str) -> Result<(), StoreError>,
    mut entry: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError>,
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
    let mut r = FrameReader {
        input,
        buf: Vec::new(),
        frames: 0,
    };
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
        let Some(tag) = r.next()? else {
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
                let (k, v) = split_entry(&r.buf)?;
                entry(name, k, v)?;
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
