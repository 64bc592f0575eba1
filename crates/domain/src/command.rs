//! Requests to change state. Each carries the time the leader stamped on it: the core has no clock.

use muster_types::{
    DeviceId, GroupId, InvocationId, JobId, RerunId, RunId, ScheduledJobId, Timestamp,
};
use serde::{Deserialize, Serialize};

use serde_json::Value;

use crate::auth::{AccessPolicy, ApiToken};
use crate::invocation::{Invocation, MethodOutcome};
use crate::job::{FailureReason, JsonText};
use crate::registry::{DeviceIdentity, DeviceKeys, DeviceRegistration, IdentityCondition};
use crate::spec::JobSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateJob {
        id: JobId,
        spec: JobSpec,
        at: Timestamp,
    },
    StopJob {
        id: JobId,
        at: Timestamp,
    },
    ResumeJob {
        id: JobId,
        at: Timestamp,
    },
    CancelJob {
        id: JobId,
        at: Timestamp,
    },
    /// An operator lets a paused job start its next batch (see `rollout::gate`).
    ContinueJob {
        id: JobId,
        at: Timestamp,
    },
    /// The leader's retention limits, applied at `at` (see `crate::retention`): a finished job
    /// older than `finished_jobs_ms` loses its per-device rows, one older than `jobs_ms` leaves
    /// the state. The limits travel in the command so every replica decides alike.
    ApplyRetention {
        finished_jobs_ms: Option<u64>,
        jobs_ms: Option<u64>,
        at: Timestamp,
    },
    /// Starts a new run over the devices whose last outcome was a failure or a timeout.
    RerunJob {
        id: JobId,
        rerun_id: RerunId,
        at: Timestamp,
    },
    /// The leader is about to send these attempts. Devices that are no longer eligible (a race
    /// with a stop or a duplicate proposal) are skipped, and the per-minute limit is enforced, so
    /// proposing is always safe.
    MarkDispatched {
        job: JobId,
        run: RunId,
        devices: Vec<DeviceId>,
        at: Timestamp,
    },
    /// Answers collected by the dispatcher; many travel in one command. Answers for an attempt
    /// that is no longer running (late, duplicate, or after a cancel) are ignored.
    RecordDeviceResults {
        results: Vec<DeviceResult>,
        at: Timestamp,
    },
    /// Time passed: start due jobs, time out silent devices, fail offline ones, end expired jobs.
    Advance {
        at: Timestamp,
    },
    RegisterDevices {
        devices: Vec<DeviceRegistration>,
        /// Update devices that exist instead of refusing them (bulk import, IoT Central's PUT).
        upsert: bool,
        at: Timestamp,
    },
    /// A service-side twin update (tags and/or desired properties), optionally conditional on the
    /// twin's version (an ETag).
    UpdateTwin {
        device: DeviceId,
        tags: Option<Value>,
        desired: Option<Value>,
        if_version: Option<u64>,
        at: Timestamp,
    },
    /// Reported properties published by the device.
    ReportProperties {
        device: DeviceId,
        patch: Value,
        at: Timestamp,
    },
    SetConnection {
        device: DeviceId,
        connected: bool,
        at: Timestamp,
    },
    /// Presence of many devices in one Raft entry: a fleet of 100,000 coming online as single
    /// `SetConnection`s was 100,000 entries and over a minute of a node's CPU. Each change that
    /// differs from the device's connection (as the earlier changes in the command left it) is
    /// still its own `ConnectionChanged` event. Unregistered devices are skipped, so one stale id
    /// cannot refuse the others.
    SetConnections {
        changes: Vec<ConnectionChange>,
        at: Timestamp,
    },
    /// Reported-property patches of many devices in one Raft entry, for the same reason as
    /// `SetConnections`; each becomes its own `TwinPatched` event, in order. Patches of
    /// unregistered devices and patches `ReportProperties` would refuse are skipped.
    ReportPropertiesBatch {
        reports: Vec<PropertyReport>,
        at: Timestamp,
    },
    /// Creates or replaces a group; with `if_version`, only the group at that version (its
    /// etag), so a read-modify-write (IoT Central's PATCH) loses no concurrent change.
    SaveGroup {
        id: GroupId,
        display_name: String,
        /// Defaulted: a forwarded write from a node of an earlier release has none.
        #[serde(default)]
        description: String,
        query: String,
        #[serde(default)]
        if_version: Option<u64>,
        at: Timestamp,
    },
    DeleteGroup {
        id: GroupId,
        at: Timestamp,
    },
    /// A new cluster's credentials (IoT Hub's default policies, keys drawn by the leader),
    /// accepted once: a second leader racing the first is refused.
    InitAuth {
        policies: Vec<AccessPolicy>,
        at: Timestamp,
    },
    /// Creates a policy or replaces one (new keys, new rights).
    SavePolicy {
        policy: AccessPolicy,
        at: Timestamp,
    },
    DeletePolicy {
        name: String,
        at: Timestamp,
    },
    /// Creates an API token; its secret stays with the caller, the token holds only its hash.
    CreateApiToken {
        token: ApiToken,
        at: Timestamp,
    },
    DeleteApiToken {
        id: String,
        at: Timestamp,
    },
    /// IoT Hub's `PUT /devices/{id}`: creates a device identity or replaces the identity part
    /// (status, reason, keys, capabilities) of one, as `condition` allows.
    PutDeviceIdentity {
        identity: DeviceIdentity,
        condition: IdentityCondition,
        /// Keys drawn at the edge, used when the identity gives none and the device has none.
        fresh_keys: DeviceKeys,
        at: Timestamp,
    },
    /// Removes a device with its twin, optionally only at an identity version (an ETag). Jobs
    /// that still list it fail it at dispatch as not registered.
    DeleteDevice {
        device: DeviceId,
        if_version: Option<u64>,
        at: Timestamp,
    },
    /// IoT Hub's `PUT /twins/{id}`: replaces the tags and the desired properties whole,
    /// optionally only at a twin version (an ETag). `tags: None` keeps the tags (IoT Central's
    /// properties PUT replaces only the properties).
    ReplaceTwin {
        device: DeviceId,
        tags: Option<Value>,
        desired: Value,
        if_version: Option<u64>,
        at: Timestamp,
    },
    /// IoT Central's `PATCH /api/devices/{id}`: changes only the fields given, optionally only
    /// at an identity version (an ETag).
    UpdateDevice {
        device: DeviceId,
        display_name: Option<String>,
        model_id: Option<String>,
        enabled: Option<bool>,
        if_version: Option<u64>,
        at: Timestamp,
    },
    /// A caller invokes a direct method on one device and waits for its answer (see
    /// [`crate::invocation`]); the id was drawn at random by the edge.
    InvokeMethod {
        invocation: Invocation,
        at: Timestamp,
    },
    /// The device's answer to an invocation, or the dispatcher's failure to send it. Ignored
    /// when the invocation has already ended.
    RecordMethodResponse {
        id: InvocationId,
        outcome: MethodOutcome,
        at: Timestamp,
    },
    /// The leader published these desired-property pushes (`crate::push`). Pushes that move no
    /// device forward are skipped.
    MarkDesiredSent {
        pushes: Vec<crate::push::DesiredSent>,
        at: Timestamp,
    },
    /// Creates or replaces a scheduled job (`crate::schedule`); with `if_version`, only the
    /// schedule at that version (its etag), so IoT Central's PATCH loses no concurrent change.
    /// Version 0 means "create only": refused if the id exists.
    SaveScheduledJob {
        id: ScheduledJobId,
        spec: crate::schedule::ScheduledJobSpec,
        if_version: Option<u64>,
        at: Timestamp,
    },
    /// Removes a schedule; the jobs it created stay.
    DeleteScheduledJob {
        id: ScheduledJobId,
        at: Timestamp,
    },
}

