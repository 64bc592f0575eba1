//! Offline reading of a node's data directory: the event log, its hash chain, the stored snapshot,
//! replays of the log, exports, and per-job timelines. This is what `muster audit` runs on; the
//! export and timeline shapes live here (not in the CLI) so an online API can reuse them.
//!
//! Only *applied* events are read: after a `kill -9`, entries that were committed to the Raft log
//! but not yet applied (apply does not flush) are not in the event log until the node restarts
//! and re-applies them. The log this module reads is therefore always a prefix of the node's
//! history, never a different history.
//!
//! sled has no read-only mode: [`AuditLog::open`] opens the database like the server does (sled
//! may tidy its own files on open) but this module never writes a key. sled locks the directory,
//! so opening it while a server holds it fails with [`StoreError::InUse`]; stop the node (or copy
//! its directory) first.

use std::io::{self, BufRead, Write};
use std::path::Path;

use muster_domain::{apply, evolve, Event, Principal, State};
use muster_types::{JobId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::chain::{chain_hash, from_hex, to_hex, Hash, GENESIS};
use crate::codec::{decode_event, decode_record, encode_event, from_json, parse_principal};
use crate::error::StoreError;
use crate::event_index::{EventIndex, JOB_TREE};
use crate::segment::raw_records;
use crate::state_machine::{decode_stored, StoredEvent};
use crate::state_machine::{read_stored, AppliedMeta, SNAPSHOT_DIR};

/// A data directory opened for reading.
#[derive(Debug)]
pub struct AuditLog {
    _db: sled::Db,
    events: crate::event_files::EventFiles,
    meta: sled::Tree,
    snapshot: sled::Tree,
    /// The data directory's snapshot files.
    snapshot_dir: std::path::PathBuf,
    /// The data directory's cold run files.
    cold: crate::cold::ColdRows,
    raft_meta: sled::Tree,
    /// The per-job index, when the directory has a complete one (written by this release).
    index: Option<EventIndex>,
}

/// What the metadata says about the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogInfo {
    /// The oldest seq the directory holds (after 1 only on a replica seeded by a snapshot).
    pub first_seq: u64,
    /// The newest applied seq (0: no events).
    pub last_seq: u64,
    /// The hash of event `last_seq`, as the metadata records it.
    pub chain_head: Hash,
    /// The seq the stored snapshot ends at, if there is one.
    pub snapshot_seq: Option<u64>,
    /// Raft log entries known committed but not applied: a node stopped by `kill -9` (apply
    /// does not flush) applies them again when it restarts, and only then are their events in
    /// this log. Not an error: the log read here is a prefix of the node's history.
    pub committed_unapplied: u64,
}

/// The stored snapshot's content.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub last_seq: u64,
    pub chain_head: Hash,
    pub state: State,
}

/// The outcome of [`AuditLog::verify`].
#[derive(Debug, Clone)]
pub struct Verification {
    pub info: LogInfo,
    /// Records whose hashes were checked.
    pub checked: u64,
    /// The first problem: the seq it is at, and what it is. `None`: the log is intact.
    pub failure: Option<Broken>,
    /// What else is worth knowing (where the chain was anchored, the projection comparison).
    pub notes: Vec<String>,
}

/// A break in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Where [`AuditLog::replay`] stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplayTo {
    /// Every applied event.
    End,
    /// Events up to and including this seq.
    Seq(u64),
    /// Events stamped at or before this time.
    Time(Timestamp),
}

/// A state rebuilt from the log.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub state: State,
    /// The seq of the newest event included (0: none).
    pub last_seq: u64,
    /// The seq replay started after: 0, or the stored snapshot's when the log starts later.
    pub base_seq: u64,
    /// The time of the newest event included.
    pub last_at: Option<Timestamp>,
    /// Only for [`ReplayTo::Time`]: the first event after the stop that is stamped at or before
    /// the time again (a leader whose clock was behind the previous one's). Replay stops at the
    /// first event stamped after the time, so the state shown is one the node really had; this
    /// says that later events carry earlier stamps and were left out.
    pub clock_went_back: Option<u64>,
}

