//! Crash points: named places on the storage paths where a test can stop the process, to check
//! that a restart recovers (issue 18's failpoints).
//!
//! A test process installs a hook with [`set`]; every [`hit`] then calls it with the point's
//! name, and a hook that wants a crash at that point calls `std::process::abort()` (a real
//! crash: nothing is flushed or dropped, as with a power cut after the OS took the writes). The
//! hook is process-wide and only ever set by tests; in a node none is installed and a hit costs
//! one atomic load. The store's own hook rather than the `fail` crate: no cargo feature to flip,
//! so test builds and the `muster` binary share one build of the store.
//!
//! A real `muster serve` arms one point from the test-only environment variable
//! [`ENV`] (`MUSTER_TEST_CRASH_AT=<point>[:<nth pass>]`, read once at start by the binary,
//! parsed by [`Armed::parse`], installed by [`Armed::install`]): the nemesis harness restarts a
//! node that way and lets its workload drive the node into the point. Never set it in
//! production.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::StoreError;

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
/// During a snapshot install: the `snapshot` tree points at the new snapshot, the applied
/// record still describes the old state (`open` finishes the install).
pub const INSTALL_POINTER_WRITTEN: &str = "install.pointer-written";
/// During a snapshot install: the metadata names the new snapshot (flushed), the local events
/// older than it are not yet deleted.
pub const INSTALL_META_WRITTEN: &str = "install.meta-written";

/// The device indexer wrote its entries; the watermark that covers them is not written yet.
pub const INDEX_ENTRIES_WRITTEN: &str = "device-index.entries-written";

/// Every point, by name.
pub const ALL: [&str; 8] = [
    APPLY_EVENTS_WRITTEN,
    APPLY_CHUNK_WRITTEN,
    SNAPSHOT_BUILT,
    SNAPSHOT_PUBLISHED,
    INSTALL_TREES_LOADED,
    INSTALL_POINTER_WRITTEN,
    INSTALL_META_WRITTEN,
    INDEX_ENTRIES_WRITTEN,
];

/// The environment variable that arms a point in a `muster serve` process (tests only).
pub const ENV: &str = "MUSTER_TEST_CRASH_AT";

/// What a line of the node's log starts with when it aborts at an armed point (the harness
/// tells these crashes from others by it, and by the exit on SIGABRT).
pub const REACHED: &str = "crash point reached:";

/// One armed point: the process aborts on its `nth` pass (1: the first) since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub point: &'static str,
    pub nth: u32,
}

impl Armed {
    /// Parses `<point>[:<nth pass>]` (the value of [`ENV`]); an unknown point or a pass that
    /// is not a positive number is an error that lists what is accepted.
    pub fn parse(spec: &str) -> Result<Armed, StoreError> {
        let (name, nth) = match spec.trim().rsplit_once(':') {
            Some((name, nth)) => {
                let nth = nth.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    StoreError::CrashPoint(format!(
                        "{ENV}={spec}: the pass after ':' must be a number from 1 (the first pass)"
                    ))
                })?;
                (name, nth)
            }
            None => (spec.trim(), 1),
        };
        let point = ALL.iter().find(|p| **p == name).ok_or_else(|| {
            StoreError::CrashPoint(format!(
                "{ENV}={spec}: unknown crash point {name:?}; the points are {} (optionally \
                 followed by :<nth pass>)",
                ALL.join(", ")
            ))
        })?;
        Ok(Armed { point, nth })
    }

    /// Installs the hook that flushes sled and aborts on the `nth` pass of the point, after
    /// a [`REACHED`] line on stderr. `false` when a hook was already installed.
    pub fn install(self) -> bool {
        let passes = AtomicU32::new(0);
        set(Box::new(move |passing| {
            if passing.name == self.point && passes.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
                passing.flush();
                eprintln!("{REACHED} {} (pass {})", self.point, self.nth);
                std::process::abort();
            }
        }))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_a_point_and_optionally_its_pass() {
        assert_eq!(
            Armed::parse("apply.events-written").unwrap(),
            Armed {
                point: APPLY_EVENTS_WRITTEN,
                nth: 1
            }
        );
        assert_eq!(
            Armed::parse("snapshot.file-published:3").unwrap(),
            Armed {
                point: SNAPSHOT_PUBLISHED,
                nth: 3
            }
        );
        for p in ALL {
            assert_eq!(Armed::parse(p).unwrap().point, p);
        }
    }

    #[test]
    fn an_unknown_point_or_a_bad_pass_is_refused_with_what_is_accepted() {
        let e = Armed::parse("apply.nowhere").unwrap_err().to_string();
        assert!(e.contains("unknown crash point \"apply.nowhere\""), "{e}");
        assert!(e.contains(INSTALL_META_WRITTEN), "{e}");
        for bad in [
            "apply.events-written:0",
            "apply.events-written:x",
            "apply.events-written:",
        ] {
            let e = Armed::parse(bad).unwrap_err().to_string();
            assert!(e.contains("must be a number from 1"), "{bad}: {e}");
        }
    }
}
