//! Properties of direct-method invocations, over random scripts of invocations, presence
//! changes, answers (late and duplicate ones included), dispatch failures and time passing:
//!
//! - an invocation ends exactly once (one final event; nothing ends it again);
//! - it is never listed for dispatch (`Action::Invoke`) after it ended, and the list is exactly
//!   the pending invocations that went to their device;
//! - an `Advance` ends exactly the pending invocations whose deadline is at or before its stamp
//!   (not one millisecond early, none left behind);
//! - only pending invocations are state, and replaying the events gives the live state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use muster_domain::{
    actions, Action, Command, DeviceRegistration, Event, FailureReason, Invocation, MethodOutcome,
    State,
};
use muster_types::{DeviceId, InvocationId, Timestamp};
use proptest::prelude::*;
use serde_json::json;

const DEVICES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Invoke {
        device: usize,
        response: u32,
        connect: u32,
    },
    Presence {
        device: usize,
        connected: bool,
    },
    /// Time passes by this many ms, then the leader advances.
    Advance(i64),
    /// The device answers the k-th invocation made so far (maybe ended, maybe never sent).
    Answer {
        k: usize,
        status: i32,
    },
    DispatchFailed(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..DEVICES, 5u32..=8, prop_oneof![Just(0u32), 1u32..=4]).prop_map(
            |(device, response, connect)| Op::Invoke { device, response, connect }
        ),
        2 => (0..DEVICES, any::<bool>()).prop_map(|(device, connected)| Op::Presence { device, connected }),
        3 => prop_oneof![Just(1i64), 1i64..3_000, Just(5_000), Just(1_000)].prop_map(Op::Advance),
        2 => (0usize..12, prop_oneof![Just(200), Just(404), Just(500)]).prop_map(|(k, status)| Op::Answer { k, status }),
        1 => (0usize..12).prop_map(Op::DispatchFailed),
    ]
}

fn dev(i: usize) -> DeviceId {
    DeviceId::new(format!("d{i}")).unwrap()
}

fn iid(k: usize) -> InvocationId {
    InvocationId::new(format!("call-{k}")).unwrap()
}

struct Run {
    state: State,
    log: Vec<Event>,
    now: i64,
    invoked: usize,
    /// Final events seen per invocation.
    ended: BTreeMap<InvocationId, usize>,
}

impl Run {
    fn new() -> Self {
        let mut r = Run {
            state: State::default(),
            log: Vec::new(),
            now: 1_000_000,
            invoked: 0,
            ended: BTreeMap::new(),
        };
        let devices = (0..DEVICES)
            .map(|i| DeviceRegistration {
                id: dev(i),
                display_name: String::new(),
                model_id: None,
                enabled: true,
                tags: serde_json::Value::Null.into(),
            })
            .collect();
        r.exec(Command::RegisterDevices {
            devices,
            upsert: false,
            at: Timestamp::from_millis(r.now),
        })
        .unwrap();
        r
    }

