//! `muster.v1.EventService` (`proto/muster/v1/audit.proto`): follow the event log, from any seq,
//! then live.
//!
//! One task per subscriber walks the log in seq order with a cursor (`next`, the first seq not
//! yet looked at). It subscribes to applied updates *before* it reads the log, so an event
//! applied meanwhile is on disk, in the live feed, or both, never in neither; events are taken
//! from the disk until it has nothing more, then from the live feed, and every event below the
//! cursor is skipped, so none is delivered twice. A gap in the live feed (the subscriber lagged
//! behind the broadcast, or a batch arrived ahead of the cursor) sends it back to the disk. A slow
//! client therefore costs the node nothing but its own buffer ([`STREAM_BUFFER`] events): the
//! broadcast never waits for it, and what it missed is read back from the log.
//!
//! The hash of each event is the log's chain link as the store wrote it when the event was
//! applied ([`EventLog::read_records`] on disk, [`AppliedEvents::hashes`] in the live feed), so
//! the walk starts at `from_seq` rather than hashing the log from seq 1, and a node seeded from a
//! snapshot sends the links of the events it holds.
//!
//! [`AppliedEvents::hashes`]: muster_cluster::AppliedEvents::hashes

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_cluster::{Cluster, EventLog, StateReader, StateUpdate};
use muster_domain::{Event, Principal};
use muster_proto::pb;
use muster_store::chain::Hash;
use muster_store::StoredEvent;
use muster_types::{DeviceId, JobId};
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use super::parse_id;
use crate::history::{event_body, event_type, EventFilter, Indexed, EVENT_TYPES};

/// Events buffered per subscriber before its task waits for the client...
const STREAM_BUFFER: usize = 256;
/// ...or this many bytes of them (encoded), whichever comes first: events carry method
/// responses of up to 128 KiB, and 300 subscribers that never read once pinned 1.8 GB between
/// them (issue 18). What a slow subscriber has not taken stays on disk.
const STREAM_BUFFER_BYTES: usize = 1 << 20;
/// Events read from the log per disk read (held until sent, so kept small).
const READ_CHUNK: usize = 64;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamedEvent, Status>> + Send>>;

/// A buffered event with its share of the subscriber's byte budget, returned when the stream
/// hands the event to the transport.
type Buffered = (
    Result<pb::StreamedEvent, Status>,
    Option<OwnedSemaphorePermit>,
);

/// The event service over a cluster handle.
#[derive(Debug, Clone)]
pub struct EventApi {
    cluster: Cluster,
    stop: Option<watch::Receiver<bool>>,
}

impl EventApi {
    pub fn new(cluster: Cluster) -> Self {
        EventApi {
            cluster,
            stop: None,
        }
    }

