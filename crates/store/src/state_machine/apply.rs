//! Applying committed entries: execute, then write the events and the metadata.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use muster_domain::{Event, State};
use openraft::EntryPayload;

use super::{AppliedEvents, AppliedMeta, Shared, StateUpdate};
use crate::codec::{encode_record, principal_text};
use crate::error::StoreError;
use crate::event_index::IndexBatch;
use crate::segment::{Segment, SegmentBuilder, SEGMENT_MAX};
use crate::types::{AppliedRange, CommandError, Entry, Response, StoredMembership};
use crate::writes::insert_all;

/// See [`StateReader::trace_apply`]; forgets the span when dropped.
#[derive(Debug)]
pub struct ApplyTrace {
    pub(super) shared: Option<Arc<Shared>>,
    pub(super) key: usize,
}

impl Drop for ApplyTrace {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let removed = shared
                .apply_spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.key);
            if removed.is_some() {
                shared.traced.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The `raft.apply` span of a command being applied, if one was asked for.
fn apply_span(shared: &Shared, req: &crate::types::Request, index: u64) -> Option<tracing::Span> {
    if shared.traced.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let key = Arc::as_ptr(&req.command) as usize;
    let spans = shared
        .apply_spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let parent = spans.get(&key)?;
    Some(
        tracing::info_span!(target: "muster_trace", parent: parent, "raft.apply", raft.index = index),
    )
}

/// `State::execute`, inside the command's `raft.apply` span if one was asked for.
fn execute_traced(
    shared: &Shared,
    state: &mut State,
    req: &crate::types::Request,
    index: u64,
) -> Result<Vec<Event>, muster_domain::DomainError> {
    let span = apply_span(shared, req, index);
    let _applying = span.as_ref().map(tracing::Span::enter);
    state.execute(&req.command)
}

/// Applies `entries` in order; see the module docs for the durability argument.
///
/// The write lock is held until the events and the metadata are written, so the in-memory state is
/// never ahead of what sled has (a snapshot taken under the read lock then only ever contains
/// written events). If the write fails, memory is ahead of disk; openraft treats the error as
/// fatal and stops, and a restart rebuilds from disk.
pub(super) fn apply_entries(
    shared: &Shared,
    entries: Vec<Entry>,
) -> Result<Vec<Response>, StoreError> {
    let mut guard = shared.write();
    let applied = &mut *guard;
    let mut published = Vec::new();
    let mut index = IndexBatch::default();
    let mut responses = Vec::with_capacity(entries.len());
    // Inserting the events into sled costs about twice what deciding and evolving them does, so
    // a large apply hands its events to the writer thread in chunks while it goes on with the next
    // ones (see `EventWriter`); a small one writes them here.
    let mut writer = EventWriter::new(&shared.events, &shared.writer);
    for entry in entries {
        let result = match entry.payload {
            EntryPayload::Blank => Ok(AppliedRange::empty_after(applied.last_seq)),
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(entry.log_id), m);
                Ok(AppliedRange::empty_after(applied.last_seq))
            }
            EntryPayload::Normal(req) => {
                match execute_traced(shared, &mut applied.state, &req, entry.log_id.index) {
                    Ok(events) => {
                        // Rows of runs this command finished go to the cold tier before
                        // `last_applied` covers the command (see `crate::cold`).
                        let spilled = applied.state.spill(&events);
                        if !spilled.is_empty() {
                            let started = std::time::Instant::now();
                            let rows = shared.cold.write_ops(spilled)?;
                            if rows > 0 {
                                tracing::info!(
                                    rows,
                                    ms = started.elapsed().as_millis() as u64,
                                    "wrote finished runs' rows to their run files"
                                );
                            }
                        }
                        let first_seq = applied.last_seq + 1;
                        let mut hashes = Vec::with_capacity(events.len());
                        let principal = principal_text(&req.principal);
                        for event in &events {
                            applied.last_seq += 1;
                            let (record, hash) =
                                encode_record(applied.last_seq, event, &principal, &applied.head);
                            writer.push(applied.last_seq, &record)?;
                            applied.head = hash;
                            hashes.push(hash);
                        }
                        writer.end_command();
                        index.add_command(first_seq, &events);
                        if !events.is_empty() {
                            published.push(AppliedEvents {
                                first_seq,
                                events,
                                principal: req.principal.clone(),
                                hashes,
                            });
                        }
                        Ok(AppliedRange {
                            first_seq,
                            last_seq: applied.last_seq,
                        })
                    }
                    Err(e) => Err(CommandError::from(&e)),
                }
            }
        };
        applied.last_applied = Some(entry.log_id);
        responses.push(Response { result });
    }
    writer.finish()?;
    crate::crashpoint::hit(crate::crashpoint::APPLY_EVENTS_WRITTEN, &shared.meta);
    // Like the events: before the metadata that lets readers see them.
    index.write(&shared.index)?;

    // Events first (every one of them is written when `finish` returns), then the metadata that
    // makes them count, in one value. A crash before the metadata leaves events past
    // `last_seq`, which nothing reads (readers stop at `last_seq`), which `open` deletes, and
    // which the re-apply of the same entries after restart writes again (`decide` is
    // deterministic).
    AppliedMeta::of(applied).write(&shared.meta)?;
    drop(guard);

    if let Some(m) = shared.metrics.get() {
        for e in published.iter().flat_map(|p| &p.events) {
            if let Some(kind) = outcome_kind(e) {
                m.jobs().outcome(kind);
            }
        }
    }
    for events in published {
        // No subscribers is not an error.
        let _ = shared.updates.send(StateUpdate::Events(Arc::new(events)));
    }
    Ok(responses)
}