    fn at(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    fn exec(&mut self, cmd: Command) -> Result<Vec<Event>, TestCaseError> {
        let events = self
            .state
            .execute(&cmd)
            .map_err(|e| TestCaseError::fail(format!("{cmd:?} refused: {e}")))?;
        for e in &events {
            if let Some(id) = e.invocation() {
                if e.method_outcome(id).is_some() {
                    let n = self.ended.entry(id.clone()).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "{} ended twice", id);
                }
            }
        }
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn op(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Invoke {
                device,
                response,
                connect,
            } => {
                let k = self.invoked;
                self.invoked += 1;
                self.exec(Command::InvokeMethod {
                    invocation: Invocation {
                        id: iid(k),
                        device: dev(device),
                        method: "m".into(),
                        payload: json!(k),
                        response_timeout_secs: response,
                        connect_timeout_secs: connect,
                    },
                    at: self.at(),
                })?;
            }
            Op::Presence { device, connected } => {
                self.exec(Command::SetConnection {
                    device: dev(device),
                    connected,
                    at: self.at(),
                })?;
            }
            Op::Advance(dt) => {
                self.now += dt;
                let at = self.at();
                let due: BTreeSet<InvocationId> = self
                    .state
                    .invocations
                    .pending
                    .values()
                    .filter(|p| p.deadline() <= at)
                    .map(|p| p.call.id.clone())
                    .collect();
                let events = self.exec(Command::Advance { at })?;
                let ended: BTreeSet<InvocationId> = events
                    .iter()
                    .filter_map(|e| {
                        let id = e.invocation()?;
                        e.method_outcome(id).map(|_| id.clone())
                    })
                    .collect();
                prop_assert_eq!(&ended, &due, "Advance at {:?} ended the wrong ones", at);
                for e in &events {
                    if let Event::MethodFailed { reason, .. } = e {
                        prop_assert!(matches!(
                            reason,
                            FailureReason::Timeout | FailureReason::NotConnected
                        ));
                    }
                }
            }
            Op::Answer { k, status } => {
                let was_sent = self
                    .state
                    .invocations
                    .pending
                    .get(&iid(k))
                    .is_some_and(|p| p.sent_at.is_some());
                let events = self.exec(Command::RecordMethodResponse {
                    id: iid(k),
                    outcome: MethodOutcome::Responded {
                        status,
                        payload: Arc::new(json!({"k": k})),
                    },
                    at: self.at(),
                })?;
                // Only an invocation on the wire takes an answer; anything else is ignored.
                prop_assert_eq!(events.len(), usize::from(was_sent));
            }
            Op::DispatchFailed(k) => {
                self.exec(Command::RecordMethodResponse {
                    id: iid(k),
                    outcome: MethodOutcome::Failed(FailureReason::DispatchFailed {
                        message: "queue full".into(),
                    }),
                    at: self.at(),
                })?;
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        // Pending = invoked and not ended; nothing ended stays in state.
        let pending: BTreeSet<&InvocationId> = self.state.invocations.pending.keys().collect();
        let expected: BTreeSet<InvocationId> = (0..self.invoked)
            .map(iid)
            .filter(|id| !self.ended.contains_key(id))
            .collect();
        prop_assert_eq!(pending, expected.iter().collect::<BTreeSet<_>>());
        // Dispatch lists exactly the pending invocations that went to their device.
        let listed: BTreeSet<InvocationId> = actions(&self.state, self.at(), 100)
            .into_iter()
            .filter_map(|a| match a {
                Action::Invoke(r) => Some(r.id),
                _ => None,
            })
            .collect();
        let sent: BTreeSet<InvocationId> = self
            .state
            .invocations
            .pending
            .values()
            .filter(|p| p.sent_at.is_some())
            .map(|p| p.call.id.clone())
            .collect();
        prop_assert_eq!(&listed, &sent);
        for id in &listed {
            prop_assert!(!self.ended.contains_key(id), "{} listed after it ended", id);
        }
        // Replay rebuilds the live state.
        prop_assert_eq!(&State::replay(&self.log), &self.state);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invocations_end_exactly_once_and_on_time(ops in prop::collection::vec(op(), 1..60)) {
        let mut run = Run::new();
        for op in &ops {
            run.op(op)?;
        }
        // Long after every deadline, every invocation has ended, each exactly once.
        run.op(&Op::Advance(400_000))?;
        prop_assert!(run.state.invocations.pending.is_empty());
        prop_assert_eq!(run.ended.len(), run.invoked);
    }
}

#[test]
fn a_deadline_is_not_early_by_a_millisecond() {
    let mut run = Run::new();
    run.op(&Op::Presence {
        device: 0,
        connected: true,
    })
    .unwrap();
    run.op(&Op::Invoke {
        device: 0,
        response: 5,
        connect: 0,
    })
    .unwrap();
    run.op(&Op::Advance(4_999)).unwrap();
    assert_eq!(run.ended.len(), 0);
    run.op(&Op::Advance(1)).unwrap();
    assert_eq!(run.ended.get(&iid(0)), Some(&1));
}
