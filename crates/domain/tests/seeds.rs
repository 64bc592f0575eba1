#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The seeds' own examples, walked through the pure core: the IoT Central job of the first seed
//! (batch 25%, cancellation threshold 10% job-wide) on groups of 4 and 40 devices, and an IoT Hub
//! twin-update job by query. A tiny in-test "leader" loop drives `actions` the way the real one will.

use muster_domain::*;
use muster_types::{DeviceId, GroupId, JobId, RerunId, RunId, Timestamp};
use serde_json::json;

const TEMPLATE: &str = "dtmi:modelDefinition:zomtmdxh:eqod32zbyl";
const GROUP: &str = "833d7a7d-8f99-4e04-9e56-745806bdba6e";

struct Leader {
    state: State,
    now: Timestamp,
    log: Vec<Event>,
}

impl Leader {
    fn new() -> Self {
        Leader {
            state: State::default(),
            now: Timestamp::parse_rfc3339("2021-06-15T05:00:00Z").unwrap(),
            log: Vec::new(),
        }
    }

    fn exec(&mut self, cmd: Command) -> Result<Vec<Event>, DomainError> {
        let events = self.state.execute(&cmd)?;
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    /// A leader whose registry has `n` thermostats of the seed's template and the seed's group.
    fn with_group(n: usize) -> Self {
        let mut l = Leader::new();
        l.register(n, TEMPLATE);
        l.save_group();
        l
    }

    /// Drives the loop with every device answering 200, except `failing`, which answer 500.
    fn drive_failing(&mut self, failing: &[&str]) {
        self.drive(|req| {
            if failing.contains(&req.device.as_str()) {
                fail()
            } else {
                ok()
            }
        });
    }

    fn tick(&mut self, ms: i64) {
        self.now = self.now.plus_millis(ms);
    }

    fn register(&mut self, n: usize, template: &str) {
        let devices = (0..n)
            .map(|i| DeviceRegistration {
                id: DeviceId::new(format!("thermostat-{i:03}")).unwrap(),
                display_name: format!("Thermostat {i}"),
                model_id: Some(template.to_string()),
                enabled: true,
                tags: json!({"building": 43, "floor": i % 3}).into(),
            })
            .collect();
        self.exec(Command::RegisterDevices {
            devices,
            upsert: false,
            at: self.now,
        })
        .unwrap();
    }

    fn save_group(&mut self) {
        self.exec(Command::SaveGroup {
            id: GroupId::new(GROUP).unwrap(),
            display_name: "Thermostats".into(),
            description: String::new(),
            query: format!("SELECT * FROM devices WHERE $template = '{TEMPLATE}'"),
            if_version: None,
            at: self.now,
        })
        .unwrap();
    }

    /// Runs the leader loop until nothing is left to do: propose Advance when due, mark dispatched
    /// what may go, answer every send with `answer`, and jump the clock to the next wake-up.
    fn drive(&mut self, mut answer: impl FnMut(&SendRequest) -> Option<Outcome>) {
        for _ in 0..10_000 {
            let actions = actions(&self.state, self.now, 1000);
            let mut did = false;
            let mut wake = None;
            let mut results = Vec::new();
            for a in actions {
                match a {
                    Action::Advance => {
                        self.exec(Command::Advance { at: self.now }).unwrap();
                        did = true;
                    }
                    Action::Dispatch { job, run, devices } => {
                        let ev = self
                            .exec(Command::MarkDispatched {
                                job,
                                run,
                                devices,
                                at: self.now,
                            })
                            .unwrap();
                        did |= !ev.is_empty();
                    }
                    Action::Send(req) => {
                        if let Some(outcome) = answer(&req) {
                            results.push(DeviceResult {
                                job: req.job.clone(),
                                run: req.run,
                                device: req.device.clone(),
                                attempt: req.attempt,
                                outcome,
                            });
                        }
                    }
                    Action::WakeAt(t) => wake = Some(t),
                    Action::Invoke(_) | Action::PushDesired(_) => {}
                }
            }
            if !results.is_empty() {
                self.tick(10);
                self.exec(Command::RecordDeviceResults {
                    results,
                    at: self.now,
                })
                .unwrap();
                did = true;
            }
            if !did {
                match wake {
                    Some(t) => self.now = t,
                    None => return,
                }
            }
        }
        panic!("the leader loop did not settle");
    }

    fn job(&self, id: &str) -> &Job {
        &self.state.jobs[&JobId::new(id).unwrap()]
    }
}

/// The IoT Central seed's job-004: "Run device report", batch 25%, threshold 10% job-wide.
fn central_job() -> JobSpec {
    JobSpec {
        display_name: "Run device report".into(),
        description: "Call command to run the device reports".into(),
        target: Target {
            selector: TargetSelector::Group(GroupId::new(GROUP).unwrap()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "getMaxMinReport".into(),
            payload: json!("2021-06-15T05:00:00.000Z"),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout {
            batch: Some(BatchSize::Percentage(25)),
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation: Some(CancellationThreshold {
            limit: Threshold::Percentage(10),
            per_batch: false,
        }),
        retry: RetryPolicy::default(),
    }
}

fn create(l: &mut Leader, id: &str, spec: JobSpec) {
    l.exec(Command::CreateJob {
        id: JobId::new(id).unwrap(),
        spec,
        at: l.now,
    })
    .unwrap();
}

fn ok() -> Option<Outcome> {
    Some(Outcome::Responded {
        status: 200,
        payload: json!({"maxTemp": 23}).into(),
    })
}

fn fail() -> Option<Outcome> {
    Some(Outcome::Responded {
        status: 500,
        payload: json!({"error": "sensor offline"}).into(),
    })
}

fn batch_starts(log: &[Event]) -> Vec<u32> {
    log.iter()
        .filter_map(|e| match e {
            Event::BatchStarted { batch, .. } => Some(*batch),
            _ => None,
        })
        .collect()
}

#[test]
fn central_seed_on_four_devices_runs_one_device_per_batch_to_complete() {
    let mut l = Leader::new();
    l.register(4, TEMPLATE);
    l.register_other_template();
    l.save_group();
    create(&mut l, "job-004", central_job());
    assert_eq!(l.job("job-004").status, JobStatus::Pending);
    assert_eq!(l.job("job-004").current_run().batches.len(), 4);

    // Each batch must be finished before the next one starts: record the batch of every send.
    let mut sends = Vec::new();
    l.drive(|req| {
        sends.push(req.device.clone());
        ok()
    });
    let j = l.job("job-004");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(batch_starts(&l.log), vec![0, 1, 2, 3]);
    let s = j.stats();
    assert_eq!((s.devices, s.succeeded, s.failed, s.pending), (4, 4, 0, 0));
    // The other template's device was never part of the group.
    assert!(!sends.iter().any(|d| d.as_str().starts_with("sensor")));
    assert_eq!(sends.len(), 4);
    // Batches ran in device order, one device at a time.
    let order: Vec<&str> = sends.iter().map(|d| d.as_str()).collect();
    assert_eq!(
        order,
        [
            "thermostat-000",
            "thermostat-001",
            "thermostat-002",
            "thermostat-003"
        ]
    );
    let d = j.current_run().device(&sends[0]).unwrap();
    assert_eq!(d.attempts, 1);
    assert_eq!(
        d.response.as_ref().unwrap().payload.value(),
        json!({"maxTemp": 23})
    );
    assert_eq!(State::replay(&l.log), l.state);
}

impl Leader {
    fn register_other_template(&mut self) {
        self.exec(Command::RegisterDevices {
            devices: vec![DeviceRegistration {
                id: DeviceId::new("sensor-1").unwrap(),
                display_name: "other".into(),
                model_id: Some("dtmi:other;1".into()),
                enabled: true,
                tags: json!({}).into(),
            }],
            upsert: false,
            at: self.now,
        })
        .unwrap();
    }
}

#[test]
fn central_seed_on_four_devices_one_failure_crosses_ten_percent() {
    let mut l = Leader::with_group(4);
    create(&mut l, "job-004", central_job());
    l.drive(|req| {
        if req.device.as_str() == "thermostat-001" {
            fail()
        } else {
            ok()
        }
    });
    let j = l.job("job-004");
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(
        j.cancel_reason,
        Some(CancelReason::Threshold {
            failures: 1,
            population: 4,
            batch: None
        })
    );
    let s = j.stats();
    assert_eq!(
        (s.succeeded, s.failed, s.cancelled, s.pending, s.running),
        (1, 1, 2, 0, 0)
    );
    // Batches 2 and 3 never started.
    assert_eq!(batch_starts(&l.log), vec![0, 1]);
    let failed = j
        .current_run()
        .device(&DeviceId::new("thermostat-001").unwrap())
        .unwrap();
    assert_eq!(
        failed.last_error,
        Some(FailureReason::DeviceError { status: 500 })
    );
    assert_eq!(
        failed.response.as_ref().unwrap().payload.value(),
        json!({"error": "sensor offline"})
    );
}

#[test]
fn central_seed_on_forty_devices_tolerates_four_failures_and_cancels_at_the_fifth() {
    // 10% of 40 is 4: four failures are not "more than 10%", the fifth is.
    let mut l = Leader::with_group(40);
    create(&mut l, "tolerant", central_job());
    let failing = [
        "thermostat-003",
        "thermostat-014",
        "thermostat-025",
        "thermostat-036",
    ];
    l.drive_failing(&failing);
    let j = l.job("tolerant");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.current_run().batches.len(), 4);
    assert!(j.current_run().batches.iter().all(|b| b.len() == 10));
    let s = j.stats();
    assert_eq!((s.succeeded, s.failed, s.cancelled), (36, 4, 0));
    assert_eq!(batch_starts(&l.log), vec![0, 1, 2, 3]);

    let mut l = Leader::with_group(40);
    create(&mut l, "strict", central_job());
    // Five failures, all in the second batch (devices 10..20).
    let failing = [
        "thermostat-010",
        "thermostat-011",
        "thermostat-012",
        "thermostat-013",
        "thermostat-014",
    ];
    l.drive_failing(&failing);
    let j = l.job("strict");
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(
        j.cancel_reason,
        Some(CancelReason::Threshold {
            failures: 5,
            population: 40,
            batch: None
        })
    );
    let s = j.stats();
    // Batch 0 succeeded (10); in batch 1 the fifth failure cancels at once, so the answers that
    // came after it in the same entry are not counted, and batches 2 and 3 never started.
    assert_eq!(s.failed, 5);
    assert_eq!(s.succeeded + s.failed + s.cancelled, 40);
    assert!(s.succeeded >= 10 && s.succeeded <= 15);
    assert_eq!(batch_starts(&l.log), vec![0, 1]);
    assert_eq!(State::replay(&l.log), l.state);
}

#[test]
fn hub_seed_twin_update_by_query_changes_the_twins() {
    let mut l = Leader::new();
    l.register(6, TEMPLATE);
    // IoT Hub's queryCondition, wrapped as the REST gateway will wrap it.
    let spec = JobSpec {
        display_name: String::new(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query("SELECT * FROM devices WHERE tags.floor = 1".into()),
            continuous: false,
        },
        operations: vec![
            Operation::PatchDesired {
                patch: json!({"targetTemperature": 56}),
            },
            Operation::PatchTags {
                patch: json!({"updated": true}),
            },
        ],
        schedule: Schedule {
            start_at: Some(l.now.plus_secs(60)),
            max_execution_secs: Some(3600),
            window: None,
        },
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    };
    create(&mut l, "twin-update-1", spec);
    assert_eq!(l.job("twin-update-1").status, JobStatus::Scheduled);
    l.drive(|_| panic!("a twin update needs no device round trip"));
    let j = l.job("twin-update-1");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.started_at, Some(j.created_at.plus_secs(60)));
    let s = j.stats();
    assert_eq!((s.devices, s.succeeded), (2, 2));
    for (id, d) in &l.state.registry.devices {
        let on_floor_1 = d.tags["floor"] == 1;
        assert_eq!(
            d.desired.get("targetTemperature") == Some(&json!(56)),
            on_floor_1,
            "{id}"
        );
        assert_eq!(d.tags.get("updated") == Some(&json!(true)), on_floor_1);
        assert_eq!(d.desired_version, u64::from(on_floor_1));
    }
}

#[test]
fn stop_holds_dispatch_and_resume_finishes() {
    let mut l = Leader::with_group(4);
    create(&mut l, "job-004", central_job());
    l.exec(Command::Advance { at: l.now }).unwrap();
    l.exec(Command::StopJob {
        id: JobId::new("job-004").unwrap(),
        at: l.now,
    })
    .unwrap();
    l.drive(|_| ok());
    assert_eq!(l.job("job-004").status, JobStatus::Stopped);
    assert!(!l
        .log
        .iter()
        .any(|e| matches!(e, Event::DeviceDispatched { .. })));
    let err = l
        .exec(Command::StopJob {
            id: JobId::new("job-004").unwrap(),
            at: l.now,
        })
        .unwrap_err();
    assert!(err.to_string().contains("already stopped"), "{err}");
    l.exec(Command::ResumeJob {
        id: JobId::new("job-004").unwrap(),
        at: l.now,
    })
    .unwrap();
    l.drive(|_| ok());
    assert_eq!(l.job("job-004").status, JobStatus::Completed);
}

#[test]
fn rerun_reaches_exactly_the_failed_devices() {
    let mut l = Leader::with_group(8);
    let mut spec = central_job();
    spec.cancellation = None;
    create(&mut l, "j", spec);
    l.drive(|req| {
        if req.device.as_str().ends_with('3') || req.device.as_str().ends_with('5') {
            fail()
        } else {
            ok()
        }
    });
    assert_eq!(l.job("j").status, JobStatus::Completed);
    l.exec(Command::RerunJob {
        id: JobId::new("j").unwrap(),
        rerun_id: RerunId::new("rerun-1").unwrap(),
        at: l.now,
    })
    .unwrap();
    let mut reached = Vec::new();
    l.drive(|req| {
        assert_eq!(req.run, RunId(1));
        reached.push(req.device.to_string());
        ok()
    });
    assert_eq!(reached, ["thermostat-003", "thermostat-005"]);
    let j = l.job("j");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.runs.len(), 2);
    assert_eq!(j.stats().succeeded, 2);
    assert_eq!(j.runs[0].stats.failed, 2, "the first run's history is kept");
    // Nothing failed in the rerun: a second rerun has nothing to do.
    let err = l
        .exec(Command::RerunJob {
            id: JobId::new("j").unwrap(),
            rerun_id: RerunId::new("rerun-2").unwrap(),
            at: l.now,
        })
        .unwrap_err();
    assert!(matches!(err, DomainError::Conflict { .. }));
}

#[test]
fn silent_devices_time_out_and_are_retried_with_a_new_attempt() {
    let mut l = Leader::with_group(2);
    let mut spec = central_job();
    spec.rollout.batch = None;
    spec.cancellation = None;
    spec.retry = RetryPolicy {
        max_attempts: 3,
        retry_failed: true,
        retry_timed_out: true,
        ..Default::default()
    };
    create(&mut l, "j", spec);
    let mut rids = Vec::new();
    l.drive(|req| {
        rids.push(req.rid.clone());
        if req.device.as_str() == "thermostat-000" && req.attempt < 3 {
            None // silent: the response timeout will fire
        } else {
            ok()
        }
    });
    let j = l.job("j");
    assert_eq!(j.status, JobStatus::Completed);
    let d = j
        .current_run()
        .device(&DeviceId::new("thermostat-000").unwrap())
        .unwrap();
    assert_eq!((d.status, d.attempts), (DeviceStatus::Succeeded, 3));
    assert!(rids.contains(&"j:0:1".to_string()) && rids.contains(&"j:0:3".to_string()));
    let timeouts = l
        .log
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::DeviceFailed {
                    reason: FailureReason::Timeout,
                    retry: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(timeouts, 2);
}

#[test]
fn a_device_that_never_answers_ends_timed_out() {
    let mut l = Leader::with_group(1);
    create(&mut l, "j", central_job());
    l.drive(|_| None);
    let j = l.job("j");
    assert_eq!(j.stats().timed_out, 1);
    assert_eq!(
        j.status,
        JobStatus::Cancelled,
        "1 of 1 timed out is over 10%"
    );
}

#[test]
fn an_offline_device_is_served_when_it_comes_online_and_fails_after_the_connect_timeout() {
    let mut l = Leader::with_group(2);
    for i in 0..2 {
        l.exec(Command::SetConnection {
            device: DeviceId::new(format!("thermostat-00{i}")).unwrap(),
            connected: false,
            at: l.now,
        })
        .unwrap();
    }
    let mut spec = central_job();
    spec.rollout.batch = None;
    spec.cancellation = None;
    spec.operations = vec![Operation::InvokeMethod(MethodCall {
        name: "reboot".into(),
        payload: json!(null),
        response_timeout_secs: 30,
        connect_timeout_secs: 120,
    })];
    create(&mut l, "j", spec);
    l.exec(Command::Advance { at: l.now }).unwrap();
    // Both wait; device 0 comes online after a minute and is served.
    let acts = actions(&l.state, l.now, 100);
    assert!(!acts.iter().any(|a| matches!(a, Action::Dispatch { .. })));
    assert!(acts.contains(&Action::WakeAt(l.now.plus_secs(120))));
    l.tick(60_000);
    l.exec(Command::SetConnection {
        device: DeviceId::new("thermostat-000").unwrap(),
        connected: true,
        at: l.now,
    })
    .unwrap();
    l.drive(|_| ok());
    let j = l.job("j");
    let run = j.current_run();
    assert_eq!(
        run.device(&DeviceId::new("thermostat-000").unwrap())
            .unwrap()
            .status,
        DeviceStatus::Succeeded
    );
    let d1 = run
        .device(&DeviceId::new("thermostat-001").unwrap())
        .unwrap();
    assert_eq!(
        (d1.status, d1.last_error.clone()),
        (DeviceStatus::Failed, Some(FailureReason::NotConnected))
    );
    assert_eq!(j.status, JobStatus::Completed);
}

#[test]
fn max_execution_time_fails_the_job_and_cancels_the_rest() {
    let mut l = Leader::with_group(3);
    let mut spec = central_job();
    spec.cancellation = None;
    spec.schedule.max_execution_secs = Some(10);
    create(&mut l, "j", spec);
    l.drive(|_| None);
    let j = l.job("j");
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.failure, Some(JobFailure::MaxExecutionTimeExceeded));
    let s = j.stats();
    assert_eq!(s.sum(), 3);
    assert_eq!(
        s.cancelled, 3,
        "the first device was still waiting for its answer"
    );
}

#[test]
fn rate_limit_spreads_dispatch_over_minutes() {
    let mut l = Leader::with_group(5);
    let mut spec = central_job();
    spec.rollout = Rollout {
        batch: None,
        max_devices_per_minute: Some(2),
        ..Default::default()
    };
    spec.cancellation = None;
    create(&mut l, "j", spec);
    let start = l.now;
    l.drive(|_| ok());
    let times: Vec<Timestamp> = l
        .log
        .iter()
        .filter_map(|e| match e {
            Event::DeviceDispatched { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    assert_eq!(times.len(), 5);
    for w in times.windows(3) {
        assert!(w[2].millis() - w[0].millis() >= 60_000, "{times:?}");
    }
    assert!(l.now.millis() - start.millis() >= 120_000);
    assert_eq!(l.job("j").status, JobStatus::Completed);
}

#[test]
fn continuous_job_takes_devices_that_join_the_group_later() {
    let mut l = Leader::with_group(2);
    let mut spec = central_job();
    spec.target.continuous = true;
    spec.cancellation = None;
    create(&mut l, "watch", spec);
    l.drive(|_| ok());
    assert_eq!(l.job("watch").status, JobStatus::Running);
    assert_eq!(l.job("watch").stats().succeeded, 2);
    l.exec(Command::RegisterDevices {
        devices: vec![DeviceRegistration {
            id: DeviceId::new("late-1").unwrap(),
            display_name: String::new(),
            model_id: Some(TEMPLATE.into()),
            enabled: true,
            tags: json!({}).into(),
        }],
        upsert: false,
        at: l.now,
    })
    .unwrap();
    let mut reached = Vec::new();
    l.drive(|req| {
        reached.push(req.device.to_string());
        ok()
    });
    assert_eq!(reached, ["late-1"]);
    let j = l.job("watch");
    assert_eq!((j.stats().devices, j.stats().succeeded), (3, 3));
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(State::replay(&l.log), l.state);
}

#[test]
fn bad_specs_name_the_field() {
    let mut l = Leader::new();
    let mut spec = central_job();
    spec.target.selector = TargetSelector::Group(GroupId::new("no-such-group").unwrap());
    let err = l
        .exec(Command::CreateJob {
            id: JobId::new("j").unwrap(),
            spec,
            at: l.now,
        })
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Invalid { field, message } if field == "group" && message.contains("no-such-group")),
        "{err}"
    );
    let mut spec = central_job();
    spec.target.selector = TargetSelector::Query("SELECT * FROM devices WHERE tags.x =".into());
    let err = l
        .exec(Command::CreateJob {
            id: JobId::new("j").unwrap(),
            spec,
            at: l.now,
        })
        .unwrap_err();
    assert!(err.to_string().starts_with("target.query:"), "{err}");
    assert!(l.log.is_empty(), "a rejected command writes nothing");
    // A duplicate id is a conflict.
    l.register(1, TEMPLATE);
    l.save_group();
    create(&mut l, "j", central_job());
    let err = l
        .exec(Command::CreateJob {
            id: JobId::new("j").unwrap(),
            spec: central_job(),
            at: l.now,
        })
        .unwrap_err();
    assert_eq!(err, DomainError::JobExists(JobId::new("j").unwrap()));
}
