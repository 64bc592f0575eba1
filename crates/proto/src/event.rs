//! Conversions of events, the content of the event log.

use muster_domain::auth::Secret;
use muster_domain::Event;
use muster_types::RunId;

use crate::error::ProtoError;
use crate::fields::{
    id, id_strings, ids, json, json_text, message, optional_message, required, time,
};
use crate::pb;
use crate::pb::event::{
    BatchStarted, ConnectionChanged, DeviceDispatched, DeviceFailed, DeviceRegistered,
    DeviceSucceeded, DeviceUpdated, DevicesJoined, GroupDeleted, GroupSaved, JobCancelled,
    JobCompleted, JobCreated, JobFailed, JobResumed, JobScheduled, JobStarted, JobStopped, Kind,
    RerunStarted, TwinPatched,
};
use crate::registry::twin_section;

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        let kind = match e {
            Event::JobCreated {
                job,
                spec,
                devices,
                at,
            } => Kind::JobCreated(JobCreated {
                job_id: job.to_string(),
                spec: Some(spec.as_ref().into()),
                device_ids: id_strings(devices),
                at_ms: at.millis(),
            }),
            Event::JobScheduled { job, start_at, at } => Kind::JobScheduled(JobScheduled {
                job_id: job.to_string(),
                start_at_ms: start_at.millis(),
                at_ms: at.millis(),
            }),
            Event::JobStarted { job, run, at } => Kind::JobStarted(JobStarted {
                job_id: job.to_string(),
                run: run.0,
                at_ms: at.millis(),
            }),
            Event::BatchStarted {
                job,
                run,
                batch,
                at,
            } => Kind::BatchStarted(BatchStarted {
                job_id: job.to_string(),
                run: run.0,
                batch: *batch,
                at_ms: at.millis(),
            }),
            Event::DeviceDispatched {
                job,
                run,
                device,
                attempt,
                at,
            } => Kind::DeviceDispatched(DeviceDispatched {
                job_id: job.to_string(),
                run: run.0,
                device_id: device.to_string(),
                attempt: *attempt,
                at_ms: at.millis(),
            }),
            Event::DeviceSucceeded {
                job,
                run,
                device,
                attempt,
                response,
                at,
            } => Kind::DeviceSucceeded(DeviceSucceeded {
                job_id: job.to_string(),
                run: run.0,
                device_id: device.to_string(),
                attempt: *attempt,
                response: response.as_ref().map(Into::into),
                at_ms: at.millis(),
            }),
            Event::DeviceFailed {
                job,
                run,
                device,
                attempt,
                reason,
                response,
                retry,
                at,
            } => Kind::DeviceFailed(DeviceFailed {
                job_id: job.to_string(),
                run: run.0,
                device_id: device.to_string(),
                attempt: *attempt,
                reason: Some(reason.into()),
                response: response.as_ref().map(Into::into),
                retry: *retry,
                at_ms: at.millis(),
            }),
            Event::DevicesJoined {
                job,
                run,
                devices,
                at,
            } => Kind::DevicesJoined(DevicesJoined {
                job_id: job.to_string(),
                run: run.0,
                device_ids: id_strings(devices),
                at_ms: at.millis(),
            }),
            Event::JobPaused {
                job,
                run,
                batch,
                reason,
                at,
            } => Kind::JobPaused(pb::event::JobPaused {
                job_id: job.to_string(),
                run: run.0,
                batch: *batch,
                reason: Some((*reason).into()),
                at_ms: at.millis(),
            }),
            Event::JobContinued { job, at } => Kind::JobContinued(pb::event::JobContinued {
                job_id: job.to_string(),
                at_ms: at.millis(),
            }),
            Event::JobDetailExpired { job, at } => {
                Kind::JobDetailExpired(pb::event::JobDetailExpired {
                    job_id: job.to_string(),
                    at_ms: at.millis(),
                })
            }
            Event::JobExpired { job, at } => Kind::JobExpired(pb::event::JobExpired {
                job_id: job.to_string(),
                at_ms: at.millis(),
            }),
            Event::RateChanged {
                job,
                run,
                per_minute,
                at,
            } => Kind::RateChanged(pb::event::RateChanged {
                job_id: job.to_string(),
                run: run.0,
                per_minute: *per_minute,
                at_ms: at.millis(),
            }),
            Event::WindowOpened {
                job,
                since,
                until,
                at,
            } => Kind::WindowOpened(pb::event::WindowOpened {
                job_id: job.to_string(),
                since_ms: since.millis(),
                until_ms: until.millis(),
                at_ms: at.millis(),
            }),
            Event::WindowClosed { job, next_open, at } => {
                Kind::WindowClosed(pb::event::WindowClosed {
                    job_id: job.to_string(),
                    next_open_ms: next_open.map(|t| t.millis()),
                    at_ms: at.millis(),
                })
            }
            Event::JobStopped { job, at } => Kind::JobStopped(JobStopped {
                job_id: job.to_string(),
                at_ms: at.millis(),
            }),
            Event::JobResumed { job, at } => Kind::JobResumed(JobResumed {
                job_id: job.to_string(),
                at_ms: at.millis(),
            }),
            Event::JobCancelled { job, reason, at } => Kind::JobCancelled(JobCancelled {
                job_id: job.to_string(),
                reason: Some(reason.into()),
                at_ms: at.millis(),
            }),
            Event::JobCompleted { job, at } => Kind::JobCompleted(JobCompleted {
                job_id: job.to_string(),
                at_ms: at.millis(),
            }),
            Event::JobFailed { job, reason, at } => Kind::JobFailed(JobFailed {
                job_id: job.to_string(),
                reason: Some(reason.into()),
                at_ms: at.millis(),
            }),
            Event::RerunStarted {
                job,
                run,
                rerun_id,
                devices,
                at,
            } => Kind::RerunStarted(RerunStarted {
                job_id: job.to_string(),
                run: run.0,
                rerun_id: rerun_id.to_string(),
                device_ids: id_strings(devices),
                at_ms: at.millis(),
            }),
            Event::DeviceRegistered { device, at } => Kind::DeviceRegistered(DeviceRegistered {
                device: Some(device.into()),
                at_ms: at.millis(),
            }),
            Event::DeviceUpdated { device, at } => Kind::DeviceUpdated(DeviceUpdated {
                device: Some(device.into()),
                at_ms: at.millis(),
            }),
            Event::TwinPatched {
                device,
                section,
                patch,
                at,
            } => Kind::TwinPatched(TwinPatched {
                device_id: device.to_string(),
                section: pb::TwinSection::from(*section).into(),
                patch_json: json_text(patch),
                at_ms: at.millis(),
            }),
            Event::ConnectionChanged {
                device,
                connected,
                at,
            } => Kind::ConnectionChanged(ConnectionChanged {
                device_id: device.to_string(),
                connected: *connected,
                at_ms: at.millis(),
            }),
            Event::GroupSaved {
                group,
                display_name,
                description,
                query,
                at,
            } => Kind::GroupSaved(GroupSaved {
                group_id: group.to_string(),
                display_name: display_name.clone(),
                description: description.clone(),
                query: query.clone(),
                at_ms: at.millis(),
            }),
            Event::GroupDeleted { group, at } => Kind::GroupDeleted(GroupDeleted {
                group_id: group.to_string(),
                at_ms: at.millis(),
            }),
            Event::PolicySaved {
                name,
                rights,
                primary_key,
                secondary_key,
                at,
            } => Kind::PolicySaved(pb::event::PolicySaved {
                name: name.clone(),
                rights: crate::auth::right_names(rights),
                primary_key: primary_key.0.clone(),
                secondary_key: secondary_key.0.clone(),
                at_ms: at.millis(),
            }),
            Event::PolicyDeleted { name, at } => Kind::PolicyDeleted(pb::event::PolicyDeleted {
                name: name.clone(),
                at_ms: at.millis(),
            }),
            Event::ApiTokenCreated {
                id,
                roles,
                expiry,
                secret_hash,
                at,
            } => Kind::ApiTokenCreated(pb::event::ApiTokenCreated {
                id: id.clone(),
                roles: crate::auth::role_names(roles),
                expiry_ms: expiry.millis(),
                secret_hash: secret_hash.0.clone(),
                at_ms: at.millis(),
            }),
            Event::ApiTokenDeleted { id, at } => {
                Kind::ApiTokenDeleted(pb::event::ApiTokenDeleted {
                    id: id.clone(),
                    at_ms: at.millis(),
                })
            }
            Event::DeviceIdentitySet { created, at, .. } => {
                Kind::DeviceIdentitySet(pb::event::DeviceIdentitySet {
                    identity: e.identity().as_ref().map(Into::into),
                    created: *created,
                    at_ms: at.millis(),
                })
            }
            Event::DeviceDeleted { device, at } => Kind::DeviceDeleted(pb::event::DeviceDeleted {
                device_id: device.to_string(),
                at_ms: at.millis(),
            }),
            Event::TwinReplaced {
                device,
                section,
                value,
                at,
            } => Kind::TwinReplaced(pb::event::TwinReplaced {
                device_id: device.to_string(),
                section: pb::TwinSection::from(*section).into(),
                value_json: json_text(value),
                at_ms: at.millis(),
            }),
            Event::MethodInvoked { .. }
            | Event::MethodSent { .. }
            | Event::MethodResponded { .. }
            | Event::MethodFailed { .. } => crate::invocation::event_case(e),
            Event::DesiredSent {
                device,
                version,
                at,
            } => crate::push::desired_sent_case(device, *version, *at),
            Event::ScheduledJobSaved { id, spec, next, at } => {
                crate::schedule::saved_case(id, spec, *next, *at)
            }
            Event::ScheduledJobDeleted { id, at } => crate::schedule::deleted_case(id, *at),
            Event::ScheduledJobOccurred {
                id,
                occurrence,
                due,
                job,
                at,
            } => crate::schedule::occurred_case(id, *occurrence, *due, job, *at),
            Event::ScheduledJobMissed {
                id,
                occurrence,
                due,
                reason,
                at,
            } => crate::schedule::missed_case(id, *occurrence, *due, reason, *at),
        };
        pb::Event { kind: Some(kind) }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = ProtoError;

    /// Field paths in errors start at `Event`, e.g. `Event.device_failed.reason.kind`.
    fn try_from(e: pb::Event) -> Result<Self, ProtoError> {
        let kind = required("Event.kind", e.kind)?;
        event_kind(kind).map_err(|e| e.within("Event"))
    }
}

