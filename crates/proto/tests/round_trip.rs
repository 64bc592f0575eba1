//! Encode then decode gives back the identical domain value, for a sample of every variant.

mod samples;

use std::collections::BTreeSet;

use muster_domain::{
    BatchSize, CancelReason, Command, Event, FailureReason, IdentityCondition, JobFailure, JobSpec,
    MethodOutcome, Operation, Outcome, TargetSelector, Threshold, TwinSection,
};
use muster_proto::{decode_command, decode_event, encode_command, encode_event};

#[test]
fn every_event_sample_round_trips() {
    for (name, event) in samples::events() {
        let bytes = encode_event(&event);
        let back = decode_event(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, event, "{name}");
        // Encoding is deterministic: the same value gives the same bytes.
        assert_eq!(encode_event(&back), bytes, "{name}");
    }
}

#[test]
fn every_command_sample_round_trips() {
    for (name, command) in samples::commands() {
        let bytes = encode_command(&command);
        let back = decode_command(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, command, "{name}");
        assert_eq!(encode_command(&back), bytes, "{name}");
    }
}

#[test]
fn json_key_order_survives() {
    let (_, event) = samples::events().remove(0);
    let Event::JobCreated { spec, .. } = decode_event(&encode_event(&event)).unwrap() else {
        panic!("not a JobCreated");
    };
    let Operation::InvokeMethod(call) = &spec.operations[0] else {
        panic!("not a method");
    };
    let keys: Vec<&str> = call
        .payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "version",
            "url",
            "sha256",
            "sizeBytes",
            "options",
            "previous"
        ]
    );
}

