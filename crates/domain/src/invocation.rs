//! Direct methods on one device: a caller invokes a method and waits for the device's answer
//! (IoT Hub's `POST /twins/{id}/methods`, IoT Central's device commands, gRPC `InvokeMethod`).
//!
//! The rule, all of it here:
//! - `InvokeMethod` (an id drawn by the edge, the device, the method, its payload and two
//!   timeouts) is checked and recorded as `MethodInvoked`. A device that is connected gets it at
//!   once (`MethodSent` in the same command); one that is not waits up to the connect timeout
//!   (0, IoT Hub's default, ends it at once as `NotConnected`) and gets it when its presence
//!   says it connected (`MethodSent` in the `SetConnection(s)` command that says so).
//! - The leader's actions list every sent invocation as [`Action::Invoke`](crate::Action), so a
//!   new leader publishes again what had no answer (the rid is the invocation id, so the device
//!   recognises a duplicate).
//! - `RecordMethodResponse` records the device's answer (`MethodResponded`) or the dispatcher's
//!   failure to send (`MethodFailed`); `Advance` ends what passed its deadline (`MethodFailed`
//!   with `Timeout` once sent, `NotConnected` before). An answer for an invocation that has
//!   ended is ignored: each invocation ends exactly once.
//!
//! Only pending invocations are state; an ended one is removed, and the events keep who called
//! what and what came back. Unlike a job's per-device rows nothing reads an ended invocation
//! from state, and keeping them would make memory grow with every call ever made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use muster_types::{DeviceId, InvocationId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::event::Event;
use crate::job::FailureReason;
use crate::registry::ConnectionState;
use crate::State;

/// The shortest and longest response timeout IoT Hub accepts, and its default.
pub const RESPONSE_TIMEOUT_SECS: (u32, u32) = (5, 300);
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u32 = 30;
/// The longest connect timeout (the shortest is 0: the device must be connected already).
pub const MAX_CONNECT_TIMEOUT_SECS: u32 = 300;
/// The largest payload, as JSON text: IoT Hub's 128 KB.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;
/// The longest method name muster accepts.
pub const MAX_METHOD_NAME: usize = 128;

/// What a caller asked for: invoke `method` on `device` with `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub id: InvocationId,
    pub device: DeviceId,
    pub method: String,
    pub payload: Value,
    pub response_timeout_secs: u32,
    pub connect_timeout_secs: u32,
}

/// An invocation that has not ended: the only kind the state holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingInvocation {
    pub call: Invocation,
    pub invoked_at: Timestamp,
    /// When it went to the device (the device was connected); `None` while waiting for it.
    pub sent_at: Option<Timestamp>,
}

impl PendingInvocation {
    /// When it ends without an answer: the response timeout after it was sent, or the connect
    /// timeout after it was invoked while it waits for the device.
    pub fn deadline(&self) -> Timestamp {
        match self.sent_at {
            Some(t) => t.plus_secs(i64::from(self.call.response_timeout_secs)),
            None => self
                .invoked_at
                .plus_secs(i64::from(self.call.connect_timeout_secs)),
        }
    }
}

/// The pending invocations, by id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Invocations {
    pub pending: BTreeMap<InvocationId, PendingInvocation>,
}

/// How an invocation ended, as its final event says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MethodOutcome {
    /// The device answered (any status: IoT Hub hands a device's error status to the caller as
    /// the method's `status`, not as an HTTP error).
    Responded { status: i32, payload: Arc<Value> },
    /// No answer: `Timeout`, `NotConnected` or `DispatchFailed`.
    Failed(FailureReason),
}

impl Event {
    /// The invocation an event is about, when it is about one.
    pub fn invocation(&self) -> Option<&InvocationId> {
        match self {
            Event::MethodInvoked { invocation, .. } => Some(&invocation.id),
            Event::MethodSent { id, .. }
            | Event::MethodResponded { id, .. }
            | Event::MethodFailed { id, .. } => Some(id),
            _ => None,
        }
    }

