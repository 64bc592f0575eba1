//! What happened. Events are the log's content and the only input of `evolve`; their protobuf
//! encoding (`proto/muster/v1/events.proto`) is a compatibility promise.

use std::sync::Arc;

use muster_types::{
    DeviceId, GroupId, InvocationId, JobId, RerunId, RunId, ScheduledJobId, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Right, Role, Secret};
use crate::invocation::Invocation;
use crate::job::{CancelReason, FailureReason, JobFailure, MethodResponse};
use crate::registry::{DeviceRegistration, TwinSection};
use crate::rollout::PauseReason;
use crate::spec::JobSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The resolved device list is part of the event, so replay never re-evaluates a query
    /// against a registry that has since changed.
    JobCreated {
        job: JobId,
        /// Boxed: the spec is large and every other event small (the log's event vectors hold
        /// thousands of device results).
        spec: Box<JobSpec>,
        devices: Vec<DeviceId>,
        at: Timestamp,
    },
    JobScheduled {
        job: JobId,
        start_at: Timestamp,
        at: Timestamp,
    },
    JobStarted {
        job: JobId,
        run: RunId,
        at: Timestamp,
    },
    BatchStarted {
        job: JobId,
        run: RunId,
        batch: u32,
        at: Timestamp,
    },
    DeviceDispatched {
        job: JobId,
        run: RunId,
        device: DeviceId,
        attempt: u32,
        at: Timestamp,
    },
    DeviceSucceeded {
        job: JobId,
        run: RunId,
        device: DeviceId,
        attempt: u32,
        response: Option<MethodResponse>,
        at: Timestamp,
    },
    /// `retry` says the device goes back to pending for another attempt instead of ending failed.
    DeviceFailed {
        job: JobId,
        run: RunId,
        device: DeviceId,
        attempt: u32,
        reason: FailureReason,
        response: Option<MethodResponse>,
        retry: bool,
        at: Timestamp,
    },
    /// Devices that started matching a continuous job's target; they form a new batch.
    DevicesJoined {
        job: JobId,
        run: RunId,
        devices: Vec<DeviceId>,
        at: Timestamp,
    },
    JobStopped {
        job: JobId,
        at: Timestamp,
    },
    JobResumed {
        job: JobId,
        at: Timestamp,
    },
    /// Every device not yet final in the current run ends cancelled.
    JobCancelled {
        job: JobId,
        reason: CancelReason,
        at: Timestamp,
    },
    JobCompleted {
        job: JobId,
        at: Timestamp,
    },
    /// Every device not yet final in the current run ends cancelled.
    JobFailed {
        job: JobId,
        reason: JobFailure,
        at: Timestamp,
    },
    /// A finished batch's gate holds the next batch back (`batch` is the finished one).
    JobPaused {
        job: JobId,
        run: RunId,
        batch: u32,
        reason: PauseReason,
        at: Timestamp,
    },
    /// An operator continued a paused job; its next batch starts with this event.
    JobContinued {
        job: JobId,
        at: Timestamp,
    },
    /// Retention dropped a finished job's per-device rows; its summary stays.
    JobDetailExpired {
        job: JobId,
        at: Timestamp,
    },
    /// Retention removed a finished job from the state (its events stay in the log).
    JobExpired {
        job: JobId,
        at: Timestamp,
    },
    /// The exponential rate rose to `per_minute`.
    RateChanged {
        job: JobId,
        run: RunId,
        per_minute: u32,
        at: Timestamp,
    },
    /// A running job's maintenance window is open, from `since` until `until` (its occurrence),
    /// as first seen at `at`.
    WindowOpened {
        job: JobId,
        since: Timestamp,
        until: Timestamp,
        at: Timestamp,
    },
    /// A running job's maintenance window is closed; it opens again at `next_open` (`None`:
    /// never). Also the first event of a job that starts outside its window.
    WindowClosed {
        job: JobId,
        next_open: Option<Timestamp>,
        at: Timestamp,
    },
    RerunStarted {
        job: JobId,
        run: RunId,
        rerun_id: RerunId,
        devices: Vec<DeviceId>,
        at: Timestamp,
    },
    DeviceRegistered {
        device: DeviceRegistration,
        at: Timestamp,
    },
    DeviceUpdated {
        device: DeviceRegistration,
        at: Timestamp,
    },
    TwinPatched {
        device: DeviceId,
        section: TwinSection,
        patch: Value,
        at: Timestamp,
    },
    ConnectionChanged {
        device: DeviceId,
        connected: bool,
        at: Timestamp,
    },
    GroupSaved {
        group: GroupId,
        display_name: String,
        description: String,
        query: String,
        at: Timestamp,
    },
    GroupDeleted {
        group: GroupId,
        at: Timestamp,
    },
    /// Keys are [`Secret`]s: an event's JSON (audit export, event streams) never shows them.
    PolicySaved {
        name: String,
        rights: Vec<Right>,
        primary_key: Secret,
        secondary_key: Secret,
        at: Timestamp,
    },
    PolicyDeleted {
        name: String,
        at: Timestamp,
    },
    ApiTokenCreated {
        id: String,
        roles: Vec<Role>,
        expiry: Timestamp,
        secret_hash: Secret,
        at: Timestamp,
    },
    ApiTokenDeleted {
        id: String,
        at: Timestamp,
    },
    /// A device identity created (`created`) or its identity part replaced. The keys are
    /// [`Secret`]s, so an event's JSON never shows them.
    DeviceIdentitySet {
        device: DeviceId,
        enabled: bool,
        status_reason: Option<String>,
        primary_key: Secret,
        secondary_key: Secret,
        iot_edge: bool,
        created: bool,
        at: Timestamp,
    },
    DeviceDeleted {
        device: DeviceId,
        at: Timestamp,
    },
    /// One twin section replaced whole.
    TwinReplaced {
        device: DeviceId,
        section: TwinSection,
        value: Value,
        at: Timestamp,
    },
    /// Who called what is the command's principal, stored with this event.
    MethodInvoked {
        invocation: Invocation,
        at: Timestamp,
    },
    /// The device is connected: the leader publishes the request now; the response timeout
    /// counts from here.
    MethodSent {
        id: InvocationId,
        device: DeviceId,
        at: Timestamp,
    },
    /// The device's answer; the invocation has ended.
    MethodResponded {
        id: InvocationId,
        device: DeviceId,
        status: i32,
        payload: Arc<Value>,
        at: Timestamp,
    },
    /// Ended without an answer: `Timeout`, `NotConnected` or `DispatchFailed`.
    MethodFailed {
        id: InvocationId,
        device: DeviceId,
        reason: FailureReason,
        at: Timestamp,
    },
    /// The leader published the device's desired properties up to `$version` `version`.
    DesiredSent {
        device: DeviceId,
        version: u64,
        at: Timestamp,
    },
    /// A scheduled job was created or replaced; `next` is the first occurrence it considers.
    ScheduledJobSaved {
        id: ScheduledJobId,
        spec: Box<crate::schedule::ScheduledJobSpec>,
        next: u32,
        at: Timestamp,
    },
    ScheduledJobDeleted {
        id: ScheduledJobId,
        at: Timestamp,
    },
    /// Occurrence `occurrence` (due at `due`) created `job`; follows the job's `JobCreated`.
    ScheduledJobOccurred {
        id: ScheduledJobId,
        occurrence: u32,
        due: Timestamp,
        job: JobId,
        at: Timestamp,
    },
    /// Occurrence `occurrence` could not create its job (e.g. its device group was deleted).
    ScheduledJobMissed {
        id: ScheduledJobId,
        occurrence: u32,
        due: Timestamp,
        reason: String,
        at: Timestamp,
    },
}

