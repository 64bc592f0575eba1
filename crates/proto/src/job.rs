//! Conversions of the reasons and answers that job events carry.

use muster_domain::{CancelReason, FailureReason, JobFailure, JsonText, MethodResponse};

use crate::error::ProtoError;
use crate::fields::required;
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
            payload_json: r.payload.as_str().to_string(),
        }
    }
}

impl TryFrom<pb::MethodResponse> for MethodResponse {
    type Error = ProtoError;

    fn try_from(r: pb::MethodResponse) -> Result<Self, ProtoError> {
        Ok(MethodResponse {
            status: r.status,
            payload: payload_text("payload_json", r.payload_json)?,
        })
    }
}

/// Responses whose JSON text is at most this long are remembered by [`payload_text`].
const CACHED_PAYLOAD_MAX: usize = 256;
/// How many recent payload texts each thread remembers.
const CACHED_PAYLOADS: usize = 8;

/// Recently read small payloads, with the next slot to overwrite.
type RecentPayloads = (Vec<JsonText>, usize);

thread_local! {
    static RECENT_PAYLOADS: std::cell::RefCell<RecentPayloads> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// Checks a response payload's JSON text and keeps it as text, sharing it with earlier
/// identical small payloads.
///
/// Devices answering one job mostly answer the same few bodies (`{"ok":true}`, an error text):
/// replaying the event log checked each of them again, and the state held a copy per device.
/// Equal text is an equal payload, so sharing is invisible to everything but the allocator.
pub(crate) fn payload_text(field: &str, text: String) -> Result<JsonText, ProtoError> {
    let parse = |text: &str| {
        JsonText::parse(text).map_err(|error| ProtoError::InvalidJson {
            field: field.to_string(),
            error,
        })
    };
    if text.len() > CACHED_PAYLOAD_MAX {
        return parse(&text);
    }
    RECENT_PAYLOADS.with(|cell| {
        let mut recent = cell.borrow_mut();
        if let Some(known) = recent.0.iter().find(|t| t.as_str() == text) {
            return Ok(known.clone());
        }
        let payload = parse(&text)?;
        let (list, next) = &mut *recent;
        if list.len() < CACHED_PAYLOADS {
            list.push(payload.clone());
        } else {
            list[*next] = payload.clone();
            *next = (*next + 1) % CACHED_PAYLOADS;
        }
        Ok(payload)
    })
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
            CancelReason::Criterion {
                index,
                criterion,
                failures,
                finished,
            } => Kind::Criterion(pb::cancel_reason::CriterionCrossed {
                index: *index,
                criterion: Some((*criterion).into()),
                failures: *failures,
                finished: *finished,
            }),
            CancelReason::Gate { batch, reason } => Kind::Gate(pb::cancel_reason::GateFailed {
                batch: *batch,
                reason: Some((*reason).into()),
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
            Kind::Criterion(c) => CancelReason::Criterion {
                index: c.index,
                criterion: crate::fields::message("criterion.criterion", c.criterion)?,
                failures: c.failures,
                finished: c.finished,
            },
            Kind::Gate(g) => CancelReason::Gate {
                batch: g.batch,
                reason: crate::fields::message("gate.reason", g.reason)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn equal_small_payloads_share_one_text() {
        let a = payload_text("p", text(r#"{"ok":true}"#)).unwrap();
        for n in 0..2 * CACHED_PAYLOADS {
            payload_text("p", format!("{{\"n\":{n}}}")).unwrap();
        }
        let b = payload_text("p", text(r#"{"ok":true}"#)).unwrap();
        let c = payload_text("p", text(r#"{"ok":true}"#)).unwrap();
        assert_eq!(a, b, "evicted or not, the payload is the same");
        assert!(
            std::ptr::eq(b.as_str(), c.as_str()),
            "a repeated payload is shared"
        );
        assert_eq!(c.value(), serde_json::json!({"ok": true}));
    }

    #[test]
    fn large_and_invalid_payloads() {
        let big = format!("\"{}\"", "x".repeat(CACHED_PAYLOAD_MAX));
        assert_eq!(
            payload_text("p", big).unwrap().value(),
            serde_json::Value::String("x".repeat(CACHED_PAYLOAD_MAX))
        );
        assert!(payload_text("p", text("{")).is_err());
        assert!(payload_text("p", text("")).is_err());
        // A refused text is not remembered as valid.
        assert!(payload_text("p", text("{")).is_err());
    }
}