fn map_open_error(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::InUse(dir.display().to_string())
        }
        other => StoreError::Sled(other),
    }
}

impl AuditLog {
    /// Opens an existing data directory; refuses a directory that holds no store (instead of
    /// creating one) and one that a server holds.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("db").is_file() || !dir.join("conf").is_file() {
            return Err(StoreError::NotADataDir(dir.display().to_string()));
        }
        // A holder that is letting go (a server just exited, a store just dropped in this
        // process) releases sled's lock a moment later: wait briefly before calling it in use.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => break db,
                Err(e) => match map_open_error(dir, e) {
                    StoreError::InUse(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => return Err(other),
                },
            }
        };
        let meta = db.open_tree("sm_meta")?;
        // Opened only when present: an older directory is not given empty trees here.
        let has_index = db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == JOB_TREE.as_bytes());
        let index = if has_index && EventIndex::is_complete(&meta)? {
            Some(EventIndex::open(&db)?)
        } else {
            None
        };
        let events = crate::event_files::EventFiles::open(dir)?;
        // An older release's directory: its events move into files as a node's open would
        // move them.
        events.migrate(&db, AppliedMeta::read(&meta)?.0.first_seq)?;
        Ok(AuditLog {
            events,
            index,
            meta,
            snapshot: db.open_tree("snapshot")?,
            snapshot_dir: dir.join(SNAPSHOT_DIR),
            cold: {
                let rows = crate::cold::ColdRows::at(dir.join(crate::cold::DIR));
                if db
                    .tree_names()
                    .iter()
                    .any(|n| n.as_ref() == crate::cold::TREE.as_bytes())
                {
                    // An older release's directory: its rows move into files as a node's
                    // open would move them.
                    let rows = crate::cold::ColdRows::open(dir.join(crate::cold::DIR))?;
                    crate::cold::migrate(&db, &rows)?;
                }
                rows
            },
            raft_meta: db.open_tree("raft_meta")?,
            _db: db,
        })
    }

    /// `(first_seq, last_seq)`: the seqs readers see.
    fn applied_range(&self) -> Result<(u64, u64), StoreError> {
        let (meta, _) = AppliedMeta::read(&self.meta)?;
        Ok((meta.first_seq, meta.last_seq))
    }

    pub fn info(&self) -> Result<LogInfo, StoreError> {
        let (meta, _) = AppliedMeta::read(&self.meta)?;
        let applied = meta.last_applied;
        let committed: Option<crate::types::LogId> = match self.raft_meta.get(b"committed")? {
            Some(v) => Some(from_json("raft metadata", &v)?),
            None => None,
        };
        let committed_unapplied = match (committed, applied) {
            (Some(c), Some(a)) => c.index.saturating_sub(a.index),
            (Some(c), None) => c.index + 1,
            (None, _) => 0,
        };
        Ok(LogInfo {
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            chain_head: meta.chain_head,
            snapshot_seq: self.snapshot()?.map(|s| s.last_seq),
            committed_unapplied,
        })
    }

    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let Some((h, mut state)) = read_stored(&self.snapshot, &self.snapshot_dir)? else {
            return Ok(None);
        };
        // Offline tools work on the complete state (a replay never spills): the rows of the
        // snapshot's cold runs, which the directory's run files hold, go back in.
        state
            .restore_rows(&self.cold)
            .map_err(|e| StoreError::corrupt("snapshot", e))?;
        Ok(Some(StoredSnapshot {
            last_seq: h.last_seq,
            chain_head: h.chain_head,
            state,
        }))
    }

    /// The applied events with `from <= seq <= to`, in order, decoded (not hash-checked; see
    /// [`verify`](Self::verify)). A record stored under another seq is an error.
    pub fn events(
        &self,
        from: u64,
        to: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Event), StoreError>> + '_, StoreError> {
        // Records below `first_seq` are an unfinished back-fill's, not yet part of the log.
        let (first, last_seq) = self.applied_range()?;
        Ok(
            raw_records(&self.events, from.max(first), to.min(last_seq)).map(|r| {
                let r = r?;
                Ok((r.seq, crate::codec::decode_record_event(r.seq, r.bytes())?))
            }),
        )
    }

    /// Walks the hash chain from the first stored event to `last_seq`, then checks that the
    /// end of the chain is the head the metadata records and that replaying the log with
    /// `evolve` reproduces the stored snapshot's state. Stops at the first problem.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let info = self.info()?;
        let snapshot = self.snapshot()?;
        let mut notes = Vec::new();
        let mut v = Verification {
            info: info.clone(),
            checked: 0,
            failure: None,
            notes: Vec::new(),
        };
        let fail = |mut v: Verification,
                    notes: Vec<String>,
                    seq: u64,
                    reason: String|
         -> Result<Verification, StoreError> {
            v.failure = Some(Broken { seq, reason });
            v.notes = notes;
            Ok(v)
        };

        // Where the chain starts, and the state replay starts from.
        let (mut prev, mut state): (Option<Hash>, Option<State>) = if info.first_seq == 1 {
            (Some(GENESIS), Some(State::default()))
        } else {
            match &snapshot {
                Some(s) if s.last_seq + 1 == info.first_seq => {
                    notes.push(format!(
                        "the log starts at seq {}: the chain and the replay start from the \
                         stored snapshot",
                        info.first_seq
                    ));
                    (Some(s.chain_head), Some(s.state.clone()))
                }
                _ => {
                    notes.push(format!(
                        "the log starts at seq {} and no snapshot ends just before it: the \
                         first record's hash is taken as given and the projections are not \
                         compared",
                        info.first_seq
                    ));
                    (None, None)
                }
            }
        };
        let snap_seq = snapshot.as_ref().map(|s| s.last_seq);
        if info.committed_unapplied > 0 {
            notes.push(format!(
                "{} Raft log entries are committed but not applied (the node stopped without \
                 applying them, e.g. kill -9); their events appear here once the node has \
                 restarted",
                info.committed_unapplied
            ));
        }

        let mut expected = info.first_seq;
        let end = info.last_seq.saturating_add(1);
        if info.first_seq <= info.last_seq {
            for r in raw_records(&self.events, info.first_seq, info.last_seq) {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => return fail(v, notes, expected, format!("unreadable: {e}")),
                };
                let key = r.seq;
                if key < expected {
                    return fail(
                        v,
                        notes,
                        key,
                        "seq is stored twice (a segment overlaps the one before)".into(),
                    );
                }
                if key > expected {
                    return fail(v, notes, expected, "event is missing".into());
                }
                let record = match decode_record(r.bytes()) {
                    Ok(r) => r,
                    Err(e) => return fail(v, notes, key, format!("record does not decode: {e}")),
                };
                if record.seq != key {
                    return fail(
                        v,
                        notes,
                        key,
                        format!("record of seq {} is stored at seq {key}", record.seq),
                    );
                }
                let stored: Hash = match record.hash.as_slice().try_into() {
                    Ok(h) => h,
                    Err(_) => {
                        return fail(
                            v,
                            notes,
                            key,
                            format!("hash of {} bytes", record.hash.len()),
                        )
                    }
                };
                if let Err(e) = parse_principal(key, &record.principal) {
                    return fail(v, notes, key, format!("principal does not parse: {e}"));
                }
                if let Some(p) = prev {
                    if chain_hash(&p, key, &record.principal, &record.event) != stored {
                        return fail(
                            v,
                            notes,
                            key,
                            "hash does not match the event, its principal and the previous hash"
                                .into(),
                        );
                    }
                }
                let event = match decode_event(&record.event) {
                    Ok(e) => e,
                    Err(e) => return fail(v, notes, key, format!("event does not decode: {e}")),
                };
                if let Some(s) = state.as_mut() {
                    evolve(s, &event);
                }
                if let (Some(snap), Some(s)) = (&snapshot, &state) {
                    if snap.last_seq == key {
                        if snap.chain_head != stored {
                            return fail(
                                v,
                                notes,
                                key,
                                "the snapshot's chain head differs from the log's".into(),
                            );
                        }
                        if &snap.state != s {
                            return fail(
                                v,
                                notes,
                                key,
                                "replaying the log does not reproduce the stored snapshot".into(),
                            );
                        }
                        notes.push(format!(
                            "the replayed state equals the stored snapshot at seq {key}"
                        ));
                    }
                }
                prev = Some(stored);
                v.checked += 1;
                expected += 1;
            }
            if expected != end {
                return fail(v, notes, expected, "event is missing".into());
            }
        }
        if let Some(p) = prev {
            if p != info.chain_head {
                return fail(
                    v,
                    notes,
                    info.last_seq,
                    format!(
                        "the chain ends at {} but the metadata records head {}",
                        to_hex(&p),
                        to_hex(&info.chain_head)
                    ),
                );
            }
        }
        if let Some(s) = snap_seq {
            if s > info.last_seq {
                return fail(
                    v,
                    notes,
                    s,
                    format!(
                        "the snapshot ends at seq {s}, after the last applied seq {}",
                        info.last_seq
                    ),
                );
            }
        }
        let leftovers = raw_records(&self.events, end, u64::MAX).count();
        if leftovers > 0 {
            notes.push(format!(
                "{leftovers} record(s) after seq {} are not applied (an interrupted apply; \
                 the node deletes them when it restarts and the re-apply of the committed entries \
                 writes them again)",
                info.last_seq
            ));
        }
        v.notes = notes;
        Ok(v)
    }

    /// Rebuilds the state from the log alone: from an empty state, or from the stored snapshot
    /// when this directory's log starts after seq 1 (a replica seeded by a snapshot).
    pub fn replay(&self, to: ReplayTo) -> Result<Replayed, StoreError> {
        let info = self.info()?;
        let (state, base_seq) = if info.first_seq == 1 {
            (State::default(), 0)
        } else {
            match self.snapshot()? {
                Some(s) if s.last_seq + 1 >= info.first_seq => (s.state, s.last_seq),
                _ => {
                    return Err(StoreError::corrupt(
                        "events",
                        format!(
                            "the log starts at seq {} and no snapshot covers the events before it",
                            info.first_seq
                        ),
                    ))
                }
            }
        };
        if let ReplayTo::Seq(n) = to {
            if n < base_seq {
                return Err(StoreError::corrupt(
                    "events",
                    format!("events up to seq {base_seq} are only in this directory's snapshot"),
                ));
            }
        }
        let mut out = Replayed {
            state,
            last_seq: base_seq,
            base_seq,
            last_at: None,
            clock_went_back: None,
        };
        let to_seq = match to {
            ReplayTo::Seq(n) => n,
            _ => u64::MAX,
        };
        // Reading and decoding are about two thirds of the time, applying the rest (see
        // BENCHMARKS.md): with a second core, two threads read and decode alternate chunks of
        // seqs while this one applies them in order. On one core the hand-over only costs.
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            let events = self.events(base_seq + 1, to_seq)?;
            replay_into(&mut out, to, events)?;
            return Ok(out);
        }
        let last = to_seq.min(info.last_seq);
        std::thread::scope(|scope| {
            let mut feeds = Vec::with_capacity(REPLAY_READERS);
            for reader in 0..REPLAY_READERS {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<EventItem>>(2);
                feeds.push(rx);
                std::thread::Builder::new()
                    .name(format!("replay-reader-{reader}"))
                    .spawn_scoped(scope, move || {
                        self.read_chunks(base_seq + 1, last, reader, tx)
                    })
                    .map_err(StoreError::Io)?;
            }
            // Chunk k comes from reader k % REPLAY_READERS; a reader hangs up after its last
            // chunk (or an error), and the first hang-up in turn is the end of the log.
            let chunks = (0..).map_while(|k: usize| feeds[k % REPLAY_READERS].recv().ok());
            let result = replay_into(&mut out, to, chunks.flatten());
            // Dropping the receivers stops readers that are still ahead (an error, `--at`).
            drop(feeds);
            result
        })?;
        Ok(out)
    }

    /// Reads and decodes chunks `reader`, `reader + REPLAY_READERS`, ... of the seqs
    /// `from..=last` (chunk k is `from + k * REPLAY_CHUNK` onwards), sending each, in order, even
    /// when it is empty; stops after an error or when the receiver is gone.
    fn read_chunks(
        &self,
        from: u64,
        last: u64,
        reader: usize,
        tx: std::sync::mpsc::SyncSender<Vec<EventItem>>,
    ) {
        let chunk = REPLAY_CHUNK as u64;
        let mut lo = from + reader as u64 * chunk;
        while lo <= last {
            let hi = lo.saturating_add(chunk - 1).min(last);
            let items: Vec<EventItem> = match self.events(lo, hi) {
                Ok(events) => {
                    let mut items = Vec::with_capacity(REPLAY_CHUNK);
                    for item in events {
                        let failed = item.is_err();
                        items.push(item);
                        if failed {
                            break;
                        }
                    }
                    items
                }
                Err(e) => vec![Err(e)],
            };
            let failed = items.last().is_some_and(Result::is_err);
            if tx.send(items).is_err() || failed {
                return;
            }
            lo = lo.saturating_add(chunk * REPLAY_READERS as u64);
        }
    }
}

