//! Issue 6's big audit test: a log of thousands of jobs over a few hundred devices (results of
//! every kind, stops and resumes, cancels, thresholds, schedules, continuous targets, reruns of
//! the failed devices), written through the real store the way Raft does (append + commit, then
//! apply), must replay to exactly the live state, from the data directory and from a JSON Lines
//! export alone; and `--at` a past time shows the jobs as they were then. Commands an operator
//! would send are written on behalf of several principals (the leader's own work as `system`),
//! so the chain, the export and its replay carry principals too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{at, device, entry, Node};
use muster_domain::{
    actions, Action, BatchSize, CancellationThreshold, Command, DeviceRegistration, DeviceResult,
    Event, FailureReason, JobSpec, JobStatus, MethodCall, Operation, Outcome, Principal,
    RetryPolicy, Rollout, Schedule, State, Target, TargetSelector, Threshold,
};
use muster_store::audit::{
    replay_export, AuditLog, ExportFilter, ExportFormat, ReplayTo, TimelineEntry,
};
use muster_store::{Entry, Request};
use muster_types::{GroupId, JobId, RerunId, Timestamp};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use serde_json::json;

const DEVICES: usize = 300;
const JOBS: usize = 2000;
const JOBS_PER_ROUND: usize = 50;
const STEP_MS: i64 = 1000;

/// A small deterministic mixer (splitmix64), so the workload is the same on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn job_id(k: usize) -> JobId {
    JobId::new(format!("job-{k:05}")).unwrap()
}

fn method(k: usize) -> Operation {
    Operation::InvokeMethod(MethodCall {
        name: if k.is_multiple_of(2) {
            "reboot"
        } else {
            "update"
        }
        .into(),
        payload: json!({"job": k, "delay": k % 7, "force": k.is_multiple_of(3)}),
        response_timeout_secs: 3,
        connect_timeout_secs: 4,
    })
}

fn spec(k: usize) -> JobSpec {
    let selector = match k % 97 {
        0 => TargetSelector::Group(GroupId::new(format!("building-{}", k % 4)).unwrap()),
        1 => TargetSelector::Query(format!(
            "SELECT * FROM devices WHERE tags.floor = {}",
            k % 3
        )),
        _ => {
            let n = 3 + (mix(k as u64) % 10) as usize;
            let start = (mix(k as u64 + 7) % DEVICES as u64) as usize;
            TargetSelector::Devices((0..n).map(|i| device((start + i * 7) % DEVICES)).collect())
        }
    };
    let continuous = !matches!(selector, TargetSelector::Devices(_)) && k.is_multiple_of(2);
    let mut operations = vec![method(k)];
    if k.is_multiple_of(41) {
        operations.push(Operation::PatchDesired {
            patch: json!({"fw": format!("1.{k}")}),
        });
    }
    if k.is_multiple_of(43) {
        operations = vec![Operation::PatchTags {
            patch: json!({"ring": k % 5}),
        }];
    }
    JobSpec {
        display_name: format!("Job {k}"),
        description: "issue 6 replay workload".into(),
        target: Target {
            selector,
            continuous,
        },
        operations,
        schedule: Schedule {
            start_at: (k.is_multiple_of(13)).then_some(Timestamp(0)), // replaced by the caller
            max_execution_secs: (k.is_multiple_of(29)).then_some(2),
            window: None,
        },
        rollout: Rollout {
            batch: match k % 4 {
                0 => Some(BatchSize::Percentage(50)),
                1 => Some(BatchSize::Count(2)),
                _ => None,
            },
            max_devices_per_minute: (k.is_multiple_of(19) && k % 97 > 1).then_some(60),
            ..Default::default()
        },
        cancellation: (k.is_multiple_of(11)).then_some(CancellationThreshold {
            limit: Threshold::Count(1),
            per_batch: k.is_multiple_of(22),
        }),
        retry: if k.is_multiple_of(3) {
            RetryPolicy {
                max_attempts: 3,
                retry_failed: true,
                retry_timed_out: true,
                ..Default::default()
            }
        } else {
            RetryPolicy::default()
        },
    }
}

