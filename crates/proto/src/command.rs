//! Conversions of commands, the entries proposed to the Raft log.

use muster_domain::{
    Command, ConnectionChange, DeviceResult, IdentityCondition, Outcome, PropertyReport,
};

use crate::error::ProtoError;
use crate::fields::{id, id_strings, ids, json, json_text, message, messages, required, time};
use crate::pb;
use crate::pb::command::{
    Advance, CancelJob, CreateJob, DeleteGroup, Kind, MarkDispatched, RecordDeviceResults,
    RegisterDevices, ReportProperties, ReportPropertiesBatch, RerunJob, ResumeJob, SaveGroup,
    SetConnection, SetConnections, StopJob, UpdateTwin,
};

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        let kind = match c {
            Command::CreateJob { id, spec, at } => Kind::CreateJob(CreateJob {
                job_id: id.to_string(),
                spec: Some(spec.into()),
                at_ms: at.millis(),
            }),
            Command::StopJob { id, at } => Kind::StopJob(StopJob {
                job_id: id.to_string(),
                at_ms: at.millis(),
            }),
            Command::ResumeJob { id, at } => Kind::ResumeJob(ResumeJob {
                job_id: id.to_string(),
                at_ms: at.millis(),
            }),
            Command::ContinueJob { id, at } => Kind::ContinueJob(pb::command::ContinueJob {
                job_id: id.to_string(),
                at_ms: at.millis(),
            }),
            Command::ApplyRetention {
                finished_jobs_ms,
                jobs_ms,
                at,
            } => Kind::ApplyRetention(pb::command::ApplyRetention {
                finished_jobs_ms: *finished_jobs_ms,
                jobs_ms: *jobs_ms,
                at_ms: at.millis(),
            }),
            Command::CancelJob { id, at } => Kind::CancelJob(CancelJob {
                job_id: id.to_string(),
                at_ms: at.millis(),
            }),
            Command::RerunJob { id, rerun_id, at } => Kind::RerunJob(RerunJob {
                job_id: id.to_string(),
                rerun_id: rerun_id.to_string(),
                at_ms: at.millis(),
            }),
            Command::MarkDispatched {
                job,
                run,
                devices,
                at,
            } => Kind::MarkDispatched(MarkDispatched {
                job_id: job.to_string(),
                run: run.0,
                device_ids: id_strings(devices),
                at_ms: at.millis(),
            }),
            Command::RecordDeviceResults { results, at } => {
                Kind::RecordDeviceResults(RecordDeviceResults {
                    results: results.iter().map(Into::into).collect(),
                    at_ms: at.millis(),
                })
            }
            Command::Advance { at } => Kind::Advance(Advance { at_ms: at.millis() }),
            Command::RegisterDevices {
                devices,
                upsert,
                at,
            } => Kind::RegisterDevices(RegisterDevices {
                devices: devices.iter().map(Into::into).collect(),
                upsert: *upsert,
                at_ms: at.millis(),
            }),
            Command::UpdateTwin {
                device,
                tags,
                desired,
                if_version,
                at,
            } => Kind::UpdateTwin(UpdateTwin {
                device_id: device.to_string(),
                tags_json: tags.as_ref().map(json_text),
                desired_json: desired.as_ref().map(json_text),
                if_version: *if_version,
                at_ms: at.millis(),
            }),
            Command::ReportProperties { device, patch, at } => {
                Kind::ReportProperties(ReportProperties {
                    device_id: device.to_string(),
                    patch_json: json_text(patch),
                    at_ms: at.millis(),
                })
            }
            Command::SetConnection {
                device,
                connected,
                at,
            } => Kind::SetConnection(SetConnection {
                device_id: device.to_string(),
                connected: *connected,
                at_ms: at.millis(),
            }),
            Command::SetConnections { changes, at } => Kind::SetConnections(SetConnections {
                changes: changes
                    .iter()
                    .map(|c| pb::command::ConnectionChange {
                        device_id: c.device.to_string(),
                        connected: c.connected,
                    })
                    .collect(),
                at_ms: at.millis(),
            }),
            Command::ReportPropertiesBatch { reports, at } => {
                Kind::ReportPropertiesBatch(ReportPropertiesBatch {
                    reports: reports
                        .iter()
                        .map(|r| pb::command::PropertyReport {
                            device_id: r.device.to_string(),
                            patch_json: json_text(&r.patch),
                        })
                        .collect(),
                    at_ms: at.millis(),
                })
            }
            Command::SaveGroup {
                id,
                display_name,
                description,
                query,
                if_version,
                at,
            } => Kind::SaveGroup(SaveGroup {
                group_id: id.to_string(),
                display_name: display_name.clone(),
                description: description.clone(),
                query: query.clone(),
                if_version: *if_version,
                at_ms: at.millis(),
            }),
            Command::DeleteGroup { id, at } => Kind::DeleteGroup(DeleteGroup {
                group_id: id.to_string(),
                at_ms: at.millis(),
            }),
            Command::InitAuth { policies, at } => Kind::InitAuth(pb::command::InitAuth {
                policies: policies.iter().map(Into::into).collect(),
                at_ms: at.millis(),
            }),
            Command::SavePolicy { policy, at } => Kind::SavePolicy(pb::command::SavePolicy {
                policy: Some(policy.into()),
                at_ms: at.millis(),
            }),
            Command::DeletePolicy { name, at } => Kind::DeletePolicy(pb::command::DeletePolicy {
                name: name.clone(),
                at_ms: at.millis(),
            }),
            Command::CreateApiToken { token, at } => {
                Kind::CreateApiToken(pb::command::CreateApiToken {
                    token: Some(token.into()),
                    at_ms: at.millis(),
                })
            }
            Command::DeleteApiToken { id, at } => {
                Kind::DeleteApiToken(pb::command::DeleteApiToken {
                    id: id.clone(),
                    at_ms: at.millis(),
                })
            }
            Command::PutDeviceIdentity {
                identity,
                condition,
                fresh_keys,
                at,
            } => {
                use pb::command::put_device_identity::{Condition, Create, Exists};
                Kind::PutDeviceIdentity(pb::command::PutDeviceIdentity {
                    identity: Some(identity.into()),
                    condition: Some(match condition {
                        IdentityCondition::Create => Condition::Create(Create {}),
                        IdentityCondition::Exists => Condition::Exists(Exists {}),
                        IdentityCondition::Version(v) => Condition::IfVersion(*v),
                    }),
                    at_ms: at.millis(),
                    fresh_primary_key: fresh_keys.primary.clone(),
                    fresh_secondary_key: fresh_keys.secondary.clone(),
                })
            }
            Command::DeleteDevice {
                device,
                if_version,
                at,
            } => Kind::DeleteDevice(pb::command::DeleteDevice {
                device_id: device.to_string(),
                if_version: *if_version,
                at_ms: at.millis(),
            }),
            Command::ReplaceTwin {
                device,
                tags,
                desired,
                if_version,
                at,
            } => Kind::ReplaceTwin(pb::command::ReplaceTwin {
                device_id: device.to_string(),
                tags_json: tags.as_ref().map(json_text),
                desired_json: json_text(desired),
                if_version: *if_version,
                at_ms: at.millis(),
            }),
            Command::UpdateDevice {
                device,
                display_name,
                model_id,
                enabled,
                if_version,
                at,
            } => Kind::UpdateDevice(pb::command::UpdateDevice {
                device_id: device.to_string(),
                display_name: display_name.clone(),
                model_id: model_id.clone(),
                enabled: *enabled,
                if_version: *if_version,
                at_ms: at.millis(),
            }),
            Command::InvokeMethod { invocation, at } => {
                crate::invocation::invoke_method_case(invocation, *at)
            }
            Command::RecordMethodResponse { id, outcome, at } => {
                crate::invocation::record_method_response_case(id, outcome, *at)
            }
            Command::MarkDesiredSent { pushes, at } => {
                crate::push::mark_desired_sent_case(pushes, *at)
            }
            Command::SaveScheduledJob {
                id,
                spec,
                if_version,
                at,
            } => crate::schedule::save_case(id, spec, *if_version, *at),
            Command::DeleteScheduledJob { id, at } => crate::schedule::delete_case(id, *at),
        };
        pb::Command { kind: Some(kind) }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = ProtoError;

    /// Field paths in errors start at `Command`, e.g. `Command.create_job.spec.target.selector`.
    fn try_from(c: pb::Command) -> Result<Self, ProtoError> {
        let kind = required("Command.kind", c.kind)?;
        command_kind(kind).map_err(|e| e.within("Command"))
    }
}