/// One decoded event from the log, or why it could not be read.
type EventItem = Result<(u64, Event), StoreError>;

/// Events handed from a reading thread to the applying one at a time.
const REPLAY_CHUNK: usize = 4096;

/// Threads reading and decoding the log for [`AuditLog::replay`].
const REPLAY_READERS: usize = 2;

/// Applies `events` (in seq order) to `out` up to `to`; for `--at`, also finds the first later
/// event stamped at or before the moment (the clock went back after a leader change).
fn replay_into(
    out: &mut Replayed,
    to: ReplayTo,
    events: impl Iterator<Item = EventItem>,
) -> Result<(), StoreError> {
    let mut events = events;
    for item in events.by_ref() {
        let (seq, event) = item?;
        let at = event.at();
        if let ReplayTo::Time(t) = to {
            if at > t {
                break;
            }
        }
        apply(&mut out.state, event);
        out.last_seq = seq;
        out.last_at = Some(at);
    }
    if let ReplayTo::Time(t) = to {
        for item in events {
            let (seq, event) = item?;
            if event.at() <= t {
                out.clock_went_back = Some(seq);
                break;
            }
        }
    }
    Ok(())
}

/// The formats of [`AuditLog::export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// One JSON object a line (see [`ExportRow`]): the format [`replay_export`] reads back.
    #[default]
    Jsonl,
    /// `seq,time,type,job,device,principal,body` with the body as JSON, for spreadsheets.
    Csv,
}

