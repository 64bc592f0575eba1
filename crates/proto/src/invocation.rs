//! Conversions of direct-method invocations: their commands and events, which `command.rs` and
//! `event.rs` hand over here.

use std::sync::Arc;

use muster_domain::job::JsonText;
use muster_domain::{Command, Event, Invocation, MethodOutcome, Outcome};
use muster_types::{InvocationId, Timestamp};

use crate::error::ProtoError;
use crate::fields::{id, json, json_text, message, time};
use crate::pb;

impl From<&Invocation> for pb::MethodInvocation {
    fn from(c: &Invocation) -> Self {
        pb::MethodInvocation {
            invocation_id: c.id.to_string(),
            device_id: c.device.to_string(),
            method: c.method.clone(),
            payload_json: json_text(&c.payload),
            response_timeout_secs: c.response_timeout_secs,
            connect_timeout_secs: c.connect_timeout_secs,
        }
    }
}

impl TryFrom<pb::MethodInvocation> for Invocation {
    type Error = ProtoError;

    fn try_from(m: pb::MethodInvocation) -> Result<Self, ProtoError> {
        Ok(Invocation {
            id: id("invocation_id", m.invocation_id)?,
            device: id("device_id", m.device_id)?,
            method: m.method,
            payload: json("payload_json", &m.payload_json)?,
            response_timeout_secs: m.response_timeout_secs,
            connect_timeout_secs: m.connect_timeout_secs,
        })
    }
}

/// A method's outcome travels as the job results' `Outcome` message.
fn outcome(o: &MethodOutcome) -> pb::Outcome {
    let shared = match o {
        MethodOutcome::Responded { status, payload } => Outcome::Responded {
            status: *status,
            payload: JsonText::from_value(payload),
        },
        MethodOutcome::Failed(reason) => Outcome::Failed(reason.clone()),
    };
    (&shared).into()
}

fn method_outcome(field: &str, o: Option<pb::Outcome>) -> Result<MethodOutcome, ProtoError> {
    Ok(match message::<_, Outcome>(field, o)? {
        Outcome::Responded { status, payload } => MethodOutcome::Responded {
            status,
            payload: Arc::new(payload.value()),
        },
        Outcome::Failed(reason) => MethodOutcome::Failed(reason),
    })
}

pub(crate) fn invoke_method_case(invocation: &Invocation, at: Timestamp) -> pb::command::Kind {
    pb::command::Kind::InvokeMethod(pb::command::InvokeMethod {
        invocation: Some(invocation.into()),
        at_ms: at.millis(),
    })
}

pub(crate) fn record_method_response_case(
    id: &InvocationId,
    o: &MethodOutcome,
    at: Timestamp,
) -> pb::command::Kind {
    pb::command::Kind::RecordMethodResponse(pb::command::RecordMethodResponse {
        invocation_id: id.to_string(),
        outcome: Some(outcome(o)),
        at_ms: at.millis(),
    })
}

pub(crate) fn invoke_method(m: pb::command::InvokeMethod) -> Result<Command, ProtoError> {
    Ok(Command::InvokeMethod {
        invocation: message("invoke_method.invocation", m.invocation)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn record_method_response(
    m: pb::command::RecordMethodResponse,
) -> Result<Command, ProtoError> {
    Ok(Command::RecordMethodResponse {
        id: id("record_method_response.invocation_id", m.invocation_id)?,
        outcome: method_outcome("record_method_response.outcome", m.outcome)?,
        at: time(m.at_ms),
    })
}

/// The event's oneof case; called only with the invocation events (any other gives an empty
/// `MethodSent`, which decoding refuses, so a wrong call cannot go unnoticed).
pub(crate) fn event_case(e: &Event) -> pb::event::Kind {
    use pb::event::{Kind, MethodFailed, MethodInvoked, MethodResponded, MethodSent};
    match e {
        Event::MethodInvoked { invocation, at } => Kind::MethodInvoked(MethodInvoked {
            invocation: Some(invocation.into()),
            at_ms: at.millis(),
        }),
        Event::MethodResponded {
            id,
            device,
            status,
            payload,
            at,
        } => Kind::MethodResponded(MethodResponded {
            invocation_id: id.to_string(),
            device_id: device.to_string(),
            status: *status,
            payload_json: json_text(payload),
            at_ms: at.millis(),
        }),
        Event::MethodFailed {
            id,
            device,
            reason,
            at,
        } => Kind::MethodFailed(MethodFailed {
            invocation_id: id.to_string(),
            device_id: device.to_string(),
            reason: Some(reason.into()),
            at_ms: at.millis(),
        }),
        Event::MethodSent { id, device, at } => Kind::MethodSent(MethodSent {
            invocation_id: id.to_string(),
            device_id: device.to_string(),
            at_ms: at.millis(),
        }),
        _ => Kind::MethodSent(MethodSent::default()),
    }
}

pub(crate) fn method_invoked(m: pb::event::MethodInvoked) -> Result<Event, ProtoError> {
    Ok(Event::MethodInvoked {
        invocation: message("method_invoked.invocation", m.invocation)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn method_sent(m: pb::event::MethodSent) -> Result<Event, ProtoError> {
    Ok(Event::MethodSent {
        id: id("method_sent.invocation_id", m.invocation_id)?,
        device: id("method_sent.device_id", m.device_id)?,
        at: time(m.at_ms),
    })
}

pub(crate) fn method_responded(m: pb::event::MethodResponded) -> Result<Event, ProtoError> {
    Ok(Event::MethodResponded {
        id: id("method_responded.invocation_id", m.invocation_id)?,
        device: id("method_responded.device_id", m.device_id)?,
        status: m.status,
        payload: Arc::new(json("method_responded.payload_json", &m.payload_json)?),
        at: time(m.at_ms),
    })
}

pub(crate) fn method_failed(m: pb::event::MethodFailed) -> Result<Event, ProtoError> {
    Ok(Event::MethodFailed {
        id: id("method_failed.invocation_id", m.invocation_id)?,
        device: id("method_failed.device_id", m.device_id)?,
        reason: message("method_failed.reason", m.reason)?,
        at: time(m.at_ms),
    })
}
