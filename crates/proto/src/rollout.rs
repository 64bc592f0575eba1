//! Conversions of the rollout controls (issue 16): exponential rate, gate, abort criteria,
//! backoff and pause reasons.

use muster_domain::rollout::{
    AbortCriterion, Backoff, ExponentialRate, FailureKind, Gate, GateAction, PauseReason,
    RateCriterion,
};

use crate::error::ProtoError;
use crate::fields::{message, required};
use crate::pb;

impl From<ExponentialRate> for pb::ExponentialRate {
    fn from(e: ExponentialRate) -> Self {
        use pb::exponential_rate::Criterion;
        pb::ExponentialRate {
            base_per_minute: e.base_per_minute,
            increment_factor_tenths: e.increment_factor_tenths,
            criterion: Some(match e.criterion {
                RateCriterion::NotifiedDevices(n) => Criterion::NotifiedDevices(n),
                RateCriterion::SucceededDevices(n) => Criterion::SucceededDevices(n),
            }),
            maximum_per_minute: e.maximum_per_minute,
        }
    }
}

impl TryFrom<pb::ExponentialRate> for ExponentialRate {
    type Error = ProtoError;

    fn try_from(e: pb::ExponentialRate) -> Result<Self, ProtoError> {
        use pb::exponential_rate::Criterion;
        Ok(ExponentialRate {
            base_per_minute: e.base_per_minute,
            increment_factor_tenths: e.increment_factor_tenths,
            criterion: match required("criterion", e.criterion)? {
                Criterion::NotifiedDevices(n) => RateCriterion::NotifiedDevices(n),
                Criterion::SucceededDevices(n) => RateCriterion::SucceededDevices(n),
            },
            maximum_per_minute: e.maximum_per_minute,
        })
    }
}

impl From<Gate> for pb::Gate {
    fn from(g: Gate) -> Self {
        pb::Gate {
            success_percent: g.success_percent,
            on_failure: match g.on_failure {
                GateAction::Pause => pb::GateAction::Pause,
                GateAction::Cancel => pb::GateAction::Cancel,
            } as i32,
            pause_after_each_batch: g.pause_after_each_batch,
        }
    }
}

impl TryFrom<pb::Gate> for Gate {
    type Error = ProtoError;

    fn try_from(g: pb::Gate) -> Result<Self, ProtoError> {
        let on_failure = match pb::GateAction::try_from(g.on_failure) {
            Ok(pb::GateAction::Pause) => GateAction::Pause,
            Ok(pb::GateAction::Cancel) => GateAction::Cancel,
            _ => {
                return Err(ProtoError::UnknownEnum {
                    field: "on_failure".into(),
                    value: g.on_failure,
                })
            }
        };
        Ok(Gate {
            success_percent: g.success_percent,
            on_failure,
            pause_after_each_batch: g.pause_after_each_batch,
        })
    }
}

pub(crate) fn failure_kind_to_pb(k: FailureKind) -> pb::FailureKind {
    match k {
        FailureKind::Failed => pb::FailureKind::Failed,
        FailureKind::TimedOut => pb::FailureKind::TimedOut,
        FailureKind::NotConnected => pb::FailureKind::NotConnected,
        FailureKind::Any => pb::FailureKind::Any,
    }
}

fn failure_kind(field: &str, value: i32) -> Result<FailureKind, ProtoError> {
    Ok(match pb::FailureKind::try_from(value) {
        Ok(pb::FailureKind::Failed) => FailureKind::Failed,
        Ok(pb::FailureKind::TimedOut) => FailureKind::TimedOut,
        Ok(pb::FailureKind::NotConnected) => FailureKind::NotConnected,
        Ok(pb::FailureKind::Any) => FailureKind::Any,
        _ => {
            return Err(ProtoError::UnknownEnum {
                field: field.into(),
                value,
            })
        }
    })
}

impl From<AbortCriterion> for pb::AbortCriterion {
    fn from(c: AbortCriterion) -> Self {
        pb::AbortCriterion {
            kind: failure_kind_to_pb(c.kind) as i32,
            threshold: Some(c.threshold.into()),
            min_finished: c.min_finished,
        }
    }
}

impl TryFrom<pb::AbortCriterion> for AbortCriterion {
    type Error = ProtoError;

    fn try_from(c: pb::AbortCriterion) -> Result<Self, ProtoError> {
        Ok(AbortCriterion {
            kind: failure_kind("kind", c.kind)?,
            threshold: message("threshold", c.threshold)?,
            min_finished: c.min_finished,
        })
    }
}

impl From<Backoff> for pb::Backoff {
    fn from(b: Backoff) -> Self {
        pb::Backoff {
            base_ms: b.base_ms,
            factor: b.factor,
            max_ms: b.max_ms,
            jitter_percent: b.jitter_percent,
        }
    }
}

impl From<pb::Backoff> for Backoff {
    fn from(b: pb::Backoff) -> Self {
        Backoff {
            base_ms: b.base_ms,
            factor: b.factor,
            max_ms: b.max_ms,
            jitter_percent: b.jitter_percent,
        }
    }
}

impl From<PauseReason> for pb::PauseReason {
    fn from(r: PauseReason) -> Self {
        use pb::pause_reason::{AfterBatch, GateFailed, Kind};
        let kind = match r {
            PauseReason::GateFailed {
                succeeded,
                devices,
                required_percent,
            } => Kind::GateFailed(GateFailed {
                succeeded,
                devices,
                required_percent,
            }),
            PauseReason::AfterBatch => Kind::AfterBatch(AfterBatch {}),
        };
        pb::PauseReason { kind: Some(kind) }
    }
}

impl TryFrom<pb::PauseReason> for PauseReason {
    type Error = ProtoError;

    fn try_from(r: pb::PauseReason) -> Result<Self, ProtoError> {
        use pb::pause_reason::Kind;
        Ok(match required("kind", r.kind)? {
            Kind::GateFailed(g) => PauseReason::GateFailed {
                succeeded: g.succeeded,
                devices: g.devices,
                required_percent: g.required_percent,
            },
            Kind::AfterBatch(_) => PauseReason::AfterBatch,
        })
    }
}