/// Which events [`AuditLog::export`] writes.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub from_seq: u64,
    /// Inclusive; `None`: to the newest applied event.
    pub to_seq: Option<u64>,
    /// Only this job's events. Such an export has gaps, so it cannot be replayed.
    pub job: Option<String>,
}

/// One line of a JSON Lines export as it is written. `body` is the whole event (serde's
/// externally tagged form of [`Event`]), so an export can be replayed without the data directory;
/// `hash` is the stored chain link, so a complete export can be checked against the chain head
/// `muster audit verify` prints; `principal` is who the event's command was written on behalf
/// of (`system` for the leader's own commands and for records older than principals).
#[derive(Debug, Serialize)]
struct ExportRowOut<'a> {
    seq: u64,
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    job: Option<&'a str>,
    device: Option<&'a str>,
    principal: String,
    hash: &'a str,
    body: &'a Event,
}

/// One line of a JSON Lines export as [`replay_export`] reads it (the other columns are derived
/// from the body and ignored). Exports written before the `hash` column replay without the chain
/// check; a row without `principal` (an export older than principals) is `system`'s.
#[derive(Debug, Deserialize)]
pub struct ExportRow {
    pub seq: u64,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub principal: Option<String>,
    pub body: Event,
}

/// How many events an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    pub events: u64,
    pub bytes: u64,
}

