//! How the store writes several keys: one insert or remove at a time, in an order that makes
//! every prefix of it a state recovery accepts. Never with sled's `apply_batch` or
//! `transaction`.
//!
//! Why: sled 0.34 guards its trees with a process-wide lock that is a plain counter until the
//! first batch or transaction, and a `parking_lot` read-write lock from then on. A reader that
//! must wait for sled's flusher (a page read back before its write is durable) holds that lock
//! shared; a batch then queues for it exclusively, and the flusher's own shared request queues
//! behind the batch: nobody moves again. The three-node commit bench hung that way within a
//! minute (BENCHMARKS.md, "Session 16"). Without batches the lock never turns into a lock.
//!
//! What replaces their atomicity: sled recovers a prefix of its write order (its log is read
//! back up to the first torn message), so a crash after the n-th of a sequence of single-key
//! writes leaves exactly the first n. Each multi-key write in the store is ordered so that any
//! such prefix is either harmless (records nothing counts yet, which `open` deletes) or
//! finished by `open`; values that must change together live in one value (the state machine's
//! `applied` record, the snapshot pointer, the back-fill progress).

use std::ops::RangeBounds;

use crate::error::StoreError;

/// Inserts `entries` in their order.
pub(crate) fn insert_all<K, V>(
    tree: &sled::Tree,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<(), StoreError>
where
    K: AsRef<[u8]>,
    V: Into<sled::IVec>,
{
    for (k, v) in entries {
        tree.insert(k.as_ref(), v)?;
    }
    Ok(())
}

/// Removes every key in `range`, lowest first: a crash part way leaves the higher keys (a
/// prefix that was being purged keeps its tail contiguous).
pub(crate) fn remove_ascending<R>(tree: &sled::Tree, range: R) -> Result<usize, StoreError>
where
    R: RangeBounds<[u8; 8]>,
{
    let mut n = 0;
    for key in tree.range(range).keys() {
        tree.remove(key?)?;
        n += 1;
    }
    Ok(n)
}

/// Removes every key in `range`, highest first: a crash part way leaves the lower keys (a
/// suffix that was being truncated keeps what remains contiguous).
pub(crate) fn remove_descending<R>(tree: &sled::Tree, range: R) -> Result<usize, StoreError>
where
    R: RangeBounds<[u8; 8]>,
{
    let mut n = 0;
    for key in tree.range(range).keys().rev() {
        tree.remove(key?)?;
        n += 1;
    }
    Ok(n)
}
