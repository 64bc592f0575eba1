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
    let mut writer = EventWriter::new(shared);
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
                        writer.end_command()?;
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

/// Records per chunk appended to the event files (and a crash point passed) while an apply of
/// more than that many goes on: one full segment.
pub(super) const EVENT_CHUNK: usize = SEGMENT_MAX;

/// Writes an apply's event records to the event files, in segments (see [`crate::segment`]).
///
/// Finished segments collect in a chunk, appended once it holds [`EVENT_CHUNK`] records or more
/// and by [`finish`](Self::finish). Appends go to the page cache (no fsync, see
/// [`crate::event_files`]), which costs little beside deciding and encoding, so they run on the
/// applying thread. Segments are appended in order, so the files only ever hold a prefix of the
/// apply's events beyond `last_seq`, exactly like a crash between the events and the metadata,
/// which the apply's durability argument already covers.
struct EventWriter<'a> {
    shared: &'a Shared,
    segment: SegmentBuilder,
    chunk: Vec<Segment>,
    /// Records in `chunk`.
    pending: usize,
}

impl<'a> EventWriter<'a> {
    fn new(shared: &'a Shared) -> Self {
        EventWriter {
            shared,
            segment: SegmentBuilder::default(),
            chunk: Vec::new(),
            pending: 0,
        }
    }

    /// Adds the record of `seq` (the next seq) to the current command's segment.
    fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        if let Some(full) = self.segment.push(seq, record)? {
            self.add_segment(full)?;
        }
        Ok(())
    }

    /// Closes the current command's last segment: the next command starts its own.
    fn end_command(&mut self) -> Result<(), StoreError> {
        if let Some(last) = self.segment.finish() {
            self.add_segment(last)?;
        }
        Ok(())
    }

    fn add_segment(&mut self, segment: Segment) -> Result<(), StoreError> {
        self.pending += segment.records;
        self.chunk.push(segment);
        if self.pending < EVENT_CHUNK {
            return Ok(());
        }
        self.write_chunk()?;
        crate::crashpoint::hit(crate::crashpoint::APPLY_CHUNK_WRITTEN, &self.shared.meta);
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<(), StoreError> {
        self.pending = 0;
        let chunk = std::mem::take(&mut self.chunk);
        self.shared.events.append(&Segment::as_appends(&chunk))
    }

    /// Writes what is left; every record is in the files when it returns.
    fn finish(mut self) -> Result<(), StoreError> {
        self.end_command()?;
        self.write_chunk()
    }
}
