//! Offline reading of a node's data directory: the event log, its hash chain, the stored snapshot,
//! and replays of the log with `evolve`. This is what `muster audit` runs on.
//!
//! sled has no read-only mode: [`AuditLog::open`] opens the database like the server does (sled
//! may tidy its own files on open) but this module never writes a key. sled locks the directory,
//! so opening it while a server holds it fails with [`StoreError::InUse`]; stop the node (or copy
//! its directory) first.

use std::path::Path;

use muster_domain::{evolve, Event, State};
use muster_types::Timestamp;

use crate::chain::{chain_hash, to_hex, Hash, GENESIS};
use crate::codec::{decode_event, decode_record, from_json, key_u64, u64_key};
use crate::error::StoreError;
use crate::state_machine::{
    read_head, read_u64, SnapshotPayload, FIRST_SEQ, LAST_SEQ, SNAPSHOT_DATA, SNAPSHOT_FORMAT,
};

/// A data directory opened for reading.
#[derive(Debug)]
pub struct AuditLog {
    _db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    snapshot: sled::Tree,
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
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| map_open_error(dir, e))?;
        Ok(AuditLog {
            events: db.open_tree("events")?,
            meta: db.open_tree("sm_meta")?,
            snapshot: db.open_tree("snapshot")?,
            _db: db,
        })
    }

    pub fn info(&self) -> Result<LogInfo, StoreError> {
        let last_seq = read_u64(&self.meta, LAST_SEQ)?.unwrap_or(0);
        Ok(LogInfo {
            first_seq: read_u64(&self.meta, FIRST_SEQ)?.unwrap_or(1),
            last_seq,
            chain_head: read_head(&self.meta, last_seq)?,
            snapshot_seq: self.snapshot()?.map(|s| s.last_seq),
        })
    }

    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let Some(data) = self.snapshot.get(SNAPSHOT_DATA)? else {
            return Ok(None);
        };
        let p: SnapshotPayload<State> = from_json("snapshot", &data)?;
        if p.format != SNAPSHOT_FORMAT {
            return Err(StoreError::corrupt(
                "snapshot",
                format!("format {} (this release reads {SNAPSHOT_FORMAT})", p.format),
            ));
        }
        Ok(Some(StoredSnapshot {
            last_seq: p.last_seq,
            chain_head: p.chain_head,
            state: p.state,
        }))
    }

    /// The applied events with `from <= seq <= to`, in order, decoded (not hash-checked; see
    /// [`verify`](Self::verify)). A record stored under another seq is an error.
    pub fn events(
        &self,
        from: u64,
        to: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Event), StoreError>> + '_, StoreError> {
        let last_seq = read_u64(&self.meta, LAST_SEQ)?.unwrap_or(0);
        let to = to.min(last_seq);
        let range = if from > to {
            self.events.range(u64_key(1)..u64_key(1))
        } else {
            self.events.range(u64_key(from)..=u64_key(to))
        };
        Ok(range.map(|kv| {
            let (k, v) = kv?;
            let seq = key_u64("event key", &k)?;
            Ok((seq, crate::codec::decode_record_event(seq, &v)?))
        }))
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

        let mut expected = info.first_seq;
        let end = info.last_seq.saturating_add(1);
        if info.first_seq <= info.last_seq {
            for kv in self.events.range(u64_key(info.first_seq)..u64_key(end)) {
                let (k, bytes) = kv?;
                let key = key_u64("event key", &k)?;
                if key != expected {
                    return fail(v, notes, expected, "event is missing".into());
                }
                let record = match decode_record(&bytes) {
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
                if let Some(p) = prev {
                    if chain_hash(&p, key, &record.event) != stored {
                        return fail(
                            v,
                            notes,
                            key,
                            "hash does not match the event and the previous hash".into(),
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
        let leftovers = self.events.range(u64_key(end)..).count();
        if leftovers > 0 {
            notes.push(format!(
                "{leftovers} record(s) after seq {} are not applied (an interrupted apply; \
                 they are rewritten when the node restarts)",
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
        };
        let to_seq = match to {
            ReplayTo::Seq(n) => n,
            _ => u64::MAX,
        };
        for item in self.events(base_seq + 1, to_seq)? {
            let (seq, event) = item?;
            if let ReplayTo::Time(t) = to {
                if event.at() > t {
                    break;
                }
            }
            evolve(&mut out.state, &event);
            out.last_seq = seq;
            out.last_at = Some(event.at());
        }
        Ok(out)
    }
}
