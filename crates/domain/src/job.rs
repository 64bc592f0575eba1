//! A job's current state, which is also its projection: statistics per run and per batch, and each
//! device's status with attempts, timestamps, last error and method response.
//!
//! Everything here changes only in `evolve`. The indexes (`ready`, `running`, `deadlines`) exist so
//! that the leader's actions and the next deadline are found without scanning every device.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;
use muster_types::{DeviceId, JobId, RerunId, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cow::{CowSet, CowVec};
use crate::query::Query;
use crate::rollout::{AbortCriterion, PauseReason, Tally};
use crate::spec::JobSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    /// Waiting for its start time.
    Scheduled,
    /// Accepted; starts at the leader's next tick.
    Pending,
    Running,
    /// Halted by the user: nothing new is dispatched, answers already due are still recorded.
    Stopped,
    /// A batch finished and its gate holds the next one back until an operator continues the job.
    Paused,
    Completed,
    /// Ended by its maximum execution time.
    Failed,
    /// Ended by the user or by the cancellation threshold.
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Stopped => "stopped",
            JobStatus::Paused => "paused",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeviceStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl DeviceStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, DeviceStatus::Pending | DeviceStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Running => "running",
            DeviceStatus::Succeeded => "succeeded",
            DeviceStatus::Failed => "failed",
            DeviceStatus::TimedOut => "timedOut",
            DeviceStatus::Cancelled => "cancelled",
        }
    }
}

/// Why one device's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The device answered with a status outside 200..=299; its body is kept as the response.
    DeviceError {
        status: i32,
    },
    /// No answer within the response timeout.
    Timeout,
    /// Offline for longer than the connect timeout.
    NotConnected,
    DeviceNotFound,
    DeviceDisabled,
    /// The dispatcher could not send the request (for example the broker refused it).
    DispatchFailed {
        message: String,
    },
}

impl FailureReason {
    pub fn is_timeout(&self) -> bool {
        matches!(self, FailureReason::Timeout)
    }

    /// A human-readable reason for per-device results and CSV exports.
    pub fn describe(&self) -> String {
        match self {
            FailureReason::DeviceError { status } => {
                format!("device answered with status {status}")
            }
            FailureReason::Timeout => "no answer within the response timeout".into(),
            FailureReason::NotConnected => "device stayed offline past the connect timeout".into(),
            FailureReason::DeviceNotFound => "device is not registered".into(),
            FailureReason::DeviceDisabled => "device is disabled".into(),
            FailureReason::DispatchFailed { message } => format!("could not send: {message}"),
        }
    }
}

/// What a device answered to a direct method. The payload is shared, not copied, between the
/// event that records it and the device's status: copying JSON per result was the largest cost of
/// applying results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResponse {
    pub status: i32,
    pub payload: JsonText,
}

/// A JSON value kept as its compact text: a running job holds one response per answered device,
/// and a parsed `Value` object costs ~600 bytes of small allocations where its text costs its
/// length (issue 14: a row in a running job at most ~200 bytes). Readers parse it when they
/// render it. Clones share the text. Serde reads and writes it as the JSON value it holds, so
/// snapshots and cold rows keep their shape.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// The compact text of `value` (the form the event log stores).
    pub fn from_value(value: &Value) -> Self {
        JsonText(Arc::from(value.to_string()))
    }

    /// Keeps `text` if it is one JSON value; the error says where it is not.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(text)?;
        Ok(JsonText(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, parsed anew (valid by construction; `null` if it somehow is not).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        JsonText::from_value(&value)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        JsonText::from_value(value)
    }
}

impl std::fmt::Display for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonText({})", &*self.0)
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value: Value = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JsonText::from_value(&Value::deserialize(d)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    User,
    /// The cancellation threshold was crossed: `failures` out of `population` (the batch's or the
    /// run's device count).
    Threshold {
        failures: u64,
        population: u64,
        batch: Option<u32>,
    },
    /// An abort criterion was crossed: the `index`-th of the spec's, with `failures` of its kind
    /// out of `finished` devices.
    Criterion {
        index: u32,
        criterion: AbortCriterion,
        failures: u64,
        finished: u64,
    },
    /// A batch fell short of a gate that cancels.
    Gate {
        batch: u32,
        reason: PauseReason,
    },
}