/// The `at` field of any command, by reference or by mutable reference (whichever `$cmd` is):
/// one list of variants for both accessors below.
macro_rules! stamp_of {
    ($cmd:expr) => {
        match $cmd {
            Command::CreateJob { at, .. }
            | Command::StopJob { at, .. }
            | Command::ResumeJob { at, .. }
            | Command::CancelJob { at, .. }
            | Command::RerunJob { at, .. }
            | Command::ContinueJob { at, .. }
            | Command::ApplyRetention { at, .. }
            | Command::MarkDispatched { at, .. }
            | Command::RecordDeviceResults { at, .. }
            | Command::Advance { at }
            | Command::RegisterDevices { at, .. }
            | Command::UpdateTwin { at, .. }
            | Command::ReportProperties { at, .. }
            | Command::SetConnection { at, .. }
            | Command::SetConnections { at, .. }
            | Command::ReportPropertiesBatch { at, .. }
            | Command::SaveGroup { at, .. }
            | Command::DeleteGroup { at, .. }
            | Command::InitAuth { at, .. }
            | Command::SavePolicy { at, .. }
            | Command::DeletePolicy { at, .. }
            | Command::CreateApiToken { at, .. }
            | Command::DeleteApiToken { at, .. }
            | Command::PutDeviceIdentity { at, .. }
            | Command::DeleteDevice { at, .. }
            | Command::ReplaceTwin { at, .. }
            | Command::UpdateDevice { at, .. }
            | Command::InvokeMethod { at, .. }
            | Command::RecordMethodResponse { at, .. }
            | Command::MarkDesiredSent { at, .. }
            | Command::SaveScheduledJob { at, .. }
            | Command::DeleteScheduledJob { at, .. } => at,
        }
    };
}

impl Command {
    pub fn at(&self) -> Timestamp {
        *stamp_of!(self)
    }

    /// The stamp, to be replaced by the leader when a follower forwards a command: time in the
    /// log comes from the clock of the node that appends it, so it does not jump back and forth
    /// with the clocks of whichever nodes clients happened to call.
    pub fn at_mut(&mut self) -> &mut Timestamp {
        stamp_of!(self)
    }
}

/// One device's presence, as its last presence message said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionChange {
    pub device: DeviceId,
    pub connected: bool,
}

/// One reported-properties patch published by a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyReport {
    pub device: DeviceId,
    pub patch: Value,
}

/// One device's answer to one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceResult {
    pub job: JobId,
    pub run: RunId,
    pub device: DeviceId,
    pub attempt: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The device answered; 200..=299 is success, anything else a device error.
    ///
    /// The payload is kept as its compact text, as the state records it (`MethodResponse`):
    /// a result waits in the dispatcher's batch, the Raft log's cache and the apply, and a
    /// parsed object cost ~700 bytes of small allocations a device there (issue 14).
    Responded { status: i32, payload: JsonText },
    /// The dispatcher gave up on the attempt without an answer.
    Failed(FailureReason),
}
