//! `evolve`: apply one event to the state. Total and deterministic: an event that does not fit the
//! state (which `decide` never produces) changes nothing rather than panicking, so replaying any
//! log is safe.

use std::collections::VecDeque;

use muster_types::{DeviceId, JobId, RunId, Timestamp};

use crate::event::Event;
use crate::job::{DeviceStatus, FailureReason, Job, JobStatus, MethodResponse, Run};
use crate::query::Query;
use crate::registry::{ConnectionState, Device, Group, TwinSection};
use crate::spec::TargetSelector;
use crate::window::WindowMark;
use crate::State;

/// Like [`evolve`], but takes the event by value so a device's response moves into the state
/// instead of being copied: the path for applying freshly decoded events (replay from disk, the
/// state machine), where the copy would be the biggest cost.
pub fn apply(state: &mut State, event: Event) {
    match event {
        Event::DeviceSucceeded {
            job,
            run,
            device,
            response,
            at,
            ..
        } => succeeded(state, &job, run, &device, response, at),
        Event::DeviceFailed {
            job,
            run,
            device,
            reason,
            response,
            retry,
            at,
            ..
        } => failed(state, &job, run, &device, reason, response, retry, at),
        other => evolve(state, &other),
    }
}

pub fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::JobCreated {
            job,
            spec,
            devices,
            at,
        } => {
            let watch = if spec.target.continuous {
                match &spec.target.selector {
                    TargetSelector::Query(q) => Query::parse(q).ok(),
                    TargetSelector::Group(g) => {
                        state.registry.groups.get(g).map(|g| g.query.clone())
                    }
                    TargetSelector::Devices(_) => None,
                }
            } else {
                None
            };
            let run = Run::new(muster_types::RunId(0), None, devices, spec, *at);
            state.jobs.insert(
                job.clone(),
                Job {
                    id: job.clone(),
                    spec: (**spec).clone(),
                    watch,
                    status: JobStatus::Pending,
                    created_at: *at,
                    start_at: spec.schedule.start_at,
                    started_at: None,
                    ended_at: None,
                    resumed_at: None,
                    cancel_reason: None,
                    failure: None,
                    runs: vec![run],
                    recent_dispatches: VecDeque::new(),
                    rate_per_minute: None,
                    paused: None,
                    window: None,
                    detail_expired: false,
                },
            );
        }
        Event::JobScheduled { job, start_at, .. } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Scheduled;
                j.start_at = Some(*start_at);
            }
        }
        Event::JobStarted { job, run, at } => {
            if let Some(j) = state.jobs.get_mut(job) {
                if let Some(r) = j.runs.get_mut(run.0 as usize) {
                    r.started_at = Some(*at);
                }
                j.status = JobStatus::Running;
                j.started_at = Some(*at);
                j.ended_at = None;
            }
        }
        Event::BatchStarted {
            job,
            run,
            batch,
            at,
        } => {
            let Some(r) = run_mut(state, job, run.0) else {
                return;
            };
            let Some(b) = r.batches.get_mut(*batch as usize) else {
                return;
            };
            b.started_at = Some(*at);
            let (start, end) = (b.start, b.end);
            r.batches_started = r.batches_started.max(batch + 1);
            for i in start..end {
                let d = &mut r.devices[i as usize];
                if d.status == DeviceStatus::Pending {
                    d.ready_since = Some(*at);
                    r.ready.insert(i);
                }
            }
        }
        Event::DeviceDispatched {
            job,
            run,
            device,
            attempt,
            at,
        } => {
            let Some(j) = state.jobs.get_mut(job) else {
                return;
            };
            let window = j.spec.response_window_ms();
            if j.spec.rollout.rate_limited() {
                record_dispatch(&mut j.recent_dispatches, *at);
            }
            let Some(r) = j.runs.get_mut(run.0 as usize) else {
                return;
            };
            let Some(i) = r.position(device) else {
                return;
            };
            set_status(r, i, DeviceStatus::Running);
            r.ready.remove(&i);
            if let Some(t) = r.devices[i as usize].ready_since {
                r.backoff.remove(&(t, i));
            }
            if r.devices[i as usize].attempts == 0 {
                r.notified += 1;
            }
            let d = &mut r.devices[i as usize];
            d.attempts = *attempt;
            d.dispatched_at = Some(*at);
            r.deadlines.insert((at.plus_millis(window), i));
        }
        Event::DeviceSucceeded {
            job,
            run,
            device,
            response,
            at,
            ..
        } => succeeded(state, job, *run, device, response.clone(), *at),
        Event::DeviceFailed {
            job,
            run,
            device,
            reason,
            response,
            retry,
            at,
            ..
        } => failed(
            state,
            job,
            *run,
            device,
            reason.clone(),
            response.clone(),
            *retry,
            *at,
        ),
        Event::DevicesJoined {
            job, run, devices, ..
        } => {
            if let Some(r) = run_mut(state, job, run.0) {
                r.append_batch(devices);
            }
        }
        Event::JobStopped { job, .. } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Stopped;
            }
        }
        Event::JobPaused {
            job, batch, reason, ..
        } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Paused;
                j.paused = Some((*batch, *reason));
            }
        }
        Event::JobContinued { job, .. } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Running;
                j.paused = None;
            }
        }
        Event::RateChanged {
            job,
            run,
            per_minute,
            ..
        } => {
            if let Some(j) = state.jobs.get_mut(job) {
                if j.current_run().number == *run {
                    j.rate_per_minute = Some(*per_minute);
                }
            }
        }
        Event::WindowOpened {
            job, since, until, ..
        } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.window = Some(WindowMark::Open {
                    since: *since,
                    until: *until,
                });
            }
        }
        Event::WindowClosed { job, next_open, .. } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.window = Some(WindowMark::Closed {
                    next_open: *next_open,
                });
            }
        }
        Event::JobResumed { job, at } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.resumed_at = Some(*at);
                j.paused = None;
                j.status = if j.current_run().started_at.is_some() {
                    JobStatus::Running
                } else if j.start_at.is_some_and(|s| s > *at) {
                    JobStatus::Scheduled
                } else {
                    JobStatus::Pending
                };
            }
        }
        Event::JobCancelled { job, reason, at } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Cancelled;
                j.cancel_reason = Some(reason.clone());
                end_job(j, *at);
            }
        }
        Event::JobCompleted { job, at } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Completed;
                j.ended_at = Some(*at);
            }
        }
        Event::JobFailed { job, reason, at } => {
            if let Some(j) = state.jobs.get_mut(job) {
                j.status = JobStatus::Failed;
                j.failure = Some(reason.clone());
                end_job(j, *at);
            }
        }
        Event::JobDetailExpired { job, .. } => {
            if let Some(j) = state.jobs.get_mut(job) {
                crate::retention::drop_detail(j);
            }
        }
        Event::JobExpired { job, .. } => {
            state.jobs.remove(job);
            crate::schedule::forget_job(state, job);
        }
        Event::RerunStarted {
            job,
            run,
            rerun_id,
            devices,
            at,
        } => {
            if let Some(j) = state.jobs.get_mut(job) {
                let r = Run::new(*run, Some(rerun_id.clone()), devices, &j.spec, *at);
                j.runs.push(r);
                j.status = JobStatus::Pending;
                j.ended_at = None;
                j.cancel_reason = None;
                j.failure = None;
                j.resumed_at = None;
                j.start_at = None;
                j.recent_dispatches.clear();
                j.rate_per_minute = None;
                j.paused = None;
            }
        }
        Event::DeviceRegistered { device, at } => {
            // A device registered again starts over (`Unknown`).
            state.registry.disconnected.remove(&device.id);
            state
                .registry
                .devices
                .insert(device.id.clone(), Device::new(device, *at));
        }
        Event::DeviceUpdated { device, at } => {
            if let Some(d) = state.registry.devices.get_mut(&device.id) {
                d.update(device, *at);
            }
        }
        Event::DeviceIdentitySet { device, at, .. } => {
            if let Some(identity) = event.identity() {
                match state.registry.devices.get_mut(device) {
                    Some(d) => d.set_identity(&identity, *at),
                    None => {
                        state
                            .registry
                            .devices
                            .insert(device.clone(), Device::from_identity(&identity, *at));
                    }
                }
            }
        }
        Event::DeviceDeleted { device, .. } => {
            state.registry.devices.remove(device);
            state.registry.disconnected.remove(device);
        }
        Event::TwinPatched {
            device,
            section,
            patch,
            at,
        } => {
            if let Some(d) = state.registry.devices.get_mut(device) {
                d.patch(*section, patch, *at);
                if *section == TwinSection::Reported {
                    d.last_activity = Some(*at);
                }
            }
        }
        Event::TwinReplaced {
            device,
            section,
            value,
            at,
        } => {
            if let Some(d) = state.registry.devices.get_mut(device) {
                d.replace(*section, value, *at);
            }
        }
        Event::ConnectionChanged {
            device,
            connected,
            at,
        } => {
            if let Some(d) = state.registry.devices.get_mut(device) {
                d.connection = ConnectionState::from_connected(*connected);
                d.connection_updated = Some(*at);
                d.last_activity = Some(*at);
                if *connected {
                    state.registry.disconnected.remove(device);
                } else {
                    state.registry.disconnected.insert(device.clone());
                }
            }
        }
        Event::GroupSaved {
            group,
            display_name,
            description,
            query,
            at,
        } => {
            if let Ok(q) = Query::parse(query) {
                let version = state.registry.groups.get(group).map_or(0, |g| g.version) + 1;
                state.registry.groups.insert(
                    group.clone(),
                    Group {
                        id: group.clone(),
                        display_name: display_name.clone(),
                        description: description.clone(),
                        query: q,
                        saved_at: *at,
                        version,
                    },
                );
            }
        }
        Event::GroupDeleted { group, .. } => {
            state.registry.groups.remove(group);
        }
        Event::PolicySaved { .. }
        | Event::PolicyDeleted { .. }
        | Event::ApiTokenCreated { .. }
        | Event::ApiTokenDeleted { .. } => {
            crate::auth::rules::evolve(&mut state.auth, event);
        }
        Event::MethodInvoked { .. }
        | Event::MethodSent { .. }
        | Event::MethodResponded { .. }
        | Event::MethodFailed { .. } => crate::invocation::evolve(state, event),
        Event::DesiredSent { .. } => {}
        Event::ScheduledJobSaved { .. }
        | Event::ScheduledJobDeleted { .. }
        | Event::ScheduledJobOccurred { .. }
        | Event::ScheduledJobMissed { .. } => crate::schedule::evolve(state, event),
    }
    crate::push::after(state, event);
}

