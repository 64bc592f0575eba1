//! `decide`: validate a command against the state and say what happens, as events.
//!
//! One command can set off a chain (a result crosses the threshold, a batch finishes and the next
//! starts, the last batch finishes and the job completes). `decide` must see the effect of its own
//! earlier events to get the chain right without cloning a job of 100,000 devices, so it works on a
//! [`Scratch`]: a small overlay over one job holding only the statuses and counters this command
//! touched. The overlay mirrors exactly the parts of `evolve` that the chain depends on; property
//! tests check the two agree.

use std::collections::{BTreeMap, BTreeSet};

use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::Value;

use crate::auth::Secret;
use crate::command::{Command, ConnectionChange, DeviceResult, Outcome, PropertyReport};
use crate::error::DomainError;
use crate::event::Event;
use crate::job::{
    CancelReason, DeviceStatus, FailureReason, Job, JobFailure, JobStatus, MethodResponse, Stats,
};
use crate::registry::{
    ConnectionState, Device, DeviceIdentity, DeviceKeys, DeviceRegistration, IdentityCondition,
    TwinSection,
};
use crate::spec::{check_name, check_patch, Operation, TargetSelector};
use crate::twin_size;
use crate::State;

pub fn decide(state: &State, cmd: &Command) -> Result<Vec<Event>, DomainError> {
    if let Some(decided) = crate::auth::rules::decide(&state.auth, cmd) {
        return decided;
    }
    match cmd {
        Command::CreateJob { id, spec, at } => create_job(state, id, spec, *at),
        Command::StopJob { id, at } => {
            let j = job(state, id)?;
            match j.status {
                JobStatus::Scheduled
                | JobStatus::Pending
                | JobStatus::Running
                | JobStatus::Paused => Ok(vec![Event::JobStopped {
                    job: id.clone(),
                    at: *at,
                }]),
                JobStatus::Stopped => Err(conflict(
                    j,
                    "stop",
                    "it is already stopped; resume it to continue",
                )),
                _ => Err(conflict(
                    j,
                    "stop",
                    "it has ended; rerun it to try the failed devices again",
                )),
            }
        }
        Command::ResumeJob { id, at } if job(state, id)?.status == JobStatus::Paused => {
            // IoT Central shows a paused job as `stopped`, so its `resume` continues it.
            decide(
                state,
                &Command::ContinueJob {
                    id: id.clone(),
                    at: *at,
                },
            )
        }
        Command::ResumeJob { id, at } => {
            let j = job(state, id)?;
            if j.status != JobStatus::Stopped {
                return Err(conflict(j, "resume", "only a stopped job can be resumed"));
            }
            let mut events = vec![Event::JobResumed {
                job: id.clone(),
                at: *at,
            }];
            if j.current_run().started_at.is_some() {
                // Devices may have finished while it was stopped: the batch may be done.
                let mut s = Scratch::new(j, *at);
                s.status = JobStatus::Running;
                s.progress();
                events.extend(s.events);
            }
            Ok(events)
        }
        Command::ContinueJob { id, at } => {
            let j = job(state, id)?;
            if j.status != JobStatus::Paused {
                return Err(conflict(
                    j,
                    "continue",
                    "only a job paused between batches can be continued",
                ));
            }
            let mut s = Scratch::new(j, *at);
            s.events.push(Event::JobContinued {
                job: id.clone(),
                at: *at,
            });
            s.status = JobStatus::Running;
            s.next_batch();
            Ok(s.events)
        }
        Command::CancelJob { id, at } => {
            let j = job(state, id)?;
            if j.status.is_final() {
                return Err(conflict(j, "cancel", "it has already ended"));
            }
            Ok(vec![Event::JobCancelled {
                job: id.clone(),
                reason: CancelReason::User,
                at: *at,
            }])
        }
        Command::RerunJob { id, rerun_id, at } => {
            let j = job(state, id)?;
            if !j.status.is_final() {
                return Err(conflict(
                    j,
                    "rerun",
                    "wait until it ends, or cancel it first",
                ));
            }
            if j.detail_expired {
                return Err(conflict(
                    j,
                    "rerun",
                    "retention dropped its device detail, so its failed devices are unknown; create a new job",
                ));
            }
            if j.runs.iter().any(|r| r.rerun_id.as_ref() == Some(rerun_id)) {
                return Err(DomainError::RerunExists {
                    job: id.clone(),
                    rerun: rerun_id.clone(),
                });
            }
            let failed: Vec<DeviceId> = j.current_run().failed_devices();
            if failed.is_empty() {
                return Err(conflict(
                    j,
                    "rerun",
                    "no device failed in its last run, so there is nothing to rerun",
                ));
            }
            Ok(vec![Event::RerunStarted {
                job: id.clone(),
                run: RunId(j.runs.len() as u32),
                rerun_id: rerun_id.clone(),
                devices: failed,
                at: *at,
            }])
        }
        Command::MarkDispatched {
            job: id,
            run,
            devices,
            at,
        } => mark_dispatched(state, id, *run, devices, *at),
        Command::RecordDeviceResults { results, at } => record_results(state, results, *at),
        Command::MarkDesiredSent { pushes, at } => Ok(crate::push::decide(state, pushes, *at)),
        Command::ApplyRetention {
            finished_jobs_ms,
            jobs_ms,
            at,
        } => Ok(crate::retention::decide(
            state,
            &crate::retention::Retention {
                finished_jobs_ms: *finished_jobs_ms,
                jobs_ms: *jobs_ms,
            },
            *at,
        )),
        Command::Advance { at } => {
            let mut events = advance(state, *at);
            events.extend(crate::invocation::advance(state, *at));
            events.extend(crate::schedule::advance(state, *at, create_job));
            Ok(events)
        }
        Command::SaveScheduledJob {
            id,
            spec,
            if_version,
            at,
        } => crate::schedule::save(state, id, spec, *if_version, *at),
        Command::DeleteScheduledJob { id, at } => crate::schedule::delete(state, id, *at),
        Command::RegisterDevices {
            devices,
            upsert,
            at,
        } => register(state, devices, *upsert, *at),
        Command::UpdateTwin {
            device,
            tags,
            desired,
            if_version,
            at,
        } => {
            let d = registered(state, device)?;
            check_twin_version(d, *if_version)?;
            if tags.is_none() && desired.is_none() {
                return Err(DomainError::Invalid {
                    field: "tags".into(),
                    message: "give tags and/or properties.desired to change".into(),
                });
            }
            let mut events = Vec::new();
            if let Some(t) = tags {
                check_patch("tags", t)?;
                twin_size::check_patched(TwinSection::Tags, &d.tags, &[t])?;
                events.push(patched(device, TwinSection::Tags, t, *at));
            }
            if let Some(p) = desired {
                check_patch("properties.desired", p)?;
                twin_size::check_patched(TwinSection::Desired, &d.desired, &[p])?;
                events.push(patched(device, TwinSection::Desired, p, *at));
            }
            with_joins(state, events, *at)
        }
        Command::ReportProperties { device, patch, at } => {
            let d = registered(state, device)?;
            check_patch("properties.reported", patch)?;
            twin_size::check_patched(TwinSection::Reported, &d.reported, &[patch])?;
            with_joins(
                state,
                vec![patched(device, TwinSection::Reported, patch, *at)],
                *at,
            )
        }
        Command::SetConnection {
            device,
            connected,
            at,
        } => {
            let d = registered(state, device)?;
            let now = ConnectionState::from_connected(*connected);
            if d.connection == now {
                return Ok(Vec::new());
            }
            let changed = vec![Event::ConnectionChanged {
                device: device.clone(),
                connected: *connected,
                at: *at,
            }];
            let sent = crate::invocation::on_connect(state, &changed, *at);
            let mut events = with_joins(state, changed, *at)?;
            events.extend(sent);
            Ok(events)
        }
        Command::SetConnections { changes, at } => set_connections(state, changes, *at),
        Command::ReportPropertiesBatch { reports, at } => report_properties(state, reports, *at),
        Command::SaveGroup {
            id,
            display_name,
            description,
            query,
            if_version,
            at,
        } => {
            check_display_name("displayName", display_name)?;
            if description.chars().count() > MAX_GROUP_DESCRIPTION {
                return Err(DomainError::Invalid {
                    field: "description".into(),
                    message: format!("is longer than {MAX_GROUP_DESCRIPTION} characters"),
                });
            }
            if let Some(v) = if_version {
                let actual = state
                    .registry
                    .groups
                    .get(id)
                    .ok_or_else(|| DomainError::GroupNotFound(id.clone()))?
                    .version;
                if actual != *v {
                    return Err(DomainError::GroupVersionMismatch {
                        group: id.clone(),
                        expected: *v,
                        actual,
                    });
                }
            }
            crate::query::Query::parse(query).map_err(|e| DomainError::Invalid {
                field: "filter".into(),
                message: e.to_string(),
            })?;
            Ok(vec![Event::GroupSaved {
                group: id.clone(),
                display_name: display_name.clone(),
                description: description.clone(),
                query: query.clone(),
                at: *at,
            }])
        }
        Command::DeleteGroup { id, at } => {
            if !state.registry.groups.contains_key(id) {
                return Err(DomainError::GroupNotFound(id.clone()));
            }
            Ok(vec![Event::GroupDeleted {
                group: id.clone(),
                at: *at,
            }])
        }
        Command::PutDeviceIdentity {
            identity,
            condition,
            fresh_keys,
            at,
        } => put_identity(state, identity, *condition, fresh_keys, *at),
        Command::DeleteDevice {
            device,
            if_version,
            at,
        } => {
            let d = registered(state, device)?;
            check_identity_version(d, *if_version)?;
            Ok(vec![Event::DeviceDeleted {
                device: device.clone(),
                at: *at,
            }])
        }
        Command::ReplaceTwin {
            device,
            tags,
            desired,
            if_version,
            at,
        } => {
            let d = registered(state, device)?;
            check_twin_version(d, *if_version)?;
            if let Some(t) = tags {
                check_section("tags", t)?;
                twin_size::check_whole(TwinSection::Tags, t)?;
            }
            check_section("properties.desired", desired)?;
            twin_size::check_whole(TwinSection::Desired, desired)?;
            let replaced = |section, value: &Value| Event::TwinReplaced {
                device: device.clone(),
                section,
                value: value.clone(),
                at: *at,
            };
            let mut events = Vec::new();
            if let Some(t) = tags {
                events.push(replaced(TwinSection::Tags, t));
            }
            events.push(replaced(TwinSection::Desired, desired));
            with_joins(state, events, *at)
        }
        Command::UpdateDevice {
            device,
            display_name,
            model_id,
            enabled,
            if_version,
            at,
        } => {
            let d = registered(state, device)?;
            check_identity_version(d, *if_version)?;
            let reg = DeviceRegistration {
                id: device.clone(),
                display_name: display_name
                    .clone()
                    .unwrap_or_else(|| d.display_name.to_string()),
                model_id: model_id
                    .clone()
                    .or_else(|| d.model_id.as_ref().map(String::from)),
                enabled: enabled.unwrap_or(d.enabled),
                tags: crate::Doc::empty(),
            };
            check_registration(0, &reg, "")?;
            with_joins(
                state,
                vec![Event::DeviceUpdated {
                    device: reg,
                    at: *at,
                }],
                *at,
            )
        }
        Command::InvokeMethod { invocation, at } => {
            crate::invocation::invoke(state, invocation, *at)
        }
        Command::RecordMethodResponse { id, outcome, at } => {
            Ok(crate::invocation::record(state, id, outcome, *at))
        }
        Command::InitAuth { .. }
        | Command::SavePolicy { .. }
        | Command::DeletePolicy { .. }
        | Command::CreateApiToken { .. }
        | Command::DeleteApiToken { .. } => {
            crate::auth::rules::decide(&state.auth, cmd).unwrap_or_else(|| Ok(Vec::new()))
        }
    }
}

