//! Sample commands and events shared by the round-trip and golden tests (and muster-api's
//! `event_types` test, which includes this file by path).
//!
//! Together the samples hold every `Command` and `Event` variant and every variant of the types
//! inside them; `coverage` checks that with exhaustive matches, so a new domain variant fails to
//! compile here until it gets a sample (and so a golden file).
//!
//! The values are fixed (no randomness, no clock): golden files store their exact encoding.

#![allow(dead_code, clippy::unwrap_used)]

use muster_domain::auth::{AccessPolicy, ApiToken, Right, Role, Secret};
use muster_domain::{
    BatchSize, CancelReason, CancellationThreshold, Command, ConnectionChange, DeviceIdentity,
    DeviceKeys, DeviceRegistration, DeviceResult, Event, FailureReason, IdentityCondition,
    Invocation, JobFailure, JobSpec, MethodCall, MethodOutcome, MethodResponse, Operation, Outcome,
    PropertyReport, RetryPolicy, Rollout, Schedule, Target, TargetSelector, Threshold, TwinSection,
};
use muster_types::{DeviceId, GroupId, InvocationId, JobId, RerunId, RunId, Timestamp};
use serde_json::json;

const KEY_A: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";
const KEY_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A policy with every right.
pub fn policy() -> AccessPolicy {
    AccessPolicy {
        name: "iothubowner".into(),
        primary_key: KEY_A.into(),
        secondary_key: KEY_B.into(),
        rights: Right::ALL.to_vec(),
    }
}

/// 2026-03-01T12:00:00Z, the time every sample happens at (plus small offsets).
pub const T0: i64 = 1_772_366_400_000;

pub fn at(offset_ms: i64) -> Timestamp {
    Timestamp(T0 + offset_ms)
}

pub fn job() -> JobId {
    JobId::new("fw-rollout-43").unwrap()
}

pub fn dev(n: u32) -> DeviceId {
    DeviceId::new(format!("b43-thermo-{n:03}")).unwrap()
}

pub fn group() -> GroupId {
    GroupId::new("building-43").unwrap()
}

/// A spec that uses a bit of everything: a method with a nested payload, all rollout options, a
/// per-batch count threshold and retries.
pub fn full_spec() -> JobSpec {
    JobSpec {
        display_name: "Firmware 2.1 for building 43".into(),
        description: "Staged roll-out; stop if more than 5 devices fail in a batch.".into(),
        target: Target {
            selector: TargetSelector::Devices(vec![dev(1), dev(2), dev(3)]),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "updateFirmware".into(),
            // Keys deliberately not in alphabetical order: the text keeps them as written.
            payload: json!({
                "version": "2.1.0",
                "url": "https://fw.example.com/2.1.0.bin",
                "sha256": "9f2c",
                "sizeBytes": 1_048_576,
                "options": {"reboot": true, "delaySecs": 5, "ratio": 0.25, "tags": ["a", "b"]},
                "previous": null
            }),
            response_timeout_secs: 30,
            connect_timeout_secs: 300,
        })],
        schedule: Schedule {
            start_at: Some(at(3_600_000)),
            max_execution_secs: Some(86_400),
            window: None,
        },
        rollout: Rollout {
            batch: Some(BatchSize::Percentage(25)),
            max_devices_per_minute: Some(120),
            ..Default::default()
        },
        cancellation: Some(CancellationThreshold {
            limit: Threshold::Count(5),
            per_batch: true,
        }),
        retry: RetryPolicy {
            max_attempts: 3,
            retry_failed: true,
            retry_timed_out: true,
            ..Default::default()
        },
    }
}

/// A group target with twin operations, a count batch, a whole-run percentage threshold and
/// every optional value absent.
pub fn group_spec() -> JobSpec {
    JobSpec {
        display_name: "Night mode".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Group(group()),
            continuous: true,
        },
        operations: vec![
            Operation::PatchDesired {
                patch: json!({"nightMode": {"enabled": true, "from": "22:00"}}),
            },
            Operation::PatchTags {
                patch: json!({"site": "b43", "floor": 2, "retired": null}),
            },
            Operation::SetCloudProperty {
                name: "maintenanceWindow".into(),
                value: json!("Sun 02:00-04:00"),
            },
        ],
        schedule: Schedule::default(),
        rollout: Rollout {
            batch: Some(BatchSize::Count(50)),
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation: Some(CancellationThreshold {
            limit: Threshold::Percentage(10),
            per_batch: false,
        }),
        retry: RetryPolicy::default(),
    }
}

