//! Following one job's progress as it changes: the one loop behind gRPC `WatchJob` (and so
//! `muster job watch`) and the console's server-sent events (`GET /api/jobs/{id}/watch`), so
//! both show the same snapshots and count them with the same [`finished`].
//!
//! A watcher subscribes to the node's applied events *before* it reads the job, so an update
//! applied in between is in both the first snapshot and the receiver, never in neither. After
//! that it reads the job again whenever an applied command touched it, the state was replaced
//! by a snapshot, or it fell behind the broadcast (it then re-reads instead of replaying). It
//! ends after sending a final status.

use muster_cluster::{StateReader, StateUpdate};
use muster_proto::pb;
use muster_types::JobId;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};

use crate::grpc::convert::{self, Detail};

/// Snapshots buffered per watcher. A slow watcher fills it, the task then waits, the broadcast
/// receiver lags, and the next snapshot is re-read from state: a slow client sees fewer, newer
/// snapshots instead of holding memory.
const WATCH_BUFFER: usize = 8;

/// Why a watch could not start or ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The job does not exist (or no longer does).
    NotFound(JobId),
    /// The node is shutting down; watch again on another node.
    ShuttingDown,
}

impl WatchEnd {
    pub fn message(&self) -> String {
        match self {
            WatchEnd::NotFound(id) => format!("job {id} does not exist"),
            WatchEnd::ShuttingDown => {
                "the node is shutting down; watch again on another node".into()
            }
        }
    }
}

/// The job's progress now (without its spec), with the seq of the newest event it reflects.
pub fn snapshot(reader: &StateReader, id: &JobId) -> Result<pb::JobProgress, WatchEnd> {
    reader.read_with_seq(|s, seq| {
        s.jobs
            .get(id)
            .map(|j| pb::JobProgress {
                job: Some(convert::job(j, Detail::Progress)),
                seq,
            })
            .ok_or_else(|| WatchEnd::NotFound(id.clone()))
    })
}

/// Whether a snapshot shows a final status (completed, failed, cancelled).
pub fn is_final(p: &pb::JobProgress) -> bool {
    p.job.as_ref().is_some_and(|j| {
        matches!(
            pb::JobStatus::try_from(j.status),
            Ok(pb::JobStatus::Completed | pb::JobStatus::Failed | pb::JobStatus::Cancelled)
        )
    })
}

/// Devices that reached an outcome: the position of every progress bar muster draws.
pub fn finished(s: &pb::JobStats) -> u64 {
    s.succeeded + s.failed + s.timed_out + s.cancelled
}

/// Starts following job `id`: the first snapshot is the job as it is now; the receiver ends
/// after a final one. The caller has already done its read barrier, if it wants one.
pub fn follow(
    reader: StateReader,
    id: JobId,
) -> Result<mpsc::Receiver<Result<pb::JobProgress, WatchEnd>>, WatchEnd> {
    let mut updates = reader.subscribe();
    let first = snapshot(&reader, &id)?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        let mut seq = first.seq;
        let mut done = is_final(&first);
        if tx.send(Ok(first)).await.is_err() || done {
            return;
        }
        while !done {
            let changed = match updates.recv().await {
                Ok(StateUpdate::Events(applied)) => {
                    applied.last_seq() > seq && applied.events.iter().any(|e| e.job() == Some(&id))
                }
                // The state was replaced, or we missed updates: look again.
                Ok(StateUpdate::SnapshotInstalled { .. })
                | Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(WatchEnd::ShuttingDown)).await;
                    return;
                }
            };
            if !changed {
                continue;
            }
            let message = match snapshot(&reader, &id) {
                Ok(m) => m,
                Err(end) => {
                    let _ = tx.send(Err(end)).await;
                    return;
                }
            };
            if message.seq <= seq && !is_final(&message) {
                continue;
            }
            seq = message.seq;
            done = is_final(&message);
            if tx.send(Ok(message)).await.is_err() {
                // The watcher went away.
                return;
            }
        }
    });
    Ok(rx)
}

/// Batches a console snapshot carries at most: a job cut into batches of one device has as
/// many batches as devices, and a 100,000-entry list every few hundred milliseconds would make
/// the page slow. The window ends at the newest started batch; `batchCount` tells the total.
pub const MAX_BATCHES_SHOWN: usize = 100;