impl CancelReason {
    /// For job views and the audit timeline: names the rule that cancelled.
    pub fn describe(&self) -> String {
        match self {
            CancelReason::User => "cancelled by a user".into(),
            CancelReason::Threshold {
                failures,
                population,
                batch,
            } => match batch {
                Some(b) => format!(
                    "cancellation threshold crossed in batch {b}: {failures} of {population} devices failed"
                ),
                None => format!(
                    "cancellation threshold crossed: {failures} of {population} devices failed"
                ),
            },
            CancelReason::Criterion {
                index,
                criterion,
                failures,
                finished,
            } => format!(
                "abort criterion {index} ({}) crossed: {failures} of {finished} finished devices",
                criterion.describe()
            ),
            CancelReason::Gate { batch, reason } => {
                format!("batch {batch} failed its gate: {}", reason.describe())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobFailure {
    MaxExecutionTimeExceeded,
}

/// Device counts. Counters are disjoint, so their sum is the device count; `failed` and
/// `timed_out` together are what the Azure shapes call failed. Counts are of devices, never of
/// attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub devices: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
}

impl Stats {
    fn slot(&mut self, s: DeviceStatus) -> &mut u64 {
        match s {
            DeviceStatus::Pending => &mut self.pending,
            DeviceStatus::Running => &mut self.running,
            DeviceStatus::Succeeded => &mut self.succeeded,
            DeviceStatus::Failed => &mut self.failed,
            DeviceStatus::TimedOut => &mut self.timed_out,
            DeviceStatus::Cancelled => &mut self.cancelled,
        }
    }

    pub(crate) fn add(&mut self, s: DeviceStatus) {
        self.devices += 1;
        *self.slot(s) += 1;
    }

    pub(crate) fn moved(&mut self, from: DeviceStatus, to: DeviceStatus) {
        let f = self.slot(from);
        *f = f.saturating_sub(1);
        *self.slot(to) += 1;
    }

    /// Final failures: what thresholds count.
    pub fn failures(&self) -> u64 {
        self.failed + self.timed_out
    }

    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out + self.cancelled
    }

    pub fn sum(&self) -> u64 {
        self.pending + self.running + self.finished()
    }

    pub fn all_final(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

/// One device within one run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRun {
    pub device: DeviceId,
    pub batch: u32,
    pub status: DeviceStatus,
    /// Attempts started so far (the one running included).
    pub attempts: u32,
    /// When the device last became eligible for dispatch (its batch started, or it is retried).
    pub ready_since: Option<Timestamp>,
    pub dispatched_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub last_error: Option<FailureReason>,
    pub response: Option<MethodResponse>,
}

impl DeviceRun {
    /// A device that joined a run in `batch` and has not been tried yet.
    pub(crate) fn pending(device: DeviceId, batch: u32) -> Self {
        DeviceRun {
            device,
            batch,
            status: DeviceStatus::Pending,
            attempts: 0,
            ready_since: None,
            dispatched_at: None,
            finished_at: None,
            last_error: None,
            response: None,
        }
    }
}

/// A contiguous slice of a run's devices, started in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub start: u32,
    pub end: u32,
    pub started_at: Option<Timestamp>,
    pub stats: Stats,
}

impl Batch {
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One pass of the job over a set of devices: the original run or a rerun of the failed ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub number: RunId,
    pub rerun_id: Option<RerunId>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub devices: CowVec<DeviceRun>,
    /// `devices` in id order (see [`RunIndex`]).
    pub index: RunIndex,
    pub batches: Vec<Batch>,
    /// Batches started so far (they start in order).
    pub batches_started: u32,
    pub stats: Stats,
    /// Devices of started batches waiting for dispatch, in dispatch order.
    pub ready: CowSet<u32>,
    /// Devices with an attempt in flight, keyed by the attempt's deadline.
    pub deadlines: CowSet<(Timestamp, u32)>,
    /// Devices waiting out a retry backoff, keyed by when they may be dispatched again (their
    /// `ready_since`). Due entries are eligible like `ready` ones; nothing moves them.
    #[serde(default)]
    pub backoff: CowSet<(Timestamp, u32)>,
    /// Devices dispatched at least once (the exponential rate's "notified").
    #[serde(default)]
    pub notified: u64,
    /// Devices that ended failed because they stayed offline (abort criteria count them apart).
    #[serde(default)]
    pub not_connected: u64,
    /// Set once the run's rows moved to the cold tier (`devices` and `index` are then empty):
    /// see [`crate::cold`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<crate::cold::ColdRun>,
}

impl Run {
    pub(crate) fn new(
        number: RunId,
        rerun_id: Option<RerunId>,
        devices: &[DeviceId],
        spec: &JobSpec,
        at: Timestamp,
    ) -> Self {
        let mut run = Run {
            number,
            rerun_id,
            created_at: at,
            started_at: None,
            devices: CowVec::new(),
            index: RunIndex::default(),
            batches: Vec::new(),
            batches_started: 0,
            stats: Stats::default(),
            ready: CowSet::new(),
            deadlines: CowSet::new(),
            backoff: CowSet::new(),
            notified: 0,
            not_connected: 0,
            cold: None,
        };
        let per = spec
            .rollout
            .batch
            .map_or(devices.len().max(1), |b| b.per_batch(devices.len()));
        for chunk in devices.chunks(per.max(1)) {
            run.append_batch(chunk);
        }
        run
    }

    /// Adds devices as a new batch at the end; used at creation and when devices join a
    /// continuous job. Devices already in the run are skipped.
    pub(crate) fn append_batch(&mut self, devices: &[DeviceId]) {
        let start = self.devices.len() as u32;
        let batch = self.batches.len() as u32;
        let mut stats = Stats::default();
        let mut added: Vec<u32> = Vec::new();
        // Ids mostly come sorted from the registry, where a repeat would sit next to its twin;
        // otherwise a set of this batch's ids finds repeats.
        let sorted = devices.windows(2).all(|w| w[0] <= w[1]);
        let mut seen = std::collections::HashSet::new();
        for d in devices {
            let repeat = if sorted {
                added
                    .last()
                    .is_some_and(|&p| self.devices[p as usize].device == *d)
            } else {
                !seen.insert(d.clone())
            };
            if repeat || self.position(d).is_some() {
                continue;
            }
            added.push(self.devices.len() as u32);
            self.devices.push(DeviceRun::pending(d.clone(), batch));
            stats.add(DeviceStatus::Pending);
            self.stats.add(DeviceStatus::Pending);
        }
        self.index.add(&self.devices, added);
        let end = self.devices.len() as u32;
        if end > start {
            self.batches.push(Batch {
                start,
                end,
                started_at: None,
                stats,
            });
        }
    }

    pub fn device(&self, id: &DeviceId) -> Option<&DeviceRun> {
        self.position(id).map(|i| &self.devices[i as usize])
    }

    /// The device's position in `devices` (its run order).
    pub fn position(&self, id: &DeviceId) -> Option<u32> {
        self.index.lookup(&self.devices, id)
    }

    /// The batch whose devices are being worked on: the last one started.
    pub fn current_batch(&self) -> Option<u32> {
        self.batches_started.checked_sub(1)
    }

    /// Whether every started batch has only final devices.
    pub fn started_batches_done(&self) -> bool {
        self.batches[..self.batches_started as usize]
            .iter()
            .all(|b| b.stats.all_final())
    }

    /// Devices that may be dispatched at `now`, in order: retries whose backoff is over, then
    /// the ready ones.
    pub fn eligible(&self, now: Timestamp) -> impl Iterator<Item = u32> + '_ {
        self.backoff
            .iter()
            .take_while(move |(t, _)| *t <= now)
            .map(|&(_, i)| i)
            .chain(self.ready.iter().copied())
    }

    /// When the next retry's backoff ends after `now`.
    pub fn next_retry(&self, now: Timestamp) -> Option<Timestamp> {
        self.backoff.iter().map(|&(t, _)| t).find(|t| *t > now)
    }

    /// The final outcomes abort criteria count.
    pub fn tally(&self) -> Tally {
        Tally {
            finished: self.stats.succeeded + self.stats.failures(),
            failed: self.stats.failed,
            timed_out: self.stats.timed_out,
            not_connected: self.not_connected,
        }
    }

    /// The rid on the wire: unique per job, run, device (in the topic) and attempt, so a device can
    /// drop a duplicate and the dispatcher can route an answer without a lookup table.
    pub fn rid(job: &JobId, run: RunId, attempt: u32) -> String {
        format!("{job}:{}:{attempt}", run.0)
    }
}

/// A run's device positions, in device-id order for paging and hashed for lookups.
///
/// The ordered list costs 4 bytes a device, where a map from id to position cost ~40 (a second
/// handle on every id and the tree's nodes). Binary-searching it for every result compared ~17
/// ids through the rows, which halved the state machine's throughput on results; lookups go
/// through a hash table of the same positions instead (~6-11 bytes a device), whose hashes are
/// recomputed from the rows' ids when it grows, so it holds no ids either. The table is built
/// on first use after a snapshot is read (the file carries the positions only). Shared behind
/// an `Arc` (it changes only when devices join), so a snapshot's clone copies nothing.
#[derive(Clone, Default)]
pub struct RunIndex(Arc<IndexParts>);

#[derive(Clone, Default)]
struct IndexParts {
    by_id: Vec<u32>,
    by_hash: OnceLock<HashTable<u32>>,
}

impl std::fmt::Debug for RunIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunIndex").field(&self.0.by_id).finish()
    }
}