    /// Ends every subscription with UNAVAILABLE (naming the seq to resume from) once `stop`
    /// turns true. A subscription never ends by itself, so without this a node's graceful
    /// shutdown waits out its whole grace period for connected subscribers.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

/// Resolves when `stop` turns true; never without one.
async fn stopping(stop: Option<watch::Receiver<bool>>) {
    match stop {
        Some(mut rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                // The sender is gone without a stop: keep serving.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Checks a request's filter: ids through their constructors, type names against the known ones.
fn filter(f: Option<pb::EventFilter>) -> Result<EventFilter, Status> {
    let Some(f) = f else {
        return Ok(EventFilter::default());
    };
    let jobs = f
        .job_ids
        .iter()
        .enumerate()
        .map(|(i, s)| parse_id::<JobId>(&format!("filter.job_ids[{i}]"), s))
        .collect::<Result<_, _>>()?;
    let devices = f
        .device_ids
        .iter()
        .enumerate()
        .map(|(i, s)| parse_id::<DeviceId>(&format!("filter.device_ids[{i}]"), s))
        .collect::<Result<_, _>>()?;
    let types = f
        .types
        .iter()
        .enumerate()
        .map(|(i, s)| {
            event_type(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "filter.types[{i}]: {s:?} is not an event type; use one of {}",
                    EVENT_TYPES.join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(EventFilter {
        jobs,
        devices,
        types,
    })
}

/// Why a subscription's task stopped.
enum Stop {
    /// The client went away: nothing to tell.
    Gone,
    /// Tell the client this and end the stream.
    Status(Status),
}

/// One subscriber's walk over the log.
struct Follower {
    reader: StateReader,
    filter: EventFilter,
    /// The first seq not yet looked at (starts at the request's `from_seq`).
    next: u64,
    tx: mpsc::Sender<Buffered>,
    /// [`STREAM_BUFFER_BYTES`] worth of permits.
    budget: Arc<Semaphore>,
}

impl Follower {
    /// Looks at the event at the cursor, with its stored chain link, and sends it if it is wanted.
    async fn step(
        &mut self,
        seq: u64,
        event: &Event,
        hash: &Hash,
        principal: &Principal,
    ) -> Result<(), Stop> {
        self.next = seq + 1;
        if !self.filter.matches(event) {
            return Ok(());
        }
        let item = pb::StreamedEvent {
            seq,
            at_ms: event.at().0,
            r#type: event.kind().to_string(),
            job_id: event.job().map(|j| j.to_string()).unwrap_or_default(),
            device_id: event.device().map(|d| d.to_string()).unwrap_or_default(),
            hash: hash.to_vec(),
            event: Some(pb::Event::from(event)),
            body_json: event_body(event).to_string(),
            principal: principal.to_string(),
        };
        let bytes =
            u32::try_from(item.encoded_len().clamp(1, STREAM_BUFFER_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| Stop::Gone)?;
        self.tx
            .send((Ok(item), Some(permit)))
            .await
            .map_err(|_| Stop::Gone)
    }

    /// Reads from the log until it has nothing after the cursor.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            self.check_available()?;
            let reader = self.reader.clone();
            let from = self.next;
            let indexed = self.filter.indexed();
            let sparse = indexed.is_some();
            let chunk = tokio::task::spawn_blocking(move || {
                // The log's end before the read: an index read returns every wanted record up
                // to it (and maybe later ones), so the walk may move past it.
                let bound = reader.last_seq();
                let records = match &indexed {
                    None => reader.read_records(from, READ_CHUNK),
                    Some(Indexed::Job(j)) => reader.read_job_records(j, from, READ_CHUNK),
                    Some(Indexed::Device(d)) => reader.read_device_records(d, from, READ_CHUNK),
                };
                records.map(|r| (r, bound))
            })
            .await;
            let (records, bound) = match chunk {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    tracing::error!("Subscribe: reading the event log at seq {from}: {e}");
                    return Err(Stop::Status(Status::internal(format!(
                        "internal error reading the event log at seq {from}; the server log has the details; subscribe again with from_seq {from}"
                    ))));
                }
                Err(e) => {
                    tracing::error!("Subscribe: the log reader stopped: {e}");
                    return Err(Stop::Status(Status::internal(format!(
                        "internal error reading the event log; subscribe again with from_seq {from}"
                    ))));
                }
            };
            if records.is_empty() {
                if sparse {
                    self.next = self.next.max(bound.saturating_add(1));
                }
                return Ok(());
            }
            let more = records.len() == READ_CHUNK;
            // Owned, so each record is freed once it is sent.
            for StoredEvent {
                seq,
                event,
                hash,
                principal,
            } in records
            {
                if seq != self.next && !sparse {
                    // The log has no gaps after `first_seq_available`; a snapshot installed
                    // meanwhile is the only way here.
                    self.check_available()?;
                    return Err(Stop::Status(Status::internal(format!(
                        "the event log skipped from seq {} to {seq}; subscribe again with from_seq {}",
                        self.next,
                        self.resume_seq()
                    ))));
                }
                self.step(seq, &event, &hash, &principal).await?;
            }
            if sparse && !more {
                self.next = self.next.max(bound.saturating_add(1));
                return Ok(());
            }
        }
    }

    /// The seq a client should resume from after this stream ends.
    fn resume_seq(&self) -> u64 {
        self.next
    }

    /// Fails when the node no longer holds the event at the cursor (a snapshot replaced its log).
    fn check_available(&self) -> Result<(), Stop> {
        let first = self.reader.first_seq_available();
        if self.next < first {
            let resume = self.resume_seq();
            return Err(Stop::Status(Status::out_of_range(format!(
                "this node holds events from seq {first} on (it was brought up to date from a snapshot), not seq {resume}; subscribe on another node with from_seq {resume}, or here with from_seq {first} to skip the missing events"
            ))));
        }
        Ok(())
    }

    /// Catch up from the log, then follow the live feed, forever.
    async fn run(&mut self, mut updates: broadcast::Receiver<StateUpdate>) -> Result<(), Stop> {
        loop {
            self.catch_up().await?;
            // Live until a gap sends us back to the log.
            loop {
                match updates.recv().await {
                    Ok(StateUpdate::Events(applied)) => {
                        if applied.last_seq() < self.next {
                            continue;
                        }
                        if applied.first_seq > self.next {
                            break;
                        }
                        for (seq, event, hash) in applied.records() {
                            if seq >= self.next {
                                self.step(seq, event, hash, &applied.principal).await?;
                            }
                        }
                    }
                    Ok(StateUpdate::SnapshotInstalled { .. }) => break,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            next = self.next,
                            missed,
                            "Subscribe: a slow subscriber fell behind the live feed; reading from the log"
                        );
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Stop::Status(Status::unavailable(format!(
                            "the node is shutting down; subscribe on another node with from_seq {}",
                            self.resume_seq()
                        ))));
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventApi {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let filter = filter(request.filter)?;
        let from = request.from_seq.max(1);
        let reader = self.cluster.reader().clone();
        // Before the first read: see the module comment.
        let updates = reader.subscribe();
        let first = reader.first_seq_available();
        if from < first {
            return Err(Status::out_of_range(format!(
                "from_seq: this node holds events from seq {first} on (it was brought up to date from a snapshot); subscribe on another node, or with from_seq {first} or later"
            )));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut follower = Follower {
            reader,
            filter,
            next: from,
            tx: tx.clone(),
            budget: Arc::new(Semaphore::new(STREAM_BUFFER_BYTES)),
        };
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let ended = tokio::select! {
                r = follower.run(updates) => r,
                // The client went away while nothing was being sent (a quiet log, or a filter
                // that passes nothing new): stop following for it now, not at the next match.
                () = tx.closed() => Err(Stop::Gone),
                () = stopping(stop) => Err(Stop::Status(Status::unavailable(format!(
                    "the node is shutting down; subscribe on another node with from_seq {}",
                    follower.resume_seq()
                )))),
            };
            if let Err(Stop::Status(status)) = ended {
                let _ = tx.send((Err(status), None)).await;
            }
        });
        use futures::StreamExt;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|(item, _permit)| item),
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn filters_are_checked_and_say_what_to_fix() {
        assert_eq!(filter(None).unwrap(), EventFilter::default());
        let f = filter(Some(pb::EventFilter {
            job_ids: vec!["j1".into()],
            device_ids: vec![],
            types: vec!["job_created".into(), "DeviceFailed".into()],
        }))
        .unwrap();
        assert_eq!(f.types, vec!["JobCreated", "DeviceFailed"]);
        assert_eq!(f.jobs, vec![JobId::new("j1").unwrap()]);

        let bad = filter(Some(pb::EventFilter {
            job_ids: vec!["ok".into(), "a:b".into()],
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message().starts_with("filter.job_ids[1]"),
            "{}",
            bad.message()
        );

        let bad = filter(Some(pb::EventFilter {
            types: vec!["Created".into()],
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("JobCreated"), "{}", bad.message());
    }
}
