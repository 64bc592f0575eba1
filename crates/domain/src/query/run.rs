//! Running a [`Statement`] over the state, one page at a time.
//!
//! A page walks the state's `BTreeMap`s from where the previous page ended and stops one matching
//! document past the page (to know whether to hand out a continuation), so a page costs the
//! documents it skips and shows, never a copy of the state. Aggregates are the exception: their
//! groups are counted over every matching document for each page, then paged by position.
//!
//! The order is device id for `devices`, (job id, device id) for `devices.jobs`, group order for
//! aggregates. A [`Cursor`] says where a page ended and how many rows were handed out before it
//! (for `TOP n`); its text form is opaque to clients.

use std::ops::Bound;

use muster_types::{DeviceId, JobId, Timestamp};
use serde_json::{Map, Value};

use super::select::{Aggregator, Source, Statement};
use super::QueryError;
use crate::cold::RunRows;
use crate::error::DomainError;
use crate::job::{DeviceRun, DeviceStatus, FailureReason, Job, JobStatus, Run};
use crate::page_token;
use crate::registry::Device;
use crate::State;

/// One row of a page.
#[derive(Debug, Clone, PartialEq)]
pub enum Row<'a> {
    /// A whole device twin (`SELECT * FROM devices`): the edge renders it in its own twin shape.
    Twin(&'a Device),
    /// Any other row: a `devices.jobs` document, a projection or a group.
    Document(Value),
}

/// One page of a query's rows, and where the next one starts (none on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<'a> {
    pub rows: Vec<Row<'a>>,
    pub next: Option<Cursor>,
}

/// The list name query tokens are sealed for (every query statement, REST and gRPC alike).
const TOKEN_LIST: &str = "query";

/// Where a page ended. Only the page that made it and [`Cursor::decode`] create one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Rows handed out before the next page (what `TOP n` counts against).
    returned: u64,
    at: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Device(DeviceId),
    /// Job ids cannot contain `:`, so `job:device` splits at the first one.
    DeviceJob(JobId, DeviceId),
    /// Position in an aggregate's groups (equal to `returned`).
    Group,
}

impl Cursor {
    /// The listing a query's tokens belong to: the statement's text (trimmed), so a token of
    /// one query is refused by another.
    fn listing(query: &str) -> page_token::Listing {
        page_token::Listing::new(TOKEN_LIST).with("query", query.trim())
    }

    /// The opaque text form handed to clients: a [`crate::page_token`] of the listing of
    /// `query` (the statement's text), so only issued ones are read back, by the same query.
    pub fn encode(&self, query: &str) -> String {
        let plain = match &self.at {
            Position::Device(d) => format!("d:{}:{d}", self.returned),
            Position::DeviceJob(j, d) => format!("j:{}:{j}:{d}", self.returned),
            Position::Group => format!("g:{}", self.returned),
        };
        page_token::seal(&Cursor::listing(query), &plain)
    }

    /// Reads a token [`Cursor::encode`] made for `query`; anything else is an error saying
    /// what to do.
    pub fn decode(token: &str, query: &str) -> Result<Cursor, QueryError> {
        let invalid = || {
            QueryError::new(
                "the continuation token is not one this service issued; send the one from the previous page of the same query, or none to start from the first page",
            )
        };
        let plain = page_token::open(&Cursor::listing(query), token).map_err(|r| match r {
            page_token::Refused::OtherListing => QueryError::new(
                "the continuation token belongs to another listing (another query's); start this query again without it, from the first page, or send the query that made it",
            ),
            page_token::Refused::NotIssued => invalid(),
        })?;
        let mut parts = plain.splitn(3, ':');
        let kind = parts.next().ok_or_else(invalid)?;
        let returned: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(invalid)?;
        let rest = parts.next();
        let at = match (kind, rest) {
            ("d", Some(id)) => Position::Device(DeviceId::new(id).map_err(|_| invalid())?),
            ("j", Some(rest)) => {
                let (job, device) = rest.split_once(':').ok_or_else(invalid)?;
                Position::DeviceJob(
                    JobId::new(job).map_err(|_| invalid())?,
                    DeviceId::new(device).map_err(|_| invalid())?,
                )
            }
            ("g", None) => Position::Group,
            _ => return Err(invalid()),
        };
        Ok(Cursor { returned, at })
    }
}

