//! Crash points: named places on the storage paths where a test can stop the process, to check
//! that a restart recovers (issue 18's failpoints).
//!
//! A test process installs a hook with [`set`]; every [`hit`] then calls it with the point's
//! name, and a hook that wants a crash at that point calls `std::process::abort()` (a real
//! crash: nothing is flushed or dropped, as with a power cut after the OS took the writes). The
//! hook is process-wide and only ever set by tests; in a node none is installed and a hit costs
//! one atomic load. The store's own hook rather than the `fail` crate: no cargo feature to flip,
//! so test builds and the `muster` binary share one build of the store.

use std::sync::OnceLock;

/// Called at each point as it is passed.
pub type Hook = Box<dyn Fn(&Passing<'_>) + Send + Sync>;

/// A point being passed: its name, and a way to make every write before it durable first (a
/// crash right after sled wrote its buffers out is the hardest case for recovery: the disk holds
/// exactly what the code had written so far).
pub struct Passing<'a> {
    pub name: &'static str,
    flush: &'a dyn Fn(),
}

impl Passing<'_> {
    /// Flushes sled (every tree: one database).
    pub fn flush(&self) {
        (self.flush)();
    }
}

impl std::fmt::Debug for Passing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passing").field("name", &self.name).finish()
    }
}

static HOOK: OnceLock<Hook> = OnceLock::new();

/// After an apply wrote its event segments, before the metadata (`last_applied`, `last_seq`,
/// the chain head) that makes them count.
pub const APPLY_EVENTS_WRITTEN: &str = "apply.events-written";
/// During an apply of more than one chunk of events: after the writer thread wrote one chunk,
/// before the next (the apply is multi-segment and half on disk).
pub const APPLY_CHUNK_WRITTEN: &str = "apply.chunk-written";
/// During a snapshot build: the file is written (not yet named), the `snapshot` tree does not
/// point at it yet.
pub const SNAPSHOT_BUILT: &str = "snapshot.file-written";
/// During a snapshot build: the file has its name, the `snapshot` tree does not point at it yet.
pub const SNAPSHOT_PUBLISHED: &str = "snapshot.file-published";
/// During a snapshot install: the carried trees (cold rows, ...) are replaced with the
/// leader's, the metadata still describes the old state.
pub const INSTALL_TREES_LOADED: &str = "install.trees-loaded";
/// During a snapshot install: the metadata names the new snapshot (flushed), the local events
/// older than it are not yet deleted.
pub const INSTALL_META_WRITTEN: &str = "install.meta-written";

/// The device indexer wrote its entries; the watermark that covers them is not written yet.
pub const INDEX_ENTRIES_WRITTEN: &str = "device-index.entries-written";

/// Installs the process's hook; the first call wins (returns `false` after that).
pub fn set(hook: Hook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Passes the point `name`; `tree` is any tree of the store's database (flushing one flushes
/// all of them).
pub(crate) fn hit(name: &'static str, tree: &sled::Tree) {
    if let Some(hook) = HOOK.get() {
        let flush = || {
            // A failed flush only weakens the test's crash; the hook aborts either way.
            let _ = tree.flush();
        };
        hook(&Passing {
            name,
            flush: &flush,
        });
    }
}
