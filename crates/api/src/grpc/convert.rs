//! Domain state to API messages, and API enums to domain enums.
//!
//! These are views, not the persisted format: they may summarise (a `Job` without its spec in a
//! list) and add text for people (`status_reason`, `last_error`), so they live at the API edge
//! and not in `muster-proto`, whose conversions must round-trip exactly.

use muster_domain::{
    CancelReason, ConnectionState, Device, DeviceRun, DeviceStatus, Group, Job, JobFailure,
    JobSpec, JobStatus, Run, Stats,
};
use muster_proto::pb;
use muster_types::Timestamp;
use tonic::Status;

/// How much of a job a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Everything: GetJob and the answers of writes.
    Full,
    /// Without the spec (it never changes), with batches and runs: WatchJob.
    Progress,
    /// Without spec, batches and runs, so a page of big jobs stays small: ListJobs.
    Summary,
}

pub(crate) fn job(j: &Job, detail: Detail) -> pb::Job {
    let run = j.current_run();
    let (batches, runs) = if detail == Detail::Summary {
        (Vec::new(), Vec::new())
    } else {
        (
            run.batches
                .iter()
                .enumerate()
                .map(|(i, b)| pb::Batch {
                    index: i as u32,
                    started_at_ms: ms(b.started_at),
                    stats: Some(stats(&b.stats)),
                })
                .collect(),
            j.runs.iter().map(run_summary).collect(),
        )
    };
    pb::Job {
        job_id: j.id.to_string(),
        display_name: j.spec.display_name.clone(),
        description: j.spec.description.clone(),
        r#type: job_type(&j.spec) as i32,
        status: job_status(j.status) as i32,
        status_reason: status_reason(j),
        stats: Some(stats(&run.stats)),
        created_at_ms: j.created_at.millis(),
        start_at_ms: ms(j.start_at),
        started_at_ms: ms(j.started_at),
        ended_at_ms: ms(j.ended_at),
        run: run.number.0,
        rerun_id: run.rerun_id.as_ref().map(ToString::to_string),
        batches,
        runs,
        spec: (detail == Detail::Full).then(|| pb::JobSpec::from(&j.spec)),
        cancel_reason: j.cancel_reason.as_ref().map(Into::into),
        failure: j.failure.as_ref().map(Into::into),
        pause_reason: j.paused.map(|(_, r)| r.into()),
        paused_after_batch: j.paused.map(|(b, _)| b),
        rate_per_minute: j.rate_limit(),
        detail_expired: j.detail_expired,
        window: crate::window::job_state(j, muster_cluster::now()).map(|(state, until)| {
            pb::WindowStatus {
                open: state == "open",
                until_ms: ms(until),
            }
        }),
    }
}

fn run_summary(r: &Run) -> pb::RunSummary {
    pb::RunSummary {
        run: r.number.0,
        rerun_id: r.rerun_id.as_ref().map(ToString::to_string),
        created_at_ms: r.created_at.millis(),
        started_at_ms: ms(r.started_at),
        stats: Some(stats(&r.stats)),
    }
}

pub(crate) fn stats(s: &Stats) -> pb::JobStats {
    pb::JobStats {
        total: s.devices,
        pending: s.pending,
        running: s.running,
        succeeded: s.succeeded,
        failed: s.failed,
        timed_out: s.timed_out,
        cancelled: s.cancelled,
    }
}

fn status_reason(j: &Job) -> String {
    match (j.status, &j.cancel_reason, &j.failure) {
        (JobStatus::Cancelled, Some(CancelReason::User), _) => "cancelled by a user".into(),
        (
            JobStatus::Cancelled,
            Some(CancelReason::Threshold {
                failures,
                population,
                batch,
            }),
            _,
        ) => {
            let scope = match batch {
                // Counted from 1, as the console and `muster audit` show batches.
                Some(b) => format!(" in batch {}", b + 1),
                None => String::new(),
            };
            format!(
                "cancelled: {failures} of {population} devices{scope} failed, more than the cancellation threshold allows"
            )
        }
        (JobStatus::Cancelled, Some(r), _) => format!("cancelled: {}", r.describe()),
        (JobStatus::Paused, _, _) => match &j.paused {
            Some((b, r)) => format!(
                "paused after batch {}: {}; continue it to start the next batch",
                b + 1,
                r.describe()
            ),
            None => "paused".into(),
        },
        (JobStatus::Failed, _, Some(JobFailure::MaxExecutionTimeExceeded)) => {
            "failed: the maximum execution time passed before every device finished".into()
        }
        _ => String::new(),
    }
}

pub(crate) fn job_device(run: &Run, d: &DeviceRun) -> pb::JobDevice {
    pb::JobDevice {
        device_id: d.device.to_string(),
        run: run.number.0,
        batch: d.batch,
        status: device_status(d.status) as i32,
        attempts: d.attempts,
        dispatched_at_ms: ms(d.dispatched_at),
        finished_at_ms: ms(d.finished_at),
        last_error: d
            .last_error
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_default(),
        last_error_reason: d.last_error.as_ref().map(Into::into),
        response_status: d.response.as_ref().map(|r| r.status),
        response_payload_json: d.response.as_ref().map(|r| r.payload.to_string()),
    }
}

