//! The pure core of muster.
//!
//! Commands come in, [`decide`] checks them against the [`State`] and answers with events,
//! [`evolve`] applies events one at a time, and [`actions`] tells the leader what to do next. All
//! three are plain functions over plain data: no I/O, no clock, no randomness, no async. Time comes
//! in only as the timestamp the leader stamps on each command, so every replica that applies the
//! same log reaches the same state, and replaying the log rebuilds it exactly.

pub mod actions;
pub mod auth;
pub mod cold;
pub mod command;
pub mod cow;
mod decide;
pub mod doc;
pub mod error;
pub mod event;
mod evolve;
pub mod invocation;
pub mod job;
pub mod page_token;
pub mod push;
pub mod query;
pub mod registry;
pub mod retention;
pub mod rollout;
pub mod schedule;
pub mod spec;
pub mod text;
pub mod twin_size;
pub mod window;

use muster_types::JobId;
use serde::{Deserialize, Serialize};

pub use actions::{
    actions, actions_with, send_request, send_requests, Action, ActionOptions, MethodInvocation,
    SendRequest,
};
pub use auth::Principal;
pub use cold::{ColdOp, ColdRun, MemRows, NoColdRows, RunRows};
pub use command::{Command, ConnectionChange, DeviceResult, Outcome, PropertyReport};
pub use cow::{CowMap, CowSet, CowVec};
pub use decide::{decide, responded};
pub use doc::Doc;
pub use error::DomainError;
pub use event::Event;
pub use evolve::{apply, evolve};
pub use invocation::{Invocation, InvokeRequest, MethodOutcome, PendingInvocation};
pub use job::{
    CancelReason, DeviceRun, DeviceStatus, FailureReason, Job, JobFailure, JobStatus, JsonText,
    MethodResponse, Run, Stats,
};
pub use registry::{
    ConnectionState, Device, DeviceIdentity, DeviceKeys, DeviceRegistration, Group,
    IdentityCondition, Registry, TwinSection,
};
pub use retention::{retention_due, Retention, RetentionDue};
pub use schedule::{JobSchedule, Recurrence, ScheduleEnd, ScheduledJob, ScheduledJobSpec};
pub use spec::{
    BatchSize, CancellationThreshold, JobSpec, MethodCall, Operation, RetryPolicy, Rollout,
    Schedule, Target, TargetSelector, Threshold,
};
pub use text::Text;

/// Everything muster knows: the jobs (with their runs, batches and devices) and the registry.
/// It is the replicated state machine's content and, at the same time, every projection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub jobs: CowMap<JobId, Job>,
    pub registry: Registry,
    /// Credentials (absent from snapshots of builds before authentication: then empty).
    #[serde(default)]
    pub auth: auth::Auth,
    /// Direct methods not yet ended (absent from snapshots of earlier builds: then none).
    #[serde(default)]
    pub invocations: invocation::Invocations,
    /// Scheduled (recurring) jobs (absent from snapshots of earlier builds: then none).
    #[serde(default)]
    pub schedules: CowMap<muster_types::ScheduledJobId, schedule::ScheduledJob>,
}

impl State {
    /// Decides and, if accepted, applies: the convenience the state machine and tests use.
    pub fn execute(&mut self, cmd: &Command) -> Result<Vec<Event>, DomainError> {
        let events = decide(self, cmd)?;
        for e in &events {
            evolve(self, e);
        }
        Ok(events)
    }

    /// Makes every run's device ids share the registry's allocation of the same id, as the
    /// live state does (a run takes its ids from the registry): after decoding a snapshot, where
    /// each id came with its own copy. Only memory changes.
    pub fn share_ids(&mut self) {
        let registry = &self.registry.devices;
        let shared = |id: &mut muster_types::DeviceId| {
            if let Some((k, _)) = registry.get_key_value(id) {
                *id = k.clone();
            }
        };
        self.jobs.for_each_mut(|_, job| {
            for run in &mut job.runs {
                for row in run.devices.iter_mut() {
                    shared(&mut row.device);
                }
                if let Some(cold) = &mut run.cold {
                    cold.failed.iter_mut().for_each(shared);
                    cold.members.iter_mut().for_each(shared);
                }
            }
        });
    }

    /// Rebuilds state from a log of events: what `muster audit replay` does.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut s = State::default();
        for e in events {
            evolve(&mut s, e);
        }
        s
    }
}