fn command_kind(kind: Kind) -> Result<Command, ProtoError> {
    Ok(match kind {
        Kind::CreateJob(m) => Command::CreateJob {
            id: id("create_job.job_id", m.job_id)?,
            spec: message("create_job.spec", m.spec)?,
            at: time(m.at_ms),
        },
        Kind::StopJob(m) => Command::StopJob {
            id: id("stop_job.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::ResumeJob(m) => Command::ResumeJob {
            id: id("resume_job.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::ContinueJob(m) => Command::ContinueJob {
            id: id("continue_job.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::ApplyRetention(m) => Command::ApplyRetention {
            finished_jobs_ms: m.finished_jobs_ms,
            jobs_ms: m.jobs_ms,
            at: time(m.at_ms),
        },
        Kind::CancelJob(m) => Command::CancelJob {
            id: id("cancel_job.job_id", m.job_id)?,
            at: time(m.at_ms),
        },
        Kind::RerunJob(m) => Command::RerunJob {
            id: id("rerun_job.job_id", m.job_id)?,
            rerun_id: id("rerun_job.rerun_id", m.rerun_id)?,
            at: time(m.at_ms),
        },
        Kind::MarkDispatched(m) => Command::MarkDispatched {
            job: id("mark_dispatched.job_id", m.job_id)?,
            run: muster_types::RunId(m.run),
            devices: ids("mark_dispatched.device_ids", m.device_ids)?,
            at: time(m.at_ms),
        },
        Kind::RecordDeviceResults(m) => Command::RecordDeviceResults {
            results: messages("record_device_results.results", m.results)?,
            at: time(m.at_ms),
        },
        Kind::Advance(m) => Command::Advance { at: time(m.at_ms) },
        Kind::RegisterDevices(m) => Command::RegisterDevices {
            devices: messages("register_devices.devices", m.devices)?,
            upsert: m.upsert,
            at: time(m.at_ms),
        },
        Kind::UpdateTwin(m) => Command::UpdateTwin {
            device: id("update_twin.device_id", m.device_id)?,
            tags: m
                .tags_json
                .map(|t| json("update_twin.tags_json", &t))
                .transpose()?,
            desired: m
                .desired_json
                .map(|t| json("update_twin.desired_json", &t))
                .transpose()?,
            if_version: m.if_version,
            at: time(m.at_ms),
        },
        Kind::ReportProperties(m) => Command::ReportProperties {
            device: id("report_properties.device_id", m.device_id)?,
            patch: json("report_properties.patch_json", &m.patch_json)?,
            at: time(m.at_ms),
        },
        Kind::SetConnection(m) => Command::SetConnection {
            device: id("set_connection.device_id", m.device_id)?,
            connected: m.connected,
            at: time(m.at_ms),
        },
        Kind::SetConnections(m) => Command::SetConnections {
            changes: m
                .changes
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(ConnectionChange {
                        device: id(
                            &format!("set_connections.changes[{i}].device_id"),
                            c.device_id,
                        )?,
                        connected: c.connected,
                    })
                })
                .collect::<Result<_, ProtoError>>()?,
            at: time(m.at_ms),
        },
        Kind::ReportPropertiesBatch(m) => Command::ReportPropertiesBatch {
            reports: m
                .reports
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let field = format!("report_properties_batch.reports[{i}]");
                    Ok(PropertyReport {
                        device: id(&format!("{field}.device_id"), r.device_id)?,
                        patch: json(&format!("{field}.patch_json"), &r.patch_json)?,
                    })
                })
                .collect::<Result<_, ProtoError>>()?,
            at: time(m.at_ms),
        },
        Kind::SaveGroup(m) => Command::SaveGroup {
            id: id("save_group.group_id", m.group_id)?,
            display_name: m.display_name,
            description: m.description,
            query: m.query,
            if_version: m.if_version,
            at: time(m.at_ms),
        },
        Kind::PutDeviceIdentity(m) => {
            use pb::command::put_device_identity::Condition;
            Command::PutDeviceIdentity {
                identity: crate::registry::identity(
                    "put_device_identity.identity",
                    required("put_device_identity.identity", m.identity)?,
                )?,
                condition: match required("put_device_identity.condition", m.condition)? {
                    Condition::Create(_) => IdentityCondition::Create,
                    Condition::Exists(_) => IdentityCondition::Exists,
                    Condition::IfVersion(v) => IdentityCondition::Version(v),
                },
                fresh_keys: muster_domain::DeviceKeys {
                    primary: m.fresh_primary_key,
                    secondary: m.fresh_secondary_key,
                },
                at: time(m.at_ms),
            }
        }
        Kind::DeleteDevice(m) => Command::DeleteDevice {
            device: id("delete_device.device_id", m.device_id)?,
            if_version: m.if_version,
            at: time(m.at_ms),
        },
        Kind::ReplaceTwin(m) => Command::ReplaceTwin {
            device: id("replace_twin.device_id", m.device_id)?,
            tags: m
                .tags_json
                .map(|t| json("replace_twin.tags_json", &t))
                .transpose()?,
            desired: json("replace_twin.desired_json", &m.desired_json)?,
            if_version: m.if_version,
            at: time(m.at_ms),
        },
        Kind::UpdateDevice(m) => Command::UpdateDevice {
            device: id("update_device.device_id", m.device_id)?,
            display_name: m.display_name,
            model_id: m.model_id,
            enabled: m.enabled,
            if_version: m.if_version,
            at: time(m.at_ms),
        },
        Kind::DeleteGroup(m) => Command::DeleteGroup {
            id: id("delete_group.group_id", m.group_id)?,
            at: time(m.at_ms),
        },
        Kind::InitAuth(m) => Command::InitAuth {
            policies: m
                .policies
                .into_iter()
                .enumerate()
                .map(|(i, p)| crate::auth::policy(&format!("init_auth.policies[{i}]"), p))
                .collect::<Result<_, _>>()?,
            at: time(m.at_ms),
        },
        Kind::SavePolicy(m) => Command::SavePolicy {
            policy: crate::auth::policy(
                "save_policy.policy",
                required("save_policy.policy", m.policy)?,
            )?,
            at: time(m.at_ms),
        },
        Kind::DeletePolicy(m) => Command::DeletePolicy {
            name: m.name,
            at: time(m.at_ms),
        },
        Kind::CreateApiToken(m) => Command::CreateApiToken {
            token: crate::auth::token(
                "create_api_token.token",
                required("create_api_token.token", m.token)?,
            )?,
            at: time(m.at_ms),
        },
        Kind::DeleteApiToken(m) => Command::DeleteApiToken {
            id: m.id,
            at: time(m.at_ms),
        },
        Kind::InvokeMethod(m) => crate::invocation::invoke_method(m)?,
        Kind::RecordMethodResponse(m) => crate::invocation::record_method_response(m)?,
        Kind::MarkDesiredSent(m) => crate::push::mark_desired_sent(m)?,
        Kind::SaveScheduledJob(m) => crate::schedule::save(m)?,
        Kind::DeleteScheduledJob(m) => crate::schedule::delete(m)?,
    })
}