/// How a device answers an attempt: mostly success, some device errors (with a body), some
/// reported timeouts and dispatch failures, and some silence (timed out by `Advance`).
fn outcome(job: &JobId, run: u32, device: &str, attempt: u32) -> Option<Outcome> {
    let r = mix(hash_str(job.as_str())
        ^ hash_str(device)
        ^ (u64::from(run) << 40)
        ^ (u64::from(attempt) << 50))
        % 100;
    match r {
        0..=74 => Some(Outcome::Responded {
            status: 200,
            payload: json!({"ok": true, "took_ms": r * 3, "note": "done, \"quoted\""}).into(),
        }),
        75..=84 => Some(Outcome::Responded {
            status: 500 + (r as i32 % 4),
            payload: json!({"error": "disk full", "free": 0.5}).into(),
        }),
        85..=89 => Some(Outcome::Failed(FailureReason::Timeout)),
        90..=92 => Some(Outcome::Failed(FailureReason::DispatchFailed {
            message: "broker refused, retry later".into(),
        })),
        _ => None,
    }
}

struct Sim {
    node: Node,
    now: i64,
}

/// Who writes `cmd`: the leader's own work is `system`; operator commands cycle through the
/// other kinds of principal (one name holds a comma and a quote, for the CSV export).
fn principal_for(cmd: &Command, index: u64) -> Principal {
    match cmd {
        Command::MarkDispatched { .. }
        | Command::RecordDeviceResults { .. }
        | Command::Advance { .. } => Principal::System,
        _ => match index % 4 {
            0 => Principal::Anonymous,
            1 => Principal::Policy("iothubowner".into()),
            2 => Principal::Token(format!("ops-{}", index % 7)),
            _ => Principal::Certificate("CN=ops, O=\"Example\"".into()),
        },
    }
}

impl Sim {
    /// Appends the commands as consecutive log entries (one flush), commits and applies them.
    async fn propose(&mut self, cmds: Vec<Command>) {
        if cmds.is_empty() {
            return;
        }
        let entries: Vec<_> = cmds
            .into_iter()
            .map(|c| {
                let index = self.node.next_index;
                let principal = principal_for(&c, index);
                let e = Entry {
                    payload: EntryPayload::Normal(Request::new(c, principal)),
                    ..entry(index, Command::Advance { at: at(0) })
                };
                self.node.next_index += 1;
                e
            })
            .collect();
        let last = entries.last().unwrap().log_id;
        self.node
            .log
            .blocking_append(entries.clone())
            .await
            .unwrap();
        self.node.log.save_committed(Some(last)).await.unwrap();
        self.node.sm.apply(entries).await.unwrap();
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.node.sm.reader().read(f)
    }
}

/// A state as it was at the end of a round, and the time of that round's last events.
struct Past {
    until: Timestamp,
    last_seq: u64,
    state: State,
}

