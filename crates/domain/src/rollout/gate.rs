//! Gates between batches (hawkBit's rollout groups): when a batch has finished, the next starts
//! only if the batch met its success condition; otherwise the job pauses for an operator (or is
//! cancelled, if the gate says so). Optionally the job pauses after every batch, however well it
//! went, so an operator looks at the canary before the rest.

use serde::{Deserialize, Serialize};

use super::invalid;
use crate::error::DomainError;
use crate::job::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// A finished batch passes when at least this share of its devices succeeded (0: always).
    pub success_percent: u32,
    /// What a batch that falls short does to the job.
    pub on_failure: GateAction,
    /// Pause after every batch but the last, until an operator continues the job.
    pub pause_after_each_batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateAction {
    Pause,
    Cancel,
}

/// Why a job waits for `continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// The batch fell short of the gate: `succeeded` of `devices`, `required_percent` needed.
    GateFailed {
        succeeded: u64,
        devices: u64,
        required_percent: u32,
    },
    /// The gate pauses after every batch.
    AfterBatch,
}

/// What the gate says about a finished batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Open,
    Pause(PauseReason),
    Cancel(PauseReason),
}

impl Gate {
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.success_percent > 100 {
            return Err(invalid(
                "rollout.gate.successPercent",
                format!("must be between 0 and 100, got {}", self.success_percent),
            ));
        }
        Ok(())
    }

    /// Whether the batch met the success condition: integer arithmetic, `>=`.
    pub fn passed(&self, batch: &Stats) -> bool {
        batch.succeeded * 100 >= u64::from(self.success_percent) * batch.devices
    }

    /// The verdict on a finished batch that has a next one.
    pub fn verdict(&self, batch: &Stats) -> Verdict {
        if !self.passed(batch) {
            let reason = PauseReason::GateFailed {
                succeeded: batch.succeeded,
                devices: batch.devices,
                required_percent: self.success_percent,
            };
            return match self.on_failure {
                GateAction::Pause => Verdict::Pause(reason),
                GateAction::Cancel => Verdict::Cancel(reason),
            };
        }
        if self.pause_after_each_batch {
            Verdict::Pause(PauseReason::AfterBatch)
        } else {
            Verdict::Open
        }
    }
}

impl PauseReason {
    pub fn describe(&self) -> String {
        match self {
            PauseReason::GateFailed {
                succeeded,
                devices,
                required_percent,
            } => format!(
                "{succeeded} of {devices} devices succeeded; the gate needs {required_percent}%"
            ),
            PauseReason::AfterBatch => "the rollout pauses after every batch".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(succeeded: u64, devices: u64) -> Stats {
        Stats {
            devices,
            succeeded,
            failed: devices - succeeded,
            ..Stats::default()
        }
    }

    #[test]
    fn the_gate_is_at_least() {
        let g = Gate {
            success_percent: 95,
            on_failure: GateAction::Pause,
            pause_after_each_batch: false,
        };
        assert_eq!(g.verdict(&stats(19, 20)), Verdict::Open);
        assert!(matches!(g.verdict(&stats(18, 20)), Verdict::Pause(_)));
        let c = Gate {
            on_failure: GateAction::Cancel,
            ..g
        };
        assert!(matches!(c.verdict(&stats(18, 20)), Verdict::Cancel(_)));
        let every = Gate {
            success_percent: 0,
            pause_after_each_batch: true,
            ..g
        };
        assert_eq!(
            every.verdict(&stats(0, 20)),
            Verdict::Pause(PauseReason::AfterBatch)
        );
    }
}
