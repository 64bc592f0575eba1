//! The event log's segments in append-only files. **Work in progress, not used yet**: the plan
//! (issue 14, session 20's note) is to move the `events` tree here, because sled 0.34 re-reads
//! everything written to it since it last opened, and the segments are nearly all of that.
//!
//! ```text
//! DATA/events/NNNNNNNN.seg = magic "MUSTEVTS" | format u32 | entry frame*
//! entry frame (crate::frame)  = key: the segment's first seq (u64 BE) | value: the segment
//! ```
//! Files are numbered in the order they were started and hold ascending seqs; the next file is
//! started when one passes [`ROLL`] bytes. Appends go through the page cache (`write`, no
//! fsync): they survive the process being killed; [`EventFiles::sync`] makes them durable and
//! must run before sled's flush that makes the `applied` record covering them durable.
//!
//! In memory: each segment's first seq -> file, offset and length (~16 bytes plus the map's
//! overhead a segment; a sidecar index per sealed file would bound it, not done).
//!
//! Open questions for the wiring (see the note): back-filled history (older seqs, written after
//! newer ones) needs files of its own; the offline `AuditLog` reads the same files.

// Wired in by the next step of issue 14; until then only its tests use it.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::StoreError;
use crate::frame::{
    crc_matches, parse_head, split_entry, sync_dir, FrameWriter, FRAME_HEAD, TAG_ENTRY,
};

const MAGIC: &[u8; 8] = b"MUSTEVTS";
const FORMAT: u32 = 1;
const PREAMBLE: u64 = 12;
const WHAT: &str = "event file";
/// A file is closed for appends once it is this large.
pub(crate) const ROLL: u64 = 256 << 20;

/// Where a segment is: file number, frame offset, payload length.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Loc {
    file: u32,
    at: u64,
    len: u32,
}

#[derive(Debug)]
struct Active {
    number: u32,
    out: FrameWriter<BufWriter<File>>,
    /// Bytes in the file (the preamble and every frame written).
    len: u64,
    /// A file was started since the last sync: the directory needs syncing too.
    new: bool,
}

#[derive(Debug, Default)]
struct Files {
    index: BTreeMap<u64, Loc>,
    readers: BTreeMap<u32, Arc<File>>,
    active: Option<Active>,
}

/// The segment files of one data directory.
#[derive(Debug)]
pub(crate) struct EventFiles {
    dir: PathBuf,
    files: Mutex<Files>,
}

fn file_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.seg"))
}