/// The events of the single `SetConnection`s in order, with the continuous-target joins worked
/// out once for the whole command (devices that start matching join together, as one batch).
fn set_connections(
    state: &State,
    changes: &[ConnectionChange],
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    // Each device's connection as the earlier changes of this command leave it.
    let mut now: BTreeMap<&DeviceId, ConnectionState> = BTreeMap::new();
    let mut events = Vec::new();
    for c in changes {
        let Some(d) = state.registry.devices.get(&c.device) else {
            continue;
        };
        let to = ConnectionState::from_connected(c.connected);
        let from = now.get(&c.device).copied().unwrap_or(d.connection);
        if from == to {
            continue;
        }
        now.insert(&c.device, to);
        events.push(Event::ConnectionChanged {
            device: c.device.clone(),
            connected: c.connected,
            at,
        });
    }
    let sent = crate::invocation::on_connect(state, &events, at);
    let mut events = with_joins(state, events, at)?;
    events.extend(sent);
    Ok(events)
}

/// The events of the single `ReportProperties` in order, skipping what one would refuse; joins
/// as in [`set_connections`].
fn report_properties(
    state: &State,
    reports: &[PropertyReport],
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    // Several reports of one device in a batch add up: each is checked against the section as
    // the ones accepted before it leave it.
    let mut accepted: BTreeMap<&DeviceId, Vec<&Value>> = BTreeMap::new();
    let events = reports
        .iter()
        .filter(|r| {
            let Some(d) = state.registry.devices.get(&r.device) else {
                return false;
            };
            if check_patch("properties.reported", &r.patch).is_err() {
                return false;
            }
            let before = accepted.entry(&r.device).or_default();
            before.push(&r.patch);
            let fits = twin_size::check_patched(TwinSection::Reported, &d.reported, before).is_ok();
            if !fits {
                before.pop();
            }
            fits
        })
        .map(|r| patched(&r.device, TwinSection::Reported, &r.patch, at))
        .collect();
    with_joins(state, events, at)
}