/// Counts what passes through, so callers learn the size of what they wrote.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn io_error(e: io::Error) -> StoreError {
    StoreError::Io(e)
}

fn json_error(e: serde_json::Error) -> StoreError {
    if e.is_io() {
        StoreError::Io(e.into())
    } else {
        StoreError::corrupt("json encoding", e)
    }
}

impl AuditLog {
    /// The applied records with `from <= seq <= to`: seq, decoded event, stored hash (not
    /// checked; see [`verify`](Self::verify)) and principal.
    pub fn records(
        &self,
        from: u64,
        to: u64,
    ) -> Result<impl Iterator<Item = Result<StoredEvent, StoreError>> + '_, StoreError> {
        // Records below `first_seq` are an unfinished back-fill's, not yet part of the log.
        let (first, last_seq) = self.applied_range()?;
        Ok(
            raw_records(&self.events, from.max(first), to.min(last_seq)).map(|r| {
                let r = r?;
                decode_stored(r.seq, r.bytes())
            }),
        )
    }

    /// Writes the selected events to `out`, one a line. The writer is not flushed.
    pub fn export(
        &self,
        filter: &ExportFilter,
        format: ExportFormat,
        out: impl Write,
    ) -> Result<ExportStats, StoreError> {
        let mut out = Counting {
            inner: out,
            bytes: 0,
        };
        let mut stats = ExportStats::default();
        if format == ExportFormat::Csv {
            writeln!(out, "seq,time,type,job,device,principal,body").map_err(io_error)?;
        }
        let mut body = Vec::new();
        let to = filter.to_seq.unwrap_or(u64::MAX);
        let items = match filter.job.as_deref().and_then(|j| JobId::new(j).ok()) {
            Some(job) if self.index.is_some() => self.job_records(job, filter.from_seq, to)?,
            _ => Box::new(self.records(filter.from_seq, to)?),
        };
        for item in items {
            let StoredEvent {
                seq,
                event,
                hash,
                principal,
            } = item?;
            let job = event.job().map(|j| j.as_str());
            if filter.job.as_deref().is_some_and(|want| job != Some(want)) {
                continue;
            }
            let device = event.device().map(|d| d.as_str());
            match format {
                ExportFormat::Jsonl => {
                    let row = ExportRowOut {
                        seq,
                        time: event.at().to_rfc3339(),
                        kind: event.kind(),
                        job,
                        device,
                        principal: principal.to_string(),
                        hash: &to_hex(&hash),
                        body: &event,
                    };
                    serde_json::to_writer(&mut out, &row).map_err(json_error)?;
                    out.write_all(b"\n").map_err(io_error)?;
                }
                ExportFormat::Csv => {
                    body.clear();
                    serde_json::to_writer(&mut body, &event).map_err(json_error)?;
                    let body = String::from_utf8_lossy(&body);
                    writeln!(
                        out,
                        "{seq},{},{},{},{},{},{}",
                        event.at().to_rfc3339(),
                        event.kind(),
                        csv_field(job.unwrap_or("")),
                        csv_field(device.unwrap_or("")),
                        csv_field(&principal.to_string()),
                        csv_field(&body)
                    )
                    .map_err(io_error)?;
                }
            }
            stats.events += 1;
        }
        stats.bytes = out.bytes;
        Ok(stats)
    }

    /// One job's history in order; see [`Timeline`].
    pub fn timeline(&self, job: &JobId) -> Result<Timeline, StoreError> {
        let mut t = Timeline::new(job.clone());
        let items = if self.index.is_some() {
            self.job_records(job.clone(), 1, u64::MAX)?
        } else {
            Box::new(self.records(1, u64::MAX)?)
        };
        for item in items {
            let r = item?;
            t.push(r.seq, r.event, r.principal);
        }
        Ok(t.finish())
    }

    /// One job's records with `from <= seq <= to` through the index ([`Self::index`] must be
    /// there), read a few thousand at a time.
    fn job_records(
        &self,
        job: JobId,
        from: u64,
        to: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<StoredEvent, StoreError>> + '_>, StoreError> {
        let (first, last_seq) = self.applied_range()?;
        let to = to.min(last_seq);
        let mut next = from.max(first);
        let mut buffer = std::collections::VecDeque::new();
        let mut failed = false;
        Ok(Box::new(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            if buffer.is_empty() && next <= to {
                let index = self.index.as_ref()?;
                match index.read_job(&self.events, job.as_str(), next, to, 4096) {
                    Ok(chunk) => {
                        next = match chunk.last() {
                            Some(r) if chunk.len() == 4096 => r.seq + 1,
                            _ => to.saturating_add(1),
                        };
                        buffer.extend(chunk);
                    }
                    Err(e) => {
                        failed = true;
                        return Some(Err(e));
                    }
                }
            }
            buffer.pop_front().map(Ok)
        })))
    }
}