fn numbers(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl EventFiles {
    /// Opens (or creates) `dir`, indexing every file's frames. A frame cut short or failing
    /// its checksum at the end of the last file (a write the stop interrupted) is cut off; one
    /// anywhere else is an error.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut files = Files::default();
        let numbers = numbers(dir)?;
        for (i, number) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            let path = file_path(dir, *number);
            let file = OpenOptions::new().read(true).write(last).open(&path)?;
            let good = index_file(&file, *number, last, &mut files.index)?;
            if last && good < file.metadata()?.len() {
                tracing::warn!(
                    file = %path.display(),
                    kept = good,
                    "cutting off an event file's torn tail"
                );
                file.set_len(good)?;
                file.sync_all()?;
            }
            files.readers.insert(*number, Arc::new(file));
        }
        Ok(EventFiles {
            dir: dir.to_path_buf(),
            files: Mutex::new(files),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends segments (first seq and bytes, in ascending order, after every stored one).
    pub(crate) fn append(&self, segments: &[(u64, &[u8])]) -> Result<(), StoreError> {
        let mut files = self.lock();
        if let (Some((first, _)), Some((&last, _))) =
            (segments.first(), files.index.last_key_value())
        {
            if *first <= last {
                return Err(StoreError::corrupt(
                    WHAT,
                    format!("a segment at seq {first} appended after seq {last}"),
                ));
            }
        }
        for (seq, value) in segments {
            let active = self.active(&mut files)?;
            let at = active.len;
            active.out.entry(&seq.to_be_bytes(), value)?;
            let len = u32::try_from(4 + 8 + value.len()).unwrap_or(u32::MAX);
            active.len += FRAME_HEAD + u64::from(len);
            let loc = Loc {
                file: active.number,
                at,
                len,
            };
            files.index.insert(*seq, loc);
        }
        if let Some(a) = &mut files.active {
            a.out.out.flush()?;
        }
        Ok(())
    }

    /// The file appends go to, starting the next one when it is full.
    fn active<'a>(&self, files: &'a mut Files) -> Result<&'a mut Active, StoreError> {
        let full = files.active.as_ref().is_some_and(|a| a.len >= ROLL);
        if full {
            if let Some(mut a) = files.active.take() {
                a.out.out.flush()?;
                a.out.out.get_ref().sync_all()?;
            }
        }
        if files.active.is_none() {
            let (number, len) = match files.readers.last_key_value() {
                Some((n, f)) if f.metadata()?.len() < ROLL && !full => (*n, f.metadata()?.len()),
                Some((n, _)) => (n + 1, 0),
                None => (0, 0),
            };
            let path = file_path(&self.dir, number);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let mut out = FrameWriter::new(BufWriter::with_capacity(1 << 20, file), WHAT);
            let new = len == 0;
            if new {
                out.preamble(MAGIC)?;
                out.preamble(&FORMAT.to_be_bytes())?;
                out.out.flush()?;
                files.readers.insert(number, Arc::new(File::open(&path)?));
            }
            files.active = Some(Active {
                number,
                out,
                len: len.max(PREAMBLE),
                new,
            });
        }
        files
            .active
            .as_mut()
            .ok_or_else(|| StoreError::corrupt(WHAT, "no file to append to"))
    }

    /// Makes every append so far durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let mut files = self.lock();
        if let Some(a) = &mut files.active {
            a.out.out.flush()?;
            a.out.out.get_ref().sync_data()?;
            if std::mem::take(&mut a.new) {
                sync_dir(&self.dir)?;
            }
        }
        Ok(())
    }

    /// The segments whose first seq is in `from..=to`, and the one before `from` that may hold
    /// it, in order: (first seq, bytes).
    pub(crate) fn segments(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let files = self.lock();
        let start = files
            .index
            .range(..=from)
            .next_back()
            .map_or(from, |(k, _)| *k);
        let wanted: Vec<(u64, Loc, Arc<File>)> = files
            .index
            .range(start..=to.max(start))
            .filter_map(|(k, loc)| Some((*k, *loc, files.readers.get(&loc.file)?.clone())))
            .collect();
        drop(files);
        wanted
            .into_iter()
            .map(|(k, loc, file)| Ok((k, read_value(&file, loc)?)))
            .collect()
    }

    /// Removes every segment whose first seq is after `seq` (the tail a restart drops when the
    /// `applied` record is behind the events).
    pub(crate) fn truncate_after(&self, seq: u64) -> Result<usize, StoreError> {
        let mut files = self.lock();
        let Some(seq_next) = seq.checked_add(1) else {
            return Ok(0);
        };
        let cut: Vec<(u64, Loc)> = files
            .index
            .range(seq_next..)
            .map(|(k, l)| (*k, *l))
            .collect();
        let Some((_, first)) = cut.first().copied() else {
            return Ok(0);
        };
        if let Some(mut a) = files.active.take() {
            a.out.out.flush()?;
        }
        for (k, _) in &cut {
            files.index.remove(k);
        }
        let later: Vec<u32> = files
            .readers
            .range(first.file + 1..)
            .map(|(n, _)| *n)
            .collect();
        for n in later {
            files.readers.remove(&n);
            std::fs::remove_file(file_path(&self.dir, n))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(file_path(&self.dir, first.file))?;
        file.set_len(first.at)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        Ok(cut.len())
    }

    /// Removes every file (an install: the replica's log starts after the snapshot).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        let mut files = self.lock();
        files.active = None;
        files.index.clear();
        for n in std::mem::take(&mut files.readers).into_keys() {
            std::fs::remove_file(file_path(&self.dir, n))?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// How many segments are stored.
    pub(crate) fn len(&self) -> usize {
        self.lock().index.len()
    }
}

/// Reads one segment's frame and checks it.
fn read_value(file: &File, loc: Loc) -> Result<Vec<u8>, StoreError> {
    let mut frame = vec![0u8; FRAME_HEAD as usize + loc.len as usize];
    file.read_exact_at(&mut frame, loc.at)?;
    let mut head = [0u8; 9];
    head.copy_from_slice(&frame[..9]);
    let (tag, len, crc) = parse_head(WHAT, &head)?;
    let payload = &frame[FRAME_HEAD as usize..];
    if tag != TAG_ENTRY || len != loc.len || !crc_matches(tag, payload, crc) {
        return Err(StoreError::corrupt(
            WHAT,
            format!("the segment at offset {} fails its checksum", loc.at),
        ));
    }
    let (_, value) = split_entry(WHAT, payload)?;
    Ok(value.to_vec())
}

/// Indexes one file's frames into `index`; returns the length of its good prefix. In the last
/// file a bad frame ends the good prefix (a torn write); elsewhere it is an error. Only the
/// last file's payloads are read (to check them); the others' headers and keys only.
fn index_file(
    file: &File,
    number: u32,
    last: bool,
    index: &mut BTreeMap<u64, Loc>,
) -> Result<u64, StoreError> {
    let size = file.metadata()?.len();
    let mut start = [0u8; PREAMBLE as usize];
    if file.read_exact_at(&mut start, 0).is_err() || &start[..8] != MAGIC {
        return if last && size < PREAMBLE {
            Ok(0)
        } else {
            Err(StoreError::corrupt(
                WHAT,
                format!("file {number} has no magic"),
            ))
        };
    }
    let mut at = PREAMBLE;
    let bad = |at: u64, why: &str| -> Result<u64, StoreError> {
        if last {
            Ok(at)
        } else {
            Err(StoreError::corrupt(
                WHAT,
                format!("file {number} at offset {at}: {why}"),
            ))
        }
    };
    let mut head = [0u8; 9 + 4 + 8];
    while at < size {
        if file.read_exact_at(&mut head, at).is_err() {
            return bad(at, "cut short");
        }
        let mut h = [0u8; 9];
        h.copy_from_slice(&head[..9]);
        let Ok((tag, len, crc)) = parse_head(WHAT, &h) else {
            return bad(at, "a damaged frame header");
        };
        let next = at + FRAME_HEAD + u64::from(len);
        if tag != TAG_ENTRY || len < 12 || next > size {
            return bad(at, "a damaged frame");
        }
        if last {
            let mut payload = vec![0u8; len as usize];
            file.read_exact_at(&mut payload, at + FRAME_HEAD)?;
            if !crc_matches(tag, &payload, crc) {
                if next < size {
                    // Whole frames follow: not a write the stop cut short, damage.
                    return Err(StoreError::corrupt(
                        WHAT,
                        format!("file {number} at offset {at}: a frame failing its checksum"),
                    ));
                }
                return bad(at, "a frame failing its checksum");
            }
        }
        let mut k = [0u8; 8];
        k.copy_from_slice(&head[13..21]);
        index.insert(
            u64::from_be_bytes(k),
            Loc {
                file: number,
                at,
                len,
            },
        );
        at = next;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64) -> Vec<u8> {
        format!("segment {seq} ")
            .repeat((seq % 7 + 1) as usize)
            .into_bytes()
    }

    fn all(files: &EventFiles) -> Vec<(u64, Vec<u8>)> {
        files.segments(0, u64::MAX).unwrap()
    }

    #[test]
    fn appends_read_back_across_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let files = EventFiles::open(dir.path()).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (0..50).map(|i| (1 + i * 10, seg(i))).collect();
        for chunk in want.chunks(7) {
            let refs: Vec<(u64, &[u8])> = chunk.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            files.append(&refs).unwrap();
        }
        files.sync().unwrap();
        assert_eq!(all(&files), want);
        assert_eq!(
            files.segments(25, 40).unwrap(),
            want[2..4].to_vec(),
            "from the segment holding 25"
        );
        assert!(
            files.append(&[(5, b"old".as_slice())]).is_err(),
            "not after the last"
        );
        drop(files);

        let files = EventFiles::open(dir.path()).unwrap();
        assert_eq!(all(&files), want);
        files.append(&[(1000, b"more".as_slice())]).unwrap();
        drop(files);
        // A write cut short: half of the last frame.
        let path = file_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let files = EventFiles::open(dir.path()).unwrap();
        assert_eq!(all(&files), want, "the torn segment is gone, the rest kept");
        files.append(&[(1000, b"again".as_slice())]).unwrap();
        assert_eq!(
            files.segments(1000, 1000).unwrap(),
            vec![(1000, b"again".to_vec())]
        );
    }

    #[test]
    fn truncate_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let files = EventFiles::open(dir.path()).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (0..20).map(|i| (1 + i, seg(i))).collect();
        let refs: Vec<(u64, &[u8])> = want.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        files.append(&refs).unwrap();
        assert_eq!(files.truncate_after(10).unwrap(), 10);
        assert_eq!(all(&files), want[..10].to_vec());
        files.append(&[(11, b"eleven".as_slice())]).unwrap();
        drop(files);
        let files = EventFiles::open(dir.path()).unwrap();
        assert_eq!(files.len(), 11);
        assert_eq!(
            files.segments(11, 11).unwrap(),
            vec![(11, b"eleven".to_vec())]
        );
        files.clear().unwrap();
        assert_eq!(files.len(), 0);
        drop(files);
        assert_eq!(EventFiles::open(dir.path()).unwrap().len(), 0);
    }

    #[test]
    fn a_damaged_frame_in_the_middle_is_an_error_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = EventFiles::open(dir.path()).unwrap();
        let v = vec![7u8; 1000];
        files
            .append(&[(1, v.as_slice()), (2, v.as_slice())])
            .unwrap();
        drop(files);
        let path = file_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PREAMBLE as usize + 500] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        // The last file is checked at open: a bad frame with whole frames after it is damage,
        // not a torn write. (A sealed file is checked when read.)
        let err = EventFiles::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}