impl Statement {
    /// One page of at most `size` rows (at least 1), after `after` (the previous page's
    /// [`Page::next`]). Fails only when `after` belongs to another kind of query.
    pub fn page<'a>(
        &self,
        state: &'a State,
        cold: &dyn RunRows,
        after: Option<&Cursor>,
        size: usize,
    ) -> Result<Page<'a>, QueryError> {
        let returned = after.map_or(0, |c| c.returned);
        let fits = matches!(
            (after.map(|c| &c.at), self.is_aggregate(), self.source),
            (None, _, _)
                | (Some(Position::Group), true, _)
                | (Some(Position::Device(_)), false, Source::Devices)
                | (Some(Position::DeviceJob(..)), false, Source::DeviceJobs)
        );
        if !fits {
            return Err(QueryError::new(
                "the continuation token belongs to another query; send the query that made it, or no token to start from the first page",
            ));
        }
        let left = self
            .top
            .map_or(u64::MAX, |top| top.saturating_sub(returned));
        let limit = usize::try_from(left).unwrap_or(usize::MAX).min(size.max(1));
        let mut rows = Vec::new();
        if limit == 0 {
            return Ok(Page { rows, next: None });
        }
        let more = match (after.map(|c| &c.at), self.source) {
            _ if self.is_aggregate() => self.groups(state, returned, limit, &mut rows),
            (Some(Position::Device(d)), _) => self.devices(state, Some(d), limit, &mut rows),
            (Some(Position::DeviceJob(j, d)), _) => {
                self.device_jobs(state, cold, Some((j, d)), limit, &mut rows)?
            }
            (_, Source::Devices) => self.devices(state, None, limit, &mut rows),
            (_, Source::DeviceJobs) => self.device_jobs(state, cold, None, limit, &mut rows)?,
        };
        let returned = returned + rows.len() as u64;
        let next = more
            .filter(|_| self.top.is_none_or(|top| returned < top))
            .map(|at| Cursor { returned, at });
        Ok(Page { rows, next })
    }

    /// Fills `rows` with up to `limit` devices after `after`; `Some(position)` when another
    /// matching one follows.
    fn devices<'a>(
        &self,
        state: &'a State,
        after: Option<&DeviceId>,
        limit: usize,
        rows: &mut Vec<Row<'a>>,
    ) -> Option<Position> {
        let devices = &state.registry.devices;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        // `deviceId = '...'` at the top of the condition names the one device worth looking at.
        let pinned = self
            .predicate
            .pinned("deviceId")
            .and_then(|id| DeviceId::new(id).ok());
        let candidates: Box<dyn Iterator<Item = &Device>> = match &pinned {
            Some(id) => Box::new(
                devices
                    .range((lower, Bound::Unbounded))
                    .take_while(move |(k, _)| *k <= id)
                    .filter(move |(k, _)| *k == id)
                    .map(|(_, d)| d),
            ),
            None => Box::new(devices.range((lower, Bound::Unbounded)).map(|(_, d)| d)),
        };
        let mut last: Option<&DeviceId> = None;
        for device in candidates {
            let doc = device.query_document(self.names_metadata());
            if !self.matches(&doc) {
                continue;
            }
            if rows.len() == limit {
                return last.map(|d| Position::Device(d.clone()));
            }
            rows.push(if self.selects_documents() {
                Row::Twin(device)
            } else {
                Row::Document(self.project(&doc))
            });
            last = Some(&device.id);
        }
        None
    }

    /// Fills `rows` with up to `limit` device-job documents after `after`.
    fn device_jobs(
        &self,
        state: &State,
        cold: &dyn RunRows,
        after: Option<(&JobId, &DeviceId)>,
        limit: usize,
        rows: &mut Vec<Row<'_>>,
    ) -> Result<Option<Position>, QueryError> {
        let lower = after.map_or(Bound::Unbounded, |(j, _)| Bound::Included(j));
        // `devices.jobs.jobId = '...'` at the top of the condition: only that job.
        let pinned = self.predicate.pinned("jobId").map(str::to_owned);
        // `devices.jobs.deviceId = '...'`: one index lookup per job instead of a walk.
        let device = self
            .predicate
            .pinned("deviceId")
            .and_then(|d| DeviceId::new(d).ok());
        let mut last: Option<(JobId, DeviceId)> = None;
        for (job_id, job) in state.jobs.range((lower, Bound::Unbounded)) {
            if pinned.as_deref().is_some_and(|p| p != job_id.as_str()) {
                continue;
            }
            let after_device = after.filter(|(j, _)| *j == job_id).map(|(_, d)| d);
            let mut full = false;
            for_each_device(
                job,
                cold,
                after_device,
                device.as_ref(),
                |run, device_run| {
                    let doc = device_job_document(job, run, device_run);
                    if !self.matches(&doc) {
                        return true;
                    }
                    if rows.len() == limit {
                        full = true;
                        return false;
                    }
                    rows.push(Row::Document(doc));
                    last = Some((job_id.clone(), device_run.device.clone()));
                    true
                },
            )
            .map_err(|e| QueryError::new(e.to_string()))?;
            if full {
                return Ok(last.map(|(j, d)| Position::DeviceJob(j, d)));
            }
        }
        Ok(None)
    }

    /// Fills `rows` with up to `limit` groups after the first `skip`.
    fn groups(
        &self,
        state: &State,
        skip: u64,
        limit: usize,
        rows: &mut Vec<Row<'_>>,
    ) -> Option<Position> {
        let mut aggregator = Aggregator::new(self)?;
        for device in state.registry.devices.values() {
            let doc = device.query_document(self.names_metadata());
            if self.matches(&doc) {
                aggregator.add(&doc);
            }
        }
        let mut groups = aggregator
            .rows()
            .into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX));
        rows.extend(groups.by_ref().take(limit).map(Row::Document));
        groups.next().map(|_| Position::Group)
    }
}

