//! Abort criteria (AWS IoT Jobs' `abortConfig`): each names a kind of failure, a threshold (a
//! count, or a percentage of the devices finished so far) and the number of devices that must
//! have finished before it applies. The first criterion crossed cancels the job, and the cancel
//! reason names it.
//!
//! Like the cancellation threshold, a criterion is crossed when the failures strictly exceed its
//! limit. IoT Central's `cancellationThreshold` stays what it was (failures out of all of the
//! batch's or run's devices, no minimum): the same rule with the population fixed in advance,
//! where a criterion counts against the devices that have finished.

use serde::{Deserialize, Serialize};

use super::invalid;
use crate::error::DomainError;
use crate::spec::Threshold;

/// At most this many criteria per job; they are checked on every device that finishes.
pub const MAX_CRITERIA: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortCriterion {
    pub kind: FailureKind,
    pub threshold: Threshold,
    /// Devices that must have finished (succeeded or failed in any way) before the criterion
    /// applies.
    pub min_finished: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FailureKind {
    /// Ended failed for any reason but a connect timeout (device error, not found, disabled,
    /// could not send).
    Failed,
    /// No answer within the response timeout.
    TimedOut,
    /// Offline past the connect timeout.
    NotConnected,
    /// Any of the above.
    Any,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::TimedOut => "timedOut",
            FailureKind::NotConnected => "notConnected",
            FailureKind::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "failed" => FailureKind::Failed,
            "timedOut" | "timed_out" => FailureKind::TimedOut,
            "notConnected" | "not_connected" => FailureKind::NotConnected,
            "any" => FailureKind::Any,
            _ => return None,
        })
    }
}

/// A run's final outcomes, as far as the criteria care. `failed` includes `not_connected`
/// (offline devices end `failed`), as the run's statistics count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub finished: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub not_connected: u64,
}

impl Tally {
    pub fn count(&self, kind: FailureKind) -> u64 {
        match kind {
            FailureKind::Failed => self.failed.saturating_sub(self.not_connected),
            FailureKind::TimedOut => self.timed_out,
            FailureKind::NotConnected => self.not_connected,
            FailureKind::Any => self.failed + self.timed_out,
        }
    }
}

impl AbortCriterion {
    /// Whether the criterion is crossed: never before `min_finished` devices finished.
    pub fn crossed(&self, t: &Tally) -> bool {
        t.finished >= u64::from(self.min_finished)
            && self.threshold.crossed(t.count(self.kind), t.finished)
    }

    /// For cancel reasons and events: `timedOut > 10% after 20 finished`.
    pub fn describe(&self) -> String {
        let limit = match self.threshold {
            Threshold::Percentage(p) => format!("{p}%"),
            Threshold::Count(c) => c.to_string(),
        };
        format!(
            "{} > {limit} after {} finished",
            self.kind.as_str(),
            self.min_finished
        )
    }
}

/// The first criterion the tally crosses, by its index in the spec.
pub fn tripped(criteria: &[AbortCriterion], t: &Tally) -> Option<usize> {
    criteria.iter().position(|c| c.crossed(t))
}

pub fn validate(criteria: &[AbortCriterion]) -> Result<(), DomainError> {
    if criteria.len() > MAX_CRITERIA {
        return Err(invalid(
            "rollout.abortCriteria",
            format!("at most {MAX_CRITERIA} criteria, got {}", criteria.len()),
        ));
    }
    for (i, c) in criteria.iter().enumerate() {
        match c.threshold {
            Threshold::Percentage(p) if p == 0 || p > 100 => {
                return Err(invalid(
                    &format!("rollout.abortCriteria[{i}].thresholdPercentage"),
                    format!("must be between 1 and 100, got {p}"),
                ))
            }
            Threshold::Count(0) => {
                return Err(invalid(
                    &format!("rollout.abortCriteria[{i}].thresholdCount"),
                    "must be at least 1",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_criterion_waits_for_its_minimum() {
        let c = AbortCriterion {
            kind: FailureKind::TimedOut,
            threshold: Threshold::Percentage(10),
            min_finished: 10,
        };
        let mut t = Tally {
            finished: 9,
            timed_out: 9,
            ..Tally::default()
        };
        assert!(!c.crossed(&t));
        t.finished = 10;
        assert!(c.crossed(&t));
        t.timed_out = 1;
        assert!(!c.crossed(&t), "10% is not more than 10%");
        t.timed_out = 2;
        assert!(c.crossed(&t));
        assert_eq!(c.describe(), "timedOut > 10% after 10 finished");
    }

    #[test]
    fn kinds_count_apart() {
        let t = Tally {
            finished: 10,
            failed: 5,
            timed_out: 2,
            not_connected: 3,
        };
        assert_eq!(t.count(FailureKind::Failed), 2);
        assert_eq!(t.count(FailureKind::NotConnected), 3);
        assert_eq!(t.count(FailureKind::TimedOut), 2);
        assert_eq!(t.count(FailureKind::Any), 7);
        for k in [
            FailureKind::Failed,
            FailureKind::TimedOut,
            FailureKind::NotConnected,
            FailureKind::Any,
        ] {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
    }
}