/// Names of the cases the samples contain, per type. Each `match` is exhaustive on purpose: a new
/// domain variant stops this file from compiling until it is named here, and then the test below
/// fails until a sample (and so a golden file) holds it.
#[derive(Default)]
struct Seen(BTreeSet<&'static str>);

impl Seen {
    fn spec(&mut self, s: &JobSpec) {
        let name = match &s.target.selector {
            TargetSelector::Devices(_) => "TargetSelector::Devices",
            TargetSelector::Group(_) => "TargetSelector::Group",
            TargetSelector::Query(_) => "TargetSelector::Query",
        };
        self.0.insert(name);
        for op in &s.operations {
            let name = match op {
                Operation::InvokeMethod(_) => "Operation::InvokeMethod",
                Operation::PatchDesired { .. } => "Operation::PatchDesired",
                Operation::PatchTags { .. } => "Operation::PatchTags",
                Operation::SetCloudProperty { .. } => "Operation::SetCloudProperty",
            };
            self.0.insert(name);
        }
        let name = match s.rollout.batch {
            None => "BatchSize(none)",
            Some(BatchSize::Percentage(_)) => "BatchSize::Percentage",
            Some(BatchSize::Count(_)) => "BatchSize::Count",
        };
        self.0.insert(name);
        let name = match s.cancellation.map(|c| c.limit) {
            None => "Threshold(none)",
            Some(Threshold::Percentage(_)) => "Threshold::Percentage",
            Some(Threshold::Count(_)) => "Threshold::Count",
        };
        self.0.insert(name);
    }

    fn failure(&mut self, r: &FailureReason) {
        let name = match r {
            FailureReason::DeviceError { .. } => "FailureReason::DeviceError",
            FailureReason::Timeout => "FailureReason::Timeout",
            FailureReason::NotConnected => "FailureReason::NotConnected",
            FailureReason::DeviceNotFound => "FailureReason::DeviceNotFound",
            FailureReason::DeviceDisabled => "FailureReason::DeviceDisabled",
            FailureReason::DispatchFailed { .. } => "FailureReason::DispatchFailed",
        };
        self.0.insert(name);
    }

    fn event(&mut self, e: &Event) {
        let name = match e {
            Event::JobCreated { spec, .. } => {
                self.spec(spec);
                "Event::JobCreated"
            }
            Event::JobScheduled { .. } => "Event::JobScheduled",
            Event::JobStarted { .. } => "Event::JobStarted",
            Event::BatchStarted { .. } => "Event::BatchStarted",
            Event::DeviceDispatched { .. } => "Event::DeviceDispatched",
            Event::DeviceSucceeded { .. } => "Event::DeviceSucceeded",
            Event::DeviceFailed { reason, .. } => {
                self.failure(reason);
                "Event::DeviceFailed"
            }
            Event::DevicesJoined { .. } => "Event::DevicesJoined",
            Event::JobStopped { .. } => "Event::JobStopped",
            Event::JobResumed { .. } => "Event::JobResumed",
            Event::JobCancelled { reason, .. } => {
                let name = match reason {
                    CancelReason::User => "CancelReason::User",
                    CancelReason::Threshold { batch: Some(_), .. } => {
                        "CancelReason::Threshold(batch)"
                    }
                    CancelReason::Threshold { batch: None, .. } => "CancelReason::Threshold(run)",
                    CancelReason::Criterion { .. } => "CancelReason::Criterion",
                    CancelReason::Gate { .. } => "CancelReason::Gate",
                };
                self.0.insert(name);
                "Event::JobCancelled"
            }
            Event::JobCompleted { .. } => "Event::JobCompleted",
            Event::JobFailed { reason, .. } => {
                let name = match reason {
                    JobFailure::MaxExecutionTimeExceeded => "JobFailure::MaxExecutionTimeExceeded",
                };
                self.0.insert(name);
                "Event::JobFailed"
            }
            Event::RerunStarted { .. } => "Event::RerunStarted",
            Event::JobPaused { .. } => "Event::JobPaused",
            Event::JobContinued { .. } => "Event::JobContinued",
            Event::RateChanged { .. } => "Event::RateChanged",
            Event::WindowOpened { .. } => "Event::WindowOpened",
            Event::WindowClosed { next_open, .. } => {
                self.0.insert(if next_open.is_some() {
                    "WindowClosed(next_open)"
                } else {
                    "WindowClosed(never)"
                });
                "Event::WindowClosed"
            }
            Event::DeviceRegistered { .. } => "Event::DeviceRegistered",
            Event::DeviceUpdated { .. } => "Event::DeviceUpdated",
            Event::TwinPatched { section, .. } => {
                let name = match section {
                    TwinSection::Tags => "TwinSection::Tags",
                    TwinSection::Desired => "TwinSection::Desired",
                    TwinSection::Reported => "TwinSection::Reported",
                    TwinSection::CloudProperties => "TwinSection::CloudProperties",
                };
                self.0.insert(name);
                "Event::TwinPatched"
            }
            Event::ConnectionChanged { .. } => "Event::ConnectionChanged",
            Event::GroupSaved { .. } => "Event::GroupSaved",
            Event::GroupDeleted { .. } => "Event::GroupDeleted",
            Event::PolicySaved { .. } => "Event::PolicySaved",
            Event::PolicyDeleted { .. } => "Event::PolicyDeleted",
            Event::ApiTokenCreated { .. } => "Event::ApiTokenCreated",
            Event::ApiTokenDeleted { .. } => "Event::ApiTokenDeleted",
            Event::DeviceIdentitySet { .. } => "Event::DeviceIdentitySet",
            Event::DeviceDeleted { .. } => "Event::DeviceDeleted",
            Event::TwinReplaced { .. } => "Event::TwinReplaced",
            Event::MethodInvoked { .. } => "Event::MethodInvoked",
            Event::MethodSent { .. } => "Event::MethodSent",
            Event::MethodResponded { .. } => "Event::MethodResponded",
            Event::MethodFailed { reason, .. } => {
                self.failure(reason);
                "Event::MethodFailed"
            }
            Event::DesiredSent { .. } => "Event::DesiredSent",
            Event::JobDetailExpired { .. } => "Event::JobDetailExpired",
            Event::JobExpired { .. } => "Event::JobExpired",
            Event::ScheduledJobSaved { .. } => "Event::ScheduledJobSaved",
            Event::ScheduledJobDeleted { .. } => "Event::ScheduledJobDeleted",
            Event::ScheduledJobOccurred { .. } => "Event::ScheduledJobOccurred",
            Event::ScheduledJobMissed { .. } => "Event::ScheduledJobMissed",
        };
        self.0.insert(name);
    }

    fn command(&mut self, c: &Command) {
        let name = match c {
            Command::CreateJob { spec, .. } => {
                self.spec(spec);
                "Command::CreateJob"
            }
            Command::StopJob { .. } => "Command::StopJob",
            Command::ResumeJob { .. } => "Command::ResumeJob",
            Command::CancelJob { .. } => "Command::CancelJob",
            Command::ContinueJob { .. } => "Command::ContinueJob",
            Command::ApplyRetention { .. } => "Command::ApplyRetention",
            Command::RerunJob { .. } => "Command::RerunJob",
            Command::MarkDispatched { .. } => "Command::MarkDispatched",
            Command::RecordDeviceResults { results, .. } => {
                for r in results {
                    let name = match &r.outcome {
                        Outcome::Responded { .. } => "Outcome::Responded",
                        Outcome::Failed(reason) => {
                            self.failure(reason);
                            "Outcome::Failed"
                        }
                    };
                    self.0.insert(name);
                }
                "Command::RecordDeviceResults"
            }
            Command::Advance { .. } => "Command::Advance",
            Command::RegisterDevices { .. } => "Command::RegisterDevices",
            Command::UpdateTwin { .. } => "Command::UpdateTwin",
            Command::ReportProperties { .. } => "Command::ReportProperties",
            Command::SetConnection { .. } => "Command::SetConnection",
            Command::SetConnections { .. } => "Command::SetConnections",
            Command::ReportPropertiesBatch { .. } => "Command::ReportPropertiesBatch",
            Command::SaveGroup { .. } => "Command::SaveGroup",
            Command::DeleteGroup { .. } => "Command::DeleteGroup",
            Command::InitAuth { .. } => "Command::InitAuth",
            Command::SavePolicy { .. } => "Command::SavePolicy",
            Command::DeletePolicy { .. } => "Command::DeletePolicy",
            Command::CreateApiToken { .. } => "Command::CreateApiToken",
            Command::DeleteApiToken { .. } => "Command::DeleteApiToken",
            Command::PutDeviceIdentity { condition, .. } => {
                self.0.insert(match condition {
                    IdentityCondition::Create => "IdentityCondition::Create",
                    IdentityCondition::Exists => "IdentityCondition::Exists",
                    IdentityCondition::Version(_) => "IdentityCondition::Version",
                });
                "Command::PutDeviceIdentity"
            }
            Command::DeleteDevice { .. } => "Command::DeleteDevice",
            Command::ReplaceTwin { .. } => "Command::ReplaceTwin",
            Command::UpdateDevice { .. } => "Command::UpdateDevice",
            Command::InvokeMethod { .. } => "Command::InvokeMethod",
            Command::RecordMethodResponse { outcome, .. } => {
                let name = match outcome {
                    MethodOutcome::Responded { .. } => "MethodOutcome::Responded",
                    MethodOutcome::Failed(reason) => {
                        self.failure(reason);
                        "MethodOutcome::Failed"
                    }
                };
                self.0.insert(name);
                "Command::RecordMethodResponse"
            }
            Command::MarkDesiredSent { .. } => "Command::MarkDesiredSent",
            Command::SaveScheduledJob { .. } => "Command::SaveScheduledJob",
            Command::DeleteScheduledJob { .. } => "Command::DeleteScheduledJob",
        };
        self.0.insert(name);
    }
}

/// Every case named in `Seen`, which the samples must all contain.
const ALL_CASES: &[&str] = &[
    "BatchSize(none)",
    "BatchSize::Count",
    "BatchSize::Percentage",
    "CancelReason::Threshold(batch)",
    "CancelReason::Threshold(run)",
    "CancelReason::User",
    "CancelReason::Criterion",
    "CancelReason::Gate",
    "Command::ContinueJob",
    "Command::ApplyRetention",
    "Event::JobDetailExpired",
    "Event::JobExpired",
    "Event::JobContinued",
    "Event::JobPaused",
    "Event::RateChanged",
    "Event::WindowOpened",
    "Event::WindowClosed",
    "WindowClosed(next_open)",
    "WindowClosed(never)",
    "Command::Advance",
    "Command::CancelJob",
    "Command::CreateJob",
    "Command::CreateApiToken",
    "Command::DeleteApiToken",
    "Command::PutDeviceIdentity",
    "Command::DeleteDevice",
    "Command::ReplaceTwin",
    "Command::UpdateDevice",
    "IdentityCondition::Create",
    "IdentityCondition::Exists",
    "IdentityCondition::Version",
    "Command::DeleteGroup",
    "Command::DeletePolicy",
    "Command::InitAuth",
    "Command::InvokeMethod",
    "Command::RecordMethodResponse",
    "Event::MethodInvoked",
    "Event::MethodSent",
    "Event::MethodResponded",
    "Event::MethodFailed",
    "Event::DesiredSent",
    "Command::MarkDesiredSent",
    "Event::ScheduledJobSaved",
    "Event::ScheduledJobDeleted",
    "Event::ScheduledJobOccurred",
    "Event::ScheduledJobMissed",
    "Command::SaveScheduledJob",
    "Command::DeleteScheduledJob",
    "MethodOutcome::Responded",
    "MethodOutcome::Failed",
    "Command::SavePolicy",
    "Command::MarkDispatched",
    "Command::RecordDeviceResults",
    "Command::RegisterDevices",
    "Command::ReportProperties",
    "Command::ReportPropertiesBatch",
    "Command::RerunJob",
    "Command::ResumeJob",
    "Command::SaveGroup",
    "Command::SetConnection",
    "Command::SetConnections",
    "Command::StopJob",
    "Command::UpdateTwin",
    "Event::BatchStarted",
    "Event::ConnectionChanged",
    "Event::DeviceDispatched",
    "Event::DeviceFailed",
    "Event::DeviceRegistered",
    "Event::DeviceSucceeded",
    "Event::DeviceUpdated",
    "Event::DevicesJoined",
    "Event::ApiTokenCreated",
    "Event::ApiTokenDeleted",
    "Event::DeviceIdentitySet",
    "Event::DeviceDeleted",
    "Event::TwinReplaced",
    "Event::GroupDeleted",
    "Event::PolicyDeleted",
    "Event::PolicySaved",
    "Event::GroupSaved",
    "Event::JobCancelled",
    "Event::JobCompleted",
    "Event::JobCreated",
    "Event::JobFailed",
    "Event::JobResumed",
    "Event::JobScheduled",
    "Event::JobStarted",
    "Event::JobStopped",
    "Event::RerunStarted",
    "Event::TwinPatched",
    "FailureReason::DeviceDisabled",
    "FailureReason::DeviceError",
    "FailureReason::DeviceNotFound",
    "FailureReason::DispatchFailed",
    "FailureReason::NotConnected",
    "FailureReason::Timeout",
    "JobFailure::MaxExecutionTimeExceeded",
    "Operation::InvokeMethod",
    "Operation::PatchDesired",
    "Operation::PatchTags",
    "Operation::SetCloudProperty",
    "Outcome::Failed",
    "Outcome::Responded",
    "TargetSelector::Devices",
    "TargetSelector::Group",
    "TargetSelector::Query",
    "Threshold(none)",
    "Threshold::Count",
    "Threshold::Percentage",
    "TwinSection::CloudProperties",
    "TwinSection::Desired",
    "TwinSection::Reported",
    "TwinSection::Tags",
];

#[test]
fn samples_cover_every_variant() {
    let mut seen = Seen::default();
    samples::events().iter().for_each(|(_, e)| seen.event(e));
    samples::commands()
        .iter()
        .for_each(|(_, c)| seen.command(c));
    let all: BTreeSet<&str> = ALL_CASES.iter().copied().collect();
    let missing: Vec<_> = all.difference(&seen.0).collect();
    assert!(missing.is_empty(), "no sample holds {missing:?}");
    let unlisted: Vec<_> = seen.0.difference(&all).collect();
    assert!(unlisted.is_empty(), "add {unlisted:?} to ALL_CASES");
}

#[test]
fn sample_names_are_unique() {
    let names: Vec<&str> = samples::events()
        .iter()
        .map(|(n, _)| *n)
        .chain(samples::commands().iter().map(|(n, _)| *n))
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len());
}