fn job<'a>(state: &'a State, id: &JobId) -> Result<&'a Job, DomainError> {
    state
        .jobs
        .get(id)
        .ok_or_else(|| DomainError::JobNotFound(id.clone()))
}

fn registered<'a>(state: &'a State, id: &DeviceId) -> Result<&'a Device, DomainError> {
    state
        .registry
        .devices
        .get(id)
        .ok_or_else(|| DomainError::DeviceNotFound(id.clone()))
}

fn conflict(j: &Job, action: &'static str, hint: &'static str) -> DomainError {
    DomainError::Conflict {
        job: j.id.clone(),
        action,
        status: j.status.as_str(),
        hint,
    }
}

fn patched(device: &DeviceId, section: TwinSection, patch: &Value, at: Timestamp) -> Event {
    Event::TwinPatched {
        device: device.clone(),
        section,
        patch: patch.clone(),
        at,
    }
}

fn check_display_name(field: &str, s: &str) -> Result<(), DomainError> {
    if s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err(DomainError::Invalid {
            field: field.into(),
            message: "at most 256 characters, without control characters".into(),
        });
    }
    Ok(())
}

fn create_job(
    state: &State,
    id: &JobId,
    spec: &crate::spec::JobSpec,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    if state.jobs.contains_key(id) {
        return Err(DomainError::JobExists(id.clone()));
    }
    let query = spec.validate()?;
    let devices = match &spec.target.selector {
        TargetSelector::Devices(ids) => {
            let mut seen = BTreeSet::new();
            ids.iter().filter(|d| seen.insert(*d)).cloned().collect()
        }
        TargetSelector::Group(g) => {
            let group = state
                .registry
                .groups
                .get(g)
                .ok_or_else(|| DomainError::Invalid {
                    field: "group".into(),
                    message: format!(
                        "device group {g} does not exist; create it first or pick another"
                    ),
                })?;
            state.registry.select(&group.query)
        }
        TargetSelector::Query(_) => match &query {
            Some(q) => state.registry.select(q),
            None => Vec::new(),
        },
    };
    let mut events = vec![Event::JobCreated {
        job: id.clone(),
        spec: Box::new(spec.clone()),
        devices,
        at,
    }];
    if let Some(start_at) = spec.schedule.start_at.filter(|s| *s > at) {
        events.push(Event::JobScheduled {
            job: id.clone(),
            start_at,
            at,
        });
    }
    Ok(events)
}

