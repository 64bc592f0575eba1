//! What the leader must do, derived from state alone, so a new leader recomputes it after an
//! election and nothing depends on a previous leader's memory.

use std::sync::Arc;

use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::Value;

use crate::invocation::InvokeRequest;
use crate::job::{DeviceRun, DeviceStatus, Job, JobStatus, Run};
use crate::spec::Operation;
use crate::State;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Something is due now (a start, a deadline, a connect timeout, an expiry): propose
    /// `Command::Advance` stamped with the current time.
    Advance,
    /// Nothing is due before this time; recompute then (or earlier, when an entry is applied).
    WakeAt(Timestamp),
    /// These devices may be dispatched now: propose `Command::MarkDispatched` for them, then send
    /// what it records.
    Dispatch {
        job: JobId,
        run: RunId,
        devices: Vec<DeviceId>,
    },
    /// Send (or, after a leader change, send again) an attempt in flight.
    Send(SendRequest),
    /// Publish these devices' desired-property patches, then propose `Command::MarkDesiredSent`
    /// for them (`crate::push`).
    PushDesired(Vec<crate::push::DesiredPush>),
    /// Publish (or publish again) a direct method sent to its device and not yet answered.
    /// Listed on every computation, whatever `sends` says: there are few, and the dispatcher
    /// learns of new ones only from here.
    Invoke(InvokeRequest),
}

/// One attempt to put on the wire. `rid` is stable for the attempt, so a resend after a leader
/// change is recognisable as a duplicate by the device.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    pub job: JobId,
    pub run: RunId,
    pub device: DeviceId,
    pub attempt: u32,
    pub rid: String,
    pub deadline: Timestamp,
    /// The job's methods, in order; shared by every attempt of the job.
    pub methods: Arc<[MethodInvocation]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodInvocation {
    pub name: String,
    pub payload: Value,
    pub response_timeout_secs: u32,
}

/// What [`actions_with`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionOptions {
    /// Bounds the devices listed per job in a `Dispatch` (the dispatcher's free slots), so a batch
    /// of 100,000 does not become one huge action.
    pub max_dispatch: usize,
    /// List a `Send` for every attempt in flight. A leader needs them when it starts (or
    /// reconnects, or missed changes) to put on the wire what no answer came back for; between
    /// those moments it knows what it sent, and listing 10,000 attempts (with their payloads) on
    /// every recomputation is most of the cost of computing actions.
    pub sends: bool,
}

/// Everything the leader should do at `now`. `max_dispatch` bounds the devices listed per job (the
/// dispatcher's free slots), so a batch of 100,000 does not become one huge action.
pub fn actions(state: &State, now: Timestamp, max_dispatch: usize) -> Vec<Action> {
    actions_with(
        state,
        now,
        ActionOptions {
            max_dispatch,
            sends: true,
        },
    )
}