/// The lower-case name of a job status, as the console and `muster job` print it.
pub fn status_name(status: i32) -> &'static str {
    match pb::JobStatus::try_from(status) {
        Ok(pb::JobStatus::Scheduled) => "scheduled",
        Ok(pb::JobStatus::Pending) => "pending",
        Ok(pb::JobStatus::Running) => "running",
        Ok(pb::JobStatus::Stopped) => "stopped",
        Ok(pb::JobStatus::Paused) => "paused",
        Ok(pb::JobStatus::Completed) => "completed",
        Ok(pb::JobStatus::Failed) => "failed",
        Ok(pb::JobStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Counts of a run as the console shows them (`GET /api/jobs?progress=true`): converted to the
/// message `WatchJob` sends first, so the list and the live page cannot disagree.
pub fn domain_stats_json(s: &muster_domain::Stats) -> Value {
    stats_json(&convert::stats(s))
}

fn stats_json(s: &pb::JobStats) -> Value {
    json!({
        "total": s.total,
        "finished": finished(s),
        "pending": s.pending,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "timedOut": s.timed_out,
        "cancelled": s.cancelled,
    })
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| {
        Value::String(muster_types::Timestamp::from_millis(ms).to_string())
    })
}

/// A snapshot as the JSON the console's event stream sends (`event: progress`): the same
/// message gRPC `WatchJob` sends, in camelCase.
pub fn progress_json(p: &pb::JobProgress) -> Value {
    let d = pb::Job::default();
    let j = p.job.as_ref().unwrap_or(&d);
    let ds = pb::JobStats::default();
    let stats = j.stats.as_ref().unwrap_or(&ds);
    let newest = j
        .batches
        .iter()
        .rposition(|b| b.started_at_ms.is_some())
        .unwrap_or(0);
    let from = (newest + 1).saturating_sub(MAX_BATCHES_SHOWN);
    let batches: Vec<Value> = j
        .batches
        .iter()
        .skip(from)
        .take(MAX_BATCHES_SHOWN)
        .map(|b| {
            json!({
                "index": b.index,
                "startedAt": time(b.started_at_ms),
                "stats": stats_json(b.stats.as_ref().unwrap_or(&ds)),
            })
        })
        .collect();
    let runs: Vec<Value> = j
        .runs
        .iter()
        .map(|r| {
            json!({
                "run": r.run,
                "rerunId": r.rerun_id,
                "createdAt": time(Some(r.created_at_ms)),
                "startedAt": time(r.started_at_ms),
                "stats": stats_json(r.stats.as_ref().unwrap_or(&ds)),
            })
        })
        .collect();
    let mut m = Map::new();
    m.insert("seq".into(), json!(p.seq));
    m.insert("id".into(), json!(j.job_id));
    m.insert("displayName".into(), json!(j.display_name));
    m.insert("status".into(), json!(status_name(j.status)));
    m.insert("final".into(), json!(is_final(p)));
    if !j.status_reason.is_empty() {
        m.insert("statusReason".into(), json!(j.status_reason));
    }
    m.insert("run".into(), json!(j.run));
    m.insert("stats".into(), stats_json(stats));
    m.insert("createdAt".into(), time(Some(j.created_at_ms)));
    m.insert("startedAt".into(), time(j.started_at_ms));
    m.insert("endedAt".into(), time(j.ended_at_ms));
    m.insert("batchCount".into(), json!(j.batches.len()));
    m.insert("batches".into(), Value::Array(batches));
    m.insert("runs".into(), Value::Array(runs));
    // The rollout as it stands (issue 16), so the console's job page follows it live.
    if let Some(r) = j.rate_per_minute {
        m.insert("ratePerMinute".into(), json!(r));
    }
    if let Some(b) = j.paused_after_batch {
        m.insert("pausedAfterBatch".into(), json!(b));
    }
    let reason = j
        .pause_reason
        .map(muster_domain::rollout::PauseReason::try_from);
    if let Some(Ok(r)) = reason {
        m.insert("pauseReason".into(), json!(r.describe()));
    }
    if let Some(w) = &j.window {
        m.insert(
            "window".into(),
            json!({"state": if w.open { "open" } else { "waiting" }, "until": time(w.until_ms)}),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_counts_every_outcome_and_nothing_else() {
        let s = pb::JobStats {
            total: 20,
            pending: 1,
            running: 2,
            succeeded: 3,
            failed: 4,
            timed_out: 5,
            cancelled: 5,
        };
        assert_eq!(finished(&s), 17);
    }

    #[test]
    fn the_console_sees_a_window_of_batches_ending_at_the_newest_started() {
        let batches = (0..1000)
            .map(|i| pb::Batch {
                index: i,
                started_at_ms: (i < 500).then_some(1_000),
                stats: None,
            })
            .collect();
        let p = pb::JobProgress {
            job: Some(pb::Job {
                status: pb::JobStatus::Running as i32,
                batches,
                ..pb::Job::default()
            }),
            seq: 7,
        };
        let v = progress_json(&p);
        assert_eq!(v["batchCount"], 1000);
        let shown = v["batches"].as_array().map(Vec::len);
        assert_eq!(shown, Some(MAX_BATCHES_SHOWN));
        assert_eq!(v["batches"][0]["index"], 400);
        assert_eq!(v["batches"][99]["index"], 499);
        assert_eq!(v["status"], "running");
        assert_eq!(v["final"], false);
        assert_eq!(v["seq"], 7);
        // No rate, pause or window: none of the fields.
        for k in ["ratePerMinute", "pausedAfterBatch", "window"] {
            assert!(v.get(k).is_none(), "{k}: {v}");
        }
    }

    #[test]
    fn the_console_sees_the_rate_the_pause_and_the_window() {
        let p = pb::JobProgress {
            job: Some(pb::Job {
                status: pb::JobStatus::Paused as i32,
                status_reason: "paused after batch 0".into(),
                paused_after_batch: Some(0),
                pause_reason: Some(muster_domain::rollout::PauseReason::AfterBatch.into()),
                rate_per_minute: Some(120),
                window: Some(pb::WindowStatus {
                    open: false,
                    until_ms: Some(86_400_000),
                }),
                ..pb::Job::default()
            }),
            seq: 3,
        };
        let v = progress_json(&p);
        assert_eq!(v["status"], "paused");
        assert_eq!(v["statusReason"], "paused after batch 0");
        assert_eq!(v["pausedAfterBatch"], 0);
        assert_eq!(v["pauseReason"], "the rollout pauses after every batch");
        assert_eq!(v["ratePerMinute"], 120);
        assert_eq!(v["window"]["state"], "waiting");
        assert_eq!(v["window"]["until"], "1970-01-02T00:00:00.000Z");
    }
}