/// A query target, no batches, no threshold.
pub fn query_spec() -> JobSpec {
    JobSpec {
        display_name: "Reboot old firmware".into(),
        description: "Ünïcödé description ✓".into(),
        target: Target {
            selector: TargetSelector::Query(
                "SELECT * FROM devices WHERE properties.reported.fw < '2.0'".into(),
            ),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!(null),
            response_timeout_secs: 10,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    }
}

/// Every rollout control of issue 16: an exponential rate, a gate, abort criteria, backoff.
pub fn rollout_spec() -> JobSpec {
    use muster_domain::rollout::{
        AbortCriterion, Backoff, ExponentialRate, FailureKind, Gate, GateAction, RateCriterion,
    };
    let mut spec = query_spec();
    spec.rollout = Rollout {
        batch: Some(BatchSize::Count(10)),
        max_devices_per_minute: None,
        exponential: Some(ExponentialRate {
            base_per_minute: 5,
            increment_factor_tenths: 15,
            criterion: RateCriterion::SucceededDevices(20),
            maximum_per_minute: 200,
        }),
        gate: Some(Gate {
            success_percent: 95,
            on_failure: GateAction::Pause,
            pause_after_each_batch: true,
        }),
        abort: vec![
            AbortCriterion {
                kind: FailureKind::TimedOut,
                threshold: Threshold::Percentage(10),
                min_finished: 20,
            },
            AbortCriterion {
                kind: FailureKind::Any,
                threshold: Threshold::Count(50),
                min_finished: 0,
            },
        ],
    };
    spec.retry = RetryPolicy {
        max_attempts: 4,
        retry_failed: true,
        retry_timed_out: true,
        backoff_failed: Some(Backoff {
            base_ms: 1000,
            factor: 2,
            max_ms: 60_000,
            jitter_percent: 20,
        }),
        backoff_timed_out: None,
    };
    spec
}

/// A query job dispatched only inside a nightly maintenance window.
pub fn window_spec() -> JobSpec {
    let mut spec = query_spec();
    spec.schedule.window = Some(muster_domain::window::MaintenanceWindow {
        cron: "0 1 * * 1-5".into(),
        duration_secs: 3 * 3600,
        time_zone: "Europe/Berlin".into(),
    });
    spec
}

pub fn registration() -> DeviceRegistration {
    DeviceRegistration {
        id: dev(7),
        display_name: "Thermostat 7, floor 2".into(),
        model_id: Some("dtmi:contoso:Thermostat;1".into()),
        enabled: true,
        tags: json!({"site": "b43", "floor": 2}).into(),
    }
}

fn device_failed(reason: FailureReason, response: Option<MethodResponse>, retry: bool) -> Event {
    Event::DeviceFailed {
        job: job(),
        run: RunId(0),
        device: dev(2),
        attempt: 2,
        reason,
        response,
        retry,
        at: at(40_000),
    }
}

/// Every event variant, and every reason inside them. Names are golden file names.
pub fn events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "event_job_created",
            Event::JobCreated {
                job: job(),
                spec: Box::new(full_spec()),
                devices: vec![dev(1), dev(2), dev(3)],
                at: at(0),
            },
        ),
        (
            "event_job_created_group",
            Event::JobCreated {
                job: JobId::new("night-mode").unwrap(),
                spec: Box::new(group_spec()),
                devices: vec![dev(10), dev(11)],
                at: at(0),
            },
        ),
        (
            "event_job_created_query",
            Event::JobCreated {
                job: JobId::new("reboot-old").unwrap(),
                spec: Box::new(query_spec()),
                devices: vec![],
                at: at(0),
            },
        ),
        (
            "event_job_scheduled",
            Event::JobScheduled {
                job: job(),
                start_at: at(3_600_000),
                at: at(0),
            },
        ),
        (
            "event_job_started",
            Event::JobStarted {
                job: job(),
                run: RunId(0),
                at: at(3_600_000),
            },
        ),
        (
            "event_batch_started",
            Event::BatchStarted {
                job: job(),
                run: RunId(0),
                batch: 1,
                at: at(3_600_000),
            },
        ),
        (
            "event_device_dispatched",
            Event::DeviceDispatched {
                job: job(),
                run: RunId(0),
                device: dev(1),
                attempt: 1,
                at: at(3_600_010),
            },
        ),
        (
            "event_device_succeeded",
            Event::DeviceSucceeded {
                job: job(),
                run: RunId(0),
                device: dev(1),
                attempt: 1,
                response: Some(MethodResponse {
                    status: 200,
                    payload: json!({"result": "ok", "fw": "2.1.0", "tookMs": 1234}).into(),
                }),
                at: at(3_601_000),
            },
        ),
        (
            "event_device_succeeded_no_response",
            Event::DeviceSucceeded {
                job: JobId::new("night-mode").unwrap(),
                run: RunId(0),
                device: dev(10),
                attempt: 1,
                response: None,
                at: at(5_000),
            },
        ),
        (
            "event_device_failed_device_error",
            device_failed(
                FailureReason::DeviceError { status: 503 },
                Some(MethodResponse {
                    status: 503,
                    payload: json!({"error": "busy", "retryAfterSecs": 60}).into(),
                }),
                true,
            ),
        ),
        (
            "event_device_failed_timeout",
            device_failed(FailureReason::Timeout, None, true),
        ),
        (
            "event_device_failed_not_connected",
            device_failed(FailureReason::NotConnected, None, false),
        ),
        (
            "event_device_failed_not_found",
            device_failed(FailureReason::DeviceNotFound, None, false),
        ),
        (
            "event_device_failed_disabled",
            device_failed(FailureReason::DeviceDisabled, None, false),
        ),
        (
            "event_device_failed_dispatch",
            device_failed(
                FailureReason::DispatchFailed {
                    message: "broker refused publish: quota exceeded".into(),
                },
                None,
                false,
            ),
        ),
        (
            "event_devices_joined",
            Event::DevicesJoined {
                job: JobId::new("night-mode").unwrap(),
                run: RunId(0),
                devices: vec![dev(12), dev(13)],
                at: at(90_000),
            },
        ),
        (
            "event_job_stopped",
            Event::JobStopped {
                job: job(),
                at: at(100_000),
            },
        ),
        (
            "event_job_resumed",
            Event::JobResumed {
                job: job(),
                at: at(200_000),
            },
        ),
        (
            "event_job_cancelled_user",
            Event::JobCancelled {
                job: job(),
                reason: CancelReason::User,
                at: at(300_000),
            },
        ),
        (
            "event_job_cancelled_threshold_batch",
            Event::JobCancelled {
                job: job(),
                reason: CancelReason::Threshold {
                    failures: 6,
                    population: 25,
                    batch: Some(2),
                },
                at: at(300_000),
            },
        ),
        (
            "event_job_cancelled_threshold_run",
            Event::JobCancelled {
                job: JobId::new("night-mode").unwrap(),
                reason: CancelReason::Threshold {
                    failures: 11,
                    population: 100,
                    batch: None,
                },
                at: at(300_000),
            },
        ),
        (
            "event_job_cancelled_criterion",
            Event::JobCancelled {
                job: job(),
                reason: CancelReason::Criterion {
                    index: 1,
                    criterion: rollout_spec().rollout.abort[1],
                    failures: 51,
                    finished: 70,
                },
                at: at(300_000),
            },
        ),
        (
            "event_job_cancelled_gate",
            Event::JobCancelled {
                job: job(),
                reason: CancelReason::Gate {
                    batch: 0,
                    reason: muster_domain::rollout::PauseReason::GateFailed {
                        succeeded: 8,
                        devices: 10,
                        required_percent: 95,
                    },
                },
                at: at(300_000),
            },
        ),
        (
            "event_job_paused_gate",
            Event::JobPaused {
                job: job(),
                run: RunId(0),
                batch: 1,
                reason: muster_domain::rollout::PauseReason::GateFailed {
                    succeeded: 9,
                    devices: 10,
                    required_percent: 95,
                },
                at: at(250_000),
            },
        ),
        (
            "event_job_paused_after_batch",
            Event::JobPaused {
                job: job(),
                run: RunId(1),
                batch: 0,
                reason: muster_domain::rollout::PauseReason::AfterBatch,
                at: at(250_000),
            },
        ),
        (
            "event_job_continued",
            Event::JobContinued {
                job: job(),
                at: at(260_000),
            },
        ),
        (
            "event_job_detail_expired",
            Event::JobDetailExpired {
                job: job(),
                at: at(2_592_000_000),
            },
        ),
        (
            "event_job_expired",
            Event::JobExpired {
                job: job(),
                at: at(5_184_000_000),
            },
        ),
        (
            "event_rate_changed",
            Event::RateChanged {
                job: job(),
                run: RunId(0),
                per_minute: 7,
                at: at(270_000),
            },
        ),
        (
            "event_window_opened",
            Event::WindowOpened {
                job: job(),
                since: at(3_600_000),
                until: at(14_400_000),
                at: at(3_600_250),
            },
        ),
        (
            "event_window_closed",
            Event::WindowClosed {
                job: job(),
                next_open: Some(at(90_000_000)),
                at: at(14_400_100),
            },
        ),
        (
            "event_window_closed_never",
            Event::WindowClosed {
                job: job(),
                next_open: None,
                at: at(14_400_100),
            },
        ),
        (
            "event_job_completed",
            Event::JobCompleted {
                job: job(),
                at: at(400_000),
            },
        ),
        (
            "event_job_failed",
            Event::JobFailed {
                job: job(),
                reason: JobFailure::MaxExecutionTimeExceeded,
                at: at(86_400_000),
            },
        ),
        (
            "event_rerun_started",
            Event::RerunStarted {
                job: job(),
                run: RunId(1),
                rerun_id: RerunId::new("retry-failed-1").unwrap(),
                devices: vec![dev(2)],
                at: at(500_000),
            },
        ),
        (
            "event_device_registered",
            Event::DeviceRegistered {
                device: registration(),
                at: at(-86_400_000),
            },
        ),
        (
            "event_device_updated",
            Event::DeviceUpdated {
                device: DeviceRegistration {
                    model_id: None,
                    enabled: false,
                    tags: json!({}).into(),
                    ..registration()
                },
                at: at(1_000),
            },
        ),
        (
            "event_twin_patched_tags",
            Event::TwinPatched {
                device: dev(7),
                section: TwinSection::Tags,
                patch: json!({"floor": 3}),
                at: at(2_000),
            },
        ),
        (
            "event_twin_patched_desired",
            Event::TwinPatched {
                device: dev(7),
                section: TwinSection::Desired,
                patch: json!({"targetTemp": 21.5, "mode": "eco"}),
                at: at(2_000),
            },
        ),
        (
            "event_twin_patched_reported",
            Event::TwinPatched {
                device: dev(7),
                section: TwinSection::Reported,
                patch: json!({"fw": "2.1.0", "uptimeSecs": 12_345_678_901_u64, "drift": -0.001}),
                at: at(2_000),
            },
        ),
        (
            "event_twin_patched_cloud",
            Event::TwinPatched {
                device: dev(7),
                section: TwinSection::CloudProperties,
                patch: json!({"maintenanceWindow": "Sun 02:00-04:00"}),
                at: at(2_000),
            },
        ),
        (
            "event_group_saved_described",
            Event::GroupSaved {
                group: group(),
                display_name: "Building 43".into(),
                description: "Every device in building 43".into(),
                query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
                at: at(4_500),
            },
        ),
        (
            "event_connection_changed",
            Event::ConnectionChanged {
                device: dev(7),
                connected: true,
                at: at(3_000),
            },
        ),
        (
            "event_group_saved",
            Event::GroupSaved {
                group: group(),
                display_name: "Building 43".into(),
                description: String::new(),
                query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
                at: at(4_000),
            },
        ),
        (
            "event_group_deleted",
            Event::GroupDeleted {
                group: group(),
                at: at(5_000),
            },
        ),
        (
            "event_policy_saved",
            Event::PolicySaved {
                name: "service".into(),
                rights: vec![Right::RegistryRead, Right::ServiceConnect],
                primary_key: Secret(KEY_A.into()),
                secondary_key: Secret(KEY_B.into()),
                at: at(6_000),
            },
        ),
        (
            "event_policy_deleted",
            Event::PolicyDeleted {
                name: "service".into(),
                at: at(7_000),
            },
        ),
        (
            "event_api_token_created",
            Event::ApiTokenCreated {
                id: "ops-1".into(),
                roles: Role::ALL.to_vec(),
                expiry: at(86_400_000),
                secret_hash: Secret(HASH.into()),
                at: at(8_000),
            },
        ),
        (
            "event_api_token_deleted",
            Event::ApiTokenDeleted {
                id: "ops-1".into(),
                at: at(9_000),
            },
        ),
        (
            "event_device_identity_set",
            Event::DeviceIdentitySet {
                device: dev(1),
                enabled: false,
                status_reason: Some("stolen".into()),
                primary_key: Secret(KEY_A.into()),
                secondary_key: Secret(KEY_B.into()),
                iot_edge: true,
                created: true,
                at: at(10_000),
            },
        ),
        (
            "event_device_identity_set_update",
            Event::DeviceIdentitySet {
                device: dev(1),
                enabled: true,
                status_reason: None,
                primary_key: Secret(KEY_B.into()),
                secondary_key: Secret(KEY_A.into()),
                iot_edge: false,
                created: false,
                at: at(11_000),
            },
        ),
        (
            "event_device_deleted",
            Event::DeviceDeleted {
                device: dev(1),
                at: at(12_000),
            },
        ),
        (
            "event_twin_replaced",
            Event::TwinReplaced {
                device: dev(1),
                section: TwinSection::Desired,
                value: json!({"fw": "2.0", "net": {"ssid": "b43"}}),
                at: at(13_000),
            },
        ),
        (
            "event_method_invoked",
            Event::MethodInvoked {
                invocation: invocation(),
                at: at(10_000),
            },
        ),
        (
            "event_method_sent",
            Event::MethodSent {
                id: invocation().id,
                device: dev(1),
                at: at(10_000),
            },
        ),
        (
            "event_method_responded",
            Event::MethodResponded {
                id: invocation().id,
                device: dev(1),
                status: 201,
                payload: json!({"rebooted": true}).into(),
                at: at(11_000),
            },
        ),
        (
            "event_method_failed_timeout",
            Event::MethodFailed {
                id: invocation().id,
                device: dev(1),
                reason: FailureReason::Timeout,
                at: at(40_000),
            },
        ),
        (
            "event_method_failed_not_connected",
            Event::MethodFailed {
                id: invocation().id,
                device: dev(1),
                reason: FailureReason::NotConnected,
                at: at(10_000),
            },
        ),
        (
            "event_desired_sent",
            Event::DesiredSent {
                device: dev(1),
                version: 4,
                at: at(12_000),
            },
        ),
        (
            "event_scheduled_job_saved",
            Event::ScheduledJobSaved {
                id: schedule_id(),
                spec: Box::new(scheduled_spec()),
                next: 2,
                at: at(13_000),
            },
        ),
        (
            "event_scheduled_job_saved_once",
            Event::ScheduledJobSaved {
                id: schedule_id(),
                spec: Box::new(scheduled_once_spec()),
                next: 0,
                at: at(13_000),
            },
        ),
        (
            "event_scheduled_job_deleted",
            Event::ScheduledJobDeleted {
                id: schedule_id(),
                at: at(13_100),
            },
        ),
        (
            "event_scheduled_job_occurred",
            Event::ScheduledJobOccurred {
                id: schedule_id(),
                occurrence: 3,
                due: at(13_000),
                job: JobId::new("nightly-4").unwrap(),
                at: at(13_050),
            },
        ),
        (
            "event_scheduled_job_missed",
            Event::ScheduledJobMissed {
                id: schedule_id(),
                occurrence: 4,
                due: at(14_000),
                reason: "group: device group building-43 does not exist".into(),
                at: at(14_050),
            },
        ),
    ]
}

