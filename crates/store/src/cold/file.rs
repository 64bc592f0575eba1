//! Run files: one file per finished run in the data directory's `cold/`, holding the run's
//! chunks (see the parent module) as entry frames in key order.
//!
//! ```text
//! file = magic "MUSTROWS" | format u32 | entry frame* | end frame     (framing: `crate::frame`)
//! name = hex(job id) "." run as 8 hex digits ".rows"
//! ```
//! The frames are those a snapshot carries for the run (a snapshot's cold section is the run
//! files' frames copied in key order, and an install writes them back into run files), so
//! neither side decodes them. A file is written whole under a `.tmp` name, synced and renamed:
//! a run file that exists is complete.
//!
//! Why files and not a sled tree: sled 0.34 writes its page table's snapshot only when it
//! opens, so a restart re-reads every byte written to sled since the last start, and the cold
//! rows of a million-device fleet's jobs were most of those bytes (BENCHMARKS.md, session 20).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::frame::{
    corrupt, crc_matches, parse_head, split_entry, FrameWriter, FRAME_HEAD, TAG_END, TAG_ENTRY,
};

const MAGIC: &[u8; 8] = b"MUSTROWS";
const FORMAT: u32 = 1;
const PREAMBLE: u64 = 12;
/// The end frame: its header and a u64.
const END_FRAME: u64 = FRAME_HEAD + 8;
const SUFFIX: &str = ".rows";
const WHAT: &str = "cold run file";

/// A run as the file names and the key order know it: the job id's bytes and the run number.
pub(crate) type RunName = (Vec<u8>, u32);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The file name of a run.
pub(crate) fn file_name(job: &[u8], run: u32) -> String {
    format!("{}.{run:08x}{SUFFIX}", hex(job))
}

/// The run a file name names; `None` for other files.
fn parse_name(name: &str) -> Option<RunName> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (job, run) = stem.split_once('.')?;
    if run.len() != 8 {
        return None;
    }
    Some((unhex(job)?, u32::from_str_radix(run, 16).ok()?))
}

/// The file-name prefix of every run of a job.
pub(crate) fn job_file_prefix(job: &[u8]) -> String {
    format!("{}.", hex(job))
}

/// The runs in `dir`, in key order (job id bytes, then run).
pub(crate) fn list(dir: &Path) -> Result<BTreeMap<RunName, PathBuf>, StoreError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        if let Some(run) = e.file_name().to_str().and_then(parse_name) {
            out.insert(run, e.path());
        }
    }
    Ok(out)
}

/// Writes one run file from its entries (in key order), durably but for the directory entry
/// (the caller syncs `dir` once for all the files it wrote).
pub(crate) struct RunWriter {
    tmp: PathBuf,
    path: PathBuf,
    w: FrameWriter<BufWriter<File>>,
}

impl RunWriter {
    pub(crate) fn create(dir: &Path, job: &[u8], run: u32) -> Result<Self, StoreError> {
        let name = file_name(job, run);
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp)?;
        let mut w = FrameWriter::new(BufWriter::with_capacity(1 << 20, file), WHAT);
        w.preamble(MAGIC)?;
        w.preamble(&FORMAT.to_be_bytes())?;
        Ok(RunWriter { tmp, path, w })
    }

    pub(crate) fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.w.entry(key, value)
    }

    /// Ends, syncs and names the file.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        self.w.end()?;
        let file = self
            .w
            .out
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(())
    }
}

/// An opened run file and where each of its entries lies: key (after the run's prefix, which
/// every key of the file shares) to the offset and length of its frame.
#[derive(Debug)]
pub(crate) struct RunFile {
    file: File,
    /// In key order.
    entries: Vec<(Vec<u8>, u64, u32)>,
}