fn succeeded(
    state: &mut State,
    job: &JobId,
    run: RunId,
    device: &DeviceId,
    response: Option<MethodResponse>,
    at: Timestamp,
) {
    let Some((r, i, window)) = locate(state, job, run, device) else {
        return;
    };
    leave_indexes(r, i, window);
    set_status(r, i, DeviceStatus::Succeeded);
    let d = &mut r.devices[i as usize];
    d.finished_at = Some(at);
    d.response = response;
    d.last_error = None;
}

#[allow(clippy::too_many_arguments)]
fn failed(
    state: &mut State,
    job: &JobId,
    run: RunId,
    device: &DeviceId,
    reason: FailureReason,
    response: Option<MethodResponse>,
    retry: bool,
    at: Timestamp,
) {
    let retry_at = if retry {
        state.jobs.get(job).and_then(|j| {
            let attempt = j.run(run)?.device(device)?.attempts;
            crate::rollout::backoff::retry_at(&j.spec.retry, job, run, device, attempt, &reason, at)
        })
    } else {
        None
    };
    let Some((r, i, window)) = locate(state, job, run, device) else {
        return;
    };
    leave_indexes(r, i, window);
    let to = if retry {
        match retry_at {
            Some(t) => r.backoff.insert((t, i)),
            None => r.ready.insert(i),
        };
        DeviceStatus::Pending
    } else if reason.is_timeout() {
        DeviceStatus::TimedOut
    } else {
        DeviceStatus::Failed
    };
    if !retry && reason == FailureReason::NotConnected {
        r.not_connected += 1;
    }
    set_status(r, i, to);
    let d = &mut r.devices[i as usize];
    if retry {
        d.ready_since = Some(retry_at.unwrap_or(at));
    } else {
        d.finished_at = Some(at);
    }
    d.last_error = Some(reason);
    d.response = response;
}