pub(crate) fn device(d: &Device) -> pb::Device {
    pb::Device {
        device_id: d.id.to_string(),
        display_name: d.display_name.to_string(),
        model_id: d.model_id.as_ref().map(String::from),
        enabled: d.enabled,
        tags_json: d.tags.to_string(),
        desired_json: d.desired.to_string(),
        desired_version: d.desired_version,
        reported_json: d.reported.to_string(),
        reported_version: d.reported_version,
        cloud_properties_json: d.cloud_properties.to_string(),
        version: d.version,
        connection: match d.connection {
            ConnectionState::Unknown => pb::ConnectionState::Unknown,
            ConnectionState::Connected => pb::ConnectionState::Connected,
            ConnectionState::Disconnected => pb::ConnectionState::Disconnected,
        } as i32,
        registered_at_ms: d.registered_at.millis(),
        last_activity_ms: ms(d.last_activity),
        status_reason: d.status_reason.clone(),
        identity_version: d.identity_version,
        status_updated_ms: ms(d.status_updated),
        has_keys: d.keys.is_some(),
    }
}

pub(crate) fn group(g: &Group) -> pb::Group {
    pb::Group {
        group_id: g.id.to_string(),
        display_name: g.display_name.clone(),
        query: g.query.text().to_string(),
        saved_at_ms: g.saved_at.millis(),
        description: g.description.clone(),
        // The same etag REST shows.
        etag: g.version.to_string(),
    }
}

/// A job that calls a method needs the device to answer; one that only changes the twin does
/// not. The same split as IoT Hub's `scheduleDeviceMethod` / `scheduleUpdateTwin`.
pub(crate) fn job_type(spec: &JobSpec) -> pb::JobType {
    if spec.needs_device() {
        pb::JobType::Method
    } else {
        pb::JobType::Twin
    }
}

pub(crate) fn job_status(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Scheduled => pb::JobStatus::Scheduled,
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Stopped => pb::JobStatus::Stopped,
        JobStatus::Paused => pb::JobStatus::Paused,
        JobStatus::Completed => pb::JobStatus::Completed,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::Cancelled => pb::JobStatus::Cancelled,
    }
}

pub(crate) fn device_status(s: DeviceStatus) -> pb::DeviceStatus {
    match s {
        DeviceStatus::Pending => pb::DeviceStatus::Pending,
        DeviceStatus::Running => pb::DeviceStatus::Running,
        DeviceStatus::Succeeded => pb::DeviceStatus::Succeeded,
        DeviceStatus::Failed => pb::DeviceStatus::Failed,
        DeviceStatus::TimedOut => pb::DeviceStatus::TimedOut,
        DeviceStatus::Cancelled => pb::DeviceStatus::Cancelled,
    }
}

/// A status filter from a request: a known, specified value, or INVALID_ARGUMENT naming the
/// field (an unknown number would otherwise silently match nothing).
pub(crate) fn job_status_filter(field: &str, raw: i32) -> Result<JobStatus, Status> {
    Ok(match pb::JobStatus::try_from(raw) {
        Ok(pb::JobStatus::Scheduled) => JobStatus::Scheduled,
        Ok(pb::JobStatus::Pending) => JobStatus::Pending,
        Ok(pb::JobStatus::Running) => JobStatus::Running,
        Ok(pb::JobStatus::Stopped) => JobStatus::Stopped,
        Ok(pb::JobStatus::Paused) => JobStatus::Paused,
        Ok(pb::JobStatus::Completed) => JobStatus::Completed,
        Ok(pb::JobStatus::Failed) => JobStatus::Failed,
        Ok(pb::JobStatus::Cancelled) => JobStatus::Cancelled,
        Ok(pb::JobStatus::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "{field}: {raw} is not a job status; use SCHEDULED, PENDING, RUNNING, STOPPED, PAUSED, COMPLETED, FAILED or CANCELLED"
            )))
        }
    })
}

pub(crate) fn job_type_filter(field: &str, raw: i32) -> Result<pb::JobType, Status> {
    match pb::JobType::try_from(raw) {
        Ok(t @ (pb::JobType::Method | pb::JobType::Twin)) => Ok(t),
        Ok(pb::JobType::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "{field}: {raw} is not a job type; use METHOD or TWIN"
        ))),
    }
}

/// `None` for UNSPECIFIED (no filter).
pub(crate) fn device_status_filter(field: &str, raw: i32) -> Result<Option<DeviceStatus>, Status> {
    Ok(Some(match pb::DeviceStatus::try_from(raw) {
        Ok(pb::DeviceStatus::Unspecified) => return Ok(None),
        Ok(pb::DeviceStatus::Pending) => DeviceStatus::Pending,
        Ok(pb::DeviceStatus::Running) => DeviceStatus::Running,
        Ok(pb::DeviceStatus::Succeeded) => DeviceStatus::Succeeded,
        Ok(pb::DeviceStatus::Failed) => DeviceStatus::Failed,
        Ok(pb::DeviceStatus::TimedOut) => DeviceStatus::TimedOut,
        Ok(pb::DeviceStatus::Cancelled) => DeviceStatus::Cancelled,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "{field}: {raw} is not a device status"
            )))
        }
    }))
}

fn ms(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::millis)
}