/// [`actions`] with options: the same list, less the `Send`s when `opts.sends` is false.
pub fn actions_with(state: &State, now: Timestamp, opts: ActionOptions) -> Vec<Action> {
    let max_dispatch = opts.max_dispatch;
    let mut out = Vec::new();
    let mut next: Option<Timestamp> = None;
    let mut due = false;
    let consider = |t: Timestamp, next: &mut Option<Timestamp>, due: &mut bool| {
        if t <= now {
            *due = true;
        } else if next.is_none_or(|n| t < n) {
            *next = Some(t);
        }
    };
    for j in state.jobs.values() {
        match j.status {
            JobStatus::Scheduled | JobStatus::Pending => {
                consider(j.start_at.unwrap_or(now), &mut next, &mut due);
            }
            JobStatus::Running | JobStatus::Stopped | JobStatus::Paused => {
                let run = j.current_run();
                if let (Some(max), Some(started)) =
                    (j.spec.schedule.max_execution_secs, run.started_at)
                {
                    consider(started.plus_secs(max as i64), &mut next, &mut due);
                }
                if let Some(&(deadline, _)) = run.deadlines.first() {
                    consider(deadline, &mut next, &mut due);
                }
                if opts.sends && !run.deadlines.is_empty() {
                    let methods = job_methods(j);
                    for &(_, i) in &run.deadlines {
                        let d = &run.devices[i as usize];
                        if let Some(req) = request(j, run, d, &methods) {
                            out.push(Action::Send(req));
                        }
                    }
                }
                if j.status != JobStatus::Running {
                    continue;
                }
                if let Some(w) = crate::window::job_window(j, now) {
                    // Every opening and closing is recorded while the job runs; the next one
                    // also lets devices go (or stops them).
                    if crate::window::event_due(j, w, now).is_some() {
                        due = true;
                    } else if let Some(t) = crate::window::next_change(j) {
                        consider(t, &mut next, &mut due);
                    }
                    if !w.is_open() {
                        continue;
                    }
                }
                let needs_device = j.spec.needs_device();
                let window = j.spec.connect_window_ms();
                let (allowance, reopens) = j.dispatch_allowance(now);
                let cap = allowance.min(max_dispatch);
                let mut devices = Vec::new();
                if let Some(t) = run.next_retry(now) {
                    consider(t, &mut next, &mut due);
                }
                for i in run.eligible(now) {
                    let d = &run.devices[i as usize];
                    let full = devices.len() >= cap;
                    // Nothing waits for a connection, or no device is offline: past the first
                    // `cap`, no device changes what is due or when to wake (only an offline
                    // one's connect timeout could), so the rest of a large batch is not walked.
                    if full && (!needs_device || state.registry.disconnected.is_empty()) {
                        break;
                    }
                    if !needs_device {
                        devices.push(d.device.clone());
                        continue;
                    }
                    let wait_until =
                        crate::window::connect_wait_since(j, d, now).map(|t| t.plus_millis(window));
                    // Once the list is full, a device matters only if it is offline and its
                    // connect timeout would change what is due or when to wake: skip the
                    // registry lookup (the bulk of the cost for a large batch) otherwise.
                    if full
                        && !wait_until.is_some_and(|t| {
                            if t <= now {
                                !due
                            } else {
                                next.is_none_or(|n| t < n)
                            }
                        })
                    {
                        continue;
                    }
                    let offline = state.registry.is_disconnected(&d.device);
                    if offline {
                        if let Some(t) = wait_until {
                            consider(t, &mut next, &mut due);
                        }
                    } else if !full {
                        devices.push(d.device.clone());
                    }
                }
                if let Some(t) = reopens {
                    if run.eligible(now).next().is_some() {
                        consider(t, &mut next, &mut due);
                    }
                }
                if !devices.is_empty() {
                    out.push(Action::Dispatch {
                        job: j.id.clone(),
                        run: run.number,
                        devices,
                    });
                }
            }
            _ => {}
        }
    }
    // Pushes take no dispatch slot: bounded on their own, so timers and pushes never depend on
    // the dispatcher's free slots.
    let pushes = crate::push::actions(state, crate::push::MAX_PUSHES);
    if !pushes.is_empty() {
        out.push(Action::PushDesired(pushes));
    }
    // A due occurrence is created by the `Advance` proposed for it (`crate::schedule`).
    for s in state.schedules.values() {
        if let Some((_, t)) = s.upcoming() {
            consider(t, &mut next, &mut due);
        }
    }
    for req in crate::invocation::actions(state, |t| consider(t, &mut next, &mut due)) {
        out.push(Action::Invoke(req));
    }
    if due {
        out.insert(0, Action::Advance);
    }
    if let Some(t) = next {
        out.push(Action::WakeAt(t));
    }
    out
}

/// The request for a device's attempt in flight, or `None` if it has none.
pub fn send_request(
    state: &State,
    job: &JobId,
    run: RunId,
    device: &DeviceId,
) -> Option<SendRequest> {
    let j = state.jobs.get(job)?;
    let r = j.run(run)?;
    let d = r.device(device)?;
    request(j, r, d, &job_methods(j))
}

/// [`send_request`] for many devices of one run (those without an attempt in flight are left
/// out), sharing one copy of the job's methods.
pub fn send_requests(
    state: &State,
    job: &JobId,
    run: RunId,
    devices: &[DeviceId],
) -> Vec<SendRequest> {
    let Some((j, r)) = state.jobs.get(job).and_then(|j| Some((j, j.run(run)?))) else {
        return Vec::new();
    };
    let methods = job_methods(j);
    devices
        .iter()
        .filter_map(|d| request(j, r, r.device(d)?, &methods))
        .collect()
}

fn job_methods(j: &Job) -> Arc<[MethodInvocation]> {
    j.spec
        .operations
        .iter()
        .filter_map(|op| match op {
            Operation::InvokeMethod(m) => Some(MethodInvocation {
                name: m.name.clone(),
                payload: m.payload.clone(),
                response_timeout_secs: m.response_timeout_secs,
            }),
            _ => None,
        })
        .collect()
}

fn request(
    j: &Job,
    r: &Run,
    d: &DeviceRun,
    methods: &Arc<[MethodInvocation]>,
) -> Option<SendRequest> {
    if d.status != DeviceStatus::Running {
        return None;
    }
    let dispatched = d.dispatched_at?;
    Some(SendRequest {
        job: j.id.clone(),
        run: r.number,
        device: d.device.clone(),
        attempt: d.attempts,
        rid: Run::rid(&j.id, r.number, d.attempts),
        deadline: dispatched.plus_millis(j.spec.response_window_ms()),
        methods: methods.clone(),
    })
}