/// Finds a device's slot in a run, with the job's response window (the deadline offset).
fn locate<'a>(
    state: &'a mut State,
    job: &JobId,
    run: RunId,
    device: &DeviceId,
) -> Option<(&'a mut Run, u32, i64)> {
    let j = state.jobs.get_mut(job)?;
    let window = j.spec.response_window_ms();
    let r = j.runs.get_mut(run.0 as usize)?;
    let i = r.position(device)?;
    Some((r, i, window))
}

fn run_mut<'a>(state: &'a mut State, job: &JobId, run: u32) -> Option<&'a mut Run> {
    state.jobs.get_mut(job)?.runs.get_mut(run as usize)
}

/// Moves a device to a new status, keeping the run's and its batch's counters in step.
fn set_status(r: &mut Run, i: u32, to: DeviceStatus) {
    let d = &mut r.devices[i as usize];
    let from = d.status;
    if from == to {
        return;
    }
    d.status = to;
    r.stats.moved(from, to);
    if let Some(b) = r.batches.get_mut(d.batch as usize) {
        b.stats.moved(from, to);
    }
}

/// Takes a device out of the ready and in-flight indexes.
fn leave_indexes(r: &mut Run, i: u32, window: i64) {
    let d = &r.devices[i as usize];
    match d.status {
        DeviceStatus::Pending => {
            r.ready.remove(&i);
            if let Some(t) = d.ready_since {
                r.backoff.remove(&(t, i));
            }
        }
        DeviceStatus::Running => {
            if let Some(t) = d.dispatched_at {
                r.deadlines.remove(&(t.plus_millis(window), i));
            }
        }
        _ => {}
    }
}

/// Ends a job: whatever is not final in the current run is cancelled.
fn end_job(j: &mut Job, at: Timestamp) {
    j.ended_at = Some(at);
    j.paused = None;
    let r = j.current_run_mut();
    for i in 0..r.devices.len() as u32 {
        if !r.devices[i as usize].status.is_final() {
            set_status(r, i, DeviceStatus::Cancelled);
            r.devices[i as usize].finished_at = Some(at);
        }
    }
    r.ready.clear();
    r.deadlines.clear();
    r.backoff.clear();
}

fn record_dispatch(recent: &mut VecDeque<Timestamp>, at: Timestamp) {
    let window_start = at.plus_millis(-60_000);
    while recent.front().is_some_and(|t| *t <= window_start) {
        recent.pop_front();
    }
    recent.push_back(at);
}