    /// How invocation `id` ended, if this is its final event.
    pub fn method_outcome(&self, id: &InvocationId) -> Option<MethodOutcome> {
        match self {
            Event::MethodResponded {
                id: i,
                status,
                payload,
                ..
            } if i == id => Some(MethodOutcome::Responded {
                status: *status,
                payload: Arc::clone(payload),
            }),
            Event::MethodFailed { id: i, reason, .. } if i == id => {
                Some(MethodOutcome::Failed(reason.clone()))
            }
            _ => None,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a call as IoT Hub does; errors name IoT Hub's fields (`methodName`, `payload`,
/// `responseTimeoutInSeconds`, `connectTimeoutInSeconds`), which other edges rename.
pub fn check(call: &Invocation) -> Result<(), DomainError> {
    let name = &call.method;
    if name.is_empty() {
        return Err(invalid(
            "methodName",
            "give the name of the method to invoke",
        ));
    }
    if name.chars().count() > MAX_METHOD_NAME {
        return Err(invalid(
            "methodName",
            format!("at most {MAX_METHOD_NAME} characters"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || "$()<>@,;:\\\"/[]?={}+#".contains(*c))
    {
        return Err(invalid(
            "methodName",
            format!(
                "contains {c:?}; use printable US-ASCII without spaces or any of $ ( ) < > @ , ; : \\ \" / [ ] ? = {{ }} + #"
            ),
        ));
    }
    let (min, max) = RESPONSE_TIMEOUT_SECS;
    if !(min..=max).contains(&call.response_timeout_secs) {
        return Err(invalid(
            "responseTimeoutInSeconds",
            format!("must be between {min} and {max} seconds"),
        ));
    }
    if call.connect_timeout_secs > MAX_CONNECT_TIMEOUT_SECS {
        return Err(invalid(
            "connectTimeoutInSeconds",
            format!("must be between 0 and {MAX_CONNECT_TIMEOUT_SECS} seconds"),
        ));
    }
    let size = serde_json::to_string(&call.payload).map_or(usize::MAX, |s| s.len());
    if size > MAX_PAYLOAD_BYTES {
        return Err(DomainError::TooLarge {
            field: "payload".into(),
            size,
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// Whether a method can reach the device now: only a device whose presence says it is
/// connected (and that is enabled). Unlike jobs, which try a device of unknown presence and let
/// the response timeout decide, a direct method answers at once that the device is not online,
/// as IoT Hub does for a device that has not connected.
fn reachable(state: &State, device: &DeviceId) -> bool {
    state
        .registry
        .devices
        .get(device)
        .is_some_and(|d| d.enabled && d.connection == ConnectionState::Connected)
}

/// `InvokeMethod`.
pub(crate) fn invoke(
    state: &State,
    call: &Invocation,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    check(call)?;
    if !state.registry.devices.contains_key(&call.device) {
        return Err(DomainError::DeviceNotFound(call.device.clone()));
    }
    if state.invocations.pending.contains_key(&call.id) {
        return Err(invalid(
            "id",
            format!("invocation {} is already pending; draw a new id", call.id),
        ));
    }
    let mut events = vec![Event::MethodInvoked {
        invocation: call.clone(),
        at,
    }];
    if reachable(state, &call.device) {
        events.push(sent(call, at));
    } else if call.connect_timeout_secs == 0 {
        events.push(Event::MethodFailed {
            id: call.id.clone(),
            device: call.device.clone(),
            reason: FailureReason::NotConnected,
            at,
        });
    }
    Ok(events)
}

fn sent(call: &Invocation, at: Timestamp) -> Event {
    Event::MethodSent {
        id: call.id.clone(),
        device: call.device.clone(),
        at,
    }
}

/// `RecordMethodResponse`: the answer (or the dispatcher's failure) for a sent invocation;
/// anything else (ended, never sent, unknown) is ignored, since delivery is at least once.
pub(crate) fn record(
    state: &State,
    id: &InvocationId,
    outcome: &MethodOutcome,
    at: Timestamp,
) -> Vec<Event> {
    let Some(p) = state.invocations.pending.get(id) else {
        return Vec::new();
    };
    if p.sent_at.is_none() {
        return Vec::new();
    }
    let device = p.call.device.clone();
    vec![match outcome {
        MethodOutcome::Responded { status, payload } => Event::MethodResponded {
            id: id.clone(),
            device,
            status: *status,
            payload: Arc::clone(payload),
            at,
        },
        MethodOutcome::Failed(reason) => Event::MethodFailed {
            id: id.clone(),
            device,
            reason: reason.clone(),
            at,
        },
    }]
}

/// `Advance`: every pending invocation whose deadline is at or before `at` ends.
pub(crate) fn advance(state: &State, at: Timestamp) -> Vec<Event> {
    state
        .invocations
        .pending
        .values()
        .filter(|p| p.deadline() <= at)
        .map(|p| Event::MethodFailed {
            id: p.call.id.clone(),
            device: p.call.device.clone(),
            reason: if p.sent_at.is_some() {
                FailureReason::Timeout
            } else {
                FailureReason::NotConnected
            },
            at,
        })
        .collect()
}

/// The invocations that go out because these events connect their device: appended to the
/// events of `SetConnection(s)`. Cheap when nothing waits (the usual case for a fleet's presence).
pub(crate) fn on_connect(state: &State, events: &[Event], at: Timestamp) -> Vec<Event> {
    let waiting: BTreeSet<&DeviceId> = state
        .invocations
        .pending
        .values()
        .filter(|p| p.sent_at.is_none())
        .map(|p| &p.call.device)
        .collect();
    if waiting.is_empty() {
        return Vec::new();
    }
    // A device's connection as the command leaves it.
    let mut last: BTreeMap<&DeviceId, bool> = BTreeMap::new();
    for e in events {
        if let Event::ConnectionChanged {
            device, connected, ..
        } = e
        {
            if waiting.contains(device) {
                last.insert(device, *connected);
            }
        }
    }
    state
        .invocations
        .pending
        .values()
        .filter(|p| p.sent_at.is_none() && last.get(&p.call.device) == Some(&true))
        .filter(|p| {
            state
                .registry
                .devices
                .get(&p.call.device)
                .is_some_and(|d| d.enabled)
        })
        .map(|p| sent(&p.call, at))
        .collect()
}

/// `evolve` for the invocation events.
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::MethodInvoked { invocation, at } => {
            state.invocations.pending.insert(
                invocation.id.clone(),
                PendingInvocation {
                    call: invocation.clone(),
                    invoked_at: *at,
                    sent_at: None,
                },
            );
        }
        Event::MethodSent { id, at, .. } => {
            if let Some(p) = state.invocations.pending.get_mut(id) {
                p.sent_at = Some(*at);
            }
        }
        Event::MethodResponded { id, .. } | Event::MethodFailed { id, .. } => {
            state.invocations.pending.remove(id);
        }
        _ => {}
    }
}

/// One direct method to put on the wire; `rid` is the invocation id.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeRequest {
    pub id: InvocationId,
    pub device: DeviceId,
    pub method: String,
    pub payload: Value,
    pub deadline: Timestamp,
}

/// The leader's work for invocations: every sent one to (re)publish, and each pending one's
/// deadline for `consider` (due now or a time to wake at).
pub(crate) fn actions(state: &State, mut consider: impl FnMut(Timestamp)) -> Vec<InvokeRequest> {
    let mut out = Vec::new();
    for p in state.invocations.pending.values() {
        consider(p.deadline());
        if p.sent_at.is_some() {
            out.push(InvokeRequest {
                id: p.call.id.clone(),
                device: p.call.device.clone(),
                method: p.call.method.clone(),
                payload: p.call.payload.clone(),
                deadline: p.deadline(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::registry::DeviceRegistration;
    use serde_json::json;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn dev(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn iid(id: &str) -> InvocationId {
        InvocationId::new(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_device(connected: Option<bool>) -> State {
        let mut s = State::default();
        s.execute(&Command::RegisterDevices {
            devices: vec![DeviceRegistration {
                id: dev("d1"),
                display_name: String::new(),
                model_id: None,
                enabled: true,
                tags: Value::Null.into(),
            }],
            upsert: false,
            at: t(0),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        if let Some(c) = connected {
            s.execute(&Command::SetConnection {
                device: dev("d1"),
                connected: c,
                at: t(0),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
        s
    }

    fn call(id: &str, connect: u32) -> Invocation {
        Invocation {
            id: iid(id),
            device: dev("d1"),
            method: "reboot".into(),
            payload: json!({"delay": 1}),
            response_timeout_secs: 10,
            connect_timeout_secs: connect,
        }
    }

    fn invoke_cmd(c: Invocation, at: i64) -> Command {
        Command::InvokeMethod {
            invocation: c,
            at: t(at),
        }
    }

    #[test]
    fn a_connected_device_gets_it_at_once_and_the_answer_ends_it() {
        let mut s = with_device(Some(true));
        let ev = s
            .execute(&invoke_cmd(call("a", 0), 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[1], Event::MethodSent { .. }));
        let acts = crate::actions(&s, t(1000), 10);
        assert!(acts.iter().any(
            |a| matches!(a, crate::Action::Invoke(r) if r.id == iid("a") && r.deadline == t(11_000))
        ));
        assert!(acts.contains(&crate::Action::WakeAt(t(11_000))));
        let ev = s
            .execute(&Command::RecordMethodResponse {
                id: iid("a"),
                outcome: MethodOutcome::Responded {
                    status: 201,
                    payload: Arc::new(json!("ok")),
                },
                at: t(1500),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ev[0].method_outcome(&iid("a")),
            Some(MethodOutcome::Responded {
                status: 201,
                payload: Arc::new(json!("ok"))
            })
        );
        assert!(s.invocations.pending.is_empty());
        // A duplicate answer changes nothing.
        let ev = s
            .execute(&Command::RecordMethodResponse {
                id: iid("a"),
                outcome: MethodOutcome::Failed(FailureReason::Timeout),
                at: t(1600),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ev.is_empty());
    }

    #[test]
    fn offline_with_no_connect_timeout_fails_at_once() {
        for presence in [None, Some(false)] {
            let mut s = with_device(presence);
            let ev = s
                .execute(&invoke_cmd(call("a", 0), 1000))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                ev[1].method_outcome(&iid("a")),
                Some(MethodOutcome::Failed(FailureReason::NotConnected))
            );
            assert!(s.invocations.pending.is_empty());
        }
    }

    #[test]
    fn waits_for_the_device_then_times_out_exactly_at_the_deadline() {
        let mut s = with_device(Some(false));
        s.execute(&invoke_cmd(call("a", 5), 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!crate::actions(&s, t(1000), 10)
            .iter()
            .any(|a| matches!(a, crate::Action::Invoke(_))));
        // Connects at 3 s: sent then, response deadline 13 s.
        let ev = s
            .execute(&Command::SetConnection {
                device: dev("d1"),
                connected: true,
                at: t(3000),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ev.iter().any(|e| matches!(e, Event::MethodSent { .. })));
        let ev = s
            .execute(&Command::Advance { at: t(12_999) })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ev.is_empty());
        let ev = s
            .execute(&Command::Advance { at: t(13_000) })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ev[0].method_outcome(&iid("a")),
            Some(MethodOutcome::Failed(FailureReason::Timeout))
        );
    }

    #[test]
    fn never_connecting_ends_not_connected_at_the_connect_deadline() {
        let mut s = with_device(Some(false));
        s.execute(&invoke_cmd(call("a", 5), 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(crate::actions(&s, t(1000), 10).contains(&crate::Action::WakeAt(t(6000))));
        assert!(s
            .execute(&Command::Advance { at: t(5999) })
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
        let ev = s
            .execute(&Command::Advance { at: t(6000) })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ev[0].method_outcome(&iid("a")),
            Some(MethodOutcome::Failed(FailureReason::NotConnected))
        );
    }

    /// Snapshots are the state as JSON: a pending invocation survives one, and a snapshot of
    /// an earlier build (no `invocations`) reads as none pending.
    #[test]
    fn pending_invocations_survive_a_snapshot() {
        let mut s = with_device(Some(false));
        s.execute(&invoke_cmd(call("a", 30), 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = serde_json::to_string(&s).unwrap_or_else(|e| panic!("{e}"));
        let back: State = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, s);
        let mut old: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        if let Some(m) = old.as_object_mut() {
            m.remove("invocations");
        }
        let old: State = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
        assert!(old.invocations.pending.is_empty());
    }

    #[test]
    fn bad_calls_are_refused_naming_the_field() {
        let s = with_device(Some(true));
        let cases: Vec<(Invocation, &str)> = vec![
            (
                Invocation {
                    method: String::new(),
                    ..call("a", 0)
                },
                "methodName",
            ),
            (
                Invocation {
                    method: "a/b".into(),
                    ..call("a", 0)
                },
                "methodName",
            ),
            (
                Invocation {
                    response_timeout_secs: 4,
                    ..call("a", 0)
                },
                "responseTimeoutInSeconds",
            ),
            (
                Invocation {
                    response_timeout_secs: 301,
                    ..call("a", 0)
                },
                "responseTimeoutInSeconds",
            ),
            (call("a", 301), "connectTimeoutInSeconds"),
            (
                Invocation {
                    payload: json!("x".repeat(MAX_PAYLOAD_BYTES)),
                    ..call("a", 0)
                },
                "payload",
            ),
        ];
        for (c, field) in cases {
            match crate::decide(&s, &invoke_cmd(c, 0)) {
                Err(DomainError::Invalid { field: f, .. })
                | Err(DomainError::TooLarge { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut c = call("a", 0);
        c.device = dev("nobody");
        assert_eq!(
            crate::decide(&s, &invoke_cmd(c, 0)),
            Err(DomainError::DeviceNotFound(dev("nobody")))
        );
    }
}
