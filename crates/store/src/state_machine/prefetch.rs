//! Reading the snapshot file while sled opens.
//!
//! A restart spends most of its time in two independent reads: sled's `Config::open`, which
//! re-reads everything written to sled since the node last started, and decoding the current
//! snapshot file (the registry and every job's record). Which file is current is written in
//! sled, but only the current file is kept in `snapshots/` (and `.tmp` files of builds), so
//! the newest `.snap` file there is almost always it: a thread decodes that one while sled
//! opens, and `open` uses it if the pointer names it, or reads the named file as before.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::StoreError;
use crate::snapfile::{read_snapshot_state, Skip, SnapshotHeader, CARRIED_TREES};

type Decoded = Result<(SnapshotHeader, muster_domain::State), StoreError>;

/// A snapshot file being read ahead; dropping it stops the read.
#[derive(Debug)]
pub(crate) struct Prefetch {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Decoded>>,
}

impl Prefetch {
    /// Starts reading the newest snapshot file in `dir`; `None` when there is none.
    pub(crate) fn start(dir: &Path) -> Option<Prefetch> {
        let (name, path) = newest(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn(move || {
                let file = File::open(&path)?;
                let input = Stoppable {
                    inner: BufReader::with_capacity(super::snapshot::IO_BUFFER, file),
                    stop: flag,
                };
                read_snapshot_state(input, CARRIED_TREES)
            })
            .ok()?;
        Some(Prefetch {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// What was read, if the file read is `name`.
    pub(crate) fn take(mut self, name: &str) -> Option<Decoded> {
        if self.name != name {
            return None;
        }
        let thread = self.thread.take()?;
        thread.join().ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The most recently modified `.snap` file in `dir`: its name and path.
fn newest(dir: &Path) -> Option<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            name.ends_with(".snap").then(|| (modified, name, e.path()))
        })
        .max_by_key(|(m, _, _)| *m)
        .map(|(_, name, path)| (name, path))
}

/// A reader that fails once `stop` is set (the open it was for gave up or read another file).
struct Stoppable<R> {
    inner: R,
    stop: Arc<AtomicBool>,
}

impl<R> Stoppable<R> {
    fn check(&self) -> std::io::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the read ahead was stopped"));
        }
        Ok(())
    }
}

impl<R: Read> Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<R: Skip> Skip for Stoppable<R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.skip(n)
    }
}
