//! The event log's segments (see [`crate::segment`]) in append-only files, not in sled: sled
//! 0.34 re-reads everything written to it since it last opened, and the segments were nearly
//! all of that (a restart at a million devices' twenty jobs spent 14 s in sled's open,
//! BENCHMARKS.md sessions 20 and 21).
//!
//! ```text
//! DATA/events/NNNNNNNN.seg         the log from `first_seq_available` on (the live lane)
//! DATA/events/history/NNNNNNNN.seg back-filled history below it (see `crate::backfill`)
//! NNNNNNNN.idx                     a sealed (full) file's index (see `write_sidecar`)
//! file        = magic "MUSTEVTS" | format u32 | entry frame*
//! entry frame = (crate::frame) key: the segment's first seq (u64 BE) | value: the segment
//! ```
//! Each lane's files are numbered in the order they were started and hold ascending seqs; the
//! next file is started when one passes [`ROLL`] bytes. Two lanes because a back-fill writes
//! seqs older than the live log while the live log grows, and each lane only ever drops its
//! tail (or everything): the live lane's after an apply that stopped before its metadata, the
//! history's after a back-fill chunk written without its progress.
//!
//! Durability: appends go through the page cache (`write`, no fsync), so they survive the
//! process being killed; [`EventFiles::sync`] makes them durable, and the group flusher
//! (`crate::flush`) runs it before every sled flush, so a durable `applied` record never
//! covers events that are not. sled is opened without its periodic flush for the same reason.
//!
//! In memory: each segment's first seq -> file, offset and length (~40 bytes a segment of up
//! to 256 events with the map's overhead: ~11 MB at 272,704 segments).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::StoreError;
use crate::frame::{
    crc_matches, parse_head, remove_tmp_files, split_entry, sync_dir, FrameWriter, FRAME_HEAD,
    TAG_ENTRY,
};

/// The directory (in the data directory) holding the live lane's files.
pub(crate) const DIR: &str = "events";
/// The history lane's directory, inside [`DIR`].
const HISTORY: &str = "history";
/// The sled tree an older release kept the segments in.
const TREE: &str = "events";
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
    /// An append failed part way: the file may end in part of a frame, so nothing more is
    /// appended until a restart (whose open cuts that tail) or a `clear`.
    failed: bool,
}

/// One lane's files.
#[derive(Debug)]
struct Lane {
    dir: PathBuf,
    /// [`ROLL`], smaller in tests.
    roll: u64,
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

impl Lane {
    /// Opens (or creates) `dir`, indexing every file's frames. A frame cut short or failing
    /// its checksum at the end of the last file (a write the stop interrupted) is cut off; one
    /// anywhere else is an error.
    fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_rolling_at(dir, ROLL)
    }