/// Calls `f` with each device of `job` after `after` (only `only`, when given), in device id
/// order, with the latest run the device is part of (a rerun's outcome replaces the first
/// run's); stops when `f` says false. A finished run's rows are read from `cold`.
fn for_each_device(
    job: &Job,
    cold: &dyn RunRows,
    after: Option<&DeviceId>,
    only: Option<&DeviceId>,
    mut f: impl FnMut(&Run, &DeviceRun) -> bool,
) -> Result<(), DomainError> {
    let latest = |id: &DeviceId| -> Result<Option<(&Run, DeviceRun)>, DomainError> {
        for run in job.runs.iter().rev() {
            if let Some(d) = run.row(&job.id, cold, id)? {
                return Ok(Some((run, d.into_owned())));
            }
        }
        Ok(None)
    };
    if let Some(id) = only {
        if after.is_none_or(|a| id > a) {
            if let Some((run, device_run)) = latest(id)? {
                f(run, &device_run);
            }
        }
        return Ok(());
    }
    if let [run] = job.runs.as_slice() {
        return run.scan_by_id(&job.id, cold, after, &mut |d| f(run, &d));
    }
    // Several runs: walk the union of their ids in order, one id at a time.
    let mut cursor = after.cloned();
    loop {
        let mut next: Option<DeviceId> = None;
        for run in &job.runs {
            run.scan_by_id(&job.id, cold, cursor.as_ref(), &mut |d| {
                if next.as_ref().is_none_or(|n| d.device < *n) {
                    next = Some(d.device.clone());
                }
                false
            })?;
        }
        let Some(id) = next else {
            return Ok(());
        };
        if let Some((run, device_run)) = latest(&id)? {
            if !f(run, &device_run) {
                return Ok(());
            }
        }
        cursor = Some(id);
    }
}