impl From<&DeviceResult> for pb::DeviceResult {
    fn from(r: &DeviceResult) -> Self {
        pb::DeviceResult {
            job_id: r.job.to_string(),
            run: r.run.0,
            device_id: r.device.to_string(),
            attempt: r.attempt,
            outcome: Some((&r.outcome).into()),
        }
    }
}

impl TryFrom<pb::DeviceResult> for DeviceResult {
    type Error = ProtoError;

    fn try_from(r: pb::DeviceResult) -> Result<Self, ProtoError> {
        Ok(DeviceResult {
            job: id("job_id", r.job_id)?,
            run: muster_types::RunId(r.run),
            device: id("device_id", r.device_id)?,
            attempt: r.attempt,
            outcome: message("outcome", r.outcome)?,
        })
    }
}

impl From<&Outcome> for pb::Outcome {
    fn from(o: &Outcome) -> Self {
        use pb::outcome::{Kind, Responded};
        let kind = match o {
            Outcome::Responded { status, payload } => Kind::Responded(Responded {
                status: *status,
                payload_json: payload.as_str().to_string(),
            }),
            Outcome::Failed(reason) => Kind::Failed(reason.into()),
        };
        pb::Outcome { kind: Some(kind) }
    }
}

impl TryFrom<pb::Outcome> for Outcome {
    type Error = ProtoError;

    fn try_from(o: pb::Outcome) -> Result<Self, ProtoError> {
        use pb::outcome::Kind;
        Ok(match required("kind", o.kind)? {
            Kind::Responded(r) => Outcome::Responded {
                status: r.status,
                payload: crate::job::payload_text("responded.payload_json", r.payload_json)?,
            },
            Kind::Failed(reason) => Outcome::Failed(message("failed", Some(reason))?),
        })
    }
}