    /// [`open`](Self::open), starting a new file at `roll` bytes. A sealed file (every one but
    /// the last) is indexed from its sidecar (see [`write_sidecar`]) when it has a good one:
    /// reading every frame header of a file not in the page cache reads the whole file (the
    /// kernel's read-ahead), 4.4 GB at a million devices' twenty jobs.
    fn open_rolling_at(dir: &Path, roll: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        // A sidecar whose write stopped half-way.
        remove_tmp_files(dir)?;
        let mut files = Files::default();
        let numbers = numbers(dir)?;
        for (i, number) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            let path = file_path(dir, *number);
            let file = OpenOptions::new().read(true).write(last).open(&path)?;
            if !last {
                if let Some(entries) = read_sidecar(dir, *number, file.metadata()?.len()) {
                    files.index.extend(entries);
                    files.readers.insert(*number, Arc::new(file));
                    continue;
                }
            }
            let good = index_file(&file, *number, last, &mut files.index)?;
            if !last {
                write_sidecar(dir, *number, &files.index);
            }
            if last {
                // Pages a killed process left unsynced: durable before anything counts them.
                file.sync_all()?;
                sync_dir(dir)?;
            }
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
        Ok(Lane {
            dir: dir.to_path_buf(),
            roll,
            files: Mutex::new(files),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends segments (first seq and bytes, in ascending order, after every stored one).
    pub(crate) fn append(&self, segments: &[(u64, &[u8])]) -> Result<(), StoreError> {
        let mut files = self.lock();
        if files.failed {
            return Err(StoreError::Io(std::io::Error::other(
                "an earlier write to the event files failed; restart the node",
            )));
        }
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
        let result = self.append_locked(&mut files, segments);
        if result.is_err() {
            // Readers must not find what may not be written; the buffer is dropped unwritten.
            for (seq, _) in segments {
                files.index.remove(seq);
            }
            if let Some(a) = files.active.take() {
                let _ = a.out.out.into_parts();
            }
            files.failed = true;
        }
        result
    }

    fn append_locked(
        &self,
        files: &mut Files,
        segments: &[(u64, &[u8])],
    ) -> Result<(), StoreError> {
        for (seq, value) in segments {
            let active = self.active(files)?;
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
        let full = files.active.as_ref().is_some_and(|a| a.len >= self.roll);
        if full {
            if let Some(mut a) = files.active.take() {
                a.out.out.flush()?;
            }
        }
        if files.active.is_none() {
            let (number, len) = match files.readers.last_key_value() {
                Some((n, f)) if f.metadata()?.len() < self.roll && !full => {
                    (*n, f.metadata()?.len())
                }
                Some((n, f)) => {
                    // Sealed: synced, and its sidecar written.
                    f.sync_all()?;
                    write_sidecar(&self.dir, *n, &files.index);
                    (n + 1, 0)
                }
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

    /// Makes every append so far durable. The fsync runs outside the lock, so appends go on
    /// meanwhile (a file that fills up is synced when the next one starts).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let (file, new) = {
            let mut files = self.lock();
            let Some(a) = &mut files.active else {
                return Ok(());
            };
            a.out.out.flush()?;
            let new = std::mem::take(&mut a.new);
            let number = a.number;
            (files.readers.get(&number).cloned(), new)
        };
        let synced = match file {
            Some(file) => file.sync_data().map_err(StoreError::from),
            None => Ok(()),
        }
        .and_then(|()| if new { sync_dir(&self.dir) } else { Ok(()) });
        if synced.is_err() && new {
            // The next sync tries the directory again.
            if let Some(a) = &mut self.lock().active {
                a.new = true;
            }
        }
        synced
    }

    /// The largest first seq at or below `seq`.
    fn at_or_before(&self, seq: u64) -> Option<u64> {
        self.lock().index.range(..=seq).next_back().map(|(k, _)| *k)
    }

    /// The first segment whose first seq is in `from..=to`: its first seq, where it is and the
    /// file to read it from (read outside the lock).
    fn next_in(&self, from: u64, to: u64) -> Option<(u64, Loc, Arc<File>)> {
        if from > to {
            return None;
        }
        let files = self.lock();
        let (k, loc) = files.index.range(from..=to).next()?;
        Some((*k, *loc, files.readers.get(&loc.file)?.clone()))
    }

    /// The segments whose first seq is in `from..=to` and the one before `from` that may hold
    /// it, in order (tools and tests; the node walks with [`EventFiles::next_in`]).
    fn segments(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut next = self.at_or_before(from).unwrap_or(from);
        while let Some((k, loc, file)) = self.next_in(next, to) {
            out.push((k, read_value(&file, k, loc)?));
            match k.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// The lowest and highest first seqs stored.
    fn bounds(&self) -> Option<(u64, u64)> {
        let files = self.lock();
        Some((
            *files.index.first_key_value()?.0,
            *files.index.last_key_value()?.0,
        ))
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
            remove_numbered(&self.dir, n)?;
        }
        // Now the last file: scanned at open, no sidecar.
        remove_sidecar(&self.dir, first.file)?;
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
        files.failed = false;
        files.index.clear();
        for n in std::mem::take(&mut files.readers).into_keys() {
            remove_numbered(&self.dir, n)?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// How many segments are stored.
    pub(crate) fn len(&self) -> usize {
        self.lock().index.len()
    }
}

/// The event log of one data directory: the live lane and the back-filled history.
#[derive(Debug)]
pub(crate) struct EventFiles {
    live: Lane,
    history: Lane,
}

/// A segment as read back: its first seq and its bytes.
pub(crate) type StoredSegment = (u64, Arc<Vec<u8>>);

impl EventFiles {
    /// Opens (or creates) the event files of the data directory `data`.
    pub(crate) fn open(data: &Path) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let dir = data.join(DIR);
        let live = Lane::open(&dir)?;
        let history = Lane::open(&dir.join(HISTORY))?;
        let segments = live.len() + history.len();
        if segments > 0 {
            tracing::info!(
                segments,
                ms = started.elapsed().as_millis() as u64,
                "opened the event files"
            );
        }
        Ok(EventFiles { live, history })
    }

    /// Appends the segments of applied events (ascending, after every stored one).
    pub(crate) fn append(&self, segments: &[(u64, &[u8])]) -> Result<(), StoreError> {
        self.live.append(segments)
    }

    /// Appends back-filled segments (ascending, after every back-filled one, below the live
    /// lane), dropping first any back-filled segment at or after the first of them (a chunk
    /// written before a crash without its progress, written again).
    pub(crate) fn append_history(&self, segments: &[(u64, &[u8])]) -> Result<(), StoreError> {
        if let Some((first, _)) = segments.first() {
            self.history.truncate_after(first.saturating_sub(1))?;
        }
        self.history.append(segments)
    }

    /// Makes every append so far durable (both lanes).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.live.sync()?;
        self.history.sync()
    }

    /// Drops the applied segments whose first seq is after `seq`; returns how many.
    pub(crate) fn truncate_after(&self, seq: u64) -> Result<usize, StoreError> {
        self.live.truncate_after(seq)
    }

    /// Drops the back-filled segments whose first seq is `seq` or later; returns how many.
    pub(crate) fn truncate_history_from(&self, seq: u64) -> Result<usize, StoreError> {
        self.history.truncate_after(seq.saturating_sub(1))
    }

    /// Drops the applied segments below `first` (an install that stopped before it cleared
    /// the events older than its snapshot): all of them, or an error when the lane also holds
    /// later ones, which no install leaves.
    pub(crate) fn drop_below(&self, first: u64) -> Result<usize, StoreError> {
        match self.live.bounds() {
            Some((_, last)) if last < first => {
                let n = self.live.len();
                self.live.clear()?;
                Ok(n)
            }
            Some((lowest, _)) if lowest < first => Err(StoreError::corrupt(
                WHAT,
                format!("the log holds seqs on both sides of seq {first}, where it starts"),
            )),
            _ => Ok(0),
        }
    }

    /// Drops the back-filled history.
    pub(crate) fn clear_history(&self) -> Result<(), StoreError> {
        self.history.clear()
    }

    /// Drops every segment (an install: the replica's log starts after the snapshot).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.live.clear()?;
        self.history.clear()
    }

    /// How many segments are stored (both lanes).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live.len() + self.history.len()
    }

    /// Where a walk from `from` starts: the first seq of the segment that may hold it.
    pub(crate) fn start(&self, from: u64) -> u64 {
        self.live
            .at_or_before(from)
            .max(self.history.at_or_before(from))
            .unwrap_or(from)
    }

    /// The first segment whose first seq is in `from..=to`, from either lane.
    pub(crate) fn next_in(&self, from: u64, to: u64) -> Result<Option<StoredSegment>, StoreError> {
        let found = match (self.history.next_in(from, to), self.live.next_in(from, to)) {
            (Some(h), Some(l)) => Some(if h.0 <= l.0 { h } else { l }),
            (h, l) => h.or(l),
        };
        let Some((k, loc, file)) = found else {
            return Ok(None);
        };
        Ok(Some((k, Arc::new(read_value(&file, k, loc)?))))
    }

    /// Every segment from `from` on, in order.
    #[cfg(test)]
    pub(crate) fn all_from(&self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut next = self.start(from);
        while let Some((k, v)) = self.next_in(next, u64::MAX)? {
            out.push((k, v.as_ref().clone()));
            match k.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// Moves an older release's `events` tree into the files, once: segments below
    /// `first_seq_available` into the history lane (the back-fill's; `open` then drops what
    /// its progress does not count), the rest into the live lane; the files are synced, then
    /// the tree dropped and sled flushed. A stop part way leaves the tree, and the next open
    /// starts over.
    pub(crate) fn migrate(
        &self,
        db: &sled::Db,
        first_seq_available: u64,
    ) -> Result<(), StoreError> {
        if !db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == TREE.as_bytes())
        {
            return Ok(());
        }
        let tree = db.open_tree(TREE)?;
        let started = std::time::Instant::now();
        self.clear()?;
        let mut n = 0usize;
        let mut batch: Vec<(u64, sled::IVec)> = Vec::new();
        let mut bytes = 0usize;
        let mut history = true;
        for kv in tree.iter() {
            let (k, v) = kv?;
            let seq = crate::codec::key_u64("event key", &k)?;
            if history && seq >= first_seq_available {
                self.flush_batch(&mut batch, history)?;
                history = false;
            }
            bytes += v.len();
            batch.push((seq, v));
            n += 1;
            if batch.len() >= 1024 {
                self.flush_batch(&mut batch, history)?;
            }
        }
        self.flush_batch(&mut batch, history)?;
        self.sync()?;
        drop(tree);
        db.drop_tree(TREE)?;
        db.flush()?;
        if n > 0 {
            tracing::info!(
                segments = n,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "moved the event log out of sled into event files (a data directory of an \
                 older release)"
            );
        }
        Ok(())
    }

    fn flush_batch(
        &self,
        batch: &mut Vec<(u64, sled::IVec)>,
        history: bool,
    ) -> Result<(), StoreError> {
        let refs: Vec<(u64, &[u8])> = batch.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        if history {
            self.history.append(&refs)?;
        } else {
            self.live.append(&refs)?;
        }
        batch.clear();
        Ok(())
    }
}

/// Rewrites the applied segments of the data directory `data` (a node must not have it open)
/// after `edit` changed them: for tools that repair a directory by hand and for the tests that
/// damage one on purpose. Keys are first seqs, values segments (see [`crate::segment`]).
pub fn edit_segments(
    data: &Path,
    edit: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>),
) -> Result<(), StoreError> {
    let lane = Lane::open(&data.join(DIR))?;
    let mut all: BTreeMap<u64, Vec<u8>> = lane.segments(0, u64::MAX)?.into_iter().collect();
    edit(&mut all);
    lane.clear()?;
    let refs: Vec<(u64, &[u8])> = all.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    lane.append(&refs)?;
    lane.sync()
}

fn sidecar_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.idx"))
}

const SIDECAR_MAGIC: &[u8; 8] = b"MUSTEIDX";
/// First seq u64, offset u64, payload length u32.
const SIDECAR_ENTRY: usize = 20;

/// Writes a sealed file's index beside it (`NNNNNNNN.idx`: magic, format u32, an entry per
/// segment, crc32 of all before it), from `index`'s entries of that file (the last ones). It
/// can be rebuilt from the file, so it is not synced, and failing to write it only costs the
/// next open a scan (logged).
fn write_sidecar(dir: &Path, number: u32, index: &BTreeMap<u64, Loc>) {
    let mut entries: Vec<(u64, Loc)> = index
        .iter()
        .rev()
        .skip_while(|(_, l)| l.file > number)
        .take_while(|(_, l)| l.file == number)
        .map(|(k, l)| (*k, *l))
        .collect();
    entries.reverse();
    let mut buf = Vec::with_capacity(16 + entries.len() * SIDECAR_ENTRY);
    buf.extend_from_slice(SIDECAR_MAGIC);
    buf.extend_from_slice(&FORMAT.to_be_bytes());
    for (k, l) in &entries {
        buf.extend_from_slice(&k.to_be_bytes());
        buf.extend_from_slice(&l.at.to_be_bytes());
        buf.extend_from_slice(&l.len.to_be_bytes());
    }
    buf.extend_from_slice(&crc32fast::hash(&buf).to_be_bytes());
    let tmp = dir.join(format!("{number:08}.idx.tmp"));
    let written =
        std::fs::write(&tmp, &buf).and_then(|()| std::fs::rename(&tmp, sidecar_path(dir, number)));
    if let Err(e) = written {
        tracing::warn!(file = number, error = %e, "could not write an event file's sidecar index");
    }
}

/// A sealed file's index from its sidecar, if that is whole and describes the whole file
/// (`len` bytes); `None` sends the caller to the file itself.
fn read_sidecar(dir: &Path, number: u32, len: u64) -> Option<Vec<(u64, Loc)>> {
    let buf = std::fs::read(sidecar_path(dir, number)).ok()?;
    let body_len = buf.len().checked_sub(4)?;
    let (body, crc) = buf.split_at(body_len);
    if body.len() < 12
        || &body[..8] != SIDECAR_MAGIC
        || body[8..12] != FORMAT.to_be_bytes()
        || (body.len() - 12) % SIDECAR_ENTRY != 0
        || crc32fast::hash(body).to_be_bytes() != crc
    {
        return None;
    }
    let mut end = PREAMBLE;
    let mut out = Vec::with_capacity((body.len() - 12) / SIDECAR_ENTRY);
    for e in body[12..].chunks_exact(SIDECAR_ENTRY) {
        let k = u64::from_be_bytes(e[..8].try_into().ok()?);
        let at = u64::from_be_bytes(e[8..16].try_into().ok()?);
        let frame_len = u32::from_be_bytes(e[16..20].try_into().ok()?);
        if at != end {
            return None;
        }
        end = at + FRAME_HEAD + u64::from(frame_len);
        out.push((
            k,
            Loc {
                file: number,
                at,
                len: frame_len,
            },
        ));
    }
    (end == len).then_some(out)
}

fn remove_sidecar(dir: &Path, number: u32) -> Result<(), StoreError> {
    match std::fs::remove_file(sidecar_path(dir, number)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes file `number` and its sidecar.
fn remove_numbered(dir: &Path, number: u32) -> Result<(), StoreError> {
    remove_sidecar(dir, number)?;
    std::fs::remove_file(file_path(dir, number))?;
    Ok(())
}

/// Reads one segment's frame and checks it.
fn read_value(file: &File, key: u64, loc: Loc) -> Result<Vec<u8>, StoreError> {
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
    let (k, value) = split_entry(WHAT, payload)?;
    if k != key.to_be_bytes() {
        return Err(StoreError::corrupt(
            WHAT,
            format!("the segment at offset {} is not seq {key}'s", loc.at),
        ));
    }
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

    fn segs(lane: &Lane, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        lane.segments(from, to).unwrap()
    }

    fn all(lane: &Lane) -> Vec<(u64, Vec<u8>)> {
        segs(lane, 0, u64::MAX)
    }

    #[test]
    fn appends_read_back_across_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let files = Lane::open(dir.path()).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (0..50).map(|i| (1 + i * 10, seg(i))).collect();
        for chunk in want.chunks(7) {
            let refs: Vec<(u64, &[u8])> = chunk.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            files.append(&refs).unwrap();
        }
        files.sync().unwrap();
        assert_eq!(all(&files), want);
        assert_eq!(
            segs(&files, 25, 40),
            want[2..4].to_vec(),
            "from the segment holding 25"
        );
        assert!(
            files.append(&[(5, b"old".as_slice())]).is_err(),
            "not after the last"
        );
        drop(files);

        let files = Lane::open(dir.path()).unwrap();
        assert_eq!(all(&files), want);
        files.append(&[(1000, b"more".as_slice())]).unwrap();
        drop(files);
        // A write cut short: half of the last frame.
        let path = file_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let files = Lane::open(dir.path()).unwrap();
        assert_eq!(all(&files), want, "the torn segment is gone, the rest kept");
        files.append(&[(1000, b"again".as_slice())]).unwrap();
        assert_eq!(segs(&files, 1000, 1000), vec![(1000, b"again".to_vec())]);
    }

    #[test]
    fn truncate_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let files = Lane::open(dir.path()).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (0..20).map(|i| (1 + i, seg(i))).collect();
        let refs: Vec<(u64, &[u8])> = want.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        files.append(&refs).unwrap();
        assert_eq!(files.truncate_after(10).unwrap(), 10);
        assert_eq!(all(&files), want[..10].to_vec());
        files.append(&[(11, b"eleven".as_slice())]).unwrap();
        drop(files);
        let files = Lane::open(dir.path()).unwrap();
        assert_eq!(files.len(), 11);
        assert_eq!(segs(&files, 11, 11), vec![(11, b"eleven".to_vec())]);
        files.clear().unwrap();
        assert_eq!(files.len(), 0);
        drop(files);
        assert_eq!(Lane::open(dir.path()).unwrap().len(), 0);
    }

    /// Sealed files get a sidecar index, and an open reads that instead of the file; a sidecar
    /// that does not describe its file is ignored (and written again).
    #[test]
    fn sealed_files_are_opened_from_their_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let lane = Lane::open_rolling_at(dir.path(), 100).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (1..=12).map(|k| (k * 3, seg(k))).collect();
        for (k, v) in &want {
            lane.append(&[(*k, v.as_slice())]).unwrap();
        }
        lane.sync().unwrap();
        let sealed = numbers(dir.path()).unwrap();
        assert!(sealed.len() > 3, "{sealed:?}");
        let (last, sealed) = sealed.split_last().unwrap();
        for n in sealed {
            assert!(sidecar_path(dir.path(), *n).exists(), "file {n}");
        }
        assert!(!sidecar_path(dir.path(), *last).exists());
        drop(lane);
        let lane = Lane::open_rolling_at(dir.path(), 100).unwrap();
        assert_eq!(all(&lane), want);
        drop(lane);

        // Damage in a sealed file's frame is not seen at open (the sidecar stands for it)...
        let n = sealed[1];
        let path = file_path(dir.path(), n);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let lane = Lane::open_rolling_at(dir.path(), 100).unwrap();
        // ...but when the segment is read.
        assert!(lane.segments(0, u64::MAX).is_err());
        drop(lane);
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();

        // A sidecar that does not match its file (here: a torn one) is rebuilt from the file.
        let side = sidecar_path(dir.path(), n);
        let good = std::fs::read(&side).unwrap();
        std::fs::write(&side, &good[..good.len() - 3]).unwrap();
        std::fs::write(dir.path().join("00000000.idx.tmp"), b"half").unwrap();
        let lane = Lane::open_rolling_at(dir.path(), 100).unwrap();
        assert_eq!(all(&lane), want);
        assert_eq!(std::fs::read(&side).unwrap(), good);
        assert!(!dir.path().join("00000000.idx.tmp").exists());

        // Truncating into a sealed file drops the later files and the sidecars.
        assert!(lane.truncate_after(want[2].0).unwrap() > 0);
        assert_eq!(all(&lane), want[..3].to_vec());
        let left = numbers(dir.path()).unwrap();
        assert!(!sidecar_path(dir.path(), *left.last().unwrap()).exists());
        drop(lane);
        let lane = Lane::open_rolling_at(dir.path(), 100).unwrap();
        assert_eq!(all(&lane), want[..3].to_vec());
        lane.clear().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// An append that fails (a full disk) drops what it indexed and stops the lane's appends
    /// (its file may end in part of a frame); the next open cuts that tail and appends go on.
    #[test]
    fn a_failed_append_stops_appends_until_the_next_open() {
        let Some(fs) = crate::tmpfs::Tmpfs::mount(1) else {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        };
        let dir = fs.0.join("lane");
        let lane = Lane::open(&dir).unwrap();
        lane.append(&[(1, b"one")]).unwrap();
        fs.fill();
        let big = vec![7u8; 2 << 20];
        assert!(lane.append(&[(2, &big)]).is_err());
        std::fs::remove_file(fs.0.join("ballast")).unwrap();
        assert!(
            lane.append(&[(3, b"three")]).is_err(),
            "no appends after a failed one"
        );
        assert_eq!(all(&lane), vec![(1, b"one".to_vec())]);
        drop(lane);
        let lane = Lane::open(&dir).unwrap();
        assert_eq!(all(&lane), vec![(1, b"one".to_vec())]);
        lane.append(&[(2, b"two")]).unwrap();
        drop(lane);
        assert_eq!(
            all(&Lane::open(&dir).unwrap()),
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
    }

    /// Both lanes read as one log; each drops only its own tail; an install's leftovers go as
    /// a whole.
    #[test]
    fn lanes_merge_and_drop_their_own_tails() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventFiles::open(dir.path()).unwrap();
        let v = |s: u64| seg(s);
        log.append(&[(100, &v(100)), (110, &v(110)), (120, &v(120))])
            .unwrap();
        log.append_history(&[(1, &v(1)), (50, &v(50))]).unwrap();
        let keys = |log: &EventFiles| -> Vec<u64> {
            log.all_from(0)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(&log), vec![1, 50, 100, 110, 120]);
        assert!(log.drop_below(105).is_err(), "seqs on both sides");
        assert_eq!(log.start(60), 50);
        assert_eq!(log.start(115), 110);
        assert_eq!(log.next_in(51, 200).unwrap().unwrap().0, 100);
        // A chunk written again (its progress was lost) replaces what it overlaps.
        log.append_history(&[(50, &v(51)), (70, &v(70))]).unwrap();
        assert_eq!(keys(&log), vec![1, 50, 70, 100, 110, 120]);
        assert_eq!(log.truncate_after(105).unwrap(), 2);
        assert_eq!(log.truncate_history_from(50).unwrap(), 2);
        assert_eq!(keys(&log), vec![1, 100]);
        assert_eq!(log.drop_below(50).unwrap(), 0);
        log.sync().unwrap();
        drop(log);
        let log = EventFiles::open(dir.path()).unwrap();
        assert_eq!(keys(&log), vec![1, 100]);
        assert_eq!(log.drop_below(200).unwrap(), 1);
        assert_eq!(keys(&log), vec![1]);
        log.clear().unwrap();
        assert_eq!(log.len(), 0);
    }

    /// An older release's `events` tree moves into the lanes once; a stop before the tree was
    /// dropped starts over.
    #[test]
    fn an_events_tree_moves_into_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let tree = db.open_tree(TREE).unwrap();
        for k in [3u64, 7, 20, 30] {
            tree.insert(k.to_be_bytes(), seg(k)).unwrap();
        }
        let log = EventFiles::open(dir.path()).unwrap();
        log.append(&[(1, b"left by a stopped move")]).unwrap();
        log.migrate(&db, 20).unwrap();
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == TREE.as_bytes()));
        let want: Vec<(u64, Vec<u8>)> = [3u64, 7, 20, 30].iter().map(|k| (*k, seg(*k))).collect();
        assert_eq!(log.all_from(0).unwrap(), want);
        assert_eq!(log.history.len(), 2, "below 20: the back-fill's lane");
        log.migrate(&db, 20).unwrap();
        assert_eq!(log.all_from(0).unwrap(), want, "once");
    }