/// The outcome of [`replay_export`].
#[derive(Debug, Clone)]
pub struct ExportReplay {
    pub replayed: Replayed,
    /// Rows whose `hash` was recomputed from the body and matched.
    pub hashes_checked: u64,
    /// Rows holding secrets (shown redacted), whose `hash` was taken as written.
    pub redacted: u64,
    /// The chain link of the last row, when every row carried one and all matched: equal to the
    /// head `muster audit verify` reports on the node, the export is that node's log.
    pub chain_head: Option<Hash>,
}

/// Rebuilds the state from a JSON Lines export alone (no data directory). The export must be
/// complete: rows from seq 1 without gaps (an export with `--job` or a later `--from-seq`, or
/// one from a replica seeded by a snapshot, is refused). When the rows carry hashes the chain
/// is recomputed from each body's protobuf encoding and a mismatch is an error naming the seq.
pub fn replay_export(input: impl BufRead, to: ReplayTo) -> Result<ExportReplay, StoreError> {
    let mut out = ExportReplay {
        replayed: Replayed {
            state: State::default(),
            last_seq: 0,
            base_seq: 0,
            last_at: None,
            clock_went_back: None,
        },
        hashes_checked: 0,
        redacted: 0,
        chain_head: None,
    };
    let mut prev = Some(GENESIS);
    let mut stopped = false;
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::corrupt("export", format!("line {}: {e}", n + 1))
        };
        if stopped {
            // Only looking for a later event stamped at or before the time (see `Replayed`);
            // the time column is enough for that.
            #[derive(Deserialize)]
            struct Head {
                seq: u64,
                time: String,
            }
            let head: Head = serde_json::from_str(&line).map_err(|e| bad(&e))?;
            let at = Timestamp::parse_rfc3339(&head.time).map_err(|e| bad(&e))?;
            if let ReplayTo::Time(t) = to {
                if at <= t {
                    out.replayed.clock_went_back = Some(head.seq);
                    break;
                }
            }
            continue;
        }
        let row: ExportRow = serde_json::from_str(&line).map_err(|e| bad(&e))?;
        let expected = out.replayed.last_seq + 1;
        if row.seq != expected {
            return Err(StoreError::corrupt(
                "export",
                format!(
                    "line {}: seq {} where {expected} was expected (replay needs a complete \
                     export from seq 1, without --job)",
                    n + 1,
                    row.seq
                ),
            ));
        }
        let at = row.body.at();
        match to {
            ReplayTo::Seq(s) if row.seq > s => break,
            ReplayTo::Time(t) if at > t => {
                stopped = true;
                continue;
            }
            _ => {}
        }
        // `system` is stored as no principal (see `crate::chain`); anything else must be a
        // principal's text form, exactly as the record held it.
        let principal = match row.principal.as_deref() {
            None | Some("system") => "",
            Some(text) => {
                parse_principal(row.seq, text).map_err(|e| bad(&e))?;
                text
            }
        };
        match (&row.hash, prev) {
            // Its secrets are redacted in the export, so its bytes cannot be rebuilt: the chain
            // goes on from the hash the record had (`muster audit verify` on a data directory
            // checks these too).
            (Some(hex), Some(_)) if row.body.has_secrets() => {
                prev = Some(from_hex(hex).ok_or_else(|| bad(&"hash is not 64 hex digits"))?);
                out.redacted += 1;
            }
            (Some(hex), Some(p)) => {
                let h = chain_hash(&p, row.seq, principal, &encode_event(&row.body));
                if to_hex(&h) != *hex {
                    return Err(StoreError::corrupt(
                        "export",
                        format!(
                            "seq {}: the hash does not match the event, its principal and the \
                             previous hash",
                            row.seq
                        ),
                    ));
                }
                out.hashes_checked += 1;
                prev = Some(h);
            }
            _ => prev = None,
        }
        apply(&mut out.replayed.state, row.body);
        out.replayed.last_seq = row.seq;
        out.replayed.last_at = Some(at);
    }
    out.chain_head = prev.filter(|_| out.hashes_checked > 0);
    Ok(out)
}

