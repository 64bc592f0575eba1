//! Desired-property pushes, derived from state like every other piece of leader work.
//!
//! A device's twin records the desired document it was last sent (`Device::desired_base`, kept
//! only while the device is behind) and the `$version` it was last sent (`desired_sent`). While
//! it is behind, [`actions`] lists a push of the merge patch from what it has to what it should
//! have, at the current `$version`; the leader publishes it and records the push with
//! `Command::MarkDesiredSent`, so a new leader pushes exactly what no leader has sent. A push is
//! at least once: the same `$version` may arrive twice (a leader dies between publishing and
//! recording), which devices ignore, and a merge patch applied twice changes nothing more.
//!
//! Disconnected devices are not pushed to: the push is listed when they connect.

use std::collections::BTreeSet;

use muster_types::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;
use crate::registry::{ConnectionState, Registry};
use crate::State;

/// One desired patch to publish to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPush {
    pub device: DeviceId,
    /// The twin's desired `$version` the patch brings the device to.
    pub version: u64,
    /// Merge patch from the document the device was last sent to the current one.
    pub patch: Value,
}

/// A push the leader made: `device` was sent desired `$version` `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSent {
    pub device: DeviceId,
    pub version: u64,
}

/// Devices that have not been sent their current desired properties (kept by [`after`]), so
/// listing pushes does not scan the fleet.
pub type Unsent = crate::cow::CowSet<DeviceId>;

/// Pushes listed per computation of actions; the rest follow once these are recorded.
pub const MAX_PUSHES: usize = 1000;

/// The pushes due now, at most `max` of them, in device id order.
pub fn actions(state: &State, max: usize) -> Vec<DesiredPush> {
    let r = &state.registry;
    r.desired_unsent
        .iter()
        .filter_map(|id| r.devices.get(id))
        .filter(|d| d.connection != ConnectionState::Disconnected)
        .filter_map(|d| {
            let base = d.desired_base.as_ref()?;
            Some(DesiredPush {
                device: d.id.clone(),
                version: d.desired_version,
                patch: patch_for(base, &d.desired),
            })
        })
        .take(max)
        .collect()
}

/// `decide` for `MarkDesiredSent`: one `DesiredSent` per push that moves a device forward
/// (unknown devices, stale and repeated versions are skipped, so a retried command is harmless).
pub(crate) fn decide(state: &State, pushes: &[DesiredSent], at: Timestamp) -> Vec<Event> {
    let mut seen: BTreeSet<&DeviceId> = BTreeSet::new();
    pushes
        .iter()
        .filter(|p| {
            state.registry.devices.get(&p.device).is_some_and(|d| {
                d.desired_base.is_some()
                    && p.version > d.desired_sent
                    && p.version <= d.desired_version
            }) && seen.insert(&p.device)
        })
        .map(|p| Event::DesiredSent {
            device: p.device.clone(),
            version: p.version,
            at,
        })
        .collect()
}

/// `evolve`'s hook, after every event: records a push and keeps [`Registry::desired_unsent`]
/// equal to the devices with a `desired_base`.
pub(crate) fn after(state: &mut State, event: &Event) {
    let device = match event {
        Event::DesiredSent {
            device, version, ..
        } => {
            if let Some(d) = state.registry.devices.get_mut(device) {
                d.desired_sent = *version;
                if *version >= d.desired_version {
                    d.desired_base = None;
                }
            }
            device
        }
        Event::TwinPatched { device, .. }
        | Event::TwinReplaced { device, .. }
        | Event::DeviceIdentitySet { device, .. }
        | Event::DeviceDeleted { device, .. } => device,
        Event::DeviceRegistered { device, .. } | Event::DeviceUpdated { device, .. } => &device.id,
        _ => return,
    };
    sync(&mut state.registry, device);
}

fn sync(r: &mut Registry, id: &DeviceId) {
    if r.devices.get(id).is_some_and(|d| d.desired_base.is_some()) {
        if !r.desired_unsent.contains(id) {
            r.desired_unsent.insert(id.clone());
        }
    } else {
        r.desired_unsent.remove(id);
    }
}

/// The merge patch (RFC 7386) that brings a device holding any document whose keys are within
/// `seen` to `to`: every property of `to` set whole (objects present on both sides recursively,
/// so nested keys the device may hold are removed too) and `null` for every key of `seen` that
/// `to` lacks. Not a minimal diff: a leader that died between publishing and recording leaves
/// the device at a version the state never recorded, so what it holds is known only to be one
/// of the documents since the last recorded push.
pub fn patch_for(seen: &Value, to: &Value) -> Value {
    let Value::Object(b) = to else {
        return to.clone();
    };
    let mut out = Map::new();
    for (k, v) in b {
        let p = match seen.get(k) {
            Some(old @ Value::Object(_)) if v.is_object() => patch_for(old, v),
            _ => v.clone(),
        };
        out.insert(k.clone(), p);
    }
    if let Value::Object(a) = seen {
        for k in a.keys() {
            if !b.contains_key(k) {
                out.insert(k.clone(), Value::Null);
            }
        }
    }
    Value::Object(out)
}

/// Adds the keys of `doc` to `seen` (objects merged key by key; an object replaces a scalar, so
/// its nested keys are remembered): what [`patch_for`] must be able to remove.
pub(crate) fn remember(seen: &mut Value, doc: &Value) {
    let (Value::Object(s), Value::Object(d)) = (&mut *seen, doc) else {
        if doc.is_object() {
            *seen = doc.clone();
        }
        return;
    };
    for (k, v) in d {
        match s.get_mut(k) {
            None => {
                s.insert(k.clone(), v.clone());
            }
            Some(old) => remember(old, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::merge_patch;
    use serde_json::json;

    #[test]
    fn the_patch_brings_any_seen_document_to_the_target() {
        let base = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": "x", "f": {"g": 1}});
        let between = json!({"b": {"c": 2, "x": 1}, "k": 2});
        let to = json!({"b": {"c": 5, "d": 3}, "e": {"h": true}, "f": 7, "i": [1]});
        let mut seen = base.clone();
        remember(&mut seen, &between);
        let p = patch_for(&seen, &to);
        for start in [&base, &between] {
            let mut doc = start.clone();
            merge_patch(&mut doc, &p);
            assert_eq!(doc, to, "from {start}");
        }
    }
}
