//! Job spec conversions. `JobSpec` travels inside `CreateJob` and `JobCreated`, and the gRPC API
//! will reuse the same message, so the conversions are public trait impls.

use muster_domain::{
    BatchSize, CancellationThreshold, JobSpec, MethodCall, Operation, RetryPolicy, Rollout,
    Schedule, Target, TargetSelector, Threshold,
};

use muster_domain::window::MaintenanceWindow;

use crate::error::ProtoError;
use crate::fields::{
    id, id_strings, ids, json, json_text, message, messages, optional_message, required, time,
};
use crate::pb;

impl From<&JobSpec> for pb::JobSpec {
    fn from(s: &JobSpec) -> Self {
        pb::JobSpec {
            display_name: s.display_name.clone(),
            description: s.description.clone(),
            target: Some((&s.target).into()),
            operations: s.operations.iter().map(Into::into).collect(),
            schedule: Some((&s.schedule).into()),
            rollout: Some((&s.rollout).into()),
            cancellation: s.cancellation.map(Into::into),
            retry: Some(s.retry.into()),
            maintenance_window: s.schedule.window.as_ref().map(|w| pb::MaintenanceWindow {
                cron: w.cron.clone(),
                duration_secs: w.duration_secs,
                time_zone: w.time_zone.clone(),
            }),
        }
    }
}

impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = ProtoError;

    fn try_from(s: pb::JobSpec) -> Result<Self, ProtoError> {
        let mut schedule: Schedule = required("schedule", s.schedule)?.into();
        schedule.window = s.maintenance_window.map(|w| MaintenanceWindow {
            cron: w.cron,
            duration_secs: w.duration_secs,
            time_zone: w.time_zone,
        });
        Ok(JobSpec {
            display_name: s.display_name,
            description: s.description,
            target: message("target", s.target)?,
            operations: messages("operations", s.operations)?,
            schedule,
            rollout: message("rollout", s.rollout)?,
            cancellation: optional_message("cancellation", s.cancellation)?,
            retry: required("retry", s.retry)?.into(),
        })
    }
}

impl From<&Target> for pb::Target {
    fn from(t: &Target) -> Self {
        use pb::target::Selector;
        let selector = match &t.selector {
            TargetSelector::Devices(devices) => Selector::Devices(pb::DeviceList {
                device_ids: id_strings(devices),
            }),
            TargetSelector::Group(group) => Selector::GroupId(group.to_string()),
            TargetSelector::Query(query) => Selector::Query(query.clone()),
        };
        pb::Target {
            selector: Some(selector),
            continuous: t.continuous,
        }
    }
}

impl TryFrom<pb::Target> for Target {
    type Error = ProtoError;

    fn try_from(t: pb::Target) -> Result<Self, ProtoError> {
        use pb::target::Selector;
        let selector = match required("selector", t.selector)? {
            Selector::Devices(list) => {
                TargetSelector::Devices(ids("devices.device_ids", list.device_ids)?)
            }
            Selector::GroupId(group) => TargetSelector::Group(id("group_id", group)?),
            Selector::Query(query) => TargetSelector::Query(query),
        };
        Ok(Target {
            selector,
            continuous: t.continuous,
        })
    }
}

impl From<&Operation> for pb::Operation {
    fn from(op: &Operation) -> Self {
        use pb::operation::{Kind, PatchDesired, PatchTags, SetCloudProperty};
        let kind = match op {
            Operation::InvokeMethod(call) => Kind::InvokeMethod(call.into()),
            Operation::PatchDesired { patch } => Kind::PatchDesired(PatchDesired {
                patch_json: json_text(patch),
            }),
            Operation::PatchTags { patch } => Kind::PatchTags(PatchTags {
                patch_json: json_text(patch),
            }),
            Operation::SetCloudProperty { name, value } => {
                Kind::SetCloudProperty(SetCloudProperty {
                    name: name.clone(),
                    value_json: json_text(value),
                })
            }
        };
        pb::Operation { kind: Some(kind) }
    }
}

impl TryFrom<pb::Operation> for Operation {
    type Error = ProtoError;

    fn try_from(op: pb::Operation) -> Result<Self, ProtoError> {
        use pb::operation::Kind;
        Ok(match required("kind", op.kind)? {
            Kind::InvokeMethod(call) => {
                Operation::InvokeMethod(message("invoke_method", Some(call))?)
            }
            Kind::PatchDesired(p) => Operation::PatchDesired {
                patch: json("patch_desired.patch_json", &p.patch_json)?,
            },
            Kind::PatchTags(p) => Operation::PatchTags {
                patch: json("patch_tags.patch_json", &p.patch_json)?,
            },
            Kind::SetCloudProperty(p) => Operation::SetCloudProperty {
                name: p.name,
                value: json("set_cloud_property.value_json", &p.value_json)?,
            },
        })
    }
}

impl From<&MethodCall> for pb::MethodCall {
    fn from(m: &MethodCall) -> Self {
        pb::MethodCall {
            name: m.name.clone(),
            payload_json: json_text(&m.payload),
            response_timeout_secs: m.response_timeout_secs,
            connect_timeout_secs: m.connect_timeout_secs,
        }
    }
}