impl Event {
    /// The job an event belongs to, for per-job histories and filters.
    pub fn job(&self) -> Option<&JobId> {
        match self {
            Event::JobCreated { job, .. }
            | Event::JobScheduled { job, .. }
            | Event::JobStarted { job, .. }
            | Event::BatchStarted { job, .. }
            | Event::DeviceDispatched { job, .. }
            | Event::DeviceSucceeded { job, .. }
            | Event::DeviceFailed { job, .. }
            | Event::DevicesJoined { job, .. }
            | Event::JobStopped { job, .. }
            | Event::JobResumed { job, .. }
            | Event::JobCancelled { job, .. }
            | Event::JobCompleted { job, .. }
            | Event::JobFailed { job, .. }
            | Event::RerunStarted { job, .. }
            | Event::JobPaused { job, .. }
            | Event::JobContinued { job, .. }
            | Event::JobDetailExpired { job, .. }
            | Event::JobExpired { job, .. }
            | Event::RateChanged { job, .. }
            | Event::WindowOpened { job, .. }
            | Event::WindowClosed { job, .. }
            | Event::ScheduledJobOccurred { job, .. } => Some(job),
            _ => None,
        }
    }

    /// The device an event is about, when it is about one.
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Event::DeviceDispatched { device, .. }
            | Event::DeviceSucceeded { device, .. }
            | Event::DeviceFailed { device, .. }
            | Event::TwinPatched { device, .. }
            | Event::ConnectionChanged { device, .. }
            | Event::DeviceIdentitySet { device, .. }
            | Event::DeviceDeleted { device, .. }
            | Event::TwinReplaced { device, .. }
            | Event::MethodSent { device, .. }
            | Event::MethodResponded { device, .. }
            | Event::MethodFailed { device, .. }
            | Event::DesiredSent { device, .. } => Some(device),
            Event::MethodInvoked { invocation, .. } => Some(&invocation.device),
            Event::DeviceRegistered { device, .. } | Event::DeviceUpdated { device, .. } => {
                Some(&device.id)
            }
            _ => None,
        }
    }

    /// Whether the event holds a secret (a policy's keys, a token's hash), which its JSON shows
    /// as `<redacted>`: an export of it cannot be re-encoded to check its link in the chain.
    pub fn has_secrets(&self) -> bool {
        matches!(
            self,
            Event::PolicySaved { .. }
                | Event::ApiTokenCreated { .. }
                | Event::DeviceIdentitySet { .. }
        )
    }

    /// When it happened (the leader's stamp on the command that produced it).
    pub fn at(&self) -> Timestamp {
        match self {
            Event::JobCreated { at, .. }
            | Event::JobScheduled { at, .. }
            | Event::JobStarted { at, .. }
            | Event::BatchStarted { at, .. }
            | Event::DeviceDispatched { at, .. }
            | Event::DeviceSucceeded { at, .. }
            | Event::DeviceFailed { at, .. }
            | Event::DevicesJoined { at, .. }
            | Event::JobStopped { at, .. }
            | Event::JobResumed { at, .. }
            | Event::JobCancelled { at, .. }
            | Event::JobCompleted { at, .. }
            | Event::JobFailed { at, .. }
            | Event::RerunStarted { at, .. }
            | Event::JobPaused { at, .. }
            | Event::JobContinued { at, .. }
            | Event::JobDetailExpired { at, .. }
            | Event::JobExpired { at, .. }
            | Event::RateChanged { at, .. }
            | Event::WindowOpened { at, .. }
            | Event::WindowClosed { at, .. }
            | Event::DeviceRegistered { at, .. }
            | Event::DeviceUpdated { at, .. }
            | Event::TwinPatched { at, .. }
            | Event::ConnectionChanged { at, .. }
            | Event::GroupSaved { at, .. }
            | Event::GroupDeleted { at, .. }
            | Event::PolicySaved { at, .. }
            | Event::PolicyDeleted { at, .. }
            | Event::ApiTokenCreated { at, .. }
            | Event::ApiTokenDeleted { at, .. }
            | Event::DeviceIdentitySet { at, .. }
            | Event::DeviceDeleted { at, .. }
            | Event::TwinReplaced { at, .. }
            | Event::MethodInvoked { at, .. }
            | Event::MethodSent { at, .. }
            | Event::DesiredSent { at, .. }
            | Event::MethodResponded { at, .. }
            | Event::MethodFailed { at, .. }
            | Event::ScheduledJobSaved { at, .. }
            | Event::ScheduledJobDeleted { at, .. }
            | Event::ScheduledJobOccurred { at, .. }
            | Event::ScheduledJobMissed { at, .. } => *at,
        }
    }

    /// The event's name as audit exports and the REST history show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::JobCreated { .. } => "JobCreated",
            Event::JobScheduled { .. } => "JobScheduled",
            Event::JobStarted { .. } => "JobStarted",
            Event::BatchStarted { .. } => "BatchStarted",
            Event::DeviceDispatched { .. } => "DeviceDispatched",
            Event::DeviceSucceeded { .. } => "DeviceSucceeded",
            Event::DeviceFailed { .. } => "DeviceFailed",
            Event::DevicesJoined { .. } => "DevicesJoined",
            Event::JobStopped { .. } => "JobStopped",
            Event::JobResumed { .. } => "JobResumed",
            Event::JobCancelled { .. } => "JobCancelled",
            Event::JobCompleted { .. } => "JobCompleted",
            Event::JobFailed { .. } => "JobFailed",
            Event::RerunStarted { .. } => "RerunStarted",
            Event::JobPaused { .. } => "JobPaused",
            Event::JobContinued { .. } => "JobContinued",
            Event::RateChanged { .. } => "RateChanged",
            Event::WindowOpened { .. } => "WindowOpened",
            Event::WindowClosed { .. } => "WindowClosed",
            Event::JobDetailExpired { .. } => "JobDetailExpired",
            Event::JobExpired { .. } => "JobExpired",
            Event::DeviceRegistered { .. } => "DeviceRegistered",
            Event::DeviceUpdated { .. } => "DeviceUpdated",
            Event::TwinPatched { .. } => "TwinPatched",
            Event::ConnectionChanged { .. } => "ConnectionChanged",
            Event::GroupSaved { .. } => "GroupSaved",
            Event::GroupDeleted { .. } => "GroupDeleted",
            Event::PolicySaved { .. } => "PolicySaved",
            Event::PolicyDeleted { .. } => "PolicyDeleted",
            Event::ApiTokenCreated { .. } => "ApiTokenCreated",
            Event::ApiTokenDeleted { .. } => "ApiTokenDeleted",
            Event::DeviceIdentitySet { .. } => "DeviceIdentitySet",
            Event::DeviceDeleted { .. } => "DeviceDeleted",
            Event::TwinReplaced { .. } => "TwinReplaced",
            Event::MethodInvoked { .. } => "MethodInvoked",
            Event::MethodSent { .. } => "MethodSent",
            Event::DesiredSent { .. } => "DesiredSent",
            Event::MethodResponded { .. } => "MethodResponded",
            Event::MethodFailed { .. } => "MethodFailed",
            Event::ScheduledJobSaved { .. } => "ScheduledJobSaved",
            Event::ScheduledJobDeleted { .. } => "ScheduledJobDeleted",
            Event::ScheduledJobOccurred { .. } => "ScheduledJobOccurred",
            Event::ScheduledJobMissed { .. } => "ScheduledJobMissed",
        }
    }
}

impl Event {
    /// The identity an identity event sets, with its keys readable again (for `evolve`).
    pub fn identity(&self) -> Option<crate::registry::DeviceIdentity> {
        match self {
            Event::DeviceIdentitySet {
                device,
                enabled,
                status_reason,
                primary_key,
                secondary_key,
                iot_edge,
                ..
            } => Some(crate::registry::DeviceIdentity {
                id: device.clone(),
                enabled: *enabled,
                status_reason: status_reason.clone(),
                keys: Some(crate::registry::DeviceKeys {
                    primary: primary_key.0.clone(),
                    secondary: secondary_key.0.clone(),
                }),
                iot_edge: *iot_edge,
            }),
            _ => None,
        }
    }
}