/// Runs the workload; returns the live state at the end and the state at a past moment.
async fn run(dir: &std::path::Path) -> (State, Vec<Past>) {
    let mut sim = Sim {
        node: Node::open(dir).await,
        now: 0,
    };
    sim.propose(vec![Command::RegisterDevices {
        devices: (0..DEVICES)
            .map(|i| DeviceRegistration {
                id: device(i),
                display_name: format!("Sensor {i}"),
                model_id: None,
                enabled: i % 61 != 5,
                tags: json!({"building": i % 4, "floor": i % 3}).into(),
            })
            .collect(),
        upsert: false,
        at: at(0),
    }])
    .await;
    let mut setup: Vec<Command> = (0..4)
        .map(|b| Command::SaveGroup {
            id: GroupId::new(format!("building-{b}")).unwrap(),
            display_name: format!("Building {b}"),
            description: String::new(),
            query: format!("SELECT * FROM devices WHERE tags.building = {b}"),
            if_version: None,
            at: at(1),
        })
        .collect();
    // Some devices are offline: their attempts end `NotConnected` after the connect timeout.
    setup.extend(
        (0..DEVICES)
            .filter(|i| i % 37 == 3)
            .map(|i| Command::SetConnection {
                device: device(i),
                connected: false,
                at: at(2),
            }),
    );
    sim.propose(setup).await;

    let mut created = 0;
    let mut created_round: BTreeMap<usize, usize> = BTreeMap::new();
    let mut reruns: BTreeMap<usize, u32> = BTreeMap::new();
    let mut open: BTreeSet<usize> = BTreeSet::new();
    let mut pasts = Vec::new();
    let mut round = 0usize;
    loop {
        sim.now = 10 + round as i64 * STEP_MS;
        let now = at(sim.now);
        let mut cmds = Vec::new();

        // New jobs.
        for _ in 0..JOBS_PER_ROUND {
            if created == JOBS {
                break;
            }
            let k = created;
            let mut s = spec(k);
            if s.schedule.start_at.is_some() {
                s.schedule.start_at = Some(now.plus_secs(3));
            }
            cmds.push(Command::CreateJob {
                id: job_id(k),
                spec: s,
                at: now,
            });
            created_round.insert(k, round);
            open.insert(k);
            created += 1;
        }

        // Operators: stop and resume, cancel, rerun the failed devices of finished jobs.
        for (&k, &r) in &created_round {
            let age = round - r;
            let id = job_id(k);
            if k % 17 == 4 && age == 2 {
                cmds.push(Command::StopJob {
                    id: id.clone(),
                    at: now,
                });
            }
            if k % 17 == 4 && age == 5 {
                cmds.push(Command::ResumeJob {
                    id: id.clone(),
                    at: now,
                });
            }
            if k % 23 == 6 && age == 3 {
                cmds.push(Command::CancelJob {
                    id: id.clone(),
                    at: now,
                });
            }
        }
        // Continuous jobs (and their reruns) wait for devices that join later until they are
        // cancelled; finished jobs with failed devices are rerun (twice at most). Jobs that
        // need nothing more leave `open`, so a round does not look at all of them.
        let mut settled = Vec::new();
        sim.read(|s| {
            for &k in &open {
                let Some(j) = s.jobs.get(&job_id(k)) else {
                    continue;
                };
                let st = j.stats();
                let idle = st.pending + st.running == 0;
                if j.spec.target.continuous && !j.status.is_final() {
                    if idle && round - created_round[&k] >= 25 {
                        cmds.push(Command::CancelJob {
                            id: job_id(k),
                            at: now,
                        });
                    }
                    continue;
                }
                if !j.status.is_final() {
                    continue;
                }
                let n = reruns.entry(k).or_default();
                if st.failed + st.timed_out > 0 && k % 5 != 2 && *n < 2 {
                    *n += 1;
                    cmds.push(Command::RerunJob {
                        id: job_id(k),
                        rerun_id: RerunId::new(format!("rerun-{n}")).unwrap(),
                        at: now,
                    });
                } else {
                    settled.push(k);
                }
            }
        });
        for k in settled {
            open.remove(&k);
        }

        // Registry churn: devices move between buildings (continuous jobs pick them up) and
        // come back online.
        let d = device((round * 13) % DEVICES);
        cmds.push(Command::UpdateTwin {
            device: d.clone(),
            tags: Some(json!({"building": (round + 1) % 4})),
            desired: None,
            if_version: None,
            at: now,
        });
        if round.is_multiple_of(5) {
            cmds.push(Command::SetConnection {
                device: device((round * 37 + 3) % DEVICES),
                connected: round.is_multiple_of(10),
                at: now,
            });
        }
        sim.propose(cmds).await;

        // The leader's work: advance, dispatch, and the devices' answers (a little later).
        let acts = sim.read(|s| actions(s, now, 1000));
        let mut lead = Vec::new();
        let mut results = Vec::new();
        for a in acts {
            match a {
                Action::Advance => lead.push(Command::Advance { at: now }),
                Action::Dispatch { job, run, devices } => lead.push(Command::MarkDispatched {
                    job,
                    run,
                    devices,
                    at: now,
                }),
                Action::Send(req) => {
                    if let Some(outcome) =
                        outcome(&req.job, req.run.0, req.device.as_str(), req.attempt)
                    {
                        results.push(DeviceResult {
                            job: req.job,
                            run: req.run,
                            device: req.device,
                            attempt: req.attempt,
                            outcome,
                        });
                    }
                }
                Action::WakeAt(_) | Action::Invoke(_) | Action::PushDesired(_) => {}
            }
        }
        // A duplicate answer of the first result: delivery is at least once.
        if let Some(first) = results.first().cloned() {
            results.push(first);
        }
        if !results.is_empty() {
            lead.push(Command::RecordDeviceResults {
                results,
                at: at(sim.now + 5),
            });
        }
        sim.propose(lead).await;

        if round == 25 {
            pasts.push(Past {
                until: at(sim.now + 5),
                last_seq: sim.node.sm.reader().chain_head().0,
                state: {
                    let reader = sim.node.sm.reader();
                    let mut s = reader.read(State::clone);
                    s.restore_rows(&reader.cold()).unwrap();
                    s
                },
            });
        }
        if round == 30 {
            // A snapshot half-way: `verify` then also compares the replay with it.
            sim.node.sm.build_snapshot().await.unwrap();
        }

        round += 1;
        let done = created == JOBS
            && open.is_empty()
            && sim.read(|s| s.jobs.values().all(|j| j.status.is_final()));
        if done || round > 400 {
            break;
        }
    }
    let open: Vec<String> = sim.read(|s| {
        s.jobs
            .values()
            .filter(|j| !j.status.is_final())
            .take(5)
            .map(|j| {
                format!(
                    "{} {:?} {:?} {:?}",
                    j.id.as_str(),
                    j.status,
                    j.stats(),
                    j.spec.rollout
                )
            })
            .collect()
    });
    assert!(round <= 400, "the workload did not settle: {open:?}");
    // The live state with the cold tier's rows put back: what a replay (which never spills)
    // must rebuild. This also checks every spilled row against the replay.
    let reader = sim.node.sm.reader();
    let mut live = reader.read(State::clone);
    live.restore_rows(&reader.cold()).unwrap();
    (live, pasts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_replay_reproduces_the_live_state_of_thousands_of_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (live, pasts) = run(dir.path()).await;
    assert_eq!(live.jobs.len(), JOBS);
    let canonical = serde_json::to_vec(&live).unwrap();

    let audit = AuditLog::open(dir.path()).unwrap();
    let info = audit.info().unwrap();

    // The workload covers what it claims to (and, for the timeline check below, what one rerun
    // job's device events are).
    let (rerun_job, _) = live.jobs.iter().find(|(_, j)| j.runs.len() > 2).unwrap();
    let mut want = (0, 0, 0);
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reasons: BTreeSet<String> = BTreeSet::new();
    for item in audit.events(1, u64::MAX).unwrap() {
        let (_, e) = item.unwrap();
        *kinds.entry(e.kind()).or_default() += 1;
        if e.job() == Some(rerun_job) {
            match e {
                Event::DeviceDispatched { .. } => want.0 += 1,
                Event::DeviceSucceeded { .. } => want.1 += 1,
                Event::DeviceFailed { .. } => want.2 += 1,
                _ => {}
            }
        }
        if let Event::DeviceFailed { reason, .. } = &e {
            reasons.insert(
                format!("{reason:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap()
                    .into(),
            );
        }
    }
    for k in [
        "JobCreated",
        "JobScheduled",
        "BatchStarted",
        "DeviceDispatched",
        "DeviceSucceeded",
        "DeviceFailed",
        "DevicesJoined",
        "JobStopped",
        "JobResumed",
        "JobCancelled",
        "JobCompleted",
        "JobFailed",
        "RerunStarted",
        "TwinPatched",
        "ConnectionChanged",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "no {k} in {kinds:?}"
        );
    }
    for r in [
        "DeviceError",
        "Timeout",
        "NotConnected",
        "DispatchFailed",
        "DeviceDisabled",
    ] {
        assert!(reasons.contains(r), "no {r} failure in {reasons:?}");
    }
    let reruns = live.jobs.values().filter(|j| j.runs.len() > 1).count();
    assert!(reruns > 100, "only {reruns} jobs were rerun");
    assert!(info.last_seq > 40_000, "only {} events", info.last_seq);

    // (a) Replay from the data directory alone.
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None, "{v:?}");
    assert_eq!(v.checked, info.last_seq);
    let replayed = audit.replay(ReplayTo::End).unwrap();
    assert_eq!(replayed.last_seq, info.last_seq);
    assert!(replayed.state == live, "replay differs from the live state");
    assert_eq!(serde_json::to_vec(&replayed.state).unwrap(), canonical);

    // (b) Export, then replay the export alone (the chain is re-checked on the way).
    let mut jsonl = Vec::new();
    let stats = audit
        .export(&ExportFilter::default(), ExportFormat::Jsonl, &mut jsonl)
        .unwrap();
    assert_eq!(stats.events, info.last_seq);
    assert_eq!(stats.bytes, jsonl.len() as u64);
    let from_export = replay_export(&jsonl[..], ReplayTo::End).unwrap();
    assert_eq!(from_export.hashes_checked, info.last_seq);
    assert_eq!(from_export.chain_head, Some(info.chain_head));
    assert!(
        from_export.replayed.state == live,
        "export replay differs from the live state"
    );
    assert_eq!(
        serde_json::to_vec(&from_export.replayed.state).unwrap(),
        canonical
    );

    // `--to-seq` at and around the reader threads' chunk edges (4,096 events a chunk, two
    // readers taking turns) stops exactly there, as the one-threaded export replay does.
    for to in [1, 4095, 4096, 4097, 8192, 8193, 12_289, info.last_seq - 1] {
        let dir_replay = audit.replay(ReplayTo::Seq(to)).unwrap();
        let export_replay = replay_export(&jsonl[..], ReplayTo::Seq(to)).unwrap();
        assert_eq!(dir_replay.last_seq, to);
        assert!(
            dir_replay.state == export_replay.replayed.state,
            "replay to seq {to} differs between the directory and the export"
        );
    }

    // The CSV export: a header and one line an event (bodies hold commas and quotes, and are
    // quoted).
    let mut csv = Vec::new();
    let range = ExportFilter {
        from_seq: 1001,
        to_seq: Some(3000),
        job: None,
    };
    let csv_stats = audit.export(&range, ExportFormat::Csv, &mut csv).unwrap();
    assert_eq!(csv_stats.events, 2000);
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("seq,time,type,job,device,principal,body\n1001,"));
    assert_eq!(csv.lines().count(), 2001);

    // `--at` a past time: every job as it was then, from the directory and from the export.
    for past in &pasts {
        let then = audit.replay(ReplayTo::Time(past.until)).unwrap();
        assert_eq!(then.last_seq, past.last_seq);
        assert_eq!(then.clock_went_back, None);
        assert!(
            then.state == past.state,
            "replay --at differs from the state then"
        );
        let then = replay_export(&jsonl[..], ReplayTo::Time(past.until)).unwrap();
        assert_eq!(then.replayed.last_seq, past.last_seq);
        assert!(then.replayed.state == past.state);
        // Some job was still running then and is final now.
        assert!(past
            .state
            .jobs
            .iter()
            .any(|(id, j)| { j.status == JobStatus::Running && live.jobs[id].status.is_final() }));
    }
    let then = audit.replay(ReplayTo::Seq(pasts[0].last_seq)).unwrap();
    assert!(then.state == pasts[0].state);

    // A filtered export cannot be replayed: it has gaps.
    let mut one = Vec::new();
    let filter = ExportFilter {
        job: Some("job-00007".into()),
        ..ExportFilter::default()
    };
    audit
        .export(&filter, ExportFormat::Jsonl, &mut one)
        .unwrap();
    let err = replay_export(&one[..], ReplayTo::End).unwrap_err();
    assert!(err.to_string().contains("complete export"), "{err}");

    // An edited export is caught at the edited seq.
    let text = String::from_utf8(jsonl).unwrap();
    let edited = text.replacen("\"status\":500", "\"status\":200", 1);
    assert_ne!(edited, text);
    let err = replay_export(edited.as_bytes(), ReplayTo::End).unwrap_err();
    assert!(err.to_string().contains("hash does not match"), "{err}");

    // Every row names its principal; an edited or removed principal is caught too.
    let mut principals = BTreeSet::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        principals.insert(row["principal"].as_str().unwrap().to_string());
    }
    let all_principals: BTreeSet<String> = [
        "anonymous",
        "cert:CN=ops, O=\"Example\"",
        "policy:iothubowner",
        "system",
    ]
    .into_iter()
    .map(String::from)
    .chain((0..7).map(|n| format!("token:ops-{n}")))
    .collect();
    assert_eq!(principals, all_principals);
    for (from, to) in [
        (
            "\"principal\":\"policy:iothubowner\"",
            "\"principal\":\"anonymous\"",
        ),
        ("\"principal\":\"anonymous\",", ""),
        ("\"principal\":\"system\"", "\"principal\":\"anonymous\""),
    ] {
        let edited = text.replacen(from, to, 1);
        assert_ne!(edited, text);
        let err = replay_export(edited.as_bytes(), ReplayTo::End).unwrap_err();
        assert!(err.to_string().contains("hash does not match"), "{err}");
    }
    let mut full_csv = Vec::new();
    audit
        .export(&ExportFilter::default(), ExportFormat::Csv, &mut full_csv)
        .unwrap();
    let full_csv = String::from_utf8(full_csv).unwrap();
    assert!(full_csv.contains(",\"cert:CN=ops, O=\"\"Example\"\"\",\"{"));
    assert!(full_csv.contains(",token:ops-3,\"{"));

    // The timeline of a rerun job sums exactly the device events the log has for it.
    let t = audit.timeline(rerun_job).unwrap();
    let mut sums = (0, 0, 0);
    for e in &t.entries {
        if let TimelineEntry::Devices(o) = e {
            sums.0 += o.dispatched;
            sums.1 += o.succeeded;
            sums.2 += o.failed;
        }
    }
    assert_eq!(sums, want);
    let rerun_lines = t
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e,
                TimelineEntry::Event {
                    event: Event::RerunStarted { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(rerun_lines, live.jobs[rerun_job].runs.len() - 1);
    // Job-level lines carry their command's principal: the create an operator's, the start the
    // leader's.
    for e in &t.entries {
        match e {
            TimelineEntry::Event {
                event: Event::JobCreated { .. },
                principal,
                ..
            } => assert_ne!(principal, &Principal::System),
            TimelineEntry::Event {
                event: Event::JobStarted { .. },
                principal,
                ..
            } => assert_eq!(principal, &Principal::System),
            _ => {}
        }
    }
}

#[tokio::test]
async fn replay_at_stops_where_the_clock_first_passes_the_time() {
    // A new leader whose clock is behind stamps later entries with earlier times. `--at` shows
    // the longest prefix of the log stamped at or before the time (a state the node really had)
    // and says which later event went back.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    node.propose(common::register(0, 3, 0)).await;
    node.propose(common::create_job("ahead", 3, 1000)).await;
    node.propose(common::create_job("behind", 3, 500)).await;
    drop(node);

    let audit = AuditLog::open(dir.path()).unwrap();
    let r = audit.replay(ReplayTo::Time(at(700))).unwrap();
    assert_eq!(r.last_seq, 3, "the three registrations");
    assert!(r.state.jobs.is_empty());
    assert_eq!(r.clock_went_back, Some(5));

    let mut jsonl = Vec::new();
    audit
        .export(&ExportFilter::default(), ExportFormat::Jsonl, &mut jsonl)
        .unwrap();
    let e = replay_export(&jsonl[..], ReplayTo::Time(at(700))).unwrap();
    assert_eq!(e.replayed.last_seq, 3);
    assert_eq!(e.replayed.clock_went_back, Some(5));

    let all = audit.replay(ReplayTo::Time(at(1000))).unwrap();
    assert_eq!(all.last_seq, 5);
    assert_eq!(all.clock_went_back, None);
}

#[tokio::test]
async fn committed_but_unapplied_entries_are_reported() {
    // What `kill -9` leaves behind: entries durable and committed in the Raft log, not applied.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(dir.path()).await;
    node.propose(common::register(0, 3, 0)).await;
    node.commit(common::create_job("late", 3, 10)).await;
    drop(node);

    let audit = AuditLog::open(dir.path()).unwrap();
    let info = audit.info().unwrap();
    assert_eq!(info.committed_unapplied, 1);
    assert_eq!(info.last_seq, 3);
    let v = audit.verify().unwrap();
    assert_eq!(v.failure, None);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("1 Raft log entries are committed")),
        "{:?}",
        v.notes
    );
}