pub fn schedule_id() -> muster_types::ScheduledJobId {
    muster_types::ScheduledJobId::new("nightly").unwrap()
}

/// A daily schedule in a zone that ends after a number of jobs.
pub fn scheduled_spec() -> muster_domain::ScheduledJobSpec {
    use muster_domain::schedule::{JobSchedule, Recurrence, ScheduleEnd};
    muster_domain::ScheduledJobSpec {
        template: group_spec(),
        schedule: JobSchedule {
            start: at(0),
            recurrence: Some(Recurrence::Daily),
            end: Some(ScheduleEnd::Occurrences(7)),
            time_zone: Some("Europe/Berlin".into()),
        },
        enabled: true,
    }
}

/// The other schedule shapes: once (no recurrence) is below; an interval with an end date.
pub fn scheduled_once_spec() -> muster_domain::ScheduledJobSpec {
    use muster_domain::schedule::{JobSchedule, ScheduleEnd};
    muster_domain::ScheduledJobSpec {
        template: query_spec(),
        schedule: JobSchedule {
            start: at(60_000),
            recurrence: None,
            end: Some(ScheduleEnd::Date(at(120_000))),
            time_zone: None,
        },
        enabled: false,
    }
}

pub fn scheduled_interval_spec() -> muster_domain::ScheduledJobSpec {
    use muster_domain::schedule::{JobSchedule, Recurrence};
    muster_domain::ScheduledJobSpec {
        template: query_spec(),
        schedule: JobSchedule {
            start: at(60_000),
            recurrence: Some(Recurrence::Seconds(30)),
            end: None,
            time_zone: None,
        },
        enabled: true,
    }
}

