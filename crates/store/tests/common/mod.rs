//! Test helpers: a realistic command workload, and a stand-in for openraft that appends, commits
//! and applies one entry at a time, so the store can be exercised without a running Raft.

// Each test binary uses a different part; helpers outside #[test] functions may unwrap.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use muster_domain::{
    actions, Action, BatchSize, Command, DeviceRegistration, DeviceResult, MethodCall, Operation,
    Outcome, Principal, RetryPolicy, Rollout, Schedule, State, Target, TargetSelector,
};
use muster_domain::{FailureReason, JobSpec};
use muster_store::{
    Entry, EventLog, LogId, LogStore, MusterNode, Request, Response, StateMachine, StateReader,
    Store, TypeConfig,
};
use muster_types::{DeviceId, JobId, Timestamp};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde_json::json;

pub fn at(ms: i64) -> Timestamp {
    Timestamp(1_700_000_000_000 + ms)
}

pub fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("sensor-{i:03}")).unwrap()
}

pub fn register(from: usize, n: usize, ms: i64) -> Command {
    Command::RegisterDevices {
        devices: (from..from + n)
            .map(|i| DeviceRegistration {
                id: device(i),
                display_name: format!("Sensor {i}"),
                model_id: None,
                enabled: true,
                tags: json!({"building": 43, "floor": i % 3}).into(),
            })
            .collect(),
        upsert: false,
        at: at(ms),
    }
}

pub fn create_job(id: &str, devices: usize, ms: i64) -> Command {
    Command::CreateJob {
        id: JobId::new(id).unwrap(),
        spec: JobSpec {
            display_name: format!("Reboot {id}"),
            description: "reboot every sensor".into(),
            target: Target {
                selector: TargetSelector::Devices((0..devices).map(device).collect()),
                continuous: false,
            },
            operations: vec![Operation::InvokeMethod(MethodCall {
                name: "reboot".into(),
                payload: json!({"delay": 5}),
                response_timeout_secs: 30,
                connect_timeout_secs: 10,
            })],
            schedule: Schedule::default(),
            rollout: Rollout {
                batch: Some(BatchSize::Percentage(50)),
                max_devices_per_minute: None,
                ..Default::default()
            },
            cancellation: None,
            retry: RetryPolicy::default(),
        },
        at: at(ms),
    }
}

/// A scheduled job every 2 s from `ms + 50`, two occurrences, on four devices.
pub fn save_schedule(id: &str, ms: i64) -> Command {
    use muster_domain::schedule::{JobSchedule, Recurrence, ScheduleEnd, ScheduledJobSpec};
    let Command::CreateJob { spec, .. } = create_job(id, 4, ms) else {
        unreachable!()
    };
    Command::SaveScheduledJob {
        id: muster_types::ScheduledJobId::new(id).unwrap(),
        spec: ScheduledJobSpec {
            template: spec,
            schedule: JobSchedule {
                start: at(ms + 50),
                recurrence: Some(Recurrence::Seconds(2)),
                end: Some(ScheduleEnd::Occurrences(2)),
                time_zone: None,
            },
            enabled: true,
        },
        if_version: None,
        at: at(ms),
    }
}

/// Registers devices, creates two jobs and drives them the way a leader would: advance,
/// dispatch, results (every fifth device fails). Built against a shadow state so each command
/// is one the leader would really propose.
pub fn workload() -> Vec<Command> {
    let mut shadow = State::default();
    let mut cmds = vec![
        register(0, 20, 0),
        create_job("reboot-1", 20, 10),
        create_job("reboot-2", 6, 20),
        save_schedule("nightly", 30),
    ];
    for c in &cmds {
        shadow.execute(c).unwrap();
    }
    let mut now = 100;
    for _ in 0..6 {
        let mut round = Vec::new();
        let mut results = Vec::new();
        for a in actions(&shadow, at(now), 1000) {
            match a {
                Action::Advance => round.push(Command::Advance { at: at(now) }),
                Action::Dispatch { job, run, devices } => round.push(Command::MarkDispatched {
                    job,
                    run,
                    devices,
                    at: at(now),
                }),
                Action::Send(req) => {
                    let n: usize = req.device.as_str()[7..].parse().unwrap();
                    results.push(DeviceResult {
                        job: req.job.clone(),
                        run: req.run,
                        device: req.device.clone(),
                        attempt: req.attempt,
                        outcome: if n.is_multiple_of(5) {
                            Outcome::Failed(FailureReason::Timeout)
                        } else {
                            Outcome::Responded {
                                status: 200,
                                payload: json!({"ok": true}).into(),
                            }
                        },
                    });
                }
                Action::WakeAt(_) | Action::Invoke(_) | Action::PushDesired(_) => {}
            }
        }
        if !results.is_empty() {
            round.push(Command::RecordDeviceResults {
                results,
                at: at(now + 5),
            });
        }
        for c in &round {
            shadow.execute(c).unwrap();
        }
        cmds.extend(round);
        now += 1000;
    }
    cmds
}

