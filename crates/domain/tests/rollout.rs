//! Property tests for the rollout controls (issue 16): a simulated leader drives one job through
//! `actions`, `MarkDispatched`, random device answers, `Advance` and operator `continue`s, and
//! after every command checks:
//!
//! 1. rate: dispatches in any 60 s window never exceed the limit in force when they were made,
//!    and the exponential rate rises only when (and to what) its criterion has earned;
//! 2. abort criteria: a running job never has a crossed criterion, and a job cancelled by one
//!    crossed it, never before its minimum;
//! 3. backoff: a retried device's delay is within its bounds and is the same when recomputed,
//!    and the device is not dispatched before it ends;
//! 4. gates: no device is dispatched while the job is paused, and a batch starts after a
//!    finished one only if that one passed its gate or an operator continued;
//! 5. replay of the events equals the live state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_domain::rollout::{
    backoff, AbortCriterion, Backoff, ExponentialRate, FailureKind, Gate, GateAction, RateCriterion,
};
use muster_domain::{
    actions, Action, BatchSize, CancelReason, Command, DeviceRegistration, DeviceResult,
    DeviceStatus, Event, FailureReason, JobSpec, JobStatus, MethodCall, Operation, Outcome,
    RetryPolicy, Rollout, Schedule, State, Target, TargetSelector, Threshold,
};
use muster_types::{DeviceId, JobId, Timestamp};
use proptest::prelude::*;
use serde_json::json;

const T0: i64 = 1_700_000_000_000;

fn did(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:03}")).unwrap()
}

fn fleet(n: usize) -> Vec<DeviceRegistration> {
    (0..n)
        .map(|i| DeviceRegistration {
            id: did(i),
            display_name: String::new(),
            model_id: None,
            enabled: true,
            tags: json!({}).into(),
        })
        .collect()
}

fn spec(rollout: Rollout, retry: RetryPolicy) -> JobSpec {
    JobSpec {
        display_name: "fw".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query("SELECT * FROM devices".into()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "update".into(),
            payload: json!({}),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout,
        cancellation: None,
        retry,
    }
}

fn threshold() -> impl Strategy<Value = Threshold> {
    prop_oneof![
        (1u32..=100).prop_map(Threshold::Percentage),
        (1u32..20).prop_map(Threshold::Count)
    ]
}

fn kind() -> impl Strategy<Value = FailureKind> {
    prop_oneof![
        Just(FailureKind::Failed),
        Just(FailureKind::TimedOut),
        Just(FailureKind::NotConnected),
        Just(FailureKind::Any)
    ]
}

fn rollout() -> impl Strategy<Value = Rollout> {
    let exp = (1u32..20, 11u32..=50, any::<bool>(), 1u32..10, 0u32..200).prop_map(
        |(base, f, notified, n, extra)| ExponentialRate {
            base_per_minute: base,
            increment_factor_tenths: f,
            criterion: if notified {
                RateCriterion::NotifiedDevices(n)
            } else {
                RateCriterion::SucceededDevices(n)
            },
            maximum_per_minute: base + extra,
        },
    );
    let gate = (0u32..=100, any::<bool>(), any::<bool>()).prop_map(|(p, cancel, each)| Gate {
        success_percent: p,
        on_failure: if cancel {
            GateAction::Cancel
        } else {
            GateAction::Pause
        },
        pause_after_each_batch: each,
    });
    let criterion =
        (kind(), threshold(), 0u32..30).prop_map(|(kind, threshold, min)| AbortCriterion {
            kind,
            threshold,
            min_finished: min,
        });
    (
        proptest::option::of(1u32..8),
        proptest::option::of(1u32..30),
        proptest::option::of(exp),
        proptest::option::of(gate),
        proptest::collection::vec(criterion, 0..3),
    )
        .prop_map(|(batch, per_minute, exponential, gate, abort)| Rollout {
            batch: batch.map(BatchSize::Count),
            max_devices_per_minute: per_minute,
            exponential,
            gate,
            abort,
        })
}

fn retry() -> impl Strategy<Value = RetryPolicy> {
    let b =
        (1u32..20_000, 1u32..4, 0u32..40_000, 0u32..=100).prop_map(|(base, f, extra, j)| Backoff {
            base_ms: base,
            factor: f,
            max_ms: base + extra,
            jitter_percent: j,
        });
    (
        1u32..5,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(b.clone()),
        proptest::option::of(b),
    )
        .prop_map(|(max, f, t, bf, bt)| RetryPolicy {
            max_attempts: max,
            retry_failed: f,
            retry_timed_out: t,
            backoff_failed: bf,
            backoff_timed_out: bt,
        })
}

/// What a device does with an attempt: 0 succeed, 1 fail, 2 stay silent (times out).
fn answers() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![4 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        200,
    )
}

