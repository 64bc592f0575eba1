//! What the leader must do, derived from state alone, so a new leader recomputes it after an
//! election and nothing depends on a previous leader's memory.

use muster_types::{DeviceId, JobId, RunId, Timestamp};
use serde_json::Value;

use crate::job::{JobStatus, Run};
use crate::registry::ConnectionState;
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
    pub methods: Vec<MethodInvocation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodInvocation {
    pub name: String,
    pub payload: Value,
    pub response_timeout_secs: u32,
}

/// Everything the leader should do at `now`. `max_dispatch` bounds the devices listed per job (the
/// dispatcher's free slots), so a batch of 100,000 does not become one huge action.
pub fn actions(state: &State, now: Timestamp, max_dispatch: usize) -> Vec<Action> {
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
            JobStatus::Running | JobStatus::Stopped => {
                let run = j.current_run();
                if let (Some(max), Some(started)) =
                    (j.spec.schedule.max_execution_secs, run.started_at)
                {
                    consider(started.plus_secs(max as i64), &mut next, &mut due);
                }
                if let Some(&(deadline, _)) = run.deadlines.first() {
                    consider(deadline, &mut next, &mut due);
                }
                for &(_, i) in &run.deadlines {
                    let d = &run.devices[i as usize];
                    if let Some(req) = send_request(state, &j.id, run.number, &d.device) {
                        out.push(Action::Send(req));
                    }
                }
                if j.status != JobStatus::Running {
                    continue;
                }
                let needs_device = j.spec.needs_device();
                let window = j.spec.connect_window_ms();
                let (allowance, reopens) = j.dispatch_allowance(now);
                let mut devices = Vec::new();
                for &i in &run.ready {
                    let d = &run.devices[i as usize];
                    let offline = needs_device
                        && state
                            .registry
                            .devices
                            .get(&d.device)
                            .is_some_and(|r| r.connection == ConnectionState::Disconnected);
                    if offline {
                        if let Some(t) = j.effective_ready_since(d) {
                            consider(t.plus_millis(window), &mut next, &mut due);
                        }
                    } else if devices.len() < allowance.min(max_dispatch) {
                        devices.push(d.device.clone());
                    }
                }
                if let Some(t) = reopens {
                    if !run.ready.is_empty() {
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
    if d.status != crate::job::DeviceStatus::Running {
        return None;
    }
    let dispatched = d.dispatched_at?;
    let methods = j
        .spec
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
        .collect();
    Some(SendRequest {
        job: job.clone(),
        run,
        device: device.clone(),
        attempt: d.attempts,
        rid: Run::rid(job, run, d.attempts),
        deadline: dispatched.plus_millis(j.spec.response_window_ms()),
        methods,
    })
}