impl RunFile {
    /// Opens `path` and reads its frame headers and keys (not the values). `prefix` is the
    /// run's key prefix, which every key must start with.
    pub(crate) fn open(path: &Path, prefix: &[u8]) -> Result<Self, StoreError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut start = [0u8; PREAMBLE as usize];
        file.read_exact_at(&mut start, 0)
            .map_err(|_| corrupt(WHAT, "shorter than its magic and format"))?;
        if &start[..8] != MAGIC || start[8..] != FORMAT.to_be_bytes() {
            return Err(corrupt(
                WHAT,
                format!("{} is not a run file this release reads", path.display()),
            ));
        }
        let mut entries = Vec::new();
        let mut at = PREAMBLE;
        // A frame's header, key length and (most) keys in one read.
        let mut buf = vec![0u8; 512];
        loop {
            let n = read_some(&file, &mut buf, at)?;
            let head: [u8; 9] = buf
                .get(..9)
                .filter(|_| n >= 9)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt(WHAT, "the file ends before its end frame"))?;
            let (tag, len, _) = parse_head(WHAT, &head)?;
            let next = at + FRAME_HEAD + u64::from(len);
            if next > size {
                return Err(corrupt(WHAT, "the file ends inside a frame"));
            }
            match tag {
                TAG_ENTRY => {
                    let klen = buf
                        .get(9..13)
                        .filter(|_| n >= 13 && len >= 4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                        .filter(|k| *k <= len as usize - 4)
                        .ok_or_else(|| corrupt(WHAT, "an entry shorter than its key"))?;
                    let mut key = vec![0u8; klen];
                    if 13 + klen <= n {
                        key.copy_from_slice(&buf[13..13 + klen]);
                    } else {
                        file.read_exact_at(&mut key, at + 13)?;
                    }
                    let suffix = key
                        .strip_prefix(prefix)
                        .ok_or_else(|| corrupt(WHAT, "a key of another run"))?;
                    entries.push((suffix.to_vec(), at, len));
                }
                TAG_END => {
                    if next != size {
                        return Err(corrupt(WHAT, "bytes after the end frame"));
                    }
                    break;
                }
                other => return Err(corrupt(WHAT, format!("unknown frame tag {other}"))),
            }
            at = next;
        }
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(corrupt(WHAT, "entries out of key order"));
        }
        Ok(RunFile { file, entries })
    }

    /// The index of the last entry whose key suffix is at most `key`.
    pub(crate) fn last_at_or_before(&self, key: &[u8]) -> Option<usize> {
        self.entries
            .partition_point(|(k, _, _)| k.as_slice() <= key)
            .checked_sub(1)
    }

    /// The index of the first entry whose key suffix is at least `key`.
    pub(crate) fn first_at_or_after(&self, key: &[u8]) -> usize {
        self.entries.partition_point(|(k, _, _)| k.as_slice() < key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entry `i`'s key suffix.
    pub(crate) fn key(&self, i: usize) -> &[u8] {
        &self.entries[i].0
    }

    /// Entry `i`'s value, read and checked.
    pub(crate) fn value(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        let (_, at, len) = self.entries[i];
        let mut frame = vec![0u8; FRAME_HEAD as usize + len as usize];
        self.file.read_exact_at(&mut frame, at)?;
        let mut head = [0u8; 9];
        head.copy_from_slice(&frame[..9]);
        let (tag, _, crc) = parse_head(WHAT, &head)?;
        let payload = &frame[FRAME_HEAD as usize..];
        if tag != TAG_ENTRY || !crc_matches(tag, payload, crc) {
            return Err(corrupt(WHAT, "an entry fails its checksum"));
        }
        let (k, _) = split_entry(WHAT, payload)?;
        let start = FRAME_HEAD as usize + 4 + k.len();
        frame.drain(..start);
        Ok(frame)
    }
}

fn read_some(file: &File, buf: &mut [u8], at: u64) -> Result<usize, StoreError> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Copies a run file's entry frames into `out` as they are; returns how many frames. `None`
/// when the file is gone (its job was dropped after the caller listed it).
pub(crate) fn copy_frames(
    path: &Path,
    out: &mut impl Write,
) -> Result<Option<(u64, u64)>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata()?.len();
    if size < PREAMBLE + END_FRAME {
        return Err(corrupt(WHAT, format!("{} is cut short", path.display())));
    }
    let mut end = [0u8; END_FRAME as usize];
    file.read_exact_at(&mut end, size - END_FRAME)?;
    let mut head = [0u8; 9];
    head.copy_from_slice(&end[..9]);
    let (tag, len, crc) = parse_head(WHAT, &head)?;
    if tag != TAG_END || len != 8 || !crc_matches(tag, &end[9..], crc) {
        return Err(corrupt(
            WHAT,
            format!("{} has no end frame", path.display()),
        ));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&end[9..]);
    let frames = u64::from_be_bytes(count);
    let bytes = size - PREAMBLE - END_FRAME;
    file.seek(SeekFrom::Start(PREAMBLE))?;
    let copied = std::io::copy(&mut (&mut file).take(bytes), out)?;
    if copied != bytes {
        return Err(corrupt(
            WHAT,
            format!("{} shrank while it was copied", path.display()),
        ));
    }
    Ok(Some((frames, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_as_keys() {
        for (job, run) in [
            (b"j".to_vec(), 1u32),
            (b"a-b_c.d".to_vec(), u32::MAX),
            (vec![0xff, 0], 0),
        ] {
            assert_eq!(parse_name(&file_name(&job, run)), Some((job, run)));
        }
        assert_eq!(parse_name("x.rows"), None);
        assert_eq!(parse_name("6a.00000001.rows.tmp"), None);
        assert_eq!(parse_name("6.00000001.rows"), None);
    }
}