struct Sim {
    state: State,
    log: Vec<Event>,
    job: JobId,
    at: Timestamp,
    /// Every dispatch with the limit in force when it was made.
    dispatches: Vec<(Timestamp, Option<u32>)>,
}

impl Sim {
    fn exec(&mut self, cmd: Command) -> Result<Vec<Event>, TestCaseError> {
        let pre = self.state.clone();
        let events = self
            .state
            .execute(&cmd)
            .map_err(|e| TestCaseError::fail(format!("{cmd:?}: {e}")))?;
        self.check(&pre, &cmd, &events)?;
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn check(&mut self, pre: &State, cmd: &Command, events: &[Event]) -> Result<(), TestCaseError> {
        let (Some(before), Some(after)) = (pre.jobs.get(&self.job), self.state.jobs.get(&self.job))
        else {
            return Ok(());
        };
        let spec = &after.spec;
        let mut continued = false;
        let mut paused_in_cmd = false;
        for e in events {
            match e {
                Event::DeviceDispatched { device, at, .. } => {
                    // 4. nothing dispatched while paused (or by a paused job in this command)
                    prop_assert!(
                        before.status == JobStatus::Running && !paused_in_cmd,
                        "dispatch of {device} while {:?}",
                        before.status
                    );
                    // 3. not before a backoff ends
                    let d = before.current_run().device(device).unwrap();
                    prop_assert!(
                        d.ready_since.is_none_or(|t| t <= *at),
                        "{device} dispatched at {at:?} before its backoff ended at {:?}",
                        d.ready_since
                    );
                    self.dispatches.push((*at, before.rate_limit()));
                }
                Event::JobPaused { .. } => paused_in_cmd = true,
                Event::JobContinued { .. } => continued = true,
                Event::BatchStarted { batch, .. } if *batch > 0 => {
                    // 4. a later batch starts only past a passed gate or a continue
                    if let (Some(g), false) = (spec.rollout.gate, continued) {
                        let prev = &before.current_run().batches[*batch as usize - 1];
                        let run_after = after.current_run();
                        let stats = run_after.batches[*batch as usize - 1].stats;
                        prop_assert!(
                            g.passed(&stats) && !g.pause_after_each_batch,
                            "batch {batch} started past a closed gate ({:?} -> {stats:?})",
                            prev.stats
                        );
                    }
                }
                Event::RateChanged { per_minute, .. } => {
                    // 1. rises only to what the criterion earned
                    let e = spec.rollout.exponential.unwrap();
                    let run = after.current_run();
                    let earned = e.rate(run.notified, run.stats.succeeded);
                    let old = before.rate_limit_exp();
                    prop_assert!(*per_minute > old, "rate {per_minute} not above {old}");
                    prop_assert!(*per_minute <= earned, "rate {per_minute} > earned {earned}");
                    prop_assert!(*per_minute <= e.maximum_per_minute);
                }
                Event::DeviceFailed {
                    device,
                    attempt,
                    reason,
                    retry: true,
                    at,
                    run,
                    ..
                } => {
                    // 3. backoff within bounds and deterministic
                    let d = after.current_run().device(device).unwrap();
                    let b = match reason {
                        FailureReason::Timeout => spec.retry.backoff_timed_out,
                        _ => spec.retry.backoff_failed,
                    };
                    let ready = d.ready_since.unwrap();
                    match b {
                        None => prop_assert_eq!(ready, *at),
                        Some(b) => {
                            let delay = (ready.millis() - at.millis()) as u64;
                            let ceiling = b.ceiling_ms(*attempt);
                            prop_assert!(delay <= ceiling && delay <= u64::from(b.max_ms));
                            prop_assert!(
                                delay >= ceiling * u64::from(100 - b.jitter_percent) / 100
                            );
                            let again = backoff::retry_at(
                                &spec.retry,
                                &self.job,
                                *run,
                                device,
                                *attempt,
                                reason,
                                *at,
                            );
                            prop_assert_eq!(again, Some(ready));
                        }
                    }
                }
                Event::JobCancelled {
                    reason:
                        CancelReason::Criterion {
                            index,
                            criterion,
                            finished,
                            ..
                        },
                    ..
                } => {
                    // 2. cancelled by a crossed criterion, never before its minimum
                    prop_assert_eq!(spec.rollout.abort[*index as usize], *criterion);
                    prop_assert!(*finished >= u64::from(criterion.min_finished));
                    prop_assert!(criterion.crossed(&after.current_run().tally()));
                }
                _ => {}
            }
        }
        // 2. a job that goes on has crossed no criterion
        if !after.status.is_final() {
            let t = after.current_run().tally();
            prop_assert!(
                !spec.rollout.abort.iter().any(|c| c.crossed(&t)),
                "job {:?} crossed a criterion ({t:?}) after {cmd:?}",
                after.status
            );
        }
        // 1. no window of 60 s holds more dispatches than the limit in force
        if let Some((last, _)) = self.dispatches.last().copied() {
            for &(t, limit) in self.dispatches.iter().rev() {
                let Some(limit) = limit else { continue };
                let in_window = self
                    .dispatches
                    .iter()
                    .filter(|(u, _)| *u <= t && u.millis() > t.millis() - 60_000)
                    .count();
                prop_assert!(
                    in_window <= limit as usize,
                    "{in_window} dispatches in the minute to {t:?}, limit {limit}"
                );
                if last.millis() - t.millis() > 60_000 {
                    break;
                }
            }
        }
        Ok(())
    }
}

trait ExpRate {
    fn rate_limit_exp(&self) -> u32;
}

impl ExpRate for muster_domain::Job {
    fn rate_limit_exp(&self) -> u32 {
        let e = self.spec.rollout.exponential.unwrap();
        self.rate_per_minute.unwrap_or_else(|| e.rate_at(0))
    }
}

fn simulate(
    devices: usize,
    rollout: Rollout,
    retry: RetryPolicy,
    answers: &[u8],
    steps: &[(u16, bool)],
) -> Result<Vec<Event>, TestCaseError> {
    let job = JobId::new("fw").unwrap();
    let mut sim = Sim {
        state: State::default(),
        log: Vec::new(),
        job: job.clone(),
        at: Timestamp(T0),
        dispatches: Vec::new(),
    };
    sim.exec(Command::RegisterDevices {
        devices: fleet(devices),
        upsert: false,
        at: sim.at,
    })?;
    sim.exec(Command::CreateJob {
        id: job.clone(),
        spec: spec(rollout, retry),
        at: sim.at,
    })?;
    let mut answer = answers.iter().cycle();
    for &(gap, operator) in steps {
        sim.at = sim.at.plus_millis(i64::from(gap) * 100);
        let status = sim.state.jobs[&job].status;
        if status.is_final() {
            break;
        }
        if operator && status == JobStatus::Paused {
            sim.exec(Command::ContinueJob {
                id: job.clone(),
                at: sim.at,
            })?;
        }
        for a in actions(&sim.state, sim.at, 16) {
            match a {
                Action::Advance => {
                    sim.exec(Command::Advance { at: sim.at })?;
                }
                Action::Dispatch { job, run, devices } => {
                    let events = sim.exec(Command::MarkDispatched {
                        job: job.clone(),
                        run,
                        devices,
                        at: sim.at,
                    })?;
                    let results: Vec<DeviceResult> = events
                        .iter()
                        .filter_map(|e| match e {
                            Event::DeviceDispatched {
                                job,
                                run,
                                device,
                                attempt,
                                ..
                            } => {
                                let outcome = match answer.next().copied().unwrap_or(0) {
                                    0 => Outcome::Responded {
                                        status: 200,
                                        payload: json!({}).into(),
                                    },
                                    1 => Outcome::Responded {
                                        status: 500,
                                        payload: json!({}).into(),
                                    },
                                    _ => return None,
                                };
                                Some(DeviceResult {
                                    job: job.clone(),
                                    run: *run,
                                    device: device.clone(),
                                    attempt: *attempt,
                                    outcome,
                                })
                            }
                            _ => None,
                        })
                        .collect();
                    if !results.is_empty() {
                        sim.at = sim.at.plus_millis(1);
                        sim.exec(Command::RecordDeviceResults {
                            results,
                            at: sim.at,
                        })?;
                    }
                }
                _ => {}
            }
        }
    }
    // 5. replay == live
    let replayed = State::replay(&sim.log);
    prop_assert!(replayed == sim.state, "replay differs from the live state");
    // Nothing stays paused without a reason, nothing runs while paused.
    let j = &sim.state.jobs[&job];
    if j.status == JobStatus::Paused {
        prop_assert!(j.paused.is_some());
        prop_assert_eq!(j.current_run().stats.running, 0);
    }
    for d in &j.current_run().devices {
        if d.status == DeviceStatus::Running {
            prop_assert!(j.status != JobStatus::Paused);
        }
    }
    Ok(sim.log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn rollout_rules_hold_throughout(
        devices in 1usize..40,
        rollout in rollout(),
        retry in retry(),
        answers in answers(),
        steps in proptest::collection::vec((0u16..400, proptest::bool::weighted(0.3)), 1..120),
    ) {
        simulate(devices, rollout, retry, &answers, &steps)?;
    }

    #[test]
    fn backoff_is_bounded_and_deterministic(
        base in 1u32..100_000,
        factor in 1u32..=10,
        extra in 0u32..1_000_000,
        jitter in 0u32..=100,
        attempt in 1u32..20,
        seed in any::<u64>(),
    ) {
        let b = Backoff { base_ms: base, factor, max_ms: base + extra, jitter_percent: jitter };
        let d = b.delay_ms(attempt, seed);
        prop_assert_eq!(d, b.delay_ms(attempt, seed));
        let ceiling = b.ceiling_ms(attempt);
        prop_assert!(d <= ceiling && ceiling <= u64::from(b.max_ms));
        prop_assert!(d >= ceiling * u64::from(100 - jitter) / 100);
        prop_assert!(b.ceiling_ms(attempt + 1) >= ceiling);
    }

    #[test]
    fn the_rate_is_monotone_and_capped(
        base in 1u32..1000,
        f in 11u32..=50,
        n in 1u32..50,
        extra in 0u32..10_000,
        a in 0u64..5000,
        b in 0u64..5000,
    ) {
        let e = ExponentialRate {
            base_per_minute: base,
            increment_factor_tenths: f,
            criterion: RateCriterion::NotifiedDevices(n),
            maximum_per_minute: base + extra,
        };
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(e.rate(lo, 0) <= e.rate(hi, 0));
        prop_assert!(e.rate(hi, 0) <= e.maximum_per_minute);
        // Below the first step the rate is the base.
        prop_assert_eq!(e.rate(u64::from(n) - 1, 0), base);
    }
}

/// The generated runs reach every rule: pauses of both kinds, continues, rate rises, criterion and
/// gate cancels, retries held back by a backoff.
#[test]
fn simulations_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let strategy = (
        1usize..40,
        rollout(),
        retry(),
        answers(),
        proptest::collection::vec((0u16..400, proptest::bool::weighted(0.3)), 1..120),
    );
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let (devices, rollout, retry, answers, steps) =
            strategy.new_tree(&mut runner).unwrap().current();
        let log = simulate(devices, rollout, retry, &answers, &steps).unwrap();
        for e in &log {
            let key = match e {
                Event::JobPaused { reason, .. } => {
                    format!("paused {reason:?}").chars().take(18).collect()
                }
                Event::JobCancelled { reason, .. } => match reason {
                    CancelReason::Criterion { .. } => "cancel criterion".into(),
                    CancelReason::Gate { .. } => "cancel gate".into(),
                    _ => "cancel other".into(),
                },
                Event::DeviceFailed {
                    retry: true,
                    at,
                    device,
                    ..
                } => {
                    let later = log.iter().any(|e| matches!(e, Event::DeviceDispatched { device: d, at: t, .. } if d == device && t.millis() > at.millis() + 1));
                    if later {
                        "retried later".into()
                    } else {
                        "retry".into()
                    }
                }
                other => other.kind().to_string(),
            };
            seen.insert(key);
        }
    }
    for want in [
        "paused AfterBatch",
        "paused GateFailed",
        "JobContinued",
        "RateChanged",
        "cancel criterion",
        "cancel gate",
        "retried later",
        "JobCompleted",
    ] {
        assert!(
            seen.iter().any(|s| s.starts_with(want)),
            "no simulation reached {want}: {seen:?}"
        );
    }
}

