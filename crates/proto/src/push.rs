//! Desired-property pushes (`muster_domain::push`): `MarkDesiredSent` and `DesiredSent`.

use muster_domain::push::DesiredSent;
use muster_domain::{Command, Event};
use muster_types::{DeviceId, Timestamp};

use crate::error::ProtoError;
use crate::fields::{id, time};
use crate::pb;

pub(crate) fn mark_desired_sent_case(pushes: &[DesiredSent], at: Timestamp) -> pb::command::Kind {
    pb::command::Kind::MarkDesiredSent(pb::MarkDesiredSent {
        pushes: pushes
            .iter()
            .map(|p| pb::DesiredPush {
                device_id: p.device.to_string(),
                version: p.version,
            })
            .collect(),
        at_ms: at.millis(),
    })
}

pub(crate) fn mark_desired_sent(m: pb::MarkDesiredSent) -> Result<Command, ProtoError> {
    let pushes = m
        .pushes
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(DesiredSent {
                device: id(
                    &format!("mark_desired_sent.pushes[{i}].device_id"),
                    p.device_id,
                )?,
                version: p.version,
            })
        })
        .collect::<Result<_, ProtoError>>()?;
    Ok(Command::MarkDesiredSent {
        pushes,
        at: time(m.at_ms),
    })
}

pub(crate) fn desired_sent_case(device: &DeviceId, version: u64, at: Timestamp) -> pb::event::Kind {
    pb::event::Kind::DesiredSent(pb::DesiredSent {
        device_id: device.to_string(),
        version,
        at_ms: at.millis(),
    })
}

pub(crate) fn desired_sent(m: pb::DesiredSent) -> Result<Event, ProtoError> {
    Ok(Event::DesiredSent {
        device: id("desired_sent.device_id", m.device_id)?,
        version: m.version,
        at: time(m.at_ms),
    })
}
