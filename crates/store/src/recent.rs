//! The newest Raft log entries, decoded: filled by the log store after sled took them, read
//! back by openraft (apply, replication), emptied of what is applied by the state machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::types::Entry;

/// How much memory [`RecentEntries`] may take, as estimated by [`decoded_size`].
const RECENT_BYTES: usize = 64 << 20;

/// How much of it may go to entries already applied (see [`RecentEntries::applied`]).
const APPLIED_BYTES: usize = 4 << 20;

/// An estimate of what an entry stored in `stored` bytes takes decoded: its strings and maps
/// take two to three times their protobuf bytes, plus a fixed overhead per entry.
fn decoded_size(stored: usize) -> usize {
    stored * 3 + 256
}

/// The newest entries, decoded, as a contiguous run of indexes ending at the last appended one.
///
/// openraft reads every entry back soon after appending it: to apply it, and on a leader once
/// per follower to replicate it. Decoding a thousand-result command from sled each time was a
/// fifth of a three-node cluster's CPU; a cached entry costs a reference-count increment (the
/// command is behind an `Arc`). sled stays the truth: the cache is filled only after sled took
/// the entries, trimmed with every truncation and purge, and a read it cannot answer in full
/// goes to sled.
#[derive(Debug, Default)]
pub(crate) struct RecentEntries {
    /// Index -> (entry, its estimated size).
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

/// Entries taken out of the cache, to be dropped after its lock is released (a purge can free
/// tens of megabytes of commands).
pub(crate) type Removed = Vec<(Entry, usize)>;

impl RecentEntries {
    /// Adds entries with their stored sizes; returns the ones evicted to stay in budget.
    #[must_use]
    pub(crate) fn appended(&mut self, entries: Vec<(Entry, usize)>) -> Removed {
        let mut removed = Removed::new();
        for (entry, stored) in entries {
            let size = decoded_size(stored);
            let index = entry.log_id.index;
            // Appends continue the run; anything else (the first append after a restart, or one
            // after a gap openraft would not leave) starts a new run.
            if self
                .entries
                .last_key_value()
                .is_some_and(|(&last, _)| last + 1 != index)
            {
                removed.extend(std::mem::take(&mut self.entries).into_values());
                self.bytes = 0;
            }
            self.bytes += size;
            self.entries.insert(index, (entry, size));
        }
        while self.bytes > RECENT_BYTES {
            match self.entries.pop_first() {
                Some((_, (entry, size))) => {
                    self.bytes -= size;
                    removed.push((entry, size));
                }
                None => break,
            }
        }
        removed
    }

    /// Entries `start..end`, if every one of them is here.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        if start < first || end > last + 1 {
            return None;
        }
        Some(
            self.entries
                .range(start..end)
                .map(|(_, (e, _))| e.clone())
                .collect(),
        )
    }

    /// Takes out the entries from `index` on.
    #[must_use]
    pub(crate) fn truncate(&mut self, index: u64) -> Removed {
        let removed: Removed = self.entries.split_off(&index).into_values().collect();
        self.bytes -= removed.iter().map(|(_, size)| size).sum::<usize>();
        removed
    }

    /// Takes out the entries up to and including `index`.
    #[must_use]
    pub(crate) fn purge(&mut self, index: u64) -> Removed {
        let keep = self.entries.split_off(&index.saturating_add(1));
        let removed: Removed = std::mem::replace(&mut self.entries, keep)
            .into_values()
            .collect();
        self.bytes -= removed.iter().map(|(_, size)| size).sum::<usize>();
        removed
    }

    /// Entries up to `index` are applied. openraft reads such an entry again only to send it
    /// to a follower that lags behind the commit, so past [`APPLIED_BYTES`] they go (that
    /// follower's reads decode sled's copy). Without this the cache stayed full after a job:
    /// up to 64 MiB (estimated) of results and responses nobody would read, part of what a
    /// node's RSS grew by over its first jobs (BENCHMARKS.md, session 16).
    #[must_use]
    pub(crate) fn applied(&mut self, index: u64) -> Removed {
        let mut applied: usize = self.entries.range(..=index).map(|(_, (_, s))| s).sum();
        let mut removed = Removed::new();
        while applied > APPLIED_BYTES {
            match self.entries.first_entry() {
                Some(first) if *first.key() <= index => {
                    let (entry, size) = first.remove();
                    applied -= size;
                    self.bytes -= size;
                    removed.push((entry, size));
                }
                _ => break,
            }
        }
        removed
    }
}

/// The cache shared by the log store and the state machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recent(Arc<Mutex<RecentEntries>>);

impl Recent {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RecentEntries> {
        // Every change to the cache is a few map operations that do not panic; a poisoned lock
        // still holds a consistent cache.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use crate::types::LogId;

    use super::*;

    fn entry(index: u64) -> (Entry, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        // Stored sizes chosen so that each entry is charged 1 MiB.
        (entry, ((1 << 20) - 256) / 3)
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_in_full() {
        let mut r = RecentEntries::default();
        assert!(r.appended((5..10).map(entry).collect()).is_empty());
        assert_eq!(indexes(r.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, 8)), Some(vec![7]));
        assert_eq!(r.get(4, 6), None);
        assert_eq!(r.get(9, 11), None);

        assert_eq!(r.truncate(8).len(), 2);
        assert_eq!(r.get(7, 9), None);
        assert_eq!(indexes(r.get(5, 8)), Some(vec![5, 6, 7]));
        assert!(r.appended(vec![entry(8)]).is_empty());
        assert_eq!(indexes(r.get(7, 9)), Some(vec![7, 8]));

        assert_eq!(r.purge(6).len(), 2);
        assert_eq!(r.get(6, 8), None);
        assert_eq!(indexes(r.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(r.bytes, 2 << 20);

        // A run that does not continue the last one replaces it.
        assert_eq!(r.appended(vec![entry(20)]).len(), 2);
        assert_eq!(r.get(7, 9), None);
        assert_eq!(indexes(r.get(20, 21)), Some(vec![20]));
        assert_eq!(r.bytes, 1 << 20);
    }

    #[test]
    fn applied_entries_beyond_their_budget_go_oldest_first() {
        let mut r = RecentEntries::default();
        let n = (APPLIED_BYTES >> 20) as u64;
        assert!(r.appended((1..=n + 10).map(entry).collect()).is_empty());
        // Nothing applied past the budget: nothing goes.
        assert!(r.applied(n).is_empty());
        let removed = r.applied(n + 5);
        assert_eq!(
            indexes(Some(removed.into_iter().map(|(e, _)| e).collect())),
            Some((1..=5).collect())
        );
        assert_eq!(r.get(5, 7), None);
        assert_eq!(indexes(r.get(6, n + 11)), Some((6..=n + 10).collect()));
        assert_eq!(r.bytes, ((n + 5) as usize) << 20);
        // Once every entry is applied, only the budget's worth stays.
        assert_eq!(r.applied(n + 10).len(), 5);
        assert_eq!(r.entries.len() as u64, n);
        assert_eq!(r.bytes, APPLIED_BYTES);
    }

    #[test]
    fn keeps_the_newest_within_its_budget() {
        let mut r = RecentEntries::default();
        let n = (RECENT_BYTES >> 20) as u64;
        assert_eq!(r.appended((1..=n + 10).map(entry).collect()).len(), 10);
        assert_eq!(r.bytes, RECENT_BYTES);
        assert_eq!(r.get(10, 12), None);
        assert_eq!(indexes(r.get(n + 10, n + 11)), Some(vec![n + 10]));
        assert_eq!(r.entries.len() as u64, n);
    }
}
