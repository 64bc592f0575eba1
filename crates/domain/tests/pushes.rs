//! Property tests of desired-property pushes derived from state (`muster_domain::push`).
//!
//! A small fleet gets random desired patches and replacements, connects and disconnects, while a
//! simulated leader publishes what `actions` lists (devices apply a patch only when its
//! `$version` is newer, as devsim and the SDKs do) and records it with `MarkDesiredSent` — or
//! dies between publishing and recording, and a new leader carries on from state alone.
//! Checked: replay == live state after every command; a recorded push leaves the device with
//! exactly the registry's desired document; once every device is online and the pushes are
//! drained, every device has its twin's desired document and `$version`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use muster_domain::push::DesiredSent;
use muster_domain::registry::merge_patch;
use muster_domain::{
    actions, evolve, Action, Command, ConnectionChange, DeviceRegistration, Event, State,
};
use muster_types::{DeviceId, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const DEVICES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Patch(usize, u8, Option<u8>),
    Replace(usize, u8, u8),
    Connect(usize, bool),
    /// Publish what actions list and record it.
    Push,
    /// Publish what actions list; the leader dies before recording it.
    PushAndDie,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..DEVICES, 0u8..4, prop::option::of(0u8..3)).prop_map(|(d, k, v)| Op::Patch(d, k, v)),
        1 => (0..DEVICES, 0u8..4, 0u8..3).prop_map(|(d, k, v)| Op::Replace(d, k, v)),
        2 => (0..DEVICES, any::<bool>()).prop_map(|(d, c)| Op::Connect(d, c)),
        3 => Just(Op::Push),
        1 => Just(Op::PushAndDie),
    ]
}

fn dev(i: usize) -> DeviceId {
    DeviceId::new(format!("d{i}")).unwrap()
}

/// A property value; some are objects so nested merges and replacements are exercised.
fn value(v: u8) -> Value {
    match v {
        0 => json!(1),
        1 => json!({"x": 1, "y": {"z": true}}),
        _ => json!({"y": {"w": "s"}}),
    }
}

struct Sim {
    state: State,
    log: Vec<Event>,
    now: i64,
    /// What each device holds: its desired document and `$version`.
    devices: BTreeMap<DeviceId, (Value, u64)>,
}

impl Sim {
    fn exec(&mut self, cmd: Command) {
        if let Ok(events) = self.state.execute(&cmd) {
            self.log.extend(events);
        }
        let mut replayed = State::default();
        for e in &self.log {
            evolve(&mut replayed, e);
        }
        assert_eq!(
            replayed, self.state,
            "replay differs from live state after {cmd:?}"
        );
    }

    fn at(&mut self) -> Timestamp {
        self.now += 1000;
        Timestamp::from_millis(self.now)
    }

    /// Publishes every listed push to its device; returns what to record.
    fn publish(&mut self) -> Vec<DesiredSent> {
        let now = Timestamp::from_millis(self.now);
        let mut sent = Vec::new();
        for a in actions(&self.state, now, 100) {
            if let Action::PushDesired(pushes) = a {
                for p in pushes {
                    let online = self.state.registry.devices[&p.device].connection
                        != muster_domain::ConnectionState::Disconnected;
                    assert!(online, "a push listed for disconnected {}", p.device);
                    let (doc, version) = self.devices.get_mut(&p.device).unwrap();
                    if p.version > *version {
                        merge_patch(doc, &p.patch);
                        *version = p.version;
                    }
                    sent.push(DesiredSent {
                        device: p.device,
                        version: p.version,
                    });
                }
            }
        }
        sent
    }

    fn record(&mut self, sent: Vec<DesiredSent>) {
        let at = self.at();
        let ids: Vec<DeviceId> = sent.iter().map(|p| p.device.clone()).collect();
        self.exec(Command::MarkDesiredSent { pushes: sent, at });
        for id in ids {
            let d = &self.state.registry.devices[&id];
            if d.desired_base.is_none() {
                let (doc, version) = &self.devices[&id];
                assert_eq!(doc, &d.desired, "{id} got a different desired document");
                assert_eq!(*version, d.desired_version, "{id} is at another $version");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_device_gets_its_desired_properties(ops in prop::collection::vec(op(), 1..40)) {
        let mut sim = Sim {
            state: State::default(),
            log: Vec::new(),
            now: 1_700_000_000_000,
            devices: (0..DEVICES).map(|i| (dev(i), (json!({}), 0))).collect(),
        };
        let at = sim.at();
        sim.exec(Command::RegisterDevices {
            devices: (0..DEVICES)
                .map(|i| DeviceRegistration {
                    id: dev(i),
                    display_name: String::new(),
                    model_id: None,
                    enabled: true,
                    tags: json!({}).into(),
                })
                .collect(),
            upsert: false,
            at,
        });
        for op in ops {
            let at = sim.at();
            match op {
                Op::Patch(d, k, v) => {
                    let mut p = serde_json::Map::new();
                    p.insert(format!("k{k}"), v.map(value).unwrap_or(Value::Null));
                    sim.exec(Command::UpdateTwin {
                        device: dev(d),
                        tags: None,
                        desired: Some(Value::Object(p)),
                        if_version: None,
                        at,
                    });
                }
                Op::Replace(d, k, v) => {
                    let mut doc = serde_json::Map::new();
                    doc.insert(format!("k{k}"), value(v));
                    sim.exec(Command::ReplaceTwin {
                        device: dev(d),
                        tags: None,
                        desired: Value::Object(doc),
                        if_version: None,
                        at,
                    });
                }
                Op::Connect(d, connected) => sim.exec(Command::SetConnections {
                    changes: vec![ConnectionChange { device: dev(d), connected }],
                    at,
                }),
                Op::Push => {
                    let sent = sim.publish();
                    sim.record(sent);
                }
                Op::PushAndDie => {
                    sim.publish();
                }
            }
        }
        // Everyone comes online; the (new) leader drains the pushes.
        let at = sim.at();
        sim.exec(Command::SetConnections {
            changes: (0..DEVICES).map(|i| ConnectionChange { device: dev(i), connected: true }).collect(),
            at,
        });
        let sent = sim.publish();
        sim.record(sent);
        prop_assert!(sim.publish().is_empty(), "pushes still listed after draining");
        for (id, (doc, version)) in &sim.devices {
            let d = &sim.state.registry.devices[id];
            prop_assert_eq!(doc, &d.desired, "{} ends with another document", id);
            prop_assert_eq!(*version, d.desired_version, "{} ends at another $version", id);
        }
        prop_assert!(sim.state.registry.desired_unsent.is_empty());
    }
}