/// The state and event log a correct store must end up with after `cmds`.
pub fn expected(cmds: &[Command]) -> (State, Vec<muster_domain::Event>) {
    let mut state = State::default();
    let mut events = Vec::new();
    for c in cmds {
        if let Ok(evs) = state.execute(c) {
            events.extend(evs);
        }
    }
    (state, events)
}

/// Every event the replica holds, with its seq.
/// The applied state with the cold tier's rows put back: what [`expected`] (which never
/// spills) builds, so comparing the two also checks every spilled row.
pub fn full_state(reader: &StateReader) -> State {
    let mut s = reader.read(State::clone);
    s.restore_rows(&reader.cold()).unwrap();
    s
}

pub fn events_of(reader: &StateReader) -> Vec<(u64, muster_domain::Event)> {
    reader.read_events(0, usize::MAX).unwrap()
}

/// The two halves of a store plus the next log index: a one-node "Raft".
pub struct Node {
    pub log: LogStore,
    pub sm: StateMachine,
    pub next_index: u64,
}

pub fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::from(command)),
    }
}

pub fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

impl Node {
    pub async fn open(dir: &Path) -> Node {
        // A store dropped just before may still hold sled's lock for a moment (its flusher
        // thread lets go asynchronously), as `muster_cluster` also allows for.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut log, sm) = loop {
            match Store::open(dir) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        let state = RaftLogStorage::<TypeConfig>::get_log_state(&mut log)
            .await
            .unwrap();
        let mut node = Node {
            log,
            sm,
            next_index: state.last_log_id.map_or(0, |l| l.index + 1),
        };
        if node.next_index == 0 {
            // What `Raft::initialize` writes: the first membership, at index 0.
            let members = Membership::new(
                vec![BTreeSet::from([1])],
                BTreeMap::from([(1, MusterNode::default())]),
            );
            let e = Entry {
                log_id: log_id(0),
                payload: EntryPayload::Membership(members),
            };
            node.log.blocking_append([e.clone()]).await.unwrap();
            node.log.save_committed(Some(e.log_id)).await.unwrap();
            node.sm.apply([e]).await.unwrap();
            node.next_index = 1;
        }
        node
    }

    /// Appends (flushed) and commits `cmd`, without applying it.
    pub async fn commit(&mut self, cmd: Command) -> Entry {
        self.commit_as(cmd, Principal::System).await
    }

    /// [`commit`](Self::commit) on behalf of `principal`.
    pub async fn commit_as(&mut self, cmd: Command, principal: Principal) -> Entry {
        let e = Entry {
            log_id: log_id(self.next_index),
            payload: EntryPayload::Normal(Request::new(cmd, principal)),
        };
        self.next_index += 1;
        self.log.blocking_append([e.clone()]).await.unwrap();
        self.log.save_committed(Some(e.log_id)).await.unwrap();
        e
    }

    /// Appends, commits and applies `cmd`, like a leader's `client_write`.
    pub async fn propose(&mut self, cmd: Command) -> Response {
        self.propose_as(cmd, Principal::System).await
    }

    /// [`propose`](Self::propose) on behalf of `principal`.
    pub async fn propose_as(&mut self, cmd: Command, principal: Principal) -> Response {
        let e = self.commit_as(cmd, principal).await;
        let mut out = self.sm.apply([e]).await.unwrap();
        out.pop().unwrap()
    }
}

/// `sled::open` of a data directory whose store was just dropped: its background threads (the
/// group flusher, the device indexer) may hold sled's lock a moment longer, as `Node::open`
/// allows for.
pub fn open_db(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    }
}