/// Device outcomes summed between two job-level events of a [`Timeline`] (in practice: per
/// batch, since each batch starts with a job-level event).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub first_seq: u64,
    pub first_at: Timestamp,
    pub last_seq: u64,
    pub dispatched: u64,
    pub succeeded: u64,
    /// Failed attempts, timeouts included; `retrying` of them go back for another attempt.
    pub failed: u64,
    pub retrying: u64,
}

/// A line of a [`Timeline`].
// A timeline holds a job's job-level events only (tens of lines), so the size of a line does not
// matter; boxing the event would only make every match on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TimelineEntry {
    /// A job-level event (created, scheduled, started, batch started, devices joined, stopped,
    /// resumed, cancelled, completed, failed, rerun), as it is in the log, with who its command
    /// was written on behalf of.
    Event {
        seq: u64,
        event: Event,
        principal: Principal,
    },
    /// The device events between two job-level events, summed.
    Devices(Outcomes),
}

/// A job's history as people read it: the job-level events, with the (many) per-device events
/// between them summed. Built here rather than in the CLI so an online API can serve the same
/// thing from the live event log: feed [`Timeline::push`] every event in seq order.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub job: JobId,
    pub entries: Vec<TimelineEntry>,
    pending: Option<Outcomes>,
}

impl Timeline {
    pub fn new(job: JobId) -> Self {
        Timeline {
            job,
            entries: Vec::new(),
            pending: None,
        }
    }