fn event_kind(kind: Kind) -> Result<Event, ProtoError> {
    Ok(match kind {
        Kind::JobCreated(m) => Event::JobCreated {
            job: id("job_created.job_id", m.job_id)?,
            spec: Box::new(message("job_created.spec", m.spec)?),
            devices: ids("job_created.device_ids", m.device_ids)?,
            at: time(m.at_ms),
        },
        Kind::JobScheduled(m) => Event::JobScheduled {
            job: id("job_scheduled.job_id", m.job_id)?,
            start_at: time(m.start_at_ms),
            at: time(m.at_ms),
        },
        Kind::JobStarted(m) => Event::JobStarted {
            job: id("job_started.job_id", m.job_id)?,
            run: RunId(m.run),
            at: time(m.at_ms),
        },
        Kind::BatchStarted(m) => Event::BatchStarted {
            job: id("batch_started.job_id", m.job_id)?,
            run: RunId(m.run),
            batch: m.batch,
            at: time(m.at_ms),
        },
        Kind::DeviceDispatched(m) => Event::DeviceDispatched {
            job: id("device_dispatched.job_id", m.job_id)?,
            run: RunId(m.run),
            device: id("device_dispatched.device_id", m.device_id)?,
            attempt: m.attempt,
            at: time(m.at_ms),
        },
        Kind::DeviceSucceeded(m) => Event::DeviceSucceeded {
            job: id("device_succeeded.job_id", m.job_id)?,
            run: RunId(m.run),
            device: id("device_succeeded.device_id", m.device_id)?,
            attempt: m.attempt,
            response: optional_message("device_succeeded.response", m.response)?,
            at: time(m.at_ms),
        },
        Kind::DeviceFailed(m) => Event::DeviceFailed {
            job: id("device_failed.job_id", m.job_id)?,
            run: RunId(m.run),
            device: id("device_failed.device_id", m.device_id)?,
            attempt: m.attempt,
            reason: message("device_failed.reason", m.reason)?,
            response: optional_message("device_failed.response", m.response)?,
            retry: m.retry,
            at: time(m.at_ms),
        },
        Kind::DevicesJoined(m) => Event::DevicesJoined {
            job: id("devices_joined.job_id", m.job_id)?,
            run: RunId(m.run),
            devices: ids("devices_joined.device_ids", m.device_ids)?,
            at: time(m.at_ms),
        },
        Kind::JobPaused(m) => Event::JobPaused {
            job: id("job_paused.job_id", m.job_id)?,
            run: RunId(m.run),
            batch: m.batch,
            reason: message("job_paused.reason", m.reason)?,
            at: time(m.at_ms),
        },
        Kind::JobContinued(m) => Event::JobContinued {
            job: id("job_continued.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::JobDetailExpired(m) => Event::JobDetailExpired {
            job: id("job_detail_expired.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::JobExpired(m) => Event::JobExpired {
            job: id("job_expired.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::RateChanged(m) => Event::RateChanged {
            job: id("rate_changed.job_id", m.job_id)?,
            run: RunId(m.run),
            per_minute: m.per_minute,
            at: time(m.at_ms),
        },
        Kind::WindowOpened(m) => Event::WindowOpened {
            job: id("window_opened.job_id", m.job_id)?,
            since: time(m.since_ms),
            until: time(m.until_ms),
            at: time(m.at_ms),
        },
        Kind::WindowClosed(m) => Event::WindowClosed {
            job: id("window_closed.job_id", m.job_id)?,
            next_open: m.next_open_ms.map(time),
            at: time(m.at_ms),
        },
        Kind::JobStopped(m) => Event::JobStopped {
            job: id("job_stopped.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::JobResumed(m) => Event::JobResumed {
            job: id("job_resumed.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::JobCancelled(m) => Event::JobCancelled {
            job: id("job_cancelled.job_id", m.job_id)?,
            reason: message("job_cancelled.reason", m.reason)?,
            at: time(m.at_ms),
        },
        Kind::JobCompleted(m) => Event::JobCompleted {
            job: id("job_completed.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::JobFailed(m) => Event::JobFailed {
            job: id("job_failed.job_id", m.job_id)?,
            reason: message("job_failed.reason", m.reason)?,
            at: time(m.at_ms),
        },
        Kind::RerunStarted(m) => Event::RerunStarted {
            job: id("rerun_started.job_id", m.job_id)?,
            run: RunId(m.run),
            rerun_id: id("rerun_started.rerun_id", m.rerun_id)?,
            devices: ids("rerun_started.device_ids", m.device_ids)?,
            at: time(m.at_ms),
        },
        Kind::DeviceRegistered(m) => Event::DeviceRegistered {
            device: message("device_registered.device", m.device)?,
            at: time(m.at_ms),
        },
        Kind::DeviceUpdated(m) => Event::DeviceUpdated {
            device: message("device_updated.device", m.device)?,
            at: time(m.at_ms),
        },
        Kind::DeviceIdentitySet(m) => {
            let identity = crate::registry::identity(
                "device_identity_set.identity",
                required("device_identity_set.identity", m.identity)?,
            )?;
            let keys = identity.keys.unwrap_or(muster_domain::DeviceKeys {
                primary: String::new(),
                secondary: String::new(),
            });
            Event::DeviceIdentitySet {
                device: identity.id,
                enabled: identity.enabled,
                status_reason: identity.status_reason,
                primary_key: Secret(keys.primary),
                secondary_key: Secret(keys.secondary),
                iot_edge: identity.iot_edge,
                created: m.created,
                at: time(m.at_ms),
            }
        }
        Kind::DeviceDeleted(m) => Event::DeviceDeleted {
            device: id("device_deleted.device_id", m.device_id)?,
            at: time(m.at_ms),
        },
        Kind::TwinReplaced(m) => Event::TwinReplaced {
            device: id("twin_replaced.device_id", m.device_id)?,
            section: twin_section("twin_replaced.section", m.section)?,
            value: json("twin_replaced.value_json", &m.value_json)?,
            at: time(m.at_ms),
        },
        Kind::TwinPatched(m) => Event::TwinPatched {
            device: id("twin_patched.device_id", m.device_id)?,
            section: twin_section("twin_patched.section", m.section)?,
            patch: json("twin_patched.patch_json", &m.patch_json)?,
            at: time(m.at_ms),
        },
        Kind::ConnectionChanged(m) => Event::ConnectionChanged {
            device: id("connection_changed.device_id", m.device_id)?,
            connected: m.connected,
            at: time(m.at_ms),
        },
        Kind::GroupSaved(m) => Event::GroupSaved {
            group: id("group_saved.group_id", m.group_id)?,
            display_name: m.display_name,
            description: m.description,
            query: m.query,
            at: time(m.at_ms),
        },
        Kind::GroupDeleted(m) => Event::GroupDeleted {
            group: id("group_deleted.group_id", m.group_id)?,
            at: time(m.at_ms),
        },
        Kind::PolicySaved(m) => Event::PolicySaved {
            rights: crate::auth::rights("policy_saved.rights", m.rights)?,
            name: m.name,
            primary_key: Secret(m.primary_key),
            secondary_key: Secret(m.secondary_key),
            at: time(m.at_ms),
        },
        Kind::PolicyDeleted(m) => Event::PolicyDeleted {
            name: m.name,
            at: time(m.at_ms),
        },
        Kind::ApiTokenCreated(m) => Event::ApiTokenCreated {
            roles: crate::auth::roles("api_token_created.roles", m.roles)?,
            id: m.id,
            expiry: time(m.expiry_ms),
            secret_hash: Secret(m.secret_hash),
            at: time(m.at_ms),
        },
        Kind::ApiTokenDeleted(m) => Event::ApiTokenDeleted {
            id: m.id,
            at: time(m.at_ms),
        },
        Kind::MethodInvoked(m) => crate::invocation::method_invoked(m)?,
        Kind::MethodSent(m) => crate::invocation::method_sent(m)?,
        Kind::MethodResponded(m) => crate::invocation::method_responded(m)?,
        Kind::MethodFailed(m) => crate::invocation::method_failed(m)?,
        Kind::DesiredSent(m) => crate::push::desired_sent(m)?,
        Kind::ScheduledJobSaved(m) => crate::schedule::saved(m)?,
        Kind::ScheduledJobDeleted(m) => crate::schedule::deleted(m)?,
        Kind::ScheduledJobOccurred(m) => crate::schedule::occurred(m)?,
        Kind::ScheduledJobMissed(m) => crate::schedule::missed(m)?,
    })
}