/// The `outcome` label of an event that ends a device's attempt.
fn outcome_kind(event: &muster_domain::Event) -> Option<&'static str> {
    use muster_domain::job::FailureReason;
    use muster_domain::Event;
    Some(match event {
        Event::DeviceSucceeded { .. } => "succeeded",
        Event::DeviceFailed { retry: true, .. } => "retried",
        Event::DeviceFailed { reason, .. } => match reason {
            FailureReason::DeviceError { .. } => "failed",
            FailureReason::Timeout => "timed_out",
            FailureReason::NotConnected => "not_connected",
            FailureReason::DeviceNotFound => "device_not_found",
            FailureReason::DeviceDisabled => "device_disabled",
            FailureReason::DispatchFailed { .. } => "dispatch_failed",
        },
        _ => return None,
    })
}

/// Events per chunk handed to the writer thread once an apply has more than that many: one
/// full segment.
pub(super) const EVENT_CHUNK: usize = SEGMENT_MAX;

/// What the applying thread asks of the [`WriterThread`].
enum Job {
    /// Insert these segments in order (the tree travels with them, so an idle writer holds no
    /// handle on the database and a closed store can be opened again at once).
    Write(sled::Tree, Vec<Segment>),
    /// Answer once every chunk sent before is written, with the first error since the last
    /// answer (chunks after an error are dropped unwritten: the apply fails anyway).
    Done(std::sync::mpsc::SyncSender<Result<(), StoreError>>),
}

/// One long-lived thread that inserts the event chunks of large applies while the applying
/// thread goes on deciding and encoding. It lives as long as the state machine (the sender is
/// in [`Shared`]); a thread per apply cost 1,500 thread creations in three minutes of
/// 100,000-device jobs.
#[derive(Debug)]
pub(crate) struct WriterThread {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Write(..) => "Write",
            Job::Done(_) => "Done",
        })
    }
}

