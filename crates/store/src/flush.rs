//! Group commit for sled flushes.
//!
//! `Db::flush()` makes every write that returned before it started durable, whatever tree it
//! went to. So when several callers want durability at once (a log append, a vote, a snapshot)
//! one flush can serve all of them: at most one flush runs at a time, and a caller that arrives
//! while one is running waits for the *next* one, which then covers every caller that queued up
//! behind it. N concurrent requests cost at most two flushes instead of N serial ones.
//!
//! This is the blocking `Db::flush()`, run on a blocking thread by [`GroupFlusher::flush`]: the
//! design forbids sled 0.34's `flush_async`, which can deadlock under concurrency in 0.34.7.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::StoreError;
use crate::event_files::EventFiles;

#[derive(Debug)]
pub(crate) struct GroupFlusher {
    db: sled::Db,
    /// Synced before each flush: the sled writes a flush makes durable (the `applied` record,
    /// a back-fill's progress) may count events, never the other way round.
    events: Arc<EventFiles>,
    state: Mutex<FlushState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Tickets handed out so far; a ticket is taken after the caller's writes returned.
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    running: bool,
}

impl GroupFlusher {
    pub(crate) fn new(db: sled::Db, events: Arc<EventFiles>) -> Arc<Self> {
        Arc::new(GroupFlusher {
            db,
            events,
            state: Mutex::new(FlushState::default()),
            finished: Condvar::new(),
        })
    }

    /// A flusher for the data directory `dir` (its event files and `db`).
    pub(crate) fn open(db: &sled::Db, dir: &std::path::Path) -> Result<Arc<Self>, StoreError> {
        Ok(Self::new(db.clone(), Arc::new(EventFiles::open(dir)?)))
    }

    /// The event files this flusher syncs.
    pub(crate) fn events(&self) -> &Arc<EventFiles> {
        &self.events
    }

    fn lock(&self) -> MutexGuard<'_, FlushState> {
        // The state is three integers updated together; a panic elsewhere cannot leave them
        // half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until every write that returned before this call is on disk.
    pub(crate) fn flush_blocking(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.requested += 1;
        let ticket = s.requested;
        loop {
            if s.completed >= ticket {
                return Ok(());
            }
            if s.running {
                s = self
                    .finished
                    .wait(s)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Nobody is flushing: this caller flushes for itself and everyone queued so far.
            s.running = true;
            let covers = s.requested;
            drop(s);
            let result = self
                .events
                .sync()
                .and_then(|()| self.db.flush().map(drop).map_err(StoreError::from));
            s = self.lock();
            s.running = false;
            if result.is_ok() {
                s.completed = s.completed.max(covers);
            }
            self.finished.notify_all();
            // On error the waiters wake up, find their ticket not completed and try themselves.
            result?;
        }
    }

    /// [`flush_blocking`](Self::flush_blocking) on tokio's blocking pool.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.flush_blocking()).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_flushes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        let flusher = GroupFlusher::open(&db, dir.path()).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let flusher = &flusher;
                let tree = &tree;
                scope.spawn(move || {
                    for i in 0..20u64 {
                        tree.insert((t * 100 + i).to_be_bytes(), vec![0u8; 64])
                            .unwrap();
                        flusher.flush_blocking().unwrap();
                    }
                });
            }
        });
        let s = flusher.lock();
        assert_eq!(s.requested, 160);
        assert_eq!(s.completed, 160);
    }
}
