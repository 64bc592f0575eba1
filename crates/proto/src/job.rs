//! Conversions of the reasons and answers that job events carry.

use muster_domain::{CancelReason, FailureReason, JobFailure, MethodResponse};

use crate::error::ProtoError;
use crate::fields::{json, json_text, required};
use crate::pb;

impl From<&FailureReason> for pb::FailureReason {
    fn from(r: &FailureReason) -> Self {
        use pb::failure_reason::{
            DeviceDisabled, DeviceError, DeviceNotFound, DispatchFailed, Kind, NotConnected,
            Timeout,
        };
        let kind = match r {
            FailureReason::DeviceError { status } => {
                Kind::DeviceError(DeviceError { status: *status })
            }
            FailureReason::Timeout => Kind::Timeout(Timeout {}),
            FailureReason::NotConnected => Kind::NotConnected(NotConnected {}),
            FailureReason::DeviceNotFound => Kind::DeviceNotFound(DeviceNotFound {}),
            FailureReason::DeviceDisabled => Kind::DeviceDisabled(DeviceDisabled {}),
            FailureReason::DispatchFailed { message } => Kind::DispatchFailed(DispatchFailed {
                message: message.clone(),
            }),
        };
        pb::FailureReason { kind: Some(kind) }
    }
}

impl TryFrom<pb::FailureReason> for FailureReason {
    type Error = ProtoError;

    fn try_from(r: pb::FailureReason) -> Result<Self, ProtoError> {
        use pb::failure_reason::Kind;
        Ok(match required("kind", r.kind)? {
            Kind::DeviceError(e) => FailureReason::DeviceError { status: e.status },
            Kind::Timeout(_) => FailureReason::Timeout,
            Kind::NotConnected(_) => FailureReason::NotConnected,
            Kind::DeviceNotFound(_) => FailureReason::DeviceNotFound,
            Kind::DeviceDisabled(_) => FailureReason::DeviceDisabled,
            Kind::DispatchFailed(f) => FailureReason::DispatchFailed { message: f.message },
        })
    }
}

impl From<&MethodResponse> for pb::MethodResponse {
    fn from(r: &MethodResponse) -> Self {
        pb::MethodResponse {
            status: r.status,
            payload_json: json_text(&r.payload),
        }
    }
}

impl TryFrom<pb::MethodResponse> for MethodResponse {
    type Error = ProtoError;

    fn try_from(r: pb::MethodResponse) -> Result<Self, ProtoError> {
        Ok(MethodResponse {
            status: r.status,
            payload: std::sync::Arc::new(json("payload_json", &r.payload_json)?),
        })
    }
}

impl From<&CancelReason> for pb::CancelReason {
    fn from(r: &CancelReason) -> Self {
        use pb::cancel_reason::{Kind, ThresholdCrossed, User};
        let kind = match r {
            CancelReason::User => Kind::User(User {}),
            CancelReason::Threshold {
                failures,
                population,
                batch,
            } => Kind::Threshold(ThresholdCrossed {
                failures: *failures,
                population: *population,
                batch: *batch,
            }),
        };
        pb::CancelReason { kind: Some(kind) }
    }
}

impl TryFrom<pb::CancelReason> for CancelReason {
    type Error = ProtoError;

    fn try_from(r: pb::CancelReason) -> Result<Self, ProtoError> {
        use pb::cancel_reason::Kind;
        Ok(match required("kind", r.kind)? {
            Kind::User(_) => CancelReason::User,
            Kind::Threshold(t) => CancelReason::Threshold {
                failures: t.failures,
                population: t.population,
                batch: t.batch,
            },
        })
    }
}

impl From<&JobFailure> for pb::JobFailure {
    fn from(f: &JobFailure) -> Self {
        use pb::job_failure::{Kind, MaxExecutionTimeExceeded};
        let kind = match f {
            JobFailure::MaxExecutionTimeExceeded => {
                Kind::MaxExecutionTimeExceeded(MaxExecutionTimeExceeded {})
            }
        };
        pb::JobFailure { kind: Some(kind) }
    }
}

impl TryFrom<pb::JobFailure> for JobFailure {
    type Error = ProtoError;

    fn try_from(f: pb::JobFailure) -> Result<Self, ProtoError> {
        use pb::job_failure::Kind;
        Ok(match required("kind", f.kind)? {
            Kind::MaxExecutionTimeExceeded(_) => JobFailure::MaxExecutionTimeExceeded,
        })
    }
}
