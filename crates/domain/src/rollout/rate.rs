//! The exponential rollout rate (AWS IoT Jobs' `exponentialRate`): start at a base rate per
//! minute and multiply it by a factor each time a number of devices were notified (dispatched at
//! least once) or succeeded, up to a maximum.
//!
//! The rate is a function of the run's counters (the step is `count / per_step`), so it only ever
//! rises, and only when its criterion is met. `decide` records each rise as a `RateChanged` event
//! so that the change is visible and the limit in state comes from the log.

use serde::{Deserialize, Serialize};

use super::invalid;
use crate::error::DomainError;

/// Highest rate accepted, per minute (AWS allows 1000; muster's dispatcher can do more).
pub const MAX_RATE_PER_MINUTE: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExponentialRate {
    /// Devices per minute at the start.
    pub base_per_minute: u32,
    /// The factor in tenths (AWS's `incrementFactor` has one decimal, 1.1 to 5.0): 15 = x1.5.
    /// Integer arithmetic keeps every replica's rate identical.
    pub increment_factor_tenths: u32,
    pub criterion: RateCriterion,
    /// The rate never goes above this.
    pub maximum_per_minute: u32,
}

/// What raises the rate: every `n` devices notified or succeeded (AWS's `rateIncreaseCriteria`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateCriterion {
    NotifiedDevices(u32),
    SucceededDevices(u32),
}

impl ExponentialRate {
    pub fn validate(&self) -> Result<(), DomainError> {
        let f = "rollout.exponentialRate";
        if self.base_per_minute == 0 || self.base_per_minute > MAX_RATE_PER_MINUTE {
            return Err(invalid(
                &format!("{f}.baseRatePerMinute"),
                format!(
                    "must be between 1 and {MAX_RATE_PER_MINUTE}, got {}",
                    self.base_per_minute
                ),
            ));
        }
        if !(11..=50).contains(&self.increment_factor_tenths) {
            return Err(invalid(
                &format!("{f}.incrementFactor"),
                format!(
                    "must be between 1.1 and 5.0 (one decimal), got {}.{}",
                    self.increment_factor_tenths / 10,
                    self.increment_factor_tenths % 10
                ),
            ));
        }
        let n = match self.criterion {
            RateCriterion::NotifiedDevices(n) | RateCriterion::SucceededDevices(n) => n,
        };
        if n == 0 {
            return Err(invalid(
                &format!("{f}.rateIncreaseCriteria"),
                "the number of devices per increase must be at least 1",
            ));
        }
        if self.maximum_per_minute < self.base_per_minute
            || self.maximum_per_minute > MAX_RATE_PER_MINUTE
        {
            return Err(invalid(
                &format!("{f}.maximumPerMinute"),
                format!(
                    "must be between the base rate ({}) and {MAX_RATE_PER_MINUTE}, got {}",
                    self.base_per_minute, self.maximum_per_minute
                ),
            ));
        }
        Ok(())
    }

    /// How many increases the counters have earned.
    pub fn step(&self, notified: u64, succeeded: u64) -> u64 {
        match self.criterion {
            RateCriterion::NotifiedDevices(n) => notified / u64::from(n.max(1)),
            RateCriterion::SucceededDevices(n) => succeeded / u64::from(n.max(1)),
        }
    }

    /// The rate after `step` increases: each multiplies by the factor (rounded down, but by at
    /// least one device so that every increase is one), capped at the maximum.
    pub fn rate_at(&self, step: u64) -> u32 {
        let max = u64::from(self.maximum_per_minute);
        let mut rate = u64::from(self.base_per_minute).min(max);
        for _ in 0..step {
            if rate >= max {
                break;
            }
            let next = (rate * u64::from(self.increment_factor_tenths) / 10).max(rate + 1);
            rate = next.min(max);
        }
        rate as u32
    }

    /// The rate the counters allow.
    pub fn rate(&self, notified: u64, succeeded: u64) -> u32 {
        self.rate_at(self.step(notified, succeeded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(criterion: RateCriterion) -> ExponentialRate {
        ExponentialRate {
            base_per_minute: 10,
            increment_factor_tenths: 20,
            criterion,
            maximum_per_minute: 100,
        }
    }

    #[test]
    fn rate_doubles_per_step_up_to_the_maximum() {
        let e = exp(RateCriterion::NotifiedDevices(5));
        assert_eq!(e.rate(0, 0), 10);
        assert_eq!(e.rate(4, 0), 10);
        assert_eq!(e.rate(5, 0), 20);
        assert_eq!(e.rate(10, 0), 40);
        assert_eq!(e.rate(15, 0), 80);
        assert_eq!(e.rate(20, 0), 100);
        assert_eq!(e.rate(u64::MAX, 0), 100);
        let s = exp(RateCriterion::SucceededDevices(5));
        assert_eq!(s.rate(100, 4), 10);
        assert_eq!(s.rate(0, 5), 20);
    }

    #[test]
    fn a_small_factor_still_raises_by_one() {
        let e = ExponentialRate {
            base_per_minute: 1,
            increment_factor_tenths: 11,
            criterion: RateCriterion::NotifiedDevices(1),
            maximum_per_minute: 3,
        };
        assert_eq!(e.rate_at(1), 2);
        assert_eq!(e.rate_at(2), 3);
        assert_eq!(e.rate_at(9), 3);
    }

    #[test]
    fn validation_names_the_field() {
        let mut e = exp(RateCriterion::NotifiedDevices(5));
        assert!(e.validate().is_ok());
        e.increment_factor_tenths = 10;
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("incrementFactor"));
        let mut e = exp(RateCriterion::NotifiedDevices(0));
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rateIncreaseCriteria"));
        e = exp(RateCriterion::NotifiedDevices(1));
        e.maximum_per_minute = 5;
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("maximumPerMinute"));
    }
}
