//! Scheduled jobs (`muster_domain::schedule`): their spec, commands and events. The spec's
//! conversions are public trait impls: the gRPC `ScheduleService` reuses the same message.

use muster_domain::schedule::{JobSchedule, Recurrence, ScheduleEnd, ScheduledJobSpec};
use muster_domain::{Command, Event};
use muster_types::{JobId, ScheduledJobId, Timestamp};

use crate::error::ProtoError;
use crate::fields::{id, message, time};
use crate::pb;

impl From<&ScheduledJobSpec> for pb::ScheduledJobSpec {
    fn from(s: &ScheduledJobSpec) -> Self {
        pb::ScheduledJobSpec {
            template: Some((&s.template).into()),
            schedule: Some((&s.schedule).into()),
            enabled: s.enabled,
        }
    }
}

impl TryFrom<pb::ScheduledJobSpec> for ScheduledJobSpec {
    type Error = ProtoError;

    fn try_from(s: pb::ScheduledJobSpec) -> Result<Self, ProtoError> {
        Ok(ScheduledJobSpec {
            template: message("template", s.template)?,
            schedule: message("schedule", s.schedule)?,
            enabled: s.enabled,
        })
    }
}

impl From<&JobSchedule> for pb::JobSchedule {
    fn from(s: &JobSchedule) -> Self {
        let (recurrence, interval_secs) = match s.recurrence {
            None => (pb::Recurrence::Once, 0),
            Some(Recurrence::Daily) => (pb::Recurrence::Daily, 0),
            Some(Recurrence::Weekly) => (pb::Recurrence::Weekly, 0),
            Some(Recurrence::Monthly) => (pb::Recurrence::Monthly, 0),
            Some(Recurrence::Seconds(n)) => (pb::Recurrence::Interval, n),
        };
        pb::JobSchedule {
            start_ms: s.start.millis(),
            recurrence: recurrence as i32,
            interval_secs,
            end: s.end.map(|e| match e {
                ScheduleEnd::Date(d) => pb::job_schedule::End::EndDateMs(d.millis()),
                ScheduleEnd::Occurrences(k) => pb::job_schedule::End::EndOccurrences(k),
            }),
            time_zone: s.time_zone.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::JobSchedule> for JobSchedule {
    type Error = ProtoError;

    fn try_from(s: pb::JobSchedule) -> Result<Self, ProtoError> {
        let recurrence = match pb::Recurrence::try_from(s.recurrence) {
            Ok(pb::Recurrence::Once) => None,
            Ok(pb::Recurrence::Daily) => Some(Recurrence::Daily),
            Ok(pb::Recurrence::Weekly) => Some(Recurrence::Weekly),
            Ok(pb::Recurrence::Monthly) => Some(Recurrence::Monthly),
            Ok(pb::Recurrence::Interval) => Some(Recurrence::Seconds(s.interval_secs)),
            Err(_) => {
                return Err(ProtoError::UnknownEnum {
                    field: "recurrence".into(),
                    value: s.recurrence,
                })
            }
        };
        Ok(JobSchedule {
            start: time(s.start_ms),
            recurrence,
            end: s.end.map(|e| match e {
                pb::job_schedule::End::EndDateMs(d) => ScheduleEnd::Date(time(d)),
                pb::job_schedule::End::EndOccurrences(k) => ScheduleEnd::Occurrences(k),
            }),
            time_zone: Some(s.time_zone).filter(|z| !z.is_empty()),
        })
    }
}

pub(crate) fn save_case(
    sid: &ScheduledJobId,
    spec: &ScheduledJobSpec,
    if_version: Option<u64>,
    at: Timestamp,
) -> pb::command::Kind {
    pb::command::Kind::SaveScheduledJob(pb::SaveScheduledJob {
        id: sid.to_string(),
        spec: Some(spec.into()),
        if_version,
        at_ms: at.millis(),
    })
}

pub(crate) fn save(m: pb::SaveScheduledJob) -> Result<Command, ProtoError> {
    Ok(Command::SaveScheduledJob {
        id: id("save_scheduled_job.id", m.id)?,
        spec: message::<_, ScheduledJobSpec>("save_scheduled_job.spec", m.spec)?,
        if_version: m.if_version,
        at: time(m.at_ms),
    })
}

pub(crate) fn delete_case(sid: &ScheduledJobId, at: Timestamp) -> pb::command::Kind {
    pb::command::Kind::DeleteScheduledJob(pb::DeleteScheduledJob {
        id: sid.to_string(),
        at_ms: at.millis(),
    })
}

pub(crate) fn delete(m: pb::DeleteScheduledJob) -> Result<Command, ProtoError> {
    Ok(Command::DeleteScheduledJob {
        id: id("delete_scheduled_job.id", m.id)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn saved_case(
    sid: &ScheduledJobId,
    spec: &ScheduledJobSpec,
    next: u32,
    at: Timestamp,
) -> pb::event::Kind {
    pb::event::Kind::ScheduledJobSaved(pb::ScheduledJobSaved {
        id: sid.to_string(),
        spec: Some(spec.into()),
        next,
        at_ms: at.millis(),
    })
}

pub(crate) fn deleted_case(sid: &ScheduledJobId, at: Timestamp) -> pb::event::Kind {
    pb::event::Kind::ScheduledJobDeleted(pb::ScheduledJobDeleted {
        id: sid.to_string(),
        at_ms: at.millis(),
    })
}

pub(crate) fn occurred_case(
    sid: &ScheduledJobId,
    occurrence: u32,
    due: Timestamp,
    job: &JobId,
    at: Timestamp,
) -> pb::event::Kind {
    pb::event::Kind::ScheduledJobOccurred(pb::ScheduledJobOccurred {
        id: sid.to_string(),
        occurrence,
        due_ms: due.millis(),
        job_id: job.to_string(),
        at_ms: at.millis(),
    })
}

pub(crate) fn missed_case(
    sid: &ScheduledJobId,
    occurrence: u32,
    due: Timestamp,
    reason: &str,
    at: Timestamp,
) -> pb::event::Kind {
    pb::event::Kind::ScheduledJobMissed(pb::ScheduledJobMissed {
        id: sid.to_string(),
        occurrence,
        due_ms: due.millis(),
        reason: reason.to_string(),
        at_ms: at.millis(),
    })
}

pub(crate) fn saved(m: pb::ScheduledJobSaved) -> Result<Event, ProtoError> {
    Ok(Event::ScheduledJobSaved {
        id: id("scheduled_job_saved.id", m.id)?,
        spec: Box::new(message::<_, ScheduledJobSpec>(
            "scheduled_job_saved.spec",
            m.spec,
        )?),
        next: m.next,
        at: time(m.at_ms),
    })
}

pub(crate) fn deleted(m: pb::ScheduledJobDeleted) -> Result<Event, ProtoError> {
    Ok(Event::ScheduledJobDeleted {
        id: id("scheduled_job_deleted.id", m.id)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn occurred(m: pb::ScheduledJobOccurred) -> Result<Event, ProtoError> {
    Ok(Event::ScheduledJobOccurred {
        id: id("scheduled_job_occurred.id", m.id)?,
        occurrence: m.occurrence,
        due: time(m.due_ms),
        job: id::<JobId>("scheduled_job_occurred.job_id", m.job_id)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn missed(m: pb::ScheduledJobMissed) -> Result<Event, ProtoError> {
    Ok(Event::ScheduledJobMissed {
        id: id("scheduled_job_missed.id", m.id)?,
        occurrence: m.occurrence,
        due: time(m.due_ms),
        reason: m.reason,
        at: time(m.at_ms),
    })
}