pub fn identity() -> DeviceIdentity {
    DeviceIdentity {
        id: dev(1),
        enabled: false,
        status_reason: Some("stolen".into()),
        keys: Some(DeviceKeys {
            primary: KEY_A.into(),
            secondary: KEY_B.into(),
        }),
        iot_edge: false,
    }
}

pub fn fresh_keys() -> DeviceKeys {
    DeviceKeys {
        primary: KEY_B.into(),
        secondary: KEY_A.into(),
    }
}

/// A direct-method call with every field set.
pub fn invocation() -> Invocation {
    Invocation {
        id: InvocationId::new("5f0c7a5e2d1b4c3a9e8f7d6c5b4a3921").unwrap(),
        device: dev(1),
        method: "reboot".into(),
        payload: json!({"delay": 5}),
        response_timeout_secs: 30,
        connect_timeout_secs: 10,
    }
}

/// Every command variant, and every outcome inside them. Names are golden file names.
pub fn commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "command_create_job",
            Command::CreateJob {
                id: job(),
                spec: full_spec(),
                at: at(0),
            },
        ),
        (
            "command_create_job_group",
            Command::CreateJob {
                id: JobId::new("night-mode").unwrap(),
                spec: group_spec(),
                at: at(0),
            },
        ),
        (
            "command_create_job_window",
            Command::CreateJob {
                id: JobId::new("nightly-reboot").unwrap(),
                spec: window_spec(),
                at: at(0),
            },
        ),
        (
            "command_stop_job",
            Command::StopJob {
                id: job(),
                at: at(100_000),
            },
        ),
        (
            "command_resume_job",
            Command::ResumeJob {
                id: job(),
                at: at(200_000),
            },
        ),
        (
            "command_continue_job",
            Command::ContinueJob {
                id: job(),
                at: at(260_000),
            },
        ),
        (
            "command_apply_retention",
            Command::ApplyRetention {
                finished_jobs_ms: Some(2_592_000_000),
                jobs_ms: None,
                at: at(2_592_000_000),
            },
        ),
        (
            "command_apply_retention_both",
            Command::ApplyRetention {
                finished_jobs_ms: Some(3_600_000),
                jobs_ms: Some(86_400_000),
                at: at(86_400_000),
            },
        ),
        (
            "command_create_job_rollout",
            Command::CreateJob {
                id: job(),
                spec: rollout_spec(),
                at: at(0),
            },
        ),
        (
            "command_cancel_job",
            Command::CancelJob {
                id: job(),
                at: at(300_000),
            },
        ),
        (
            "command_rerun_job",
            Command::RerunJob {
                id: job(),
                rerun_id: RerunId::new("retry-failed-1").unwrap(),
                at: at(500_000),
            },
        ),
        (
            "command_mark_dispatched",
            Command::MarkDispatched {
                job: job(),
                run: RunId(1),
                devices: vec![dev(1), dev(2)],
                at: at(3_600_010),
            },
        ),
        (
            "command_record_device_results",
            Command::RecordDeviceResults {
                results: vec![
                    DeviceResult {
                        job: job(),
                        run: RunId(0),
                        device: dev(1),
                        attempt: 1,
                        outcome: Outcome::Responded {
                            status: 200,
                            payload: json!({"result": "ok"}).into(),
                        },
                    },
                    DeviceResult {
                        job: job(),
                        run: RunId(0),
                        device: dev(2),
                        attempt: 1,
                        outcome: Outcome::Responded {
                            status: -1,
                            payload: json!("negative status, string body").into(),
                        },
                    },
                    DeviceResult {
                        job: job(),
                        run: RunId(0),
                        device: dev(3),
                        attempt: 2,
                        outcome: Outcome::Failed(FailureReason::DispatchFailed {
                            message: "connection reset".into(),
                        }),
                    },
                ],
                at: at(3_601_000),
            },
        ),
        ("command_advance", Command::Advance { at: at(3_600_000) }),
        (
            "command_register_devices",
            Command::RegisterDevices {
                devices: vec![
                    registration(),
                    DeviceRegistration {
                        id: dev(8),
                        display_name: String::new(),
                        model_id: None,
                        enabled: true,
                        tags: json!(null).into(),
                    },
                ],
                upsert: true,
                at: at(-86_400_000),
            },
        ),
        (
            "command_update_twin",
            Command::UpdateTwin {
                device: dev(7),
                tags: Some(json!({"floor": 3})),
                desired: Some(json!({"targetTemp": 21.5})),
                if_version: Some(4),
                at: at(2_000),
            },
        ),
        (
            "command_update_twin_partial",
            Command::UpdateTwin {
                device: dev(7),
                tags: None,
                // A present patch whose value is null differs from an absent one.
                desired: Some(json!(null)),
                if_version: None,
                at: at(2_000),
            },
        ),
        (
            "command_report_properties",
            Command::ReportProperties {
                device: dev(7),
                patch: json!({"fw": "2.1.0", "battery": 87}),
                at: at(2_500),
            },
        ),
        (
            "command_set_connection",
            Command::SetConnection {
                device: dev(7),
                connected: false,
                at: at(3_000),
            },
        ),
        (
            "command_set_connections",
            Command::SetConnections {
                changes: vec![
                    ConnectionChange {
                        device: dev(7),
                        connected: true,
                    },
                    ConnectionChange {
                        device: dev(8),
                        connected: false,
                    },
                ],
                at: at(3_100),
            },
        ),
        (
            "command_report_properties_batch",
            Command::ReportPropertiesBatch {
                reports: vec![
                    PropertyReport {
                        device: dev(7),
                        patch: json!({"fw": "2.1.0"}),
                    },
                    PropertyReport {
                        device: dev(8),
                        patch: json!({"battery": 87, "net": {"rssi": -61}}),
                    },
                ],
                at: at(3_200),
            },
        ),
        (
            "command_save_group_conditional",
            Command::SaveGroup {
                id: group(),
                display_name: "Building 43".into(),
                description: "Every device in building 43".into(),
                query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
                if_version: Some(3),
                at: at(4_500),
            },
        ),
        (
            "command_save_group",
            Command::SaveGroup {
                id: group(),
                display_name: "Building 43".into(),
                description: String::new(),
                query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
                if_version: None,
                at: at(4_000),
            },
        ),
        (
            "command_delete_group",
            Command::DeleteGroup {
                id: group(),
                at: at(5_000),
            },
        ),
        (
            "command_init_auth",
            Command::InitAuth {
                policies: vec![policy()],
                at: at(6_000),
            },
        ),
        (
            "command_save_policy",
            Command::SavePolicy {
                policy: policy(),
                at: at(6_000),
            },
        ),
        (
            "command_delete_policy",
            Command::DeletePolicy {
                name: "service".into(),
                at: at(7_000),
            },
        ),
        (
            "command_create_api_token",
            Command::CreateApiToken {
                token: ApiToken {
                    id: "ops-1".into(),
                    roles: vec![Role::Operator, Role::Auditor],
                    expiry: at(86_400_000),
                    secret_hash: HASH.into(),
                },
                at: at(8_000),
            },
        ),
        (
            "command_delete_api_token",
            Command::DeleteApiToken {
                id: "ops-1".into(),
                at: at(9_000),
            },
        ),
        (
            "command_put_device_identity",
            Command::PutDeviceIdentity {
                identity: identity(),
                condition: IdentityCondition::Create,
                fresh_keys: fresh_keys(),
                at: at(10_000),
            },
        ),
        (
            "command_put_device_identity_exists",
            Command::PutDeviceIdentity {
                identity: DeviceIdentity {
                    keys: None,
                    ..identity()
                },
                condition: IdentityCondition::Exists,
                fresh_keys: fresh_keys(),
                at: at(10_500),
            },
        ),
        (
            "command_put_device_identity_version",
            Command::PutDeviceIdentity {
                identity: identity(),
                condition: IdentityCondition::Version(3),
                fresh_keys: fresh_keys(),
                at: at(11_000),
            },
        ),
        (
            "command_delete_device",
            Command::DeleteDevice {
                device: dev(1),
                if_version: Some(2),
                at: at(12_000),
            },
        ),
        (
            "command_replace_twin",
            Command::ReplaceTwin {
                device: dev(1),
                tags: Some(json!({"site": "b43"})),
                desired: json!({}),
                if_version: None,
                at: at(13_000),
            },
        ),
        (
            "command_update_device",
            Command::UpdateDevice {
                device: dev(1),
                display_name: Some("Pump 1".into()),
                model_id: None,
                enabled: Some(false),
                if_version: Some(4),
                at: at(14_000),
            },
        ),
        (
            "command_invoke_method",
            Command::InvokeMethod {
                invocation: invocation(),
                at: at(10_000),
            },
        ),
        (
            "command_record_method_response",
            Command::RecordMethodResponse {
                id: invocation().id,
                outcome: MethodOutcome::Responded {
                    status: 200,
                    payload: json!("done").into(),
                },
                at: at(11_000),
            },
        ),
        (
            "command_record_method_response_failed",
            Command::RecordMethodResponse {
                id: invocation().id,
                outcome: MethodOutcome::Failed(FailureReason::DispatchFailed {
                    message: "broker refused".into(),
                }),
                at: at(11_000),
            },
        ),
        (
            "command_mark_desired_sent",
            Command::MarkDesiredSent {
                pushes: vec![
                    muster_domain::push::DesiredSent {
                        device: dev(1),
                        version: 4,
                    },
                    muster_domain::push::DesiredSent {
                        device: dev(2),
                        version: 1,
                    },
                ],
                at: at(12_000),
            },
        ),
        (
            "command_save_scheduled_job",
            Command::SaveScheduledJob {
                id: schedule_id(),
                spec: scheduled_spec(),
                if_version: None,
                at: at(13_000),
            },
        ),
        (
            "command_save_scheduled_job_conditional",
            Command::SaveScheduledJob {
                id: schedule_id(),
                spec: scheduled_interval_spec(),
                if_version: Some(3),
                at: at(13_000),
            },
        ),
        (
            "command_delete_scheduled_job",
            Command::DeleteScheduledJob {
                id: schedule_id(),
                at: at(13_100),
            },
        ),
    ]
}