impl WriterThread {
    pub(crate) fn start() -> Result<Self, StoreError> {
        let (jobs, inbox) = std::sync::mpsc::sync_channel::<Job>(4);
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || {
                let mut failed: Option<StoreError> = None;
                for job in inbox {
                    match job {
                        Job::Write(tree, chunk) => {
                            if failed.is_none() {
                                match insert_segments(&tree, chunk) {
                                    Ok(()) => crate::crashpoint::hit(
                                        crate::crashpoint::APPLY_CHUNK_WRITTEN,
                                        &tree,
                                    ),
                                    Err(e) => failed = Some(e),
                                }
                            }
                        }
                        Job::Done(reply) => {
                            let _ = reply.send(failed.take().map_or(Ok(()), Err));
                        }
                    }
                }
            })?;
        Ok(WriterThread { jobs })
    }

    fn sender(&self) -> std::sync::mpsc::SyncSender<Job> {
        self.jobs.clone()
    }
}

/// Writes an apply's event records to the `events` tree, in segments (see [`crate::segment`]).
///
/// Finished segments collect in a chunk; once it holds [`EVENT_CHUNK`] records or more it goes
/// to the [`WriterThread`], which inserts it while the applying thread decides, evolves and
/// encodes the next ones. [`finish`](Self::finish) writes what is left (fewer than
/// [`EVENT_CHUNK`] records plus the last command's segment) on the applying thread when nothing
/// was handed over, or hands it over too and waits until the writer has written all of it.
/// Segments are inserted in order, so the tree only ever holds a prefix of the apply's events
/// beyond `last_seq`, exactly like a crash between the events and the metadata, which the
/// apply's durability argument already covers.
struct EventWriter<'a> {
    events: &'a sled::Tree,
    writer: &'a WriterThread,
    segment: SegmentBuilder,
    chunk: Vec<Segment>,
    /// Records in `chunk`.
    pending: usize,
    /// Set once a chunk went to the writer thread.
    handed: Option<std::sync::mpsc::SyncSender<Job>>,
}

impl<'a> EventWriter<'a> {
    fn new(events: &'a sled::Tree, writer: &'a WriterThread) -> Self {
        EventWriter {
            events,
            writer,
            segment: SegmentBuilder::default(),
            chunk: Vec::new(),
            pending: 0,
            handed: None,
        }
    }

    /// Adds the record of `seq` (the next seq) to the current command's segment.
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        if let Some(full) = self.segment.push(seq, record)? {
            self.add_segment(full);
        }
        Ok(())
    }

    /// Closes the current command's last segment: the next command starts its own.
    fn end_command(&mut self) {
        if let Some(last) = self.segment.finish() {
            self.add_segment(last);
        }
    }

    fn add_segment(&mut self, segment: Segment) {
        self.pending += segment.records;
        self.chunk.push(segment);
        if self.pending < EVENT_CHUNK {
            return;
        }
        self.pending = 0;
        let chunk = std::mem::take(&mut self.chunk);
        let sender = self.handed.get_or_insert_with(|| self.writer.sender());
        // A send fails only when the writer thread is gone, which `finish` reports.
        let _ = sender.send(Job::Write(self.events.clone(), chunk));
    }

    /// Writes what is left and returns once every record is in the tree.
    fn finish(mut self) -> Result<(), StoreError> {
        self.end_command();
        let Some(sender) = self.handed.take() else {
            return insert_segments(self.events, std::mem::take(&mut self.chunk));
        };
        let gone = || StoreError::Io(std::io::Error::other("the event writer thread stopped"));
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        sender
            .send(Job::Write(
                self.events.clone(),
                std::mem::take(&mut self.chunk),
            ))
            .map_err(|_| gone())?;
        sender.send(Job::Done(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for EventWriter<'_> {
    /// An apply that fails half way (`?`) still waits for what it handed over, as a scoped
    /// thread's join did, so no chunk of a failed apply is written after it returned and the
    /// writer's error does not reach the next apply.
    fn drop(&mut self) {
        if let Some(sender) = self.handed.take() {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            if sender.send(Job::Done(reply)).is_ok() {
                let _ = answer.recv();
            }
        }
    }
}

/// Inserts `segments` in seq order.
fn insert_segments(events: &sled::Tree, segments: Vec<Segment>) -> Result<(), StoreError> {
    insert_all(events, segments.into_iter().map(|s| (s.key, s.value)))
}
