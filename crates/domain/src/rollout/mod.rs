//! Rollout controls beyond batches: an exponential dispatch rate, abort criteria, retries with
//! backoff and gates between batches. Each rule is a pure function of the spec and of counters
//! the job already keeps, so `decide` (on its overlay) and `evolve` compute the same answers and
//! replay needs nothing but the events.

pub mod abort;
pub mod backoff;
pub mod gate;
pub mod rate;

pub use abort::{AbortCriterion, FailureKind, Tally};
pub use backoff::Backoff;
pub use gate::{Gate, GateAction, PauseReason};
pub use rate::{ExponentialRate, RateCriterion};

use crate::error::DomainError;

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}