/// An abort criterion cancels at exactly the device that crosses it, and not before its minimum.
#[test]
fn a_criterion_cancels_exactly_when_crossed() {
    let rollout = Rollout {
        abort: vec![AbortCriterion {
            kind: FailureKind::Failed,
            threshold: Threshold::Percentage(50),
            min_finished: 4,
        }],
        ..Default::default()
    };
    let job = JobId::new("fw").unwrap();
    let mut s = State::default();
    let at = Timestamp(T0);
    s.execute(&Command::RegisterDevices {
        devices: fleet(10),
        upsert: false,
        at,
    })
    .unwrap();
    s.execute(&Command::CreateJob {
        id: job.clone(),
        spec: spec(rollout, RetryPolicy::default()),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    // fail, fail, fail: 3 of 3 finished is over 50% but under the minimum of 4
    for (i, status) in [500, 500, 500, 200, 500].into_iter().enumerate() {
        s.execute(&Command::MarkDispatched {
            job: job.clone(),
            run: muster_types::RunId(0),
            devices: vec![did(i)],
            at,
        })
        .unwrap();
        let events = s
            .execute(&Command::RecordDeviceResults {
                results: vec![muster_domain::responded(
                    &job,
                    muster_types::RunId(0),
                    &did(i),
                    1,
                    status,
                    json!({}),
                )],
                at,
            })
            .unwrap();
        let cancelled = events.iter().find_map(|e| match e {
            Event::JobCancelled { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        if i < 3 {
            assert_eq!(
                cancelled, None,
                "cancelled before the minimum at device {i}"
            );
        } else {
            // 4th finished: 3 failed of 4 is more than 50%.
            let reason = cancelled.expect("crossed at the 4th finished device");
            assert!(
                reason
                    .describe()
                    .contains("abort criterion 0 (failed > 50% after 4 finished)"),
                "{}",
                reason.describe()
            );
            return;
        }
    }
    panic!("never cancelled");
}

/// A paused job: `resume` continues it (IoT Central shows it `stopped`); stopped while paused and
/// resumed, its gate holds again; `continue` on a running job is refused.
#[test]
fn paused_jobs_stop_resume_and_continue() {
    let rollout = Rollout {
        batch: Some(BatchSize::Count(1)),
        gate: Some(Gate {
            success_percent: 0,
            on_failure: GateAction::Pause,
            pause_after_each_batch: true,
        }),
        ..Default::default()
    };
    let job = JobId::new("fw").unwrap();
    let mut s = State::default();
    let at = Timestamp(T0);
    s.execute(&Command::RegisterDevices {
        devices: fleet(3),
        upsert: false,
        at,
    })
    .unwrap();
    s.execute(&Command::CreateJob {
        id: job.clone(),
        spec: spec(rollout, RetryPolicy::default()),
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    let refused = s.execute(&Command::ContinueJob {
        id: job.clone(),
        at,
    });
    assert!(refused.is_err(), "continue of a running job: {refused:?}");
    let finish = |s: &mut State, i: usize| {
        s.execute(&Command::MarkDispatched {
            job: job.clone(),
            run: muster_types::RunId(0),
            devices: vec![did(i)],
            at,
        })
        .unwrap();
        s.execute(&Command::RecordDeviceResults {
            results: vec![muster_domain::responded(
                &job,
                muster_types::RunId(0),
                &did(i),
                1,
                200,
                json!({}),
            )],
            at,
        })
        .unwrap()
    };
    let events = finish(&mut s, 0);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::JobPaused { batch: 0, .. })));
    assert_eq!(s.jobs[&job].status, JobStatus::Paused);
    // Stop, then resume: the gate pauses it again at once.
    s.execute(&Command::StopJob {
        id: job.clone(),
        at,
    })
    .unwrap();
    assert_eq!(s.jobs[&job].status, JobStatus::Stopped);
    s.execute(&Command::ResumeJob {
        id: job.clone(),
        at,
    })
    .unwrap();
    assert_eq!(s.jobs[&job].status, JobStatus::Paused);
    // Resume of a paused job continues it.
    let events = s
        .execute(&Command::ResumeJob {
            id: job.clone(),
            at,
        })
        .unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::JobContinued { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::BatchStarted { batch: 1, .. })));
    assert_eq!(s.jobs[&job].status, JobStatus::Running);
    finish(&mut s, 1);
    assert_eq!(s.jobs[&job].status, JobStatus::Paused);
    s.execute(&Command::ContinueJob {
        id: job.clone(),
        at,
    })
    .unwrap();
    let events = finish(&mut s, 2);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::JobCompleted { .. })));
}