/// How long an open takes at a million devices' twenty jobs: 272,704 segments of ~17 KB (what
/// the `events` tree held, BENCHMARKS.md session 20). Opt-in, writes ~4.6 GB:
/// `MUSTER_EVENT_FILES_DIR=/some/dir cargo test --release -p muster-store --lib event_files_open_at_scale -- --ignored --nocapture`
#[cfg(test)]
#[test]
#[ignore = "writes ~4.6 GB; run by hand"]
fn event_files_open_at_scale() {
    let base = std::env::var("MUSTER_EVENT_FILES_DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let files = EventFiles::open(dir.path()).unwrap();
    let value = vec![0x5au8; 17_000];
    let started = std::time::Instant::now();
    for chunk in 0..(272_704 / 64) {
        let segs: Vec<(u64, &[u8])> = (0..64u64)
            .map(|i| (1 + (chunk * 64 + i) * 256, value.as_slice()))
            .collect();
        files.append(&segs).unwrap();
    }
    files.sync().unwrap();
    eprintln!("wrote {} segments in {:?}", files.len(), started.elapsed());
    drop(files);
    let started = std::time::Instant::now();
    let files = EventFiles::open(dir.path()).unwrap();
    eprintln!("opened {} segments in {:?}", files.len(), started.elapsed());
}