/// The `devices.jobs` document of one device in one job, as IoT Hub's query language shows it:
/// `deviceId`, `jobId`, `jobType`, `status` (IoT Hub's device job statuses: `pending`,
/// `scheduled`, `running`, `completed`, `failed`, `canceled`), `startTimeUtc` / `endTimeUtc` (the
/// job's start and, with a maximum execution time, its deadline, else its end once ended),
/// `createdDateTimeUtc` (the device joined the job), `lastUpdatedDateTimeUtc`,
/// `outcome.deviceMethodResponse` (`{status, payload}` or null) and, for a device that failed,
/// `error {code, description}`.
pub fn device_job_document(job: &Job, run: &Run, device_run: &DeviceRun) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "deviceId".into(),
        Value::String(device_run.device.to_string()),
    );
    doc.insert("jobId".into(), Value::String(job.id.to_string()));
    let job_type = if job.spec.needs_device() {
        "scheduleDeviceMethod"
    } else {
        "scheduleUpdateTwin"
    };
    doc.insert("jobType".into(), Value::String(job_type.into()));
    let status = match device_run.status {
        DeviceStatus::Pending if job.status == JobStatus::Scheduled => "scheduled",
        DeviceStatus::Pending => "pending",
        DeviceStatus::Running => "running",
        DeviceStatus::Succeeded => "completed",
        DeviceStatus::Failed | DeviceStatus::TimedOut => "failed",
        DeviceStatus::Cancelled => "canceled",
    };
    doc.insert("status".into(), Value::String(status.into()));
    let start = job
        .start_at
        .or(job.spec.schedule.start_at)
        .or(job.started_at)
        .unwrap_or(job.created_at);
    doc.insert("startTimeUtc".into(), time(start));
    let end = match job.spec.schedule.max_execution_secs {
        Some(secs) => Some(start.plus_secs(i64::try_from(secs).unwrap_or(i64::MAX / 1000))),
        None => job.ended_at,
    };
    if let Some(end) = end {
        doc.insert("endTimeUtc".into(), time(end));
    }
    doc.insert("createdDateTimeUtc".into(), time(run.created_at));
    let updated = device_run
        .finished_at
        .or(device_run.dispatched_at)
        .or(device_run.ready_since)
        .unwrap_or(run.created_at);
    doc.insert("lastUpdatedDateTimeUtc".into(), time(updated));
    let response = match &device_run.response {
        Some(r) => {
            let mut m = Map::new();
            m.insert("status".into(), Value::from(r.status));
            m.insert("payload".into(), r.payload.value());
            Value::Object(m)
        }
        None => Value::Null,
    };
    let mut outcome = Map::new();
    outcome.insert("deviceMethodResponse".into(), response);
    doc.insert("outcome".into(), Value::Object(outcome));
    if matches!(
        device_run.status,
        DeviceStatus::Failed | DeviceStatus::TimedOut
    ) {
        if let Some(reason) = &device_run.last_error {
            let mut error = Map::new();
            error.insert("code".into(), Value::String(error_code(reason).into()));
            error.insert("description".into(), Value::String(reason.describe()));
            doc.insert("error".into(), Value::Object(error));
        }
    }
    Value::Object(doc)
}

/// IoT Hub's error code names where it has one for the case.
fn error_code(reason: &FailureReason) -> &'static str {
    match reason {
        FailureReason::DeviceError { .. } => "DeviceMethodFailed",
        FailureReason::Timeout => "GatewayTimeout",
        FailureReason::NotConnected => "DeviceNotOnline",
        FailureReason::DeviceNotFound => "DeviceNotFound",
        FailureReason::DeviceDisabled => "DeviceDisabled",
        FailureReason::DispatchFailed { .. } => "DispatchFailed",
    }
}

fn time(t: Timestamp) -> Value {
    Value::String(t.to_rfc3339())
}