fn register(
    state: &State,
    devices: &[DeviceRegistration],
    upsert: bool,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    if devices.is_empty() {
        return Err(DomainError::Invalid {
            field: "devices".into(),
            message: "give at least one device".into(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut events = Vec::with_capacity(devices.len());
    for (i, reg) in devices.iter().enumerate() {
        if !seen.insert(&reg.id) {
            return Err(DomainError::Invalid {
                field: format!("devices[{i}].id"),
                message: format!("device {} is listed twice", reg.id),
            });
        }
        check_registration(i, reg, "devices")?;
        let exists = state.registry.devices.contains_key(&reg.id);
        if exists && !upsert {
            return Err(DomainError::DeviceExists(reg.id.clone()));
        }
        events.push(if exists {
            Event::DeviceUpdated {
                device: reg.clone(),
                at,
            }
        } else {
            Event::DeviceRegistered {
                device: reg.clone(),
                at,
            }
        });
    }
    with_joins(state, events, at)
}

/// The checks of one registration's fields; `list` names the array it came from (`devices`),
/// or is empty for a single device, so the field reads `devices[0].template` or `template`.
fn check_registration(i: usize, reg: &DeviceRegistration, list: &str) -> Result<(), DomainError> {
    let field = |name: &str| {
        if list.is_empty() {
            name.to_string()
        } else {
            format!("{list}[{i}].{name}")
        }
    };
    check_display_name(&field("displayName"), &reg.display_name)?;
    if let Some(m) = &reg.model_id {
        check_name(&field("template"), m, 256).or_else(|_| {
            // Model ids such as dtmi:com:example;1 use ':' and ';', which names may not.
            if m.len() <= 256 && m.chars().all(|c| c.is_ascii_graphic()) && !m.is_empty() {
                Ok(())
            } else {
                Err(DomainError::Invalid {
                    field: field("template"),
                    message: "1 to 256 printable US-ASCII characters".into(),
                })
            }
        })?;
    }
    if !reg.tags.is_null() && reg.tags.as_object().is_none_or(|m| !m.is_empty()) {
        check_patch(&field("tags"), &reg.tags)?;
        twin_size::check_whole(TwinSection::Tags, &reg.tags)?;
    }
    Ok(())
}

/// Longest `statusReason` kept (IoT Hub allows 128 characters).
const MAX_STATUS_REASON: usize = 128;
/// Longest device group description (IoT Central has no documented limit; this bounds state).
const MAX_GROUP_DESCRIPTION: usize = 4096;

/// The rule for keys: the caller's if given, else the device's own, else the fresh ones.
fn put_identity(
    state: &State,
    identity: &DeviceIdentity,
    condition: IdentityCondition,
    fresh_keys: &DeviceKeys,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    let existing = state.registry.devices.get(&identity.id);
    match (condition, existing) {
        (IdentityCondition::Create, Some(_)) => {
            return Err(DomainError::DeviceExists(identity.id.clone()))
        }
        (IdentityCondition::Exists | IdentityCondition::Version(_), None) => {
            return Err(DomainError::DeviceNotFound(identity.id.clone()))
        }
        (IdentityCondition::Version(v), Some(d)) => check_identity_version(d, Some(v))?,
        _ => {}
    }
    if let Some(r) = &identity.status_reason {
        if r.chars().count() > MAX_STATUS_REASON || r.chars().any(char::is_control) {
            return Err(DomainError::Invalid {
                field: "statusReason".into(),
                message: format!(
                    "at most {MAX_STATUS_REASON} characters, without control characters"
                ),
            });
        }
    }
    let keys = identity
        .keys
        .as_ref()
        .or_else(|| existing.and_then(|d| d.keys.as_deref()))
        .unwrap_or(fresh_keys);
    for (field, key) in [
        ("authentication.symmetricKey.primaryKey", &keys.primary),
        ("authentication.symmetricKey.secondaryKey", &keys.secondary),
    ] {
        check_key(field, key)?;
    }
    with_joins(
        state,
        vec![Event::DeviceIdentitySet {
            device: identity.id.clone(),
            enabled: identity.enabled,
            status_reason: identity.status_reason.clone(),
            primary_key: Secret(keys.primary.clone()),
            secondary_key: Secret(keys.secondary.clone()),
            iot_edge: identity.iot_edge,
            created: existing.is_none(),
            at,
        }],
        at,
    )
}

/// A device key is base64 of 16 to 64 bytes, as IoT Hub requires.
fn check_key(field: &str, key: &str) -> Result<(), DomainError> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key).ok() {
        Some(b) if (16..=64).contains(&b.len()) => Ok(()),
        _ => Err(DomainError::Invalid {
            field: field.into(),
            message: "must be base64 of 16 to 64 bytes; leave both keys out to have them generated"
                .into(),
        }),
    }
}

fn check_identity_version(d: &Device, if_version: Option<u64>) -> Result<(), DomainError> {
    match if_version {
        Some(v) if v != d.identity_version => Err(DomainError::VersionMismatch {
            device: d.id.clone(),
            expected: v,
            actual: d.identity_version,
        }),
        _ => Ok(()),
    }
}

fn check_twin_version(d: &Device, if_version: Option<u64>) -> Result<(), DomainError> {
    match if_version {
        Some(v) if v != d.version => Err(DomainError::VersionMismatch {
            device: d.id.clone(),
            expected: v,
            actual: d.version,
        }),
        _ => Ok(()),
    }
}

/// A whole twin section: an object, empty allowed, otherwise under the patch rules.
fn check_section(field: &str, v: &Value) -> Result<(), DomainError> {
    match v {
        Value::Object(m) if m.is_empty() => Ok(()),
        _ => check_patch(field, v),
    }
}

/// Appends the joins of continuous jobs that registry events cause: a device that now matches a
/// watching job and is not in its current run joins it as a new batch.
fn with_joins(
    state: &State,
    mut events: Vec<Event>,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    events.extend(continuous_joins(state, &events, at));
    Ok(events)
}

fn continuous_joins(state: &State, events: &[Event], at: Timestamp) -> Vec<Event> {
    let watching: Vec<&Job> = state
        .jobs
        .values()
        .filter(|j| j.watch.is_some() && !j.status.is_final())
        .collect();
    if watching.is_empty() {
        return Vec::new();
    }
    // The devices as they will be after these events.
    let mut changed: BTreeMap<DeviceId, Device> = BTreeMap::new();
    for e in events {
        let Some(id) = e.device() else { continue };
        if !changed.contains_key(id) {
            let base = match (state.registry.devices.get(id), e) {
                (Some(d), _) => d.clone(),
                (None, Event::DeviceRegistered { device, at }) => Device::new(device, *at),
                (None, Event::DeviceIdentitySet { at, .. }) => match e.identity() {
                    Some(identity) => Device::from_identity(&identity, *at),
                    None => continue,
                },
                (None, _) => continue,
            };
            changed.insert(id.clone(), base);
            if matches!(
                e,
                Event::DeviceRegistered { .. } | Event::DeviceIdentitySet { created: true, .. }
            ) {
                continue;
            }
        }
        if matches!(e, Event::DeviceDeleted { .. }) {
            // A deleted device joins nothing.
            changed.remove(id);
            continue;
        }
        let Some(d) = changed.get_mut(id) else {
            continue;
        };
        match e {
            Event::TwinPatched {
                section, patch, at, ..
            } => d.patch(*section, patch, *at),
            Event::TwinReplaced {
                section, value, at, ..
            } => d.replace(*section, value, *at),
            Event::ConnectionChanged { connected, .. } => {
                d.connection = ConnectionState::from_connected(*connected)
            }
            Event::DeviceUpdated { device, at } => d.update(device, *at),
            Event::DeviceIdentitySet { at, .. } => {
                if let Some(identity) = e.identity() {
                    d.set_identity(&identity, *at);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for j in watching {
        let Some(q) = &j.watch else { continue };
        let run = j.current_run();
        let joined: Vec<DeviceId> =
            changed
                .values()
                // A device any run has already had (for example one that succeeded before a rerun)
                // does not join again: a rerun is only for the failed ones.
                // Joining is edge-triggered: only a device that this command makes start matching
                // joins. One that already matched (say, while the job had ended) does not join later
                // because of an unrelated change, so alike devices are treated alike.
                .filter(|d| {
                    !j.runs.iter().any(|r| r.has_device(&d.id))
                        && q.matches(&d.query_document(q.names_metadata()))
                        && !state.registry.devices.get(&d.id).is_some_and(|before| {
                            q.matches(&before.query_document(q.names_metadata()))
                        })
                })
                .map(|d| d.id.clone())
                .collect();
        if joined.is_empty() {
            continue;
        }
        let new_batch = run.batches.len() as u32;
        out.push(Event::DevicesJoined {
            job: j.id.clone(),
            run: run.number,
            devices: joined,
            at,
        });
        // A running job whose started batches are all done is idle: start the newcomers now.
        if j.status == JobStatus::Running
            && run.started_at.is_some()
            && run.batches_started as usize == run.batches.len()
            && run.started_batches_done()
        {
            out.push(Event::BatchStarted {
                job: j.id.clone(),
                run: run.number,
                batch: new_batch,
                at,
            });
        }
    }
    out
}

fn mark_dispatched(
    state: &State,
    id: &JobId,
    run: RunId,
    devices: &[DeviceId],
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    let j = job(state, id)?;
    if j.status != JobStatus::Running || j.current_run().number != run {
        return Ok(Vec::new());
    }
    let window = crate::window::job_window(j, at);
    if window.is_some_and(|w| !w.is_open()) {
        return Ok(Vec::new());
    }
    // A dispatch always follows the `WindowOpened` of its window in the log.
    let opened = window.and_then(|w| crate::window::event_due(j, w, at));
    let (mut allowance, _) = j.dispatch_allowance(at);
    let needs_device = j.spec.needs_device();
    let mut s = Scratch::new(j, at);
    let mut registry_events = Vec::new();
    for device in devices {
        if allowance == 0 || s.status != JobStatus::Running {
            break;
        }
        let Some(i) = s.run_index(device) else {
            continue;
        };
        let (status, attempts) = s.device(i);
        let d = &s.job.current_run().devices[i as usize];
        let batch = d.batch;
        if status != DeviceStatus::Pending || batch >= s.batches_started {
            continue;
        }
        if d.ready_since.is_some_and(|t| t > at) {
            // Still waiting out a retry backoff.
            continue;
        }
        let reg = state.registry.devices.get(device);
        let reason = match reg {
            None => Some(FailureReason::DeviceNotFound),
            Some(d) if !d.enabled => Some(FailureReason::DeviceDisabled),
            Some(d) if needs_device && d.connection == ConnectionState::Disconnected => continue,
            Some(_) => None,
        };
        allowance -= 1;
        let reason = reason.or_else(|| reg.and_then(|d| twin_ops_overflow(d, &j.spec.operations)));
        if let Some(reason) = reason {
            s.fail(i, attempts, reason, None);
            continue;
        }
        let attempt = attempts + 1;
        s.dispatch(i, attempt);
        for op in &j.spec.operations {
            match op {
                Operation::PatchDesired { patch } => {
                    registry_events.push(patched(device, TwinSection::Desired, patch, at))
                }
                Operation::PatchTags { patch } => {
                    registry_events.push(patched(device, TwinSection::Tags, patch, at))
                }
                Operation::SetCloudProperty { name, value } => {
                    let mut m = serde_json::Map::new();
                    m.insert(name.clone(), value.clone());
                    registry_events.push(patched(
                        device,
                        TwinSection::CloudProperties,
                        &Value::Object(m),
                        at,
                    ))
                }
                Operation::InvokeMethod(_) => {}
            }
        }
        if !needs_device {
            s.succeed(i, attempt, None);
        }
    }
    s.progress();
    let mut events: Vec<Event> = opened.into_iter().collect();
    events.extend(s.events);
    let joins = continuous_joins(state, &registry_events, at);
    events.extend(registry_events);
    events.extend(joins);
    Ok(events)
}

/// A job's twin operations that would take one of the device's twin sections past IoT Hub's
/// limit fail that device instead of growing its twin.
fn twin_ops_overflow(device: &Device, ops: &[Operation]) -> Option<FailureReason> {
    for section in [TwinSection::Tags, TwinSection::Desired] {
        let patches: Vec<&Value> = ops
            .iter()
            .filter_map(|op| match (op, section) {
                (Operation::PatchDesired { patch }, TwinSection::Desired)
                | (Operation::PatchTags { patch }, TwinSection::Tags) => Some(patch),
                _ => None,
            })
            .collect();
        if patches.is_empty() {
            continue;
        }
        let current = twin_size::current(device, section);
        if let Err(e) = twin_size::check_patched(section, current, &patches) {
            return Some(FailureReason::DispatchFailed {
                message: e.to_string(),
            });
        }
    }
    None
}

fn record_results(
    state: &State,
    results: &[DeviceResult],
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    // Group by job in order of first appearance; within a job, results apply in the given order
    // so that the threshold cancels at exactly the result that crosses it.
    let mut order: Vec<&JobId> = Vec::new();
    let mut by_job: BTreeMap<&JobId, Vec<&DeviceResult>> = BTreeMap::new();
    for r in results {
        by_job
            .entry(&r.job)
            .or_insert_with(|| {
                order.push(&r.job);
                Vec::new()
            })
            .push(r);
    }
    let mut events = Vec::new();
    for id in order {
        let Some(j) = state.jobs.get(id) else {
            continue;
        };
        if !matches!(j.status, JobStatus::Running | JobStatus::Stopped) {
            continue;
        }
        let mut s = Scratch::new(j, at);
        for r in by_job.get(id).into_iter().flatten() {
            if !matches!(s.status, JobStatus::Running | JobStatus::Stopped) {
                break;
            }
            if r.run != s.job.current_run().number {
                continue;
            }
            let Some(i) = s.run_index(&r.device) else {
                continue;
            };
            let (status, attempts) = s.device(i);
            if status != DeviceStatus::Running || attempts != r.attempt {
                continue;
            }
            match &r.outcome {
                Outcome::Responded { status, payload } => {
                    let response = Some(MethodResponse {
                        status: *status,
                        payload: payload.clone(),
                    });
                    if (200..300).contains(status) {
                        s.succeed(i, r.attempt, response);
                    } else {
                        s.fail(
                            i,
                            r.attempt,
                            FailureReason::DeviceError { status: *status },
                            response,
                        );
                    }
                }
                Outcome::Failed(reason) => s.fail(i, r.attempt, reason.clone(), None),
            }
        }
        s.progress();
        events.extend(s.events);
    }
    Ok(events)
}

fn advance(state: &State, at: Timestamp) -> Vec<Event> {
    let mut events = Vec::new();
    for j in state.jobs.values() {
        match j.status {
            JobStatus::Scheduled | JobStatus::Pending if j.start_at.is_none_or(|s| s <= at) => {
                let mut s = Scratch::new(j, at);
                s.start();
                if s.status == JobStatus::Running {
                    s.events.extend(crate::window::job_event_due(j, at));
                }
                events.extend(s.events);
            }
            JobStatus::Running | JobStatus::Stopped | JobStatus::Paused => {
                let run = j.current_run();
                if let (Some(max), Some(started)) =
                    (j.spec.schedule.max_execution_secs, run.started_at)
                {
                    if started.plus_secs(max as i64) <= at {
                        events.push(Event::JobFailed {
                            job: j.id.clone(),
                            reason: JobFailure::MaxExecutionTimeExceeded,
                            at,
                        });
                        continue;
                    }
                }
                if j.status == JobStatus::Running {
                    events.extend(crate::window::job_event_due(j, at));
                }
                let mut s = Scratch::new(j, at);
                for &(deadline, i) in run.deadlines.iter() {
                    if deadline > at || !matches!(s.status, JobStatus::Running | JobStatus::Stopped)
                    {
                        break;
                    }
                    let (status, attempts) = s.device(i);
                    if status == DeviceStatus::Running {
                        s.fail(i, attempts, FailureReason::Timeout, None);
                    }
                }
                if s.status == JobStatus::Running && j.spec.needs_device() {
                    let window = j.spec.connect_window_ms();
                    for i in run.eligible(at) {
                        if s.status != JobStatus::Running {
                            break;
                        }
                        let d = &run.devices[i as usize];
                        let offline = state
                            .registry
                            .devices
                            .get(&d.device)
                            .is_some_and(|r| r.connection == ConnectionState::Disconnected);
                        let waited_out = crate::window::connect_wait_since(j, d, at)
                            .is_some_and(|t| t.plus_millis(window) <= at);
                        if offline && waited_out && s.device(i).0 == DeviceStatus::Pending {
                            let attempts = s.device(i).1;
                            s.fail(i, attempts, FailureReason::NotConnected, None);
                        }
                    }
                }
                s.progress();
                events.extend(s.events);
            }
            _ => {}
        }
    }
    events
}

/// The overlay `decide` works on: one job as it will be after the events emitted so far.
struct Scratch<'a> {
    job: &'a Job,
    at: Timestamp,
    status: JobStatus,
    run: RunId,
    stats: Stats,
    batch_stats: BTreeMap<u32, Stats>,
    batches_started: u32,
    batches_total: u32,
    devices: BTreeMap<u32, (DeviceStatus, u32)>,
    events: Vec<Event>,
    /// Counters the rollout rules read, as they will be after the events so far.
    notified: u64,
    not_connected: u64,
    rate: Option<u32>,
}

impl<'a> Scratch<'a> {
    fn new(job: &'a Job, at: Timestamp) -> Self {
        let run = job.current_run();
        Scratch {
            job,
            at,
            status: job.status,
            run: run.number,
            stats: run.stats,
            batch_stats: BTreeMap::new(),
            batches_started: run.batches_started,
            batches_total: run.batches.len() as u32,
            devices: BTreeMap::new(),
            events: Vec::new(),
            notified: run.notified,
            not_connected: run.not_connected,
            rate: job.rate_per_minute,
        }
    }

    fn run_index(&self, d: &DeviceId) -> Option<u32> {
        self.job.current_run().position(d)
    }

    fn device(&self, i: u32) -> (DeviceStatus, u32) {
        self.devices.get(&i).copied().unwrap_or_else(|| {
            let d = &self.job.current_run().devices[i as usize];
            (d.status, d.attempts)
        })
    }

    fn batch(&self, b: u32) -> Stats {
        self.batch_stats
            .get(&b)
            .copied()
            .unwrap_or_else(|| self.job.current_run().batches[b as usize].stats)
    }

    fn set(&mut self, i: u32, to: DeviceStatus, attempts: u32) {
        let (from, _) = self.device(i);
        let b = self.job.current_run().devices[i as usize].batch;
        self.devices.insert(i, (to, attempts));
        if from != to {
            self.stats.moved(from, to);
            let mut bs = self.batch(b);
            bs.moved(from, to);
            self.batch_stats.insert(b, bs);
        }
    }

    fn id(&self, i: u32) -> DeviceId {
        self.job.current_run().devices[i as usize].device.clone()
    }

    fn dispatch(&mut self, i: u32, attempt: u32) {
        self.set(i, DeviceStatus::Running, attempt);
        self.events.push(Event::DeviceDispatched {
            job: self.job.id.clone(),
            run: self.run,
            device: self.id(i),
            attempt,
            at: self.at,
        });
        if attempt == 1 {
            self.notified += 1;
            self.check_rate();
        }
    }

    /// Records a rise of the exponential rate as soon as its criterion is met.
    fn check_rate(&mut self) {
        let Some(e) = self.job.spec.rollout.exponential else {
            return;
        };
        let now = self.rate.unwrap_or_else(|| e.rate_at(0));
        let earned = e.rate(self.notified, self.stats.succeeded);
        if earned > now {
            self.rate = Some(earned);
            self.events.push(Event::RateChanged {
                job: self.job.id.clone(),
                run: self.run,
                per_minute: earned,
                at: self.at,
            });
        }
    }

    /// Cancels the job at the first abort criterion the run's outcomes cross.
    fn check_abort(&mut self) {
        let criteria = &self.job.spec.rollout.abort;
        if criteria.is_empty() || !matches!(self.status, JobStatus::Running | JobStatus::Stopped) {
            return;
        }
        let tally = crate::rollout::Tally {
            finished: self.stats.succeeded + self.stats.failures(),
            failed: self.stats.failed,
            timed_out: self.stats.timed_out,
            not_connected: self.not_connected,
        };
        if let Some(index) = crate::rollout::abort::tripped(criteria, &tally) {
            let criterion = criteria[index];
            self.status = JobStatus::Cancelled;
            self.events.push(Event::JobCancelled {
                job: self.job.id.clone(),
                reason: CancelReason::Criterion {
                    index: index as u32,
                    criterion,
                    failures: tally.count(criterion.kind),
                    finished: tally.finished,
                },
                at: self.at,
            });
        }
    }

    fn succeed(&mut self, i: u32, attempt: u32, response: Option<MethodResponse>) {
        self.set(i, DeviceStatus::Succeeded, attempt);
        self.events.push(Event::DeviceSucceeded {
            job: self.job.id.clone(),
            run: self.run,
            device: self.id(i),
            attempt,
            response,
            at: self.at,
        });
        self.check_rate();
        self.check_abort();
    }

    /// Records a failed attempt: retried if the policy allows, otherwise final, in which case
    /// the cancellation threshold is checked at once.
    fn fail(
        &mut self,
        i: u32,
        attempt: u32,
        reason: FailureReason,
        response: Option<MethodResponse>,
    ) {
        let policy = self.job.spec.retry;
        let retryable = match reason {
            FailureReason::Timeout => policy.retry_timed_out,
            FailureReason::DeviceError { .. } | FailureReason::DispatchFailed { .. } => {
                policy.retry_failed
            }
            FailureReason::NotConnected
            | FailureReason::DeviceNotFound
            | FailureReason::DeviceDisabled => false,
        };
        let retry = retryable && attempt < policy.max_attempts;
        let to = if retry {
            DeviceStatus::Pending
        } else if reason.is_timeout() {
            DeviceStatus::TimedOut
        } else {
            DeviceStatus::Failed
        };
        let not_connected = !retry && reason == FailureReason::NotConnected;
        self.set(i, to, attempt);
        self.events.push(Event::DeviceFailed {
            job: self.job.id.clone(),
            run: self.run,
            device: self.id(i),
            attempt,
            reason,
            response,
            retry,
            at: self.at,
        });
        if not_connected {
            self.not_connected += 1;
        }
        if !retry {
            self.check_threshold(self.job.current_run().devices[i as usize].batch);
            self.check_abort();
        }
    }

    fn check_threshold(&mut self, batch: u32) {
        let Some(t) = self.job.spec.cancellation else {
            return;
        };
        let (failures, population, batch) = if t.per_batch {
            let bs = self.batch(batch);
            (bs.failures(), bs.devices, Some(batch))
        } else {
            (self.stats.failures(), self.stats.devices, None)
        };
        if t.limit.crossed(failures, population) {
            self.status = JobStatus::Cancelled;
            self.events.push(Event::JobCancelled {
                job: self.job.id.clone(),
                reason: CancelReason::Threshold {
                    failures,
                    population,
                    batch,
                },
                at: self.at,
            });
        }
    }

    fn start(&mut self) {
        self.status = JobStatus::Running;
        self.events.push(Event::JobStarted {
            job: self.job.id.clone(),
            run: self.run,
            at: self.at,
        });
        self.progress();
    }

    /// Moves a running job on: the next batch when the current one is done, completion after the
    /// last (a continuous job stays running, waiting for devices to join).
    fn progress(&mut self) {
        if self.status != JobStatus::Running {
            return;
        }
        let current_done = match self.batches_started.checked_sub(1) {
            None => true,
            Some(b) => self.batch(b).all_final(),
        };
        if !current_done {
            return;
        }
        if self.batches_started < self.batches_total {
            if let (Some(gate), Some(done)) = (
                self.job.spec.rollout.gate,
                self.batches_started.checked_sub(1),
            ) {
                use crate::rollout::gate::Verdict;
                match gate.verdict(&self.batch(done)) {
                    Verdict::Open => {}
                    Verdict::Pause(reason) => {
                        self.status = JobStatus::Paused;
                        self.events.push(Event::JobPaused {
                            job: self.job.id.clone(),
                            run: self.run,
                            batch: done,
                            reason,
                            at: self.at,
                        });
                        return;
                    }
                    Verdict::Cancel(reason) => {
                        self.status = JobStatus::Cancelled;
                        self.events.push(Event::JobCancelled {
                            job: self.job.id.clone(),
                            reason: CancelReason::Gate {
                                batch: done,
                                reason,
                            },
                            at: self.at,
                        });
                        return;
                    }
                }
            }
            self.next_batch();
        } else if !self.job.spec.target.continuous {
            self.status = JobStatus::Completed;
            self.events.push(Event::JobCompleted {
                job: self.job.id.clone(),
                at: self.at,
            });
        }
    }
}

impl Scratch<'_> {
    /// Starts the next batch, past any gate (the gate was checked, or an operator continued).
    fn next_batch(&mut self) {
        if self.batches_started >= self.batches_total {
            return;
        }
        self.events.push(Event::BatchStarted {
            job: self.job.id.clone(),
            run: self.run,
            batch: self.batches_started,
            at: self.at,
        });
        self.batches_started += 1;
    }
}

/// A result for a device the dispatcher reached; here so callers can build one without the
/// protocol's types.
pub fn responded(
    job: &JobId,
    run: RunId,
    device: &DeviceId,
    attempt: u32,
    status: i32,
    payload: Value,
) -> DeviceResult {
    DeviceResult {
        job: job.clone(),
        run,
        device: device.clone(),
        attempt,
        outcome: Outcome::Responded {
            status,
            payload: payload.into(),
        },
    }
}
