//! The per-device event index, kept by a background indexer instead of the apply.
//!
//! A device's events are mostly alone in their command (a thousand results name a thousand
//! devices), so indexing them in the apply cost one sled insert per event under the state's
//! write lock: that halved the commit throughput (BENCHMARKS.md, session 9). Here the apply only
//! publishes its events (it does already, for watchers); an indexer thread follows them, gathers
//! each device's seqs in memory and writes them every [`FLUSH_AFTER`] (or every
//! [`FLUSH_EVENTS`] events) as one entry per device: a device dispatched and answered within
//! that time costs one insert, not two or three, and none on the apply's path.
//!
//! Tree `events_by_device`: key = id length u16, device id, first seq u64 (as the job index);
//! value = the entry's other seqs as LEB128 deltas from the previous one. A device's newest
//! entry, the one the indexer appends to, is *open*: its key's seq is `u64::MAX` and its value
//! starts with its first seq (see [`extend_entry`]). The empty key holds
//! the *watermark* (u64): every stored record with `first_seq_available <= seq <= watermark`
//! has its entry. The watermark is written after the entries it covers, so the tree never
//! claims more than it has (plain inserts, not a batch: see [`put_entry`]). A reader takes the entries up to the watermark, the seqs still in memory
//! ([`Pending`]), then walks the few records after those (not yet seen by the indexer), so
//! every answer covers the log up to `last_seq` exactly as a walk would.
//!
//! After a crash the seqs that were in memory are found again: the indexer starts by reading
//! the records after the watermark. Entries are facts about the replicated log (a seq holds the
//! same event on every member), so an entry written late, after a snapshot install cleared the
//! tree, is still true; readers skip seqs whose record is not stored.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::codec::{key_u64, read_varint, u64_key, write_varint};
use crate::error::StoreError;
use crate::event_index::{id_key, id_order, key_seq};
use crate::segment::raw_records;
use crate::state_machine::{decode_stored, Shared, StateUpdate, StoredEvent};

/// The key of the watermark (no entry key is empty: they start with the id's length).
const WATERMARK: &[u8] = b"";
/// How long the indexer gathers seqs before writing them.
const FLUSH_AFTER: Duration = Duration::from_secs(2);
/// Written sooner when this many events wait.
const FLUSH_EVENTS: usize = 262_144;
/// The indexer's nap when it has nothing to read.
const IDLE: Duration = Duration::from_millis(20);
/// Records read per step when catching up from the log.
const CATCH_UP_CHUNK: u64 = 16_384;
/// An entry grows by appending (see [`extend_entry`]) until its value reaches this many bytes:
/// a few dozen seqs, so a device's history is a handful of reads, and rewriting the value on
/// each flush stays cheap.
const ENTRY_BYTES: usize = 96;
/// Entries before `from` a reader looks into: one normally reaches past it at most; a
/// back-fill resumed after a crash may have cut the same seqs differently.
const STRADDLING: usize = 4;

/// Seqs seen by the indexer but not yet written.
#[derive(Debug, Default)]
struct Pending {
    /// The tree has every entry up to here.
    indexed: u64,
    /// Seqs in `(indexed, seen]` by device.
    seqs: HashMap<String, Vec<u64>>,
    seen: u64,
    events: usize,
    since: Option<Instant>,
}

/// The tree and what the indexer holds in memory.
#[derive(Debug, Clone)]
pub(crate) struct DeviceIndex {
    tree: sled::Tree,
    pending: Arc<Mutex<Pending>>,
}

