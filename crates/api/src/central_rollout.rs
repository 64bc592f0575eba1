//! The `rollout` extension of IoT Central's job body: muster's rollout controls (issue 16) where
//! Azure has no field. A body without `rollout` is exactly IoT Central's; with it, a job gets:
//!
//! ```json
//! "rollout": {
//!   "maxDevicesPerMinute": 100,
//!   "exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2.0,
//!                       "rateIncreaseCriteria": {"numberOfNotifiedDevices": 10},
//!                       "maximumPerMinute": 200},
//!   "gate": {"successPercent": 95, "onFailure": "pause", "pauseAfterEachBatch": false},
//!   "abortCriteria": [{"failureType": "timedOut", "thresholdPercentage": 10,
//!                      "minNumberOfFinishedDevices": 20}],
//!   "retry": {"maxAttempts": 3, "retryFailed": true, "retryTimedOut": true,
//!             "backoffFailed": {"baseMs": 1000, "factor": 2, "maxMs": 60000, "jitterPercent": 20}}
//! }
//! ```
//!
//! The names follow AWS IoT Jobs' `jobExecutionsRolloutConfig` and `abortConfig`, which operators
//! coming from there know. GET answers with the same object (only the parts that are set) and,
//! while the job runs, `rolloutState`: the rate in force and why the job is paused.

use muster_domain::rollout::{
    AbortCriterion, Backoff, ExponentialRate, FailureKind, Gate, GateAction, RateCriterion,
};
use muster_domain::{Job, JobStatus, RetryPolicy, Rollout, Threshold};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::json::{kind, Fields};

pub const ROLLOUT_FIELD: &str = "rollout";
pub const ROLLOUT_STATE_FIELD: &str = "rolloutState";

/// Reads `rollout` into the spec's rollout (batch kept as given) and retry policy.
pub fn read(v: &Value, rollout: &mut Rollout, retry: &mut RetryPolicy) -> Result<(), ApiError> {
    let f = Fields::of(v, ROLLOUT_FIELD)?;
    f.only(&[
        "maxDevicesPerMinute",
        "exponentialRate",
        "gate",
        "abortCriteria",
        "retry",
    ])?;
    rollout.max_devices_per_minute = f.u32_opt("maxDevicesPerMinute", 1, u32::MAX)?;
    if let Some(e) = f.get("exponentialRate") {
        rollout.exponential = Some(exponential(&Fields::of(e, &f.path("exponentialRate"))?)?);
    }
    if let Some(g) = f.get("gate") {
        let g = Fields::of(g, &f.path("gate"))?;
        g.only(&["successPercent", "onFailure", "pauseAfterEachBatch"])?;
        let on_failure = match g.str_opt("onFailure")?.unwrap_or("pause") {
            "pause" => GateAction::Pause,
            "cancel" => GateAction::Cancel,
            other => {
                return Err(ApiError::bad_request(
                    &g.path("onFailure"),
                    format!("must be \"pause\" or \"cancel\", got {other:?}"),
                ))
            }
        };
        rollout.gate = Some(Gate {
            success_percent: g.u32_opt("successPercent", 0, 100)?.unwrap_or(0),
            on_failure,
            pause_after_each_batch: g.bool_opt("pauseAfterEachBatch")?.unwrap_or(false),
        });
    }
    if let Some(a) = f.get("abortCriteria") {
        let Value::Array(items) = a else {
            return Err(ApiError::bad_request(
                &f.path("abortCriteria"),
                format!("must be an array, got {}", kind(a)),
            ));
        };
        rollout.abort = items
            .iter()
            .enumerate()
            .map(|(i, c)| criterion(&Fields::of(c, &format!("rollout.abortCriteria[{i}]"))?))
            .collect::<Result<_, _>>()?;
    }
    if let Some(r) = f.get("retry") {
        let r = Fields::of(r, &f.path("retry"))?;
        r.only(&[
            "maxAttempts",
            "retryFailed",
            "retryTimedOut",
            "backoffFailed",
            "backoffTimedOut",
        ])?;
        retry.max_attempts = r
            .u32_opt("maxAttempts", 1, muster_domain::spec::MAX_ATTEMPTS)?
            .unwrap_or(1);
        retry.retry_failed = r.bool_opt("retryFailed")?.unwrap_or(false);
        retry.retry_timed_out = r.bool_opt("retryTimedOut")?.unwrap_or(false);
        for (key, slot) in [
            ("backoffFailed", &mut retry.backoff_failed),
            ("backoffTimedOut", &mut retry.backoff_timed_out),
        ] {
            if let Some(b) = r.get(key) {
                let b = Fields::of(b, &r.path(key))?;
                b.only(&["baseMs", "factor", "maxMs", "jitterPercent"])?;
                let base_ms = b.u32_req("baseMs", 1, u32::MAX)?;
                *slot = Some(Backoff {
                    base_ms,
                    factor: b.u32_opt("factor", 1, 10)?.unwrap_or(2),
                    max_ms: b.u32_opt("maxMs", 1, u32::MAX)?.unwrap_or(base_ms),
                    jitter_percent: b.u32_opt("jitterPercent", 0, 100)?.unwrap_or(0),
                });
            }
        }
    }
    Ok(())
}