    #[test]
    fn edits_rewrite_the_live_lane() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventFiles::open(dir.path()).unwrap();
        log.append(&[(1, b"one"), (2, b"two")]).unwrap();
        drop(log);
        edit_segments(dir.path(), |m| {
            m.remove(&1);
            m.insert(5, b"five".to_vec());
        })
        .unwrap();
        let log = EventFiles::open(dir.path()).unwrap();
        assert_eq!(
            log.all_from(0).unwrap(),
            vec![(2, b"two".to_vec()), (5, b"five".to_vec())]
        );
    }

    #[test]
    fn a_damaged_frame_in_the_middle_is_an_error_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = Lane::open(dir.path()).unwrap();
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
        let err = Lane::open(dir.path()).unwrap_err();
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
    let files = Lane::open(dir.path()).unwrap();
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
    let files = Lane::open(dir.path()).unwrap();
    eprintln!("opened {} segments in {:?}", files.len(), started.elapsed());
}

/// Opens the event files of a kept data directory (`benches/cold_rss.sh`'s `KEEP`) without
/// opening sled, which would write its snapshot and make the next restart cheaper: writes the
/// sidecars a directory from before them lacks (what a node's first start does), then times a
/// second open. `MUSTER_KEPT_DATA=/dir cargo test --release -p muster-store --lib event_files_open_kept -- --ignored --nocapture`
#[cfg(test)]
#[test]
#[ignore = "needs a kept data directory; run by hand"]
fn event_files_open_kept() {
    let Ok(dir) = std::env::var("MUSTER_KEPT_DATA") else {
        eprintln!("set MUSTER_KEPT_DATA");
        return;
    };
    for pass in ["first", "second"] {
        let started = std::time::Instant::now();
        let files = EventFiles::open(Path::new(&dir)).unwrap();
        eprintln!(
            "{pass} open: {} segments in {:?}",
            files.len(),
            started.elapsed()
        );
    }
}