impl PartialEq for RunIndex {
    fn eq(&self, other: &Self) -> bool {
        self.0.by_id == other.0.by_id
    }
}

impl Eq for RunIndex {}

/// A fixed, fast hash of a device id. Fixed (no per-process seed) because only administrators
/// register devices, and an order that never reaches output needs no protection from them.
fn id_hash(id: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = id.as_bytes();
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    // Murmur3's finalizer: every input bit reaches the bits the table uses.
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl IndexParts {
    fn table(&self, rows: &CowVec<DeviceRun>) -> &HashTable<u32> {
        self.by_hash.get_or_init(|| {
            let mut table = HashTable::with_capacity(self.by_id.len());
            insert_all(&mut table, rows, &self.by_id);
            table
        })
    }
}

fn insert_all(table: &mut HashTable<u32>, rows: &CowVec<DeviceRun>, positions: &[u32]) {
    let hash = |p: &u32| id_hash(rows[*p as usize].device.as_str());
    table.reserve(positions.len(), hash);
    for &p in positions {
        table.insert_unique(hash(&p), p, hash);
    }
}

impl RunIndex {
    /// Indexes `rows`, every one of them (ids must be distinct).
    pub fn of(rows: &CowVec<DeviceRun>) -> Self {
        let mut index = RunIndex::default();
        index.add(rows, (0..rows.len() as u32).collect());
        index
    }

    pub fn len(&self) -> usize {
        self.0.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.by_id.is_empty()
    }

    /// Positions in device-id order.
    pub fn positions(&self) -> &[u32] {
        &self.0.by_id
    }

    /// The position of `id` in `rows`.
    pub(crate) fn lookup(&self, rows: &CowVec<DeviceRun>, id: &DeviceId) -> Option<u32> {
        self.0
            .table(rows)
            .find(id_hash(id.as_str()), |&p| rows[p as usize].device == *id)
            .copied()
    }

    /// Where `id` is (`Ok`) or would go (`Err`) in [`Self::positions`].
    pub(crate) fn find(&self, rows: &CowVec<DeviceRun>, id: &DeviceId) -> Result<usize, usize> {
        self.0
            .by_id
            .binary_search_by(|&p| rows[p as usize].device.as_str().cmp(id.as_str()))
    }

    /// Adds the rows at `positions` (new to the index); sorted input is merged in one pass.
    pub(crate) fn add(&mut self, rows: &CowVec<DeviceRun>, mut positions: Vec<u32>) {
        let id = |p: &u32| rows[*p as usize].device.as_str();
        if !positions.is_sorted_by(|a, b| id(a) <= id(b)) {
            positions.sort_by(|a, b| id(a).cmp(id(b)));
        }
        let own = Arc::make_mut(&mut self.0);
        // The table is built (from the old positions) before they change.
        own.table(rows);
        if let Some(table) = own.by_hash.get_mut() {
            insert_all(table, rows, &positions);
        }
        let by_id = &mut own.by_id;
        if by_id
            .last()
            .zip(positions.first())
            .is_none_or(|(l, f)| id(l) < id(f))
        {
            by_id.extend(positions);
            return;
        }
        let old = std::mem::take(by_id);
        let mut merged = Vec::with_capacity(old.len() + positions.len());
        let (mut a, mut b) = (old.into_iter().peekable(), positions.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if id(x) <= id(y) => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        *by_id = merged;
    }

    pub fn clear(&mut self) {
        self.0 = Arc::default();
    }

    fn from_positions(by_id: Vec<u32>) -> Self {
        RunIndex(Arc::new(IndexParts {
            by_id,
            by_hash: OnceLock::new(),
        }))
    }
}

impl Serialize for RunIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.by_id.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RunIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RunIndex;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("device positions in id order, or a map from device id to position")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<RunIndex, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(p) = a.next_element()? {
                    v.push(p);
                }
                Ok(RunIndex::from_positions(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<RunIndex, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some((_, p)) = a.next_entry::<serde::de::IgnoredAny, u32>()? {
                    v.push(p);
                }
                Ok(RunIndex::from_positions(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Reads a rid back into (job, run, attempt). Job ids cannot contain ':', so this is unambiguous.
pub fn parse_rid(rid: &str) -> Option<(JobId, RunId, u32)> {
    let mut parts = rid.rsplitn(3, ':');
    let attempt = parts.next()?.parse().ok()?;
    let run = parts.next()?.parse().ok()?;
    let job = JobId::new(parts.next()?).ok()?;
    Some((job, RunId(run), attempt))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    /// Compiled target query of a continuous job (a group target is resolved to its query).
    pub watch: Option<Query>,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub start_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub resumed_at: Option<Timestamp>,
    pub cancel_reason: Option<CancelReason>,
    pub failure: Option<JobFailure>,
    pub runs: Vec<Run>,
    /// Dispatch times within the last minute, only for a job with a devices-per-minute limit.
    pub recent_dispatches: VecDeque<Timestamp>,
    /// The exponential rate reached so far (`None`: its base rate, or no exponential rate).
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    /// Why and after which batch the job waits for `continue`, while it is paused.
    #[serde(default)]
    pub paused: Option<(u32, PauseReason)>,
    /// What the log last said about the job's maintenance window (`WindowOpened` /
    /// `WindowClosed`), so each opening and closing is recorded once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::window::WindowMark>,
    /// Retention dropped the per-device rows of every run (`Event::JobDetailExpired`); the
    /// summaries (statistics, status, times) stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detail_expired: bool,
}

impl Job {
    pub fn current_run(&self) -> &Run {
        // A job is created with run 0, and runs are never removed.
        &self.runs[self.runs.len() - 1]
    }

    pub(crate) fn current_run_mut(&mut self) -> &mut Run {
        let last = self.runs.len() - 1;
        &mut self.runs[last]
    }

    pub fn run(&self, run: RunId) -> Option<&Run> {
        self.runs.get(run.0 as usize)
    }

    /// The statistics users see: those of the current run.
    pub fn stats(&self) -> Stats {
        self.current_run().stats
    }

    /// When an eligible device's wait for a connection began: a resume restarts the clock.
    pub fn effective_ready_since(&self, d: &DeviceRun) -> Option<Timestamp> {
        d.ready_since.map(|t| match self.resumed_at {
            Some(r) if r > t => r,
            _ => t,
        })
    }

    /// The per-minute limit in force: the fixed one, the exponential rate reached, or the lower.
    pub fn rate_limit(&self) -> Option<u32> {
        let exp = self
            .spec
            .rollout
            .exponential
            .map(|e| self.rate_per_minute.unwrap_or_else(|| e.rate_at(0)));
        match (self.spec.rollout.max_devices_per_minute, exp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many more devices the per-minute limit allows at `now`, and when the next slot opens.
    pub fn dispatch_allowance(&self, now: Timestamp) -> (usize, Option<Timestamp>) {
        let Some(limit) = self.rate_limit() else {
            return (usize::MAX, None);
        };
        let window_start = now.plus_millis(-60_000);
        let in_window: Vec<&Timestamp> = self
            .recent_dispatches
            .iter()
            .filter(|t| **t > window_start)
            .collect();
        let used = in_window.len();
        let allowance = (limit as usize).saturating_sub(used);
        let next = if allowance == 0 {
            in_window.first().map(|t| t.plus_millis(60_000))
        } else {
            None
        };
        (allowance, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: &[&str]) -> CowVec<DeviceRun> {
        let mut rows = CowVec::new();
        for id in ids {
            rows.push(DeviceRun::pending(DeviceId::new(*id).unwrap(), 0));
        }
        rows
    }

    #[test]
    fn the_index_finds_every_row_in_order_and_after_a_round_trip() {
        let mut rows = rows(&["m", "c", "x", "a"]);
        let mut index = RunIndex::of(&rows);
        let snapshot = index.clone();
        // Joining devices out of order merges them; the clone a snapshot took stays as it was.
        for id in ["b", "z", "n"] {
            rows.push(rows_one(id));
        }
        index.add(&rows, vec![4, 5, 6]);
        let ids = |ix: &RunIndex| -> Vec<String> {
            ix.positions()
                .iter()
                .map(|&p| rows[p as usize].device.to_string())
                .collect()
        };
        assert_eq!(ids(&index), ["a", "b", "c", "m", "n", "x", "z"]);
        assert_eq!(ids(&snapshot), ["a", "c", "m", "x"]);
        assert_eq!(snapshot.lookup(&rows, &DeviceId::new("b").unwrap()), None);

        // A snapshot file carries the positions only; the lookup table is rebuilt on first use.
        let read: RunIndex = serde_json::from_value(serde_json::to_value(&index).unwrap()).unwrap();
        assert_eq!(read, index);
        for ix in [&index, &read] {
            for (p, row) in rows.iter().enumerate() {
                assert_eq!(ix.lookup(&rows, &row.device), Some(p as u32));
            }
            assert_eq!(ix.lookup(&rows, &DeviceId::new("q").unwrap()), None);
        }
        index.clear();
        assert!(index.is_empty());
        assert_eq!(index.lookup(&rows, &DeviceId::new("a").unwrap()), None);
    }

    fn rows_one(id: &str) -> DeviceRun {
        rows(&[id])[0].clone()
    }

    #[test]
    fn rid_round_trips() {
        let job = JobId::new("fw-rollout.2").unwrap();
        let rid = Run::rid(&job, RunId(3), 2);
        assert_eq!(rid, "fw-rollout.2:3:2");
        assert_eq!(parse_rid(&rid), Some((job, RunId(3), 2)));
        assert_eq!(parse_rid("nope"), None);
        assert_eq!(parse_rid("a:b:c"), None);
    }

    #[test]
    fn stats_moves_keep_the_sum() {
        let mut s = Stats::default();
        s.add(DeviceStatus::Pending);
        s.add(DeviceStatus::Pending);
        s.moved(DeviceStatus::Pending, DeviceStatus::Running);
        s.moved(DeviceStatus::Running, DeviceStatus::TimedOut);
        assert_eq!(s.sum(), s.devices);
        assert_eq!(s.failures(), 1);
    }
}
