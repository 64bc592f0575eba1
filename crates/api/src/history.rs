//! The event log as callers outside muster see it: which events a filter keeps, and the JSON of
//! one event, shared by `GET /api/jobs/{id}/events` and `muster.v1.EventService.Subscribe`
//! (`body_json`), so both show an event exactly as `muster audit export` does.

use muster_domain::{Event, Principal};
use muster_types::{DeviceId, JobId};
use serde_json::{json, Map, Value};

/// Every event type name ([`Event::kind`]). A filter naming anything else is refused, so a typo
/// does not silently match nothing for ever.
pub const EVENT_TYPES: &[&str] = &[
    "JobCreated",
    "JobScheduled",
    "JobStarted",
    "BatchStarted",
    "DeviceDispatched",
    "DeviceSucceeded",
    "DeviceFailed",
    "DevicesJoined",
    "JobStopped",
    "JobResumed",
    "JobCancelled",
    "JobCompleted",
    "JobFailed",
    "RerunStarted",
    "DeviceRegistered",
    "DeviceUpdated",
    "TwinPatched",
    "ConnectionChanged",
    "GroupSaved",
    "GroupDeleted",
    "PolicySaved",
    "PolicyDeleted",
    "ApiTokenCreated",
    "ApiTokenDeleted",
    "DeviceIdentitySet",
    "DeviceDeleted",
    "TwinReplaced",
    "MethodInvoked",
    "MethodSent",
    "MethodResponded",
    "MethodFailed",
    "JobPaused",
    "JobContinued",
    "RateChanged",
    "WindowOpened",
    "WindowClosed",
    "DesiredSent",
    "JobDetailExpired",
    "JobExpired",
    "ScheduledJobSaved",
    "ScheduledJobDeleted",
    "ScheduledJobOccurred",
    "ScheduledJobMissed",
];

/// The canonical name of an event type written as `JobCreated`, `jobcreated` or `job_created`,
/// so people can type what they see in either the JSON or the protobuf field names.
pub fn event_type(name: &str) -> Option<&'static str> {
    let wanted: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    EVENT_TYPES
        .iter()
        .find(|t| t.to_ascii_lowercase() == wanted)
        .copied()
}

/// Which events a follower of the log wants. Each non-empty list must be matched by one of its
/// entries; an empty filter keeps everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub jobs: Vec<JobId>,
    pub devices: Vec<DeviceId>,
    pub types: Vec<&'static str>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        (self.jobs.is_empty() || event.job().is_some_and(|j| self.jobs.contains(j)))
            && (self.devices.is_empty() || event.device().is_some_and(|d| self.devices.contains(d)))
            && (self.types.is_empty() || self.types.contains(&event.kind()))
    }
}

/// The one id a filter's events can be read by through the store's index.
#[derive(Debug, Clone, PartialEq)]
pub enum Indexed {
    Job(JobId),
    Device(DeviceId),
}

impl EventFilter {
    /// The index to read when every matching event has one job (or, with no job listed, one
    /// device): one job's or device's events instead of the whole log. `None`: walk the log.
    pub fn indexed(&self) -> Option<Indexed> {
        match (self.jobs.as_slice(), self.devices.as_slice()) {
            ([job], _) => Some(Indexed::Job(job.clone())),
            ([], [device]) => Some(Indexed::Device(device.clone())),
            _ => None,
        }
    }
}

/// The event's own JSON (`{"DeviceFailed": {...}}`), as `muster audit export` writes `body`.
pub fn event_body(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or_else(|e| {
        // Not reachable with the domain's types (every map key is a string); an event is still
        // listed with its seq, time and type rather than failing the whole page.
        tracing::error!("cannot render event as JSON: {e}");
        Value::Null
    })
}

/// One entry of a job's history: `{seq, time, type, jobId, deviceId?, principal, body}`, where
/// `principal` is who the event's command was written on behalf of (`system`, `policy:NAME`,
/// `token:ID`, `cert:SUBJECT` or `anonymous`).
pub fn event_json(seq: u64, event: &Event, principal: &Principal) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), json!(seq));
    m.insert("time".into(), json!(event.at().to_rfc3339()));
    m.insert("type".into(), json!(event.kind()));
    if let Some(job) = event.job() {
        m.insert("jobId".into(), json!(job.as_str()));
    }
    if let Some(device) = event.device() {
        m.insert("deviceId".into(), json!(device.as_str()));
    }
    m.insert("principal".into(), json!(principal.to_string()));
    m.insert("body".into(), event_body(event));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use muster_types::{RunId, Timestamp};

    fn stopped(job: &str) -> Event {
        Event::JobStopped {
            job: JobId::new(job).unwrap(),
            at: Timestamp::from_millis(1_700_000_000_000),
        }
    }

    fn connected(device: &str) -> Event {
        Event::ConnectionChanged {
            device: DeviceId::new(device).unwrap(),
            connected: true,
            at: Timestamp::from_millis(1_700_000_000_000),
        }
    }

    #[test]
    fn type_names_are_found_in_any_spelling() {
        assert_eq!(event_type("JobCreated"), Some("JobCreated"));
        assert_eq!(event_type("job_created"), Some("JobCreated"));
        assert_eq!(event_type("devicefailed"), Some("DeviceFailed"));
        assert_eq!(event_type("JobCreate"), None);
        assert_eq!(event_type(""), None);
        assert!(EVENT_TYPES.contains(&stopped("j").kind()));
        assert!(EVENT_TYPES.contains(&connected("d").kind()));
    }

    #[test]
    fn filters_need_every_list_to_match() {
        let all = EventFilter::default();
        assert!(all.matches(&stopped("j1")));
        assert!(all.matches(&connected("d1")));

        let job = EventFilter {
            jobs: vec![JobId::new("j1").unwrap()],
            ..Default::default()
        };
        assert!(job.matches(&stopped("j1")));
        assert!(!job.matches(&stopped("j2")));
        assert!(!job.matches(&connected("d1")));

        let typed = EventFilter {
            jobs: vec![JobId::new("j1").unwrap()],
            types: vec!["JobStarted"],
            ..Default::default()
        };
        assert!(!typed.matches(&stopped("j1")));
        let started = Event::JobStarted {
            job: JobId::new("j1").unwrap(),
            run: RunId(0),
            at: Timestamp::from_millis(0),
        };
        assert!(typed.matches(&started));

        let device = EventFilter {
            devices: vec![DeviceId::new("d1").unwrap()],
            ..Default::default()
        };
        assert!(device.matches(&connected("d1")));
        assert!(!device.matches(&connected("d2")));
        assert!(!device.matches(&stopped("j1")));
    }

    #[test]
    fn history_entries_name_job_and_device_only_when_there_is_one() {
        let v = event_json(7, &stopped("j1"), &Principal::Policy("iothubowner".into()));
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "JobStopped");
        assert_eq!(v["jobId"], "j1");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert!(v.get("deviceId").is_none());
        assert_eq!(v["body"]["JobStopped"]["job"], "j1");
        assert_eq!(v["principal"], "policy:iothubowner");

        let v = event_json(8, &connected("d1"), &Principal::System);
        assert_eq!(v["principal"], "system");
        assert_eq!(v["deviceId"], "d1");
        assert!(v.get("jobId").is_none());
    }
}
