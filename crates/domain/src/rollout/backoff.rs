//! Retries with backoff: the delay before attempt `n + 1` after attempt `n` failed is
//! `base * factor^(n-1)`, capped at `max`, less a jitter of up to `jitter_percent` of it. The
//! jitter comes from a hash of the job, run, device and attempt (FNV-1a, fixed here, not the
//! standard library's hasher whose output may change between Rust versions), so every replica
//! and every replay computes the same delay, while devices that failed together spread out.

use serde::{Deserialize, Serialize};

use super::invalid;
use crate::error::DomainError;

/// The longest delay accepted: one day.
pub const MAX_DELAY_MS: u32 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u32,
    /// Multiplier per further attempt (1 = a constant delay).
    pub factor: u32,
    pub max_ms: u32,
    /// Up to this share of the delay is taken off, differently for each device and attempt.
    pub jitter_percent: u32,
}

impl Backoff {
    pub fn validate(&self, field: &str) -> Result<(), DomainError> {
        if self.base_ms == 0 || self.base_ms > MAX_DELAY_MS {
            return Err(invalid(
                &format!("{field}.baseMs"),
                format!("must be between 1 and {MAX_DELAY_MS}, got {}", self.base_ms),
            ));
        }
        if self.factor == 0 || self.factor > 10 {
            return Err(invalid(
                &format!("{field}.factor"),
                format!("must be between 1 and 10, got {}", self.factor),
            ));
        }
        if self.max_ms < self.base_ms || self.max_ms > MAX_DELAY_MS {
            return Err(invalid(
                &format!("{field}.maxMs"),
                format!(
                    "must be between baseMs ({}) and {MAX_DELAY_MS}, got {}",
                    self.base_ms, self.max_ms
                ),
            ));
        }
        if self.jitter_percent > 100 {
            return Err(invalid(
                &format!("{field}.jitterPercent"),
                format!("must be between 0 and 100, got {}", self.jitter_percent),
            ));
        }
        Ok(())
    }

    /// The delay without jitter after `attempt` (1-based) failed.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let max = u64::from(self.max_ms);
        let mut d = u64::from(self.base_ms).min(max);
        for _ in 1..attempt {
            if d >= max {
                break;
            }
            d = (d * u64::from(self.factor)).min(max);
        }
        d
    }

    /// The delay after `attempt` failed, for the attempt named by `seed` (see [`seed`]). Always
    /// within `[ceiling * (100 - jitter) / 100, ceiling]`.
    pub fn delay_ms(&self, attempt: u32, seed: u64) -> u64 {
        let ceiling = self.ceiling_ms(attempt);
        let spread = ceiling * u64::from(self.jitter_percent.min(100)) / 100;
        if spread == 0 {
            return ceiling;
        }
        ceiling - seed % (spread + 1)
    }
}

/// When a device whose `attempt` failed for `reason` and is retried may be dispatched again:
/// `None` when its failure kind has no backoff (it is ready at once).
pub fn retry_at(
    retry: &crate::spec::RetryPolicy,
    job: &muster_types::JobId,
    run: muster_types::RunId,
    device: &muster_types::DeviceId,
    attempt: u32,
    reason: &crate::job::FailureReason,
    at: muster_types::Timestamp,
) -> Option<muster_types::Timestamp> {
    use crate::job::FailureReason as F;
    let b = match reason {
        F::Timeout => retry.backoff_timed_out?,
        F::DeviceError { .. } | F::DispatchFailed { .. } => retry.backoff_failed?,
        _ => return None,
    };
    let delay = b.delay_ms(attempt, seed(job.as_str(), run.0, device.as_str(), attempt));
    Some(at.plus_millis(delay as i64))
}

/// The jitter seed of one attempt: FNV-1a over the rid's parts.
pub fn seed(job: &str, run: u32, device: &str, attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(job.as_bytes());
    eat(&[0]);
    eat(&run.to_be_bytes());
    eat(device.as_bytes());
    eat(&[0]);
    eat(&attempt.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let b = Backoff {
            base_ms: 1000,
            factor: 2,
            max_ms: 5000,
            jitter_percent: 0,
        };
        assert_eq!(b.delay_ms(1, 7), 1000);
        assert_eq!(b.delay_ms(2, 7), 2000);
        assert_eq!(b.delay_ms(3, 7), 4000);
        assert_eq!(b.delay_ms(4, 7), 5000);
        assert_eq!(b.delay_ms(u32::MAX, 7), 5000);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let b = Backoff {
            base_ms: 1000,
            factor: 2,
            max_ms: 60_000,
            jitter_percent: 50,
        };
        let s1 = seed("job", 0, "dev-1", 1);
        assert_eq!(s1, seed("job", 0, "dev-1", 1));
        assert_ne!(s1, seed("job", 0, "dev-2", 1));
        let d = b.delay_ms(1, s1);
        assert!((500..=1000).contains(&d), "{d}");
    }
}