impl DeviceIndex {
    pub(crate) fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let indexed = read_watermark(&tree)?;
        Ok(DeviceIndex {
            tree,
            pending: Arc::new(Mutex::new(Pending {
                indexed,
                seen: indexed,
                ..Pending::default()
            })),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every record up to here is in the tree (tests wait on it).
    pub(crate) fn watermark(&self) -> u64 {
        self.pending().indexed
    }

    /// Empties the tree and the memory; the indexer starts again after `last_seq` (a snapshot
    /// install, or a data directory indexed before this layout).
    pub(crate) fn reset(&self, last_seq: u64) -> Result<(), StoreError> {
        let mut p = self.pending();
        self.tree.clear()?;
        self.tree.insert(WATERMARK, &u64_key(last_seq))?;
        *p = Pending {
            indexed: last_seq,
            seen: last_seq,
            ..Pending::default()
        };
        Ok(())
    }

    /// Forgets what the indexer holds in memory; the indexer starts again after `last_seq`. On
    /// the snapshot-installed message: the install already emptied the tree (under the state's
    /// lock), and a back-fill may have written entries since, which clearing again would lose.
    fn forget(&self, last_seq: u64) {
        *self.pending() = Pending {
            indexed: last_seq,
            seen: last_seq,
            ..Pending::default()
        };
    }

    /// Writes entries for records below the watermark's range (a back-fill), `seqs[i]` naming
    /// the device of the record at that seq.
    pub(crate) fn write_below<'e>(
        &self,
        seqs: impl IntoIterator<Item = (u64, &'e str)>,
    ) -> Result<(), StoreError> {
        let mut by_device: HashMap<&str, Vec<u64>> = HashMap::new();
        for (seq, device) in seqs {
            by_device.entry(device).or_default().push(seq);
        }
        for (device, seqs) in by_device {
            put_entry(&self.tree, device, &seqs)?;
        }
        Ok(())
    }

    /// Up to `limit` records of `device` with `from <= seq <= to`, in seq order.
    pub(crate) fn read(
        &self,
        events: &crate::event_files::EventFiles,
        device: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let in_range = |s: &u64| from <= *s && *s <= to;
        let (indexed, seen, mut wanted) = {
            let p = self.pending();
            let mine: BTreeSet<u64> = p
                .seqs
                .get(device)
                .map(|v| v.iter().copied().filter(in_range).collect())
                .unwrap_or_default();
            (p.indexed, p.seen, mine)
        };
        let top = to.min(indexed);
        if from <= top {
            let before = self
                .tree
                .range(id_key(device, 0)..id_key(device, from))
                .rev()
                .take(STRADDLING);
            // Closed entries up to `top`, then the open one (the newest, whatever its first).
            let after = self.tree.range(id_key(device, from)..=id_key(device, top));
            let open = self
                .tree
                .get(id_key(device, OPEN))
                .map(|v| v.map(|v| (id_key(device, OPEN).into(), v)))
                .transpose();
            for entry in before.chain(after).chain(open) {
                let (k, v) = entry?;
                let (first, seqs) = decode_any(&k, &v)?;
                if first > top {
                    break;
                }
                if wanted.len() >= limit && wanted.iter().nth(limit - 1).is_some_and(|&s| s < first)
                {
                    break;
                }
                for s in seqs {
                    if from <= s && s <= top {
                        wanted.insert(s);
                    }
                }
            }
        }
        for seq in wanted {
            if let Some(r) = raw_records(events, seq, seq).next() {
                let r = r?;
                let stored = decode_stored(r.seq, r.bytes())?;
                if is_of(&stored, device) {
                    out.push(stored);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        // Records the indexer has not seen yet.
        for r in raw_records(events, from.max(seen + 1), to) {
            let r = r?;
            let stored = decode_stored(r.seq, r.bytes())?;
            if is_of(&stored, device) {
                out.push(stored);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Adds one command's events, `events[i]` at `first_seq + i`, skipping seqs already seen.
    fn add<'e>(&self, first_seq: u64, devices: impl IntoIterator<Item = Option<&'e str>>) {
        let mut p = self.pending();
        let p = &mut *p;
        for (seq, device) in (first_seq..).zip(devices) {
            if seq <= p.seen {
                continue;
            }
            p.seen = seq;
            p.since.get_or_insert_with(Instant::now);
            if let Some(d) = device {
                match p.seqs.get_mut(d) {
                    Some(v) => v.push(seq),
                    None => {
                        p.seqs.insert(d.to_owned(), vec![seq]);
                    }
                }
                p.events += 1;
            }
        }
    }

    fn seen(&self) -> u64 {
        self.pending().seen
    }

    fn due(&self) -> bool {
        let p = self.pending();
        p.events >= FLUSH_EVENTS || p.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Writes what is pending, then the watermark.
    fn flush(&self) -> Result<(), StoreError> {
        let (seqs, seen) = {
            let mut p = self.pending();
            if p.seen == p.indexed {
                return Ok(());
            }
            (std::mem::take(&mut p.seqs), p.seen)
        };
        // Inserts, not a batch: a sled 0.34 batch takes the process-wide exclusive
        // concurrency lock, and one queued behind a tree's flush deadlocked (see below).
        // The watermark goes last, so it never covers an entry not yet written; a crash in
        // between only makes the next pass write some seqs again, which readers de-duplicate.
        // In key order, so consecutive writes land in the same leaf pages instead of all over
        // the tree.
        let mut ordered: Vec<(&String, &Vec<u64>)> = seqs.iter().collect();
        ordered.sort_unstable_by(|a, b| id_order(a.0).cmp(&id_order(b.0)));
        let written = ordered
            .into_iter()
            .try_for_each(|(device, seqs)| extend_entry(&self.tree, device, seqs))
            .and_then(|()| {
                crate::crashpoint::hit(crate::crashpoint::INDEX_ENTRIES_WRITTEN, &self.tree);
                self.tree.insert(WATERMARK, &u64_key(seen)).map(drop)
            });
        let mut p = self.pending();
        match written {
            Ok(()) => {
                p.indexed = seen;
                p.events = p.seqs.values().map(Vec::len).sum();
                p.since = (p.seen > seen).then(Instant::now);
                Ok(())
            }
            Err(e) => {
                // Keep them for the next try.
                for (device, mut s) in seqs {
                    let v = p.seqs.entry(device).or_default();
                    s.append(v);
                    *v = s;
                }
                Err(e.into())
            }
        }
    }
}

fn is_of(stored: &StoredEvent, device: &str) -> bool {
    stored.event.device().map(|d| d.as_str()) == Some(device)
}

fn read_watermark(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.get(WATERMARK)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StoreError::corrupt("device index watermark", format!("{} bytes", v.len()))
            }),
    }
}

/// Writes one entry: `seqs` ascending (none: nothing).
///
/// One insert, like every write of the store (see [`crate::writes`] for why no sled batches).
fn put_entry(tree: &sled::Tree, device: &str, seqs: &[u64]) -> sled::Result<()> {
    let Some((&first, rest)) = seqs.split_first() else {
        return Ok(());
    };
    let mut value = Vec::with_capacity(rest.len() * 2);
    push_deltas(&mut value, first, rest);
    tree.insert(id_key(device, first), value).map(drop)
}

/// Appends `seqs` to `value`, each as its distance from the one before (`prev` first).
fn push_deltas(value: &mut Vec<u8>, mut prev: u64, seqs: &[u64]) {
    for &s in seqs {
        write_varint(value, s.saturating_sub(prev));
        prev = s;
    }
}

/// The key seq of a device's *open* entry: the newest one, which the indexer appends to. Its
/// value starts with its real first seq (big-endian u64), then the deltas.
const OPEN: u64 = u64::MAX;

/// Writes the indexer's newer `seqs` of `device` (ascending) onto the device's open entry while
/// its deltas are shorter than [`ENTRY_BYTES`]; a full one is closed (stored under its first
/// seq like any entry) and the seqs open the next. Seqs the open entry already holds are left
/// out, so writing the same seqs again (a flush repeated after a crash) changes nothing.
///
/// Why append: sled keeps memory for every page a tree has, and a leaf page holds at most 16
/// keys, so one key per device per flush made the node's memory and data directory grow with
/// every job each device took part in (BENCHMARKS.md, session 16). Appending keeps the tree
/// near one key per device per [`ENTRY_BYTES`] of seqs. Why under a fixed key: finding the
/// newest entry by its first seq took a reverse range scan, which copies the leaf it lands on;
/// with that and a compare-and-swap the indexer was 45% of the three-node commit bench's CPU
/// (BENCHMARKS.md, session 17). Only the indexer writes the open entry (a back-fill writes
/// closed entries of older seqs), so a point read and an insert do.
fn extend_entry(tree: &sled::Tree, device: &str, seqs: &[u64]) -> sled::Result<()> {
    let open_key = id_key(device, OPEN);
    let open = tree.get(&open_key)?;
    let Some((first, held)) = open.as_ref().and_then(|v| decode_open(v).ok()) else {
        // None yet, or unreadable (readers report it until then): these seqs open a new one.
        return put_open(tree, &open_key, seqs);
    };
    let last = held.last().copied().unwrap_or(first);
    let fresh_from = seqs.partition_point(|&s| s <= last);
    let (older, fresh) = seqs.split_at(fresh_from);
    // Seqs before the entry's first are not in it (it only ever grows at its end).
    let below = &older[..older.partition_point(|&s| s < first)];
    put_entry(tree, device, below)?;
    if fresh.is_empty() {
        return Ok(());
    }
    let Some(value) = open else {
        return put_open(tree, &open_key, fresh);
    };
    if value.len() - 8 >= ENTRY_BYTES {
        // Closed first: a crash in between leaves its seqs in both, which readers de-duplicate.
        tree.insert(id_key(device, first), &value[8..])?;
        return put_open(tree, &open_key, fresh);
    }
    let mut longer = value.to_vec();
    push_deltas(&mut longer, last, fresh);
    tree.insert(open_key, longer).map(drop)
}

/// Stores `seqs` (ascending; none: nothing) as the open entry under `key`.
fn put_open(tree: &sled::Tree, key: &[u8], seqs: &[u64]) -> sled::Result<()> {
    let Some((&first, rest)) = seqs.split_first() else {
        return Ok(());
    };
    let mut value = Vec::with_capacity(8 + rest.len() * 2);
    value.extend_from_slice(&u64_key(first));
    push_deltas(&mut value, first, rest);
    tree.insert(key, value).map(drop)
}

/// The first seq and the seqs of an open entry's value.
fn decode_open(value: &[u8]) -> Result<(u64, Vec<u64>), StoreError> {
    // A value shorter than 8 bytes fails as a whole (its length is reported).
    let first = key_u64("device index entry", value.get(..8).unwrap_or(value))?;
    Ok((first, decode_entry(first, &value[8..])?))
}

/// The seqs of any entry, open or closed, from its key and value.
fn decode_any(key: &[u8], value: &[u8]) -> Result<(u64, Vec<u64>), StoreError> {
    match key_seq(key)? {
        OPEN => decode_open(value),
        first => Ok((first, decode_entry(first, value)?)),
    }
}

fn decode_entry(first: u64, value: &[u8]) -> Result<Vec<u64>, StoreError> {
    let mut out = vec![first];
    let mut prev = first;
    let mut at = 0;
    while at < value.len() {
        let (delta, used) = read_varint(&value[at..]).ok_or_else(|| {
            StoreError::corrupt(
                "device index entry",
                format!("a delta is cut short at byte {at}"),
            )
        })?;
        at += used;
        prev = prev.saturating_add(delta);
        out.push(prev);
    }
    Ok(out)
}

/// Starts the indexer of `shared`'s device index. It follows `updates` (subscribed before any
/// apply) and stops when the state machine is gone; it holds `shared` only while it works, so
/// dropping the store closes the database.
pub(crate) fn spawn_indexer(
    shared: Weak<Shared>,
    updates: broadcast::Receiver<StateUpdate>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("muster-device-index".into())
        .spawn(move || {
            yield_to_applies();
            run(&shared, updates)
        })
        .map(drop)
        .map_err(StoreError::Io)
}

/// How much lower than the node's other threads the indexer runs (a nice value).
const NICENESS: i32 = 10;

/// Lowers the indexer thread's CPU priority by [`NICENESS`].
///
/// Why: the index is background work that readers do not wait for (they walk what it has not
/// written), and under load it took ~40% of two cores that the applies needed (the three-node
/// commit bench, BENCHMARKS.md session 17). At a lower priority it uses the cores the applies
/// leave idle and catches up after a burst. Linux gives each thread its own nice value.
fn yield_to_applies() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICENESS) {
        tracing::debug!("the device indexer keeps the default CPU priority: {e}");
    }
}

fn run(shared: &Weak<Shared>, mut updates: broadcast::Receiver<StateUpdate>) {
    // Records after the watermark (what was in memory when the process stopped).
    let mut failing = match shared.upgrade() {
        Some(s) => report(catch_up(&s, u64::MAX), false),
        None => return,
    };
    loop {
        let step = match updates.try_recv() {
            Ok(update) => {
                let Some(s) = shared.upgrade() else { return };
                follow(&s, &update)
            }
            Err(TryRecvError::Lagged(_)) => {
                let Some(s) = shared.upgrade() else { return };
                catch_up(&s, u64::MAX)
            }
            Err(TryRecvError::Closed) => return,
            Err(TryRecvError::Empty) => {
                let r = match shared.upgrade() {
                    Some(s) if s.index.devices.due() => s.index.devices.flush(),
                    Some(_) => Ok(()),
                    None => return,
                };
                std::thread::sleep(if failing {
                    Duration::from_secs(1)
                } else {
                    IDLE
                });
                r
            }
        };
        failing = report(step, failing);
    }
}

/// Logs the first of a series of failures; returns whether the last step failed.
fn report(step: Result<(), StoreError>, failing: bool) -> bool {
    match step {
        Ok(()) => false,
        Err(e) => {
            if !failing {
                tracing::error!("the device event index could not be written (retrying): {e}");
            }
            true
        }
    }
}

fn follow(shared: &Shared, update: &StateUpdate) -> Result<(), StoreError> {
    let index = &shared.index.devices;
    match update {
        StateUpdate::Events(applied) => {
            // Records the indexer missed before these (it started behind, or lagged).
            catch_up(shared, applied.first_seq.saturating_sub(1))?;
            index.add(
                applied.first_seq,
                applied
                    .events
                    .iter()
                    .map(|e| e.device().map(|d| d.as_str())),
            );
            if index.due() {
                index.flush()?;
            }
            Ok(())
        }
        StateUpdate::SnapshotInstalled { last_seq } => {
            index.forget(*last_seq);
            Ok(())
        }
    }
}

/// Reads the records after what the indexer has seen, up to `until` and the applied
/// `last_seq`, from the log.
fn catch_up(shared: &Shared, until: u64) -> Result<(), StoreError> {
    let index = &shared.index.devices;
    let (first, last) = {
        let a = shared.read();
        (a.first_seq_available, a.last_seq)
    };
    let until = until.min(last);
    loop {
        let from = (index.seen() + 1).max(first);
        if from > until {
            return Ok(());
        }
        let to = until.min(from + CATCH_UP_CHUNK - 1);
        let mut devices = Vec::with_capacity((to - from + 1) as usize);
        let mut next = from;
        for r in raw_records(&shared.events, from, to) {
            let r = r?;
            let stored = decode_stored(r.seq, r.bytes())?;
            // A gap (records not stored) names no device.
            while next < stored.seq {
                devices.push(None);
                next += 1;
            }
            devices.push(stored.event.device().map(|d| d.as_str().to_owned()));
            next += 1;
        }
        while next <= to {
            devices.push(None);
            next += 1;
        }
        index.add(from, devices.iter().map(Option::as_deref));
        if index.due() {
            index.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(first in 0u64..1 << 40, deltas in proptest::collection::vec(1u64..1 << 30, 0..50)) {
            let mut seqs = vec![first];
            for d in deltas {
                let next = seqs[seqs.len() - 1] + d;
                seqs.push(next);
            }
            let db = sled::Config::new().temporary(true).open().unwrap();
            put_entry(&db, "dev", &seqs).unwrap();
            let (k, v) = db.iter().next().unwrap().unwrap();
            prop_assert_eq!(key_seq(&k).unwrap(), first);
            prop_assert_eq!(decode_entry(first, &v).unwrap(), seqs);
        }
    }

    /// Every seq of a device as the tree holds it, entry by entry.
    fn entries(tree: &sled::Tree, device: &str) -> Vec<(u64, Vec<u64>)> {
        tree.range(id_key(device, 0)..=id_key(device, OPEN))
            .map(|e| {
                let (k, v) = e.unwrap();
                decode_any(&k, &v).unwrap()
            })
            .collect()
    }

    proptest! {
        /// Flushes of ascending seqs, some repeated whole (a flush redone after a crash), some
        /// older (a back-fill): the entries hold each seq once, each entry ascending, and the
        /// tree has far fewer keys than flushes.
        #[test]
        fn appended_entries_hold_every_seq_once(
            gaps in proptest::collection::vec(proptest::collection::vec(1u64..1 << 20, 1..4), 1..60),
            repeat in proptest::collection::vec(any::<bool>(), 60),
            older in proptest::collection::vec(1u64..1000, 0..5),
        ) {
            let db = sled::Config::new().temporary(true).open().unwrap();
            let mut next = 1_000_000u64;
            let mut all = std::collections::BTreeSet::new();
            for (i, g) in gaps.iter().enumerate() {
                let mut flush = Vec::new();
                for d in g {
                    next += d;
                    flush.push(next);
                }
                extend_entry(&db, "dev", &flush).unwrap();
                if repeat[i] {
                    extend_entry(&db, "dev", &flush).unwrap();
                }
                all.extend(flush);
            }
            let mut older: Vec<u64> = older.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            extend_entry(&db, "dev", &older).unwrap();
            all.append(&mut older.drain(..).collect());
            let entries = entries(&db, "dev");
            let held: Vec<u64> = entries.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            let mut sorted = held.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, all.into_iter().collect::<Vec<_>>());
            for (first, seqs) in &entries {
                prop_assert_eq!(seqs[0], *first);
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            }
            // Each entry but a back-fill's fills to ENTRY_BYTES before the next starts.
            prop_assert!(entries.len() <= 2 + held.len() / (ENTRY_BYTES / 3));
        }
    }

    #[test]
    fn flushes_append_to_the_device_entry_until_it_is_full() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        extend_entry(&db, "dev", &[10, 12]).unwrap();
        extend_entry(&db, "dev", &[20]).unwrap();
        extend_entry(&db, "dev", &[20]).unwrap();
        extend_entry(&db, "other", &[21]).unwrap();
        assert_eq!(entries(&db, "dev"), vec![(10, vec![10, 12, 20])]);
        let mut seq = 20;
        while entries(&db, "dev").len() == 1 {
            seq += 1_000_000;
            extend_entry(&db, "dev", &[seq]).unwrap();
        }
        let e = entries(&db, "dev");
        assert_eq!(e[1], (seq, vec![seq]));
        assert!(db.get(id_key("dev", 10)).unwrap().unwrap().len() >= ENTRY_BYTES);
        assert_eq!(entries(&db, "other"), vec![(21, vec![21])]);
    }

    /// The install empties the tree, a back-fill writes entries below the new watermark, then
    /// the indexer reads the install's message: the back-filled entries stay.
    #[test]
    fn the_snapshot_installed_message_keeps_entries_a_back_fill_wrote() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = DeviceIndex::open(db.open_tree("devices").unwrap()).unwrap();
        index.add(1, [Some("old"), None]);
        index.reset(10).unwrap();
        index
            .write_below([(3, "dev"), (5, "other"), (7, "dev")])
            .unwrap();
        index.forget(10);

        let entries: Vec<(u64, Vec<u64>)> = index
            .tree
            .range(id_key("dev", 0)..=id_key("dev", u64::MAX))
            .map(|e| {
                let (k, v) = e.unwrap();
                let first = key_seq(&k).unwrap();
                (first, decode_entry(first, &v).unwrap())
            })
            .collect();
        assert_eq!(entries, vec![(3, vec![3, 7])]);
        assert!(index.tree.contains_key(id_key("other", 5)).unwrap());
        assert_eq!(read_watermark(&index.tree).unwrap(), 10);
        let p = index.pending();
        assert_eq!((p.indexed, p.seen, p.seqs.len()), (10, 10, 0));
    }

    #[test]
    fn a_cut_entry_is_an_error_not_a_panic() {
        assert!(decode_entry(1, &[0x80]).is_err());
        assert_eq!(decode_entry(5, &[]).unwrap(), vec![5]);
    }

    /// The indexer thread runs at a lower priority than the rest of the node.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_indexer_runs_niced() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let _sm = crate::StateMachine::open(
            &db,
            crate::flush::GroupFlusher::open(&db, dir.path()).unwrap(),
            dir.path(),
        )
        .unwrap();
        let nice_of_indexers = || -> Vec<i64> {
            std::fs::read_dir("/proc/thread-self/..")
                .unwrap()
                .filter_map(|t| {
                    let path = t.unwrap().path();
                    let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                    (comm.trim() == "muster-device-i").then_some(())?;
                    let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                    // Fields after the parenthesised name: state is field 3, nice field 19.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(16)?.parse().ok()
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let nice = loop {
            let nice = nice_of_indexers();
            if nice.iter().any(|&n| n == i64::from(NICENESS)) || Instant::now() > deadline {
                break nice;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            nice.contains(&i64::from(NICENESS)),
            "indexer threads' nice values: {nice:?}"
        );
    }
}