impl TryFrom<pb::MethodCall> for MethodCall {
    type Error = ProtoError;

    fn try_from(m: pb::MethodCall) -> Result<Self, ProtoError> {
        Ok(MethodCall {
            name: m.name,
            payload: json("payload_json", &m.payload_json)?,
            response_timeout_secs: m.response_timeout_secs,
            connect_timeout_secs: m.connect_timeout_secs,
        })
    }
}

impl From<&Schedule> for pb::Schedule {
    fn from(s: &Schedule) -> Self {
        pb::Schedule {
            start_at_ms: s.start_at.map(|t| t.millis()),
            max_execution_secs: s.max_execution_secs,
        }
    }
}

/// Every combination of fields is a valid schedule, so this direction cannot fail.
impl From<pb::Schedule> for Schedule {
    fn from(s: pb::Schedule) -> Self {
        Schedule {
            start_at: s.start_at_ms.map(time),
            max_execution_secs: s.max_execution_secs,
            window: None,
        }
    }
}

impl From<&Rollout> for pb::Rollout {
    fn from(r: &Rollout) -> Self {
        pb::Rollout {
            batch: r.batch.map(Into::into),
            max_devices_per_minute: r.max_devices_per_minute,
            exponential: r.exponential.map(Into::into),
            gate: r.gate.map(Into::into),
            abort: r.abort.iter().map(|&c| c.into()).collect(),
        }
    }
}

impl TryFrom<pb::Rollout> for Rollout {
    type Error = ProtoError;

    fn try_from(r: pb::Rollout) -> Result<Self, ProtoError> {
        Ok(Rollout {
            batch: optional_message("batch", r.batch)?,
            max_devices_per_minute: r.max_devices_per_minute,
            exponential: optional_message("exponential", r.exponential)?,
            gate: optional_message("gate", r.gate)?,
            abort: messages("abort", r.abort)?,
        })
    }
}

impl From<BatchSize> for pb::BatchSize {
    fn from(b: BatchSize) -> Self {
        use pb::batch_size::Kind;
        let kind = match b {
            BatchSize::Percentage(p) => Kind::Percentage(p),
            BatchSize::Count(c) => Kind::Count(c),
        };
        pb::BatchSize { kind: Some(kind) }
    }
}

impl TryFrom<pb::BatchSize> for BatchSize {
    type Error = ProtoError;

    fn try_from(b: pb::BatchSize) -> Result<Self, ProtoError> {
        use pb::batch_size::Kind;
        Ok(match required("kind", b.kind)? {
            Kind::Percentage(p) => BatchSize::Percentage(p),
            Kind::Count(c) => BatchSize::Count(c),
        })
    }
}

impl From<CancellationThreshold> for pb::CancellationThreshold {
    fn from(c: CancellationThreshold) -> Self {
        pb::CancellationThreshold {
            limit: Some(c.limit.into()),
            per_batch: c.per_batch,
        }
    }
}

impl TryFrom<pb::CancellationThreshold> for CancellationThreshold {
    type Error = ProtoError;

    fn try_from(c: pb::CancellationThreshold) -> Result<Self, ProtoError> {
        Ok(CancellationThreshold {
            limit: message("limit", c.limit)?,
            per_batch: c.per_batch,
        })
    }
}

impl From<Threshold> for pb::Threshold {
    fn from(t: Threshold) -> Self {
        use pb::threshold::Kind;
        let kind = match t {
            Threshold::Percentage(p) => Kind::Percentage(p),
            Threshold::Count(c) => Kind::Count(c),
        };
        pb::Threshold { kind: Some(kind) }
    }
}

impl TryFrom<pb::Threshold> for Threshold {
    type Error = ProtoError;

    fn try_from(t: pb::Threshold) -> Result<Self, ProtoError> {
        use pb::threshold::Kind;
        Ok(match required("kind", t.kind)? {
            Kind::Percentage(p) => Threshold::Percentage(p),
            Kind::Count(c) => Threshold::Count(c),
        })
    }
}

impl From<RetryPolicy> for pb::RetryPolicy {
    fn from(r: RetryPolicy) -> Self {
        pb::RetryPolicy {
            max_attempts: r.max_attempts,
            retry_failed: r.retry_failed,
            retry_timed_out: r.retry_timed_out,
            backoff_failed: r.backoff_failed.map(Into::into),
            backoff_timed_out: r.backoff_timed_out.map(Into::into),
        }
    }
}

/// Limits (such as at least one attempt) are the spec validation's business, in `decide`; the log
/// holds what was accepted, so this direction copies and cannot fail.
impl From<pb::RetryPolicy> for RetryPolicy {
    fn from(r: pb::RetryPolicy) -> Self {
        RetryPolicy {
            max_attempts: r.max_attempts,
            retry_failed: r.retry_failed,
            retry_timed_out: r.retry_timed_out,
            backoff_failed: r.backoff_failed.map(Into::into),
            backoff_timed_out: r.backoff_timed_out.map(Into::into),
        }
    }
}