fn exponential(e: &Fields<'_>) -> Result<ExponentialRate, ApiError> {
    e.only(&[
        "baseRatePerMinute",
        "incrementFactor",
        "rateIncreaseCriteria",
        "maximumPerMinute",
    ])?;
    let base = e.u32_req("baseRatePerMinute", 1, u32::MAX)?;
    let factor_field = e.path("incrementFactor");
    let factor = match e.get("incrementFactor") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(other) => {
            return Err(ApiError::bad_request(
                &factor_field,
                format!("must be a number from 1.1 to 5.0, got {}", kind(other)),
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                &factor_field,
                "is required: a number from 1.1 to 5.0 with one decimal",
            ))
        }
    };
    let tenths = (factor * 10.0).round();
    if !(11.0..=50.0).contains(&tenths) || ((factor * 10.0) - tenths).abs() > 1e-6 {
        return Err(ApiError::bad_request(
            &factor_field,
            format!("must be a number from 1.1 to 5.0 with one decimal, got {factor}"),
        ));
    }
    let c_field = e.path("rateIncreaseCriteria");
    let c = Fields::of(
        e.get("rateIncreaseCriteria").ok_or_else(|| {
            ApiError::bad_request(
                &c_field,
                "is required: {\"numberOfNotifiedDevices\": N} or {\"numberOfSucceededDevices\": N}",
            )
        })?,
        &c_field,
    )?;
    c.only(&["numberOfNotifiedDevices", "numberOfSucceededDevices"])?;
    let criterion = match (
        c.u32_opt("numberOfNotifiedDevices", 1, u32::MAX)?,
        c.u32_opt("numberOfSucceededDevices", 1, u32::MAX)?,
    ) {
        (Some(n), None) => RateCriterion::NotifiedDevices(n),
        (None, Some(n)) => RateCriterion::SucceededDevices(n),
        _ => {
            return Err(ApiError::bad_request(
                &c_field,
                "give exactly one of numberOfNotifiedDevices and numberOfSucceededDevices",
            ))
        }
    };
    Ok(ExponentialRate {
        base_per_minute: base,
        increment_factor_tenths: tenths as u32,
        criterion,
        maximum_per_minute: e
            .u32_opt("maximumPerMinute", 1, u32::MAX)?
            .unwrap_or(muster_domain::rollout::rate::MAX_RATE_PER_MINUTE),
    })
}