    /// Takes the next event of the log and its principal; events of other jobs and registry
    /// events are ignored.
    pub fn push(&mut self, seq: u64, event: Event, principal: Principal) {
        if event.job() != Some(&self.job) {
            return;
        }
        let at = event.at();
        fn sum(p: &mut Option<Outcomes>, seq: u64, at: Timestamp) -> &mut Outcomes {
            let o = p.get_or_insert_with(|| Outcomes {
                first_seq: seq,
                first_at: at,
                ..Outcomes::default()
            });
            o.last_seq = seq;
            o
        }
        match &event {
            Event::DeviceDispatched { .. } => sum(&mut self.pending, seq, at).dispatched += 1,
            Event::DeviceSucceeded { .. } => sum(&mut self.pending, seq, at).succeeded += 1,
            Event::DeviceFailed { retry, .. } => {
                let o = sum(&mut self.pending, seq, at);
                o.failed += 1;
                o.retrying += u64::from(*retry);
            }
            _ => {
                self.close();
                self.entries.push(TimelineEntry::Event {
                    seq,
                    event,
                    principal,
                });
            }
        }
    }

    fn close(&mut self) {
        if let Some(o) = self.pending.take() {
            self.entries.push(TimelineEntry::Devices(o));
        }
    }

    /// Ends the history: device events after the last job-level event become the last entry.
    pub fn finish(mut self) -> Self {
        self.close();
        self
    }
}