fn criterion(c: &Fields<'_>) -> Result<AbortCriterion, ApiError> {
    c.only(&[
        "failureType",
        "thresholdPercentage",
        "thresholdCount",
        "minNumberOfFinishedDevices",
    ])?;
    let t = c.str_req("failureType")?;
    let kind = FailureKind::parse(t).ok_or_else(|| {
        ApiError::bad_request(
            &c.path("failureType"),
            format!("must be failed, timedOut, notConnected or any, got {t:?}"),
        )
    })?;
    let threshold = match (
        c.u32_opt("thresholdPercentage", 1, 100)?,
        c.u32_opt("thresholdCount", 1, u32::MAX)?,
    ) {
        (Some(p), None) => Threshold::Percentage(p),
        (None, Some(n)) => Threshold::Count(n),
        _ => {
            return Err(ApiError::bad_request(
                &c.path("thresholdPercentage"),
                "give exactly one of thresholdPercentage and thresholdCount",
            ))
        }
    };
    Ok(AbortCriterion {
        kind,
        threshold,
        min_finished: c
            .u32_opt("minNumberOfFinishedDevices", 0, u32::MAX)?
            .unwrap_or(0),
    })
}

/// `rollout` for a GET: only what is set; `None` when the job uses none of it.
pub fn write(job: &Job) -> Option<Value> {
    let r = &job.spec.rollout;
    let retry = &job.spec.retry;
    let mut m = Map::new();
    if let Some(n) = r.max_devices_per_minute {
        m.insert("maxDevicesPerMinute".into(), json!(n));
    }
    if let Some(e) = r.exponential {
        let criteria = match e.criterion {
            RateCriterion::NotifiedDevices(n) => json!({"numberOfNotifiedDevices": n}),
            RateCriterion::SucceededDevices(n) => json!({"numberOfSucceededDevices": n}),
        };
        m.insert(
            "exponentialRate".into(),
            json!({
                "baseRatePerMinute": e.base_per_minute,
                "incrementFactor": f64::from(e.increment_factor_tenths) / 10.0,
                "rateIncreaseCriteria": criteria,
                "maximumPerMinute": e.maximum_per_minute,
            }),
        );
    }
    if let Some(g) = r.gate {
        m.insert(
            "gate".into(),
            json!({
                "successPercent": g.success_percent,
                "onFailure": match g.on_failure {
                    GateAction::Pause => "pause",
                    GateAction::Cancel => "cancel",
                },
                "pauseAfterEachBatch": g.pause_after_each_batch,
            }),
        );
    }
    if !r.abort.is_empty() {
        let items: Vec<Value> = r
            .abort
            .iter()
            .map(|c| {
                let mut o = Map::new();
                o.insert("failureType".into(), json!(c.kind.as_str()));
                match c.threshold {
                    Threshold::Percentage(p) => o.insert("thresholdPercentage".into(), json!(p)),
                    Threshold::Count(n) => o.insert("thresholdCount".into(), json!(n)),
                };
                o.insert("minNumberOfFinishedDevices".into(), json!(c.min_finished));
                Value::Object(o)
            })
            .collect();
        m.insert("abortCriteria".into(), Value::Array(items));
    }
    if *retry != RetryPolicy::default() {
        let mut o = Map::new();
        o.insert("maxAttempts".into(), json!(retry.max_attempts));
        o.insert("retryFailed".into(), json!(retry.retry_failed));
        o.insert("retryTimedOut".into(), json!(retry.retry_timed_out));
        for (key, b) in [
            ("backoffFailed", retry.backoff_failed),
            ("backoffTimedOut", retry.backoff_timed_out),
        ] {
            if let Some(b) = b {
                o.insert(
                    key.into(),
                    json!({"baseMs": b.base_ms, "factor": b.factor, "maxMs": b.max_ms,
                           "jitterPercent": b.jitter_percent}),
                );
            }
        }
        m.insert("retry".into(), Value::Object(o));
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// `rolloutState` for a GET: the rate in force, and why and after which batch the job is
/// paused; `None` when there is nothing to say.
pub fn state(job: &Job) -> Option<Value> {
    let mut m = Map::new();
    if let Some(rate) = job.rate_limit() {
        m.insert("ratePerMinute".into(), json!(rate));
    }
    if job.status == JobStatus::Paused {
        m.insert("paused".into(), json!(true));
        if let Some((batch, reason)) = job.paused {
            m.insert("pausedAfterBatch".into(), json!(batch));
            m.insert("pauseReason".into(), json!(reason.describe()));
        }
        m.insert(
            "continueWith".into(),
            json!(format!("POST /api/jobs/{}/continue", job.id)),
        );
    }
    if let Some(r) = &job.cancel_reason {
        m.insert("cancelReason".into(), json!(r.describe()));
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::central::job_request_from_central_value;

    fn body(rollout: Value) -> Value {
        json!({
            "group": "g",
            "data": [{"type": "CommandJobData", "path": "reboot"}],
            "rollout": rollout,
        })
    }

    #[test]
    fn the_extension_round_trips() {
        let rollout = json!({
            "maxDevicesPerMinute": 100,
            "exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 1.5,
                                "rateIncreaseCriteria": {"numberOfSucceededDevices": 20},
                                "maximumPerMinute": 200},
            "gate": {"successPercent": 95, "onFailure": "cancel", "pauseAfterEachBatch": true},
            "abortCriteria": [{"failureType": "timedOut", "thresholdPercentage": 10,
                               "minNumberOfFinishedDevices": 20},
                              {"failureType": "any", "thresholdCount": 3,
                               "minNumberOfFinishedDevices": 0}],
            "retry": {"maxAttempts": 3, "retryFailed": true, "retryTimedOut": false,
                      "backoffFailed": {"baseMs": 1000, "factor": 2, "maxMs": 60000,
                                        "jitterPercent": 20}}
        });
        let req = job_request_from_central_value(&body(rollout.clone()), "j1").unwrap();
        let r = &req.spec.rollout;
        assert_eq!(r.exponential.unwrap().increment_factor_tenths, 15);
        assert_eq!(r.gate.unwrap().on_failure, GateAction::Cancel);
        assert_eq!(r.abort.len(), 2);
        assert_eq!(req.spec.retry.backoff_failed.unwrap().max_ms, 60_000);
        let job = muster_domain::Job {
            id: req.id.clone(),
            spec: req.spec.clone(),
            watch: None,
            status: JobStatus::Pending,
            created_at: muster_types::Timestamp(0),
            start_at: None,
            started_at: None,
            ended_at: None,
            resumed_at: None,
            cancel_reason: None,
            failure: None,
            runs: Vec::new(),
            recent_dispatches: Default::default(),
            rate_per_minute: None,
            paused: None,
            window: None,
            detail_expired: false,
        };
        assert_eq!(write(&job), Some(rollout));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                json!({"gate": {"successPercent": 101}}),
                "rollout.gate.successPercent",
            ),
            (
                json!({"gate": {"onFailure": "stop"}}),
                "rollout.gate.onFailure",
            ),
            (
                json!({"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 1.55,
                        "rateIncreaseCriteria": {"numberOfNotifiedDevices": 1}}}),
                "rollout.exponentialRate.incrementFactor",
            ),
            (
                json!({"abortCriteria": [{"failureType": "weird", "thresholdCount": 1}]}),
                "rollout.abortCriteria[0].failureType",
            ),
            (
                json!({"abortCriteria": [{"failureType": "any"}]}),
                "rollout.abortCriteria[0].thresholdPercentage",
            ),
            (
                json!({"retry": {"backoffFailed": {"baseMs": 0}}}),
                "rollout.retry.backoffFailed.baseMs",
            ),
            (json!({"speed": 1}), "rollout.speed"),
        ];
        for (rollout, field) in cases {
            let err = job_request_from_central_value(&body(rollout.clone()), "j1").unwrap_err();
            assert!(err.to_string().contains(field), "{rollout}: {err}");
        }
    }
}
