//! Property tests of the pure core: random fleets, random jobs and random interleavings of what the
//! leader, the dispatcher and operators do, with the core's invariants checked after every command
//! (and, for the chain of events one command produces, after every event).
//!
//! A script is generated abstractly (indices, choices) and turned into concrete commands against
//! the live state, so that most commands are meaningful (dispatching what `actions` proposes,
//! answering attempts really in flight) while some are deliberately wrong (random devices, stale
//! attempts, wrong runs, stopped jobs, unknown ids) to test robustness.
//!
//! Checked after every command (see `Harness::step`, `Harness::check_event`, `check_state`):
//! 1. replaying the log (through `evolve` and through the owned `apply`) rebuilds the live state,
//!    and `execute` equals `decide` + `evolve`; a mirror that spills finished runs' rows to an
//!    in-memory cold tier after every command (as the store does) decides the same, its hot
//!    state plus cold rows is the complete state, and replaying (with spills, or then spilling
//!    everything) rebuilds its hot state and cold rows;
//! 2. run and batch counters add up to their device counts and equal a recount of the statuses;
//! 3. at most one final outcome per (job, run, device), nothing after it, final statuses never
//!    change (ending a job cancels only what is not final);
//! 4. a job that is not running dispatches nothing;
//! 5. a threshold cancel comes exactly after the final failure that crosses (with its numbers),
//!    never otherwise, and no crossing is ever left standing;
//! 6. `ready` holds exactly the pending devices of started batches, `deadlines` exactly the running
//!    devices with their deadlines;
//! 7. attempts never exceed `retry.max_attempts`, and each failure is retried exactly when the
//!    policy says;
//!
//! and more: per-minute limits, no dispatch outside a maintenance window (nor before the log
//! recorded that window's opening), window openings and closings recorded exactly once each,
//! only while the job runs, and none left owed after an Advance, batches start in order and only after the previous one is done,
//! failures the core decides (not connected, not found, disabled, timeout) have their cause,
//! `actions` only proposes what `decide` accepts and an Advance it asks for does something, joins
//! of continuous jobs happen only for devices that start matching.
//!
//! `PROPTEST_CASES=2000 cargo test -p muster-domain --test properties` for a longer soak.

// Helpers outside #[test] functions fail loudly on purpose: a broken fixture is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use muster_domain::window::{MaintenanceWindow, WindowMark, WindowState};
use muster_domain::{
    actions, actions_with, apply, decide, evolve, retention_due, Action, ActionOptions, BatchSize,
    CancelReason, CancellationThreshold, Command, ConnectionChange, ConnectionState,
    DeviceIdentity, DeviceKeys, DeviceRegistration, DeviceResult, DeviceRun, DeviceStatus,
    DomainError, Event, FailureReason, IdentityCondition, Job, JobFailure, JobSpec, JobStatus,
    MemRows, MethodCall, Operation, Outcome, PropertyReport, Retention, RetentionDue, RetryPolicy,
    Rollout, Schedule, State, Stats, Target, TargetSelector, Threshold,
};
use muster_types::{DeviceId, GroupId, JobId, RerunId, RunId, Timestamp};
use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::json;

const T0: i64 = 1_700_000_000_000;
const SITES: [&str; 3] = ["a", "b", "c"];
const GROUPS: [&str; 3] = ["g-a", "g-all", "g-missing"];
const MAX_DISPATCH: usize = 50;

// ------------------------------------------------------------------------------------------------
// The abstract script
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct DeviceGen {
    site: Option<u8>,
    enabled: bool,
}

#[derive(Debug, Clone)]
enum TargetGen {
    /// Indices into the registered devices; `true` adds an id that is not registered.
    Devices(Vec<usize>, bool),
    /// g-a, g-all or a group that does not exist.
    Group(u8),
    /// `tags.site = <site>`, or every device.
    Query(Option<u8>),
}

#[derive(Debug, Clone)]
enum OpsGen {
    Method {
        response_secs: u32,
        connect_secs: u32,
        with_desired: bool,
    },
    /// Registry-only: a tags patch (setting `site` can make devices join continuous jobs).
    Tags(Option<u8>),
    Cloud,
}

#[derive(Debug, Clone)]
struct JobGen {
    target: TargetGen,
    continuous: bool,
    ops: OpsGen,
    batch: Option<BatchSize>,
    threshold: Option<CancellationThreshold>,
    retry: RetryPolicy,
    per_minute: Option<u32>,
    max_exec_secs: Option<u64>,
    start_in_ms: Option<i64>,
    /// A maintenance window opening every `.0` seconds for `.1` seconds.
    window: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
enum OutcomeGen {
    Ok,
    DeviceError,
    Timeout,
    DispatchFailed,
    NotConnected,
}

#[derive(Debug, Clone, Copy)]
enum Twist {
    None,
    Duplicate,
    WrongAttempt,
    StaleAttempt,
    WrongRun,
}

#[derive(Debug, Clone)]
struct ResultGen {
    pick: usize,
    outcome: OutcomeGen,
    twist: Twist,
}

#[derive(Debug, Clone)]
enum Op {
    Advance(i64),
    /// Time passes without an `Advance` (the next commands are stamped later, as when the
    /// leader dispatches before its tick is applied).
    Wait(i64),
    /// Advance to what `actions` says is due next (exact deadlines).
    AdvanceToWake,
    /// Dispatch (a prefix of) what `actions` proposes for one job.
    DispatchActions {
        job: usize,
        take: usize,
    },
    /// Dispatch a job's pending devices whatever its status and batch (stopped jobs, unstarted
    /// batches).
    DispatchPending {
        job: usize,
        take: usize,
    },
    /// Dispatch random devices, possibly for a wrong run or an unknown job.
    DispatchRandom {
        job: usize,
        devices: Vec<usize>,
        run_twist: u8,
    },
    /// Answers for attempts in flight (from the `Send` actions), some twisted.
    Results(Vec<ResultGen>),
    /// An answer for a random device, run and attempt.
    RandomResult {
        job: usize,
        device: usize,
        run: u32,
        attempt: u32,
        outcome: OutcomeGen,
    },
    Stop(usize),
    Resume(usize),
    Cancel(usize),
    /// `ApplyRetention` with these limits (ms), at the current time.
    Retain(Option<u64>, Option<u64>),
    Rerun(usize, u8),
    Connect(usize, bool),
    /// Presence of many devices in one `SetConnections` (repeats and ghosts included).
    ConnectMany(Vec<(usize, bool)>),
    /// Reported properties of many devices in one `ReportPropertiesBatch`; `None` is a patch
    /// `ReportProperties` would refuse (an empty object).
    ReportMany(Vec<(usize, Option<u8>)>),
    Tag {
        device: usize,
        site: Option<u8>,
        stale_version: bool,
    },
    Register {
        site: Option<u8>,
        enabled: bool,
        existing: Option<usize>,
    },
    Create(JobGen),
    RedefineGroup(u8),
    /// An IoT Hub identity PUT on a known or a new device, under one of the three conditions
    /// (0: create, 1: exists, 2: the current etag, 3: a stale etag), keys given or not.
    Identity {
        device: Option<usize>,
        enabled: bool,
        condition: u8,
        keys: bool,
    },
    /// A device deleted (possibly by a stale etag).
    Delete {
        device: usize,
        stale: bool,
    },
    /// A twin replaced whole (possibly by a stale etag).
    Replace {
        device: usize,
        site: Option<u8>,
        stale: bool,
    },
    /// IoT Central's PATCH of a device's status.
    Enable {
        device: usize,
        enabled: bool,
    },
}

#[derive(Debug, Clone)]
struct Script {
    devices: Vec<DeviceGen>,
    jobs: Vec<JobGen>,
    steps: Vec<(i64, Op)>,
}

fn site() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![4 => (0u8..3).prop_map(Some), 1 => Just(None)]
}

fn device_gen() -> impl Strategy<Value = DeviceGen> {
    (site(), prop::bool::weighted(0.9)).prop_map(|(site, enabled)| DeviceGen { site, enabled })
}

fn target_gen() -> impl Strategy<Value = TargetGen> {
    prop_oneof![
        2 => (prop::collection::vec(0usize..64, 1..12), prop::bool::weighted(0.15))
            .prop_map(|(ix, ghost)| TargetGen::Devices(ix, ghost)),
        2 => prop_oneof![4 => 0u8..2, 1 => Just(2u8)].prop_map(TargetGen::Group),
        3 => site().prop_map(TargetGen::Query),
    ]
}

fn ops_gen() -> impl Strategy<Value = OpsGen> {
    prop_oneof![
        6 => (1u32..=30, prop_oneof![Just(0u32), 1u32..=60], any::<bool>()).prop_map(
            |(response_secs, connect_secs, with_desired)| OpsGen::Method {
                response_secs,
                connect_secs,
                with_desired,
            }
        ),
        2 => site().prop_map(OpsGen::Tags),
        1 => Just(OpsGen::Cloud),
    ]
}

fn batch_gen() -> impl Strategy<Value = Option<BatchSize>> {
    prop_oneof![
        1 => Just(None),
        2 => (1u32..=100).prop_map(|p| Some(BatchSize::Percentage(p))),
        2 => (1u32..=10).prop_map(|c| Some(BatchSize::Count(c))),
    ]
}

fn threshold_gen() -> impl Strategy<Value = Option<CancellationThreshold>> {
    // Round percentages hit the boundary (failures * 100 == p * population) often.
    let limit = prop_oneof![
        2 => prop::sample::select(vec![10u32, 20, 25, 50]).prop_map(Threshold::Percentage),
        1 => (1u32..=40).prop_map(Threshold::Percentage),
        1 => (41u32..=100).prop_map(Threshold::Percentage),
        3 => (1u32..=3).prop_map(Threshold::Count),
    ];
    prop_oneof![
        1 => Just(None),
        3 => (limit, any::<bool>())
            .prop_map(|(limit, per_batch)| Some(CancellationThreshold { limit, per_batch })),
    ]
}

fn retry_gen() -> impl Strategy<Value = RetryPolicy> {
    (1u32..=3, any::<bool>(), any::<bool>()).prop_map(
        |(max_attempts, retry_failed, retry_timed_out)| RetryPolicy {
            max_attempts,
            retry_failed,
            retry_timed_out,
            ..Default::default()
        },
    )
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        (target_gen(), prop::bool::weighted(0.4), ops_gen()),
        (batch_gen(), threshold_gen(), retry_gen()),
        (
            prop::option::weighted(0.3, 1u32..=20),
            prop::option::weighted(0.3, 5u64..=300),
            prop::option::weighted(0.2, 0i64..60_000),
            prop::option::weighted(
                0.3,
                prop::sample::select(vec![10u32, 15, 20, 30])
                    .prop_flat_map(|every| (Just(every), 1..every)),
            ),
        ),
    )
        .prop_map(
            |(
                (target, continuous, ops),
                (batch, threshold, retry),
                (per_minute, max_exec_secs, start_in_ms, window),
            )| JobGen {
                window,
                target,
                continuous,
                ops,
                batch,
                threshold,
                retry,
                per_minute,
                max_exec_secs,
                start_in_ms,
            },
        )
}

fn outcome_gen() -> impl Strategy<Value = OutcomeGen> {
    prop_oneof![
        8 => Just(OutcomeGen::Ok),
        5 => Just(OutcomeGen::DeviceError),
        3 => Just(OutcomeGen::Timeout),
        1 => Just(OutcomeGen::DispatchFailed),
        1 => Just(OutcomeGen::NotConnected),
    ]
}

fn twist_gen() -> impl Strategy<Value = Twist> {
    prop_oneof![
        12 => Just(Twist::None),
        1 => Just(Twist::Duplicate),
        1 => Just(Twist::WrongAttempt),
        1 => Just(Twist::StaleAttempt),
        1 => Just(Twist::WrongRun),
    ]
}

fn op_gen() -> impl Strategy<Value = Op> {
    let results = prop::collection::vec(
        (any::<usize>(), outcome_gen(), twist_gen()).prop_map(|(pick, outcome, twist)| ResultGen {
            pick,
            outcome,
            twist,
        }),
        1..8,
    );
    Union::new_weighted(vec![
        (4, (0i64..40_000).prop_map(Op::Advance).boxed()),
        (3, Just(Op::AdvanceToWake).boxed()),
        (1, (0i64..20_000).prop_map(Op::Wait).boxed()),
        (
            8,
            (any::<usize>(), 1usize..=50)
                .prop_map(|(job, take)| Op::DispatchActions { job, take })
                .boxed(),
        ),
        (
            2,
            (any::<usize>(), 1usize..=10)
                .prop_map(|(job, take)| Op::DispatchPending { job, take })
                .boxed(),
        ),
        (
            1,
            (
                any::<usize>(),
                prop::collection::vec(any::<usize>(), 1..5),
                0u8..4,
            )
                .prop_map(|(job, devices, run_twist)| Op::DispatchRandom {
                    job,
                    devices,
                    run_twist,
                })
                .boxed(),
        ),
        (8, results.prop_map(Op::Results).boxed()),
        (
            1,
            (
                any::<usize>(),
                any::<usize>(),
                0u32..3,
                0u32..4,
                outcome_gen(),
            )
                .prop_map(|(job, device, run, attempt, outcome)| Op::RandomResult {
                    job,
                    device,
                    run,
                    attempt,
                    outcome,
                })
                .boxed(),
        ),
        (1, any::<usize>().prop_map(Op::Stop).boxed()),
        (2, any::<usize>().prop_map(Op::Resume).boxed()),
        (1, any::<usize>().prop_map(Op::Cancel).boxed()),
        (
            2,
            (any::<usize>(), 0u8..3)
                .prop_map(|(j, r)| Op::Rerun(j, r))
                .boxed(),
        ),
        (
            2,
            (any::<usize>(), prop::bool::weighted(0.4))
                .prop_map(|(d, c)| Op::Connect(d, c))
                .boxed(),
        ),
        (
            1,
            prop::collection::vec((any::<usize>(), prop::bool::weighted(0.6)), 1..12)
                .prop_map(Op::ConnectMany)
                .boxed(),
        ),
        (
            1,
            prop::collection::vec((any::<usize>(), prop::option::weighted(0.9, 0u8..4)), 1..8)
                .prop_map(Op::ReportMany)
                .boxed(),
        ),
        (
            3,
            (any::<usize>(), site(), prop::bool::weighted(0.1))
                .prop_map(|(device, site, stale_version)| Op::Tag {
                    device,
                    site,
                    stale_version,
                })
                .boxed(),
        ),
        (
            1,
            (
                site(),
                prop::bool::weighted(0.8),
                prop::option::weighted(0.4, any::<usize>()),
            )
                .prop_map(|(site, enabled, existing)| Op::Register {
                    site,
                    enabled,
                    existing,
                })
                .boxed(),
        ),
        (1, job_gen().prop_map(Op::Create).boxed()),
        (1, (0u8..3).prop_map(Op::RedefineGroup).boxed()),
        (
            1,
            (
                prop::option::weighted(0.6, any::<usize>()),
                prop::bool::weighted(0.7),
                0u8..4,
                any::<bool>(),
            )
                .prop_map(|(device, enabled, condition, keys)| Op::Identity {
                    device,
                    enabled,
                    condition,
                    keys,
                })
                .boxed(),
        ),
        (
            1,
            (any::<usize>(), prop::bool::weighted(0.3))
                .prop_map(|(device, stale)| Op::Delete { device, stale })
                .boxed(),
        ),
        (
            1,
            (any::<usize>(), site(), prop::bool::weighted(0.2))
                .prop_map(|(device, site, stale)| Op::Replace {
                    device,
                    site,
                    stale,
                })
                .boxed(),
        ),
        (
            1,
            (any::<usize>(), prop::bool::weighted(0.5))
                .prop_map(|(device, enabled)| Op::Enable { device, enabled })
                .boxed(),
        ),
        (
            1,
            (
                prop::option::weighted(0.8, 0u64..6_000),
                prop::option::weighted(0.5, 4_000u64..16_000),
            )
                .prop_map(|(f, j)| Op::Retain(f, j))
                .boxed(),
        ),
    ])
}

fn script_gen(max_steps: usize) -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(device_gen(), 1..40),
        prop::collection::vec(job_gen(), 1..=3),
        prop::collection::vec(
            (prop_oneof![Just(0i64), 1i64..2_000], op_gen()),
            0..max_steps,
        ),
    )
        .prop_map(|(devices, jobs, steps)| Script {
            devices,
            jobs,
            steps,
        })
}

// ------------------------------------------------------------------------------------------------
// The harness: turns the script into commands and checks every invariant as it goes
// ------------------------------------------------------------------------------------------------

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid device id")
}

fn jid(s: &str) -> JobId {
    JobId::new(s).expect("valid job id")
}

fn tags_of(site: Option<u8>) -> serde_json::Value {
    match site {
        Some(s) => json!({ "site": SITES[s as usize] }),
        None => json!({}),
    }
}

fn site_query(site: Option<u8>) -> String {
    match site {
        Some(s) => format!(
            "SELECT * FROM devices WHERE tags.site = '{}'",
            SITES[s as usize]
        ),
        None => "SELECT * FROM devices".to_string(),
    }
}

/// Independent of `Threshold::crossed`: "more than N devices" / "more than P percent".
fn exceeds(limit: Threshold, failures: u64, population: u64) -> bool {
    match limit {
        Threshold::Count(c) => failures > u64::from(c),
        Threshold::Percentage(p) => failures * 100 > u64::from(p) * population,
    }
}

/// The crossing the current run's counters show for the batch `batch` (per-batch thresholds) or
/// for the whole run.
fn crossing_for(job: &Job, batch: u32) -> Option<CancelReason> {
    let t = job.spec.cancellation?;
    let run = job.current_run();
    let (failures, population, b) = if t.per_batch {
        let s = run.batches.get(batch as usize)?.stats;
        (s.failures(), s.devices, Some(batch))
    } else {
        (run.stats.failures(), run.stats.devices, None)
    };
    exceeds(t.limit, failures, population).then_some(CancelReason::Threshold {
        failures,
        population,
        batch: b,
    })
}

/// Any crossing in the current run.
fn any_crossing(job: &Job) -> Option<CancelReason> {
    let t = job.spec.cancellation?;
    if t.per_batch {
        (0..job.current_run().batches.len() as u32).find_map(|b| crossing_for(job, b))
    } else {
        crossing_for(job, 0)
    }
}

fn recount<'a>(devices: impl Iterator<Item = &'a DeviceRun>) -> Stats {
    let mut s = Stats::default();
    for d in devices {
        s.devices += 1;
        match d.status {
            DeviceStatus::Pending => s.pending += 1,
            DeviceStatus::Running => s.running += 1,
            DeviceStatus::Succeeded => s.succeeded += 1,
            DeviceStatus::Failed => s.failed += 1,
            DeviceStatus::TimedOut => s.timed_out += 1,
            DeviceStatus::Cancelled => s.cancelled += 1,
        }
    }
    s
}

fn retryable(policy: RetryPolicy, reason: &FailureReason) -> bool {
    match reason {
        FailureReason::Timeout => policy.retry_timed_out,
        FailureReason::DeviceError { .. } | FailureReason::DispatchFailed { .. } => {
            policy.retry_failed
        }
        FailureReason::NotConnected
        | FailureReason::DeviceNotFound
        | FailureReason::DeviceDisabled => false,
    }
}

/// Invariants of one state, on its own.
fn check_state(state: &State) -> Result<(), String> {
    ensure!(
        state.registry.disconnected
            == muster_domain::registry::disconnected_of(&state.registry.devices),
        "the disconnected set {:?} is not the registry's disconnected devices",
        state.registry.disconnected
    );
    for (id, j) in &state.jobs {
        ensure!(&j.id == id, "job keyed {id} has id {}", j.id);
        ensure!(!j.runs.is_empty(), "job {id} has no run");
        let window = j.spec.response_window_ms();
        let last = j.runs.len() - 1;
        if j.detail_expired {
            // Retention dropped the rows: only the summaries are left, and they still add up.
            ensure!(
                j.status.is_final(),
                "job {id}: detail expired but not final"
            );
            for (k, run) in j.runs.iter().enumerate() {
                ensure!(
                    run.devices.is_empty() && run.index.is_empty() && !run.is_cold(),
                    "job {id} run {k}: detail expired but rows are left"
                );
                ensure!(
                    run.stats.sum() == run.stats.devices,
                    "job {id} run {k}: stats do not add up: {:?}",
                    run.stats
                );
            }
            continue;
        }
        for (k, run) in j.runs.iter().enumerate() {
            let current = k == last;
            ensure!(
                run.number == RunId(k as u32),
                "job {id}: run at {k} is numbered {}",
                run.number
            );
            // 2. counts add up, and equal a recount
            ensure!(
                run.stats.sum() == run.stats.devices,
                "job {id} run {k}: stats do not add up: {:?}",
                run.stats
            );
            let rc = recount(run.devices.iter());
            ensure!(
                rc == run.stats,
                "job {id} run {k}: counters {:?} but recount {rc:?}",
                run.stats
            );
            ensure!(
                run.index.len() == run.devices.len(),
                "job {id} run {k}: index has {} entries for {} devices",
                run.index.len(),
                run.devices.len()
            );
            for (i, d) in run.devices.iter().enumerate() {
                ensure!(
                    run.position(&d.device) == Some(i as u32),
                    "job {id} run {k}: index of {} is {:?}, not {i}",
                    d.device,
                    run.position(&d.device)
                );
                // 7. attempts never exceed the policy
                ensure!(
                    d.attempts <= j.spec.retry.max_attempts,
                    "job {id} run {k}: {} has {} attempts, max is {}",
                    d.device,
                    d.attempts,
                    j.spec.retry.max_attempts
                );
                ensure!(
                    (d.batch as usize) < run.batches.len(),
                    "job {id} run {k}: {} in batch {} of {}",
                    d.device,
                    d.batch,
                    run.batches.len()
                );
                if d.status == DeviceStatus::Running {
                    ensure!(
                        d.attempts >= 1 && d.dispatched_at.is_some(),
                        "job {id} run {k}: {} running without an attempt",
                        d.device
                    );
                }
            }
            ensure!(
                run.batches_started as usize <= run.batches.len(),
                "job {id} run {k}: {} batches started of {}",
                run.batches_started,
                run.batches.len()
            );
            let mut expected_start = 0u32;
            for (b, batch) in run.batches.iter().enumerate() {
                ensure!(
                    batch.start == expected_start && batch.end > batch.start,
                    "job {id} run {k}: batch {b} is {}..{}, expected to start at {expected_start}",
                    batch.start,
                    batch.end
                );
                expected_start = batch.end;
                ensure!(
                    batch.stats.sum() == batch.stats.devices,
                    "job {id} run {k} batch {b}: stats do not add up: {:?}",
                    batch.stats
                );
                let rc = recount(run.devices.iter().filter(|d| d.batch == b as u32));
                ensure!(
                    rc == batch.stats,
                    "job {id} run {k} batch {b}: counters {:?} but recount {rc:?}",
                    batch.stats
                );
                for i in batch.start..batch.end {
                    ensure!(
                        run.devices[i as usize].batch == b as u32,
                        "job {id} run {k}: device {i} lies in batch {b} but says {}",
                        run.devices[i as usize].batch
                    );
                }
                // An unstarted batch is untouched; only the end of the job cancels its devices.
                let ended = !current || j.status.is_final();
                ensure!(
                    (b as u32) < run.batches_started
                        || batch.stats.pending == batch.stats.devices
                        || (ended && batch.stats.pending + batch.stats.cancelled
                            == batch.stats.devices),
                    "job {id} ({:?}) run {k}: unstarted batch {b} has devices that were worked on: {:?}",
                    j.status,
                    batch.stats
                );
            }
            ensure!(
                expected_start as usize == run.devices.len(),
                "job {id} run {k}: batches cover {expected_start} of {} devices",
                run.devices.len()
            );
            // 6. ready and deadline indexes agree with the statuses
            let want_ready: BTreeSet<u32> = if current {
                run.devices
                    .iter()
                    .enumerate()
                    .filter(|(i, d)| {
                        d.status == DeviceStatus::Pending
                            && d.batch < run.batches_started
                            && !d
                                .ready_since
                                .is_some_and(|t| run.backoff.contains(&(t, *i as u32)))
                    })
                    .map(|(i, _)| i as u32)
                    .collect()
            } else {
                BTreeSet::new()
            };
            ensure!(
                run.ready == want_ready,
                "job {id} ({:?}) run {k}: ready {:?}, expected {want_ready:?}",
                j.status,
                run.ready
            );
            let want_deadlines: BTreeSet<(Timestamp, u32)> = run
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.status == DeviceStatus::Running)
                .map(|(i, d)| {
                    (
                        d.dispatched_at
                            .unwrap_or(Timestamp(i64::MIN))
                            .plus_millis(window),
                        i as u32,
                    )
                })
                .collect();
            ensure!(
                run.deadlines == want_deadlines,
                "job {id} ({:?}) run {k}: deadlines {:?}, expected {want_deadlines:?}",
                j.status,
                run.deadlines
            );
            if !current {
                ensure!(
                    run.stats.all_final(),
                    "job {id}: old run {k} still has work: {:?}",
                    run.stats
                );
            }
        }
        let run = j.current_run();
        match j.status {
            JobStatus::Scheduled | JobStatus::Pending => {
                ensure!(
                    run.started_at.is_none() && run.batches_started == 0,
                    "job {id} is {:?} but its run started",
                    j.status
                );
            }
            JobStatus::Running => {
                ensure!(
                    run.started_at.is_some(),
                    "job {id} is running but its run never started"
                );
            }
            JobStatus::Stopped | JobStatus::Paused => {}
            JobStatus::Completed => {
                ensure!(
                    run.stats.all_final() && run.batches_started as usize == run.batches.len(),
                    "job {id} completed with work left: {:?}, {} of {} batches started",
                    run.stats,
                    run.batches_started,
                    run.batches.len()
                );
                ensure!(!j.spec.target.continuous, "continuous job {id} completed");
            }
            JobStatus::Failed | JobStatus::Cancelled => {
                ensure!(
                    run.stats.all_final(),
                    "job {id} ended ({:?}) with work left: {:?}",
                    j.status,
                    run.stats
                );
            }
        }
        if j.status.is_final() {
            ensure!(j.ended_at.is_some(), "job {id} ended without an end time");
        }
        // 5. no crossing goes unanswered: a job whose current run crossed its threshold has been
        // cancelled for it
        if let Some(c) = any_crossing(j) {
            ensure!(
                j.status == JobStatus::Cancelled
                    && matches!(j.cancel_reason, Some(CancelReason::Threshold { .. })),
                "job {id} ({:?}, {:?}) crossed its threshold {:?} ({c:?}) but was not cancelled for it",
                j.status,
                j.cancel_reason,
                j.spec.cancellation
            );
        }
        if let Some(CancelReason::Threshold { .. }) = &j.cancel_reason {
            ensure!(
                j.status == JobStatus::Cancelled && any_crossing(j).is_some(),
                "job {id} ({:?}) says it was cancelled by its threshold, which is not crossed",
                j.status
            );
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Coverage {
    counts: BTreeMap<String, usize>,
}

impl Coverage {
    fn hit(&mut self, key: impl Into<String>) {
        *self.counts.entry(key.into()).or_default() += 1;
    }
}

struct Harness {
    state: State,
    /// The same commands with finished runs spilled after each (as the store does), and the
    /// rows spilled: `decide` must agree on both, and `hot` + `cold` must be `state`.
    hot: State,
    cold: MemRows,
    /// The accepted commands' events, one entry per command (the unit spills follow).
    by_command: Vec<Vec<Event>>,
    log: Vec<Event>,
    /// Every command given, with its result (events or error), for reports and determinism.
    history: Vec<(Command, Result<Vec<Event>, DomainError>)>,
    now: Timestamp,
    jobs: Vec<JobId>,
    devices: Vec<DeviceId>,
    next_job: usize,
    next_device: usize,
    /// (job, run, device) that had their final outcome.
    final_seen: BTreeSet<(JobId, RunId, DeviceId)>,
    /// Dispatch times per (job, run), for the per-minute limit.
    dispatch_times: BTreeMap<(JobId, RunId), Vec<Timestamp>>,
    /// Window occurrences recorded per job: (job, opened, `since` or `next_open`).
    windows: BTreeSet<(JobId, bool, Option<Timestamp>)>,
    coverage: Coverage,
}

impl Harness {
    fn new() -> Self {
        Harness {
            state: State::default(),
            hot: State::default(),
            cold: MemRows::default(),
            by_command: Vec::new(),
            log: Vec::new(),
            history: Vec::new(),
            now: Timestamp(T0),
            jobs: Vec::new(),
            devices: Vec::new(),
            next_job: 0,
            next_device: 0,
            final_seen: BTreeSet::new(),
            dispatch_times: BTreeMap::new(),
            windows: BTreeSet::new(),
            coverage: Coverage::default(),
        }
    }

    fn report(&self, msg: &str) -> TestCaseError {
        let mut out = format!("{msg}\n--- commands ({}):\n", self.history.len());
        for (i, (c, r)) in self.history.iter().enumerate() {
            let r = match r {
                Ok(e) => format!("ok, {} events", e.len()),
                Err(e) => format!("rejected: {e}"),
            };
            out.push_str(&format!("#{i}: {c:?}\n    => {r}\n"));
        }
        if let Some((_, Ok(events))) = self.history.last() {
            out.push_str("--- events of the last command:\n");
            for e in events {
                out.push_str(&format!("  {e:?}\n"));
            }
        }
        TestCaseError::fail(out)
    }

    /// Runs one command through decide and evolve, checking everything.
    fn apply(&mut self, cmd: Command) -> Result<Vec<Event>, TestCaseError> {
        let pre = self.state.clone();
        let decided = decide(&self.state, &cmd);
        self.history.push((cmd.clone(), decided.clone()));
        // `decide` never needs a finished run's rows: the spilled state decides the same.
        let decided_hot = decide(&self.hot, &cmd);
        if decided_hot != decided {
            return Err(self.report(&format!(
                "decide differs once finished runs are spilled: {decided_hot:?}"
            )));
        }
        let events = match decided {
            Ok(events) => events,
            Err(_) => {
                self.coverage.hit("rejected");
                return Ok(Vec::new());
            }
        };
        if let Err(msg) = self.step(&cmd, &pre, &events) {
            return Err(self.report(&msg));
        }
        if let Err(msg) = self.step_cold(&events) {
            return Err(self.report(&msg));
        }
        Ok(events)
    }

    /// Applies the events to the spilled mirror, spills, and checks that the rows went to the
    /// cold tier unchanged: hot state + cold rows is the complete state.
    fn step_cold(&mut self, events: &[Event]) -> Result<(), String> {
        for e in events {
            evolve(&mut self.hot, e);
        }
        let ops = self.hot.spill(events);
        if !ops.is_empty() {
            self.coverage.hit("spilled");
        }
        self.cold.absorb(ops);
        self.by_command.push(events.to_vec());
        let mut full = self.hot.clone();
        full.restore_rows(&self.cold).map_err(|e| e.to_string())?;
        ensure!(
            full == self.state,
            "the spilled state with its cold rows put back differs from the complete state"
        );
        for j in self.hot.jobs.values() {
            if j.detail_expired {
                continue;
            }
            for (k, run) in j.runs.iter().enumerate() {
                let finished = k + 1 < j.runs.len() || j.status.is_final();
                ensure!(
                    run.is_cold() == finished,
                    "job {} run {k}: cold is {} but finished is {finished}",
                    j.id,
                    run.is_cold()
                );
            }
        }
        Ok(())
    }

    fn step(&mut self, cmd: &Command, pre: &State, events: &[Event]) -> Result<(), String> {
        // 4. a job that is not running dispatches nothing (and does nothing at all on a dispatch)
        if let Command::MarkDispatched { job, .. } = cmd {
            if let Some(j) = pre.jobs.get(job) {
                if j.status != JobStatus::Running {
                    if j.current_run().stats.pending > 0 {
                        self.coverage
                            .hit(format!("dispatch-while-{}", j.status.as_str()));
                    }
                    ensure!(
                        events.iter().all(|e| e.job() != Some(job)),
                        "MarkDispatched for {job}, which is {:?}, produced events for it",
                        j.status
                    );
                }
            }
        }
        // A registry change makes a device join a continuous job only when the device starts
        // matching the job's target: it did not match (or did not exist) before this command. This
        // found devices of an earlier run rejoining a rerun
        // (`a_device_that_succeeded_does_not_rejoin_a_rerun_of_a_continuous_job`) and devices that
        // started matching while the job had ended joining its rerun at their next unrelated change
        // (`devices_that_matched_while_the_job_had_ended_are_treated_alike_by_its_rerun`). Joins
        // decided by a rerun itself are not constrained here.
        let registry_change = !matches!(cmd, Command::RerunJob { .. });
        for e in events.iter().filter(|_| registry_change) {
            if let Event::DevicesJoined { job, devices, .. } = e {
                let watch = pre.jobs.get(job).and_then(|j| j.watch.as_ref());
                ensure!(watch.is_some(), "{e:?} for a job that watches nothing");
                for d in devices {
                    let matched_before = match (watch, pre.registry.devices.get(d)) {
                        (Some(q), Some(dev)) => q.matches(&dev.twin_document()),
                        _ => false,
                    };
                    ensure!(
                        !matched_before,
                        "{d} joined {job} ({e:?}) although it already matched the target before this command"
                    );
                }
            }
        }
        let mut ended: BTreeSet<JobId> = BTreeSet::new();
        let mut expect_cancel: Option<(JobId, CancelReason)> = None;
        for (k, e) in events.iter().enumerate() {
            self.coverage.hit(e.kind());
            // 5. a threshold cancel comes exactly after the final failure that crosses, and only then
            match (expect_cancel.take(), e) {
                (
                    Some((job, reason)),
                    Event::JobCancelled {
                        job: j, reason: r, ..
                    },
                ) => {
                    ensure!(
                        *j == job && *r == reason,
                        "event {k}: expected JobCancelled of {job} for {reason:?}, got {e:?}"
                    );
                    let key = match r {
                        CancelReason::Threshold { batch: Some(_), .. } => "threshold-batch",
                        _ => "threshold-run",
                    };
                    self.coverage.hit(key);
                }
                (Some((job, reason)), _) => {
                    return Err(format!(
                        "event {k}: {job} crossed its threshold ({reason:?}) but the next event is {e:?}"
                    ));
                }
                (
                    None,
                    Event::JobCancelled {
                        reason: CancelReason::Threshold { .. },
                        ..
                    },
                ) => {
                    return Err(format!(
                        "event {k}: {e:?} does not follow a final failure that crossed the threshold"
                    ));
                }
                (None, _) => {}
            }
            if let Some(j) = e.job() {
                ensure!(
                    !ended.contains(j),
                    "event {k}: {e:?} comes after job {j} ended in the same command"
                );
            }
            self.check_event(cmd, pre, k, e)?;
            evolve(&mut self.state, e);
            self.log.push(e.clone());
            match e {
                Event::DeviceFailed {
                    job,
                    device,
                    retry: false,
                    ..
                } => {
                    if let Some(j) = self.state.jobs.get(job) {
                        let batch = j.current_run().device(device).map_or(0, |d| d.batch);
                        if let Some(c) = crossing_for(j, batch) {
                            expect_cancel = Some((job.clone(), c));
                        } else if j.spec.cancellation.is_some() {
                            self.coverage.hit("final-failure-below-threshold");
                        }
                    }
                }
                Event::JobCancelled { job, .. }
                | Event::JobFailed { job, .. }
                | Event::JobCompleted { job, .. } => {
                    ended.insert(job.clone());
                }
                _ => {}
            }
        }
        if let Some((job, reason)) = expect_cancel {
            return Err(format!(
                "{job} crossed its threshold ({reason:?}) at the last event and was not cancelled"
            ));
        }

        // execute == decide + evolve, from the same state
        let mut alt = pre.clone();
        let again = alt.execute(cmd);
        ensure!(
            again.as_deref() == Ok(events),
            "execute gave other events: {again:?}"
        );
        ensure!(alt == self.state, "execute reached another state");

        // the owned path (`apply`, which moves responses) reaches the same state as `evolve`
        let mut owned = pre.clone();
        for e in events.iter().cloned() {
            apply(&mut owned, e);
        }
        ensure!(
            owned == self.state,
            "apply reached another state than evolve"
        );

        // 1. replay rebuilds the live state
        let replayed = State::replay(&self.log);
        ensure!(
            replayed == self.state,
            "replaying {} events does not rebuild the live state",
            self.log.len()
        );

        // 3. a final device status never changes within its run
        for (id, j) in &pre.jobs {
            let Some(now) = self.state.jobs.get(id) else {
                // Only retention removes a job, and only a finished one.
                let expired = events
                    .iter()
                    .any(|e| matches!(e, Event::JobExpired { job, .. } if job == id));
                ensure!(expired && j.status.is_final(), "job {id} disappeared");
                continue;
            };
            for (run, after) in j.runs.iter().zip(&now.runs) {
                for (d, d2) in run.devices.iter().zip(&after.devices) {
                    if d.status.is_final() {
                        ensure!(
                            d2.status == d.status
                                && d2.finished_at == d.finished_at
                                && d2.attempts == d.attempts,
                            "job {id} run {}: {} was final ({:?}) and became {:?}",
                            run.number,
                            d.device,
                            d.status,
                            d2.status
                        );
                    }
                }
            }
        }

        check_state(&self.state)?;

        // After an Advance nothing it handles is still due: no due start, no passed deadline, no
        // window opening or closing unrecorded.
        if let Command::Advance { at } = cmd {
            for j in self.state.jobs.values() {
                if let (Some(w), JobStatus::Running) = (&j.spec.schedule.window, j.status) {
                    let recorded = match (w.state(*at), j.window) {
                        (
                            WindowState::Open { since, .. },
                            Some(WindowMark::Open { since: s, until }),
                        ) => s == since || *at < until,
                        (
                            WindowState::Closed { opens_at },
                            Some(WindowMark::Closed { next_open }),
                        ) => opens_at == next_open,
                        _ => false,
                    };
                    ensure!(
                        recorded,
                        "job {} is running with its window {:?} at {at:?} but the log says {:?}",
                        j.id,
                        w.state(*at),
                        j.window
                    );
                }
                if matches!(j.status, JobStatus::Pending | JobStatus::Scheduled) {
                    ensure!(
                        j.start_at.is_some_and(|s| s > *at),
                        "job {} is still {:?} after Advance at {at:?} (start at {:?})",
                        j.id,
                        j.status,
                        j.start_at
                    );
                }
                if let Some(&(deadline, i)) = j.current_run().deadlines.first() {
                    ensure!(
                        deadline > *at,
                        "job {} ({:?}): device {i} is past its deadline {deadline:?} after Advance at {at:?}",
                        j.id,
                        j.status
                    );
                }
                if let (Some(max), Some(started), false) = (
                    j.spec.schedule.max_execution_secs,
                    j.current_run().started_at,
                    j.status.is_final(),
                ) {
                    ensure!(
                        started.plus_secs(max as i64) > *at,
                        "job {} ({:?}) outlived its maximum execution time after Advance at {at:?}",
                        j.id,
                        j.status
                    );
                }
            }
        }

        // actions agree with the state, and an Advance they ask for always does something
        let acts = actions(&self.state, self.now, MAX_DISPATCH);
        let mut sends = BTreeSet::new();
        for a in &acts {
            match a {
                Action::Advance => {
                    let evs = decide(&self.state, &Command::Advance { at: self.now })
                        .map_err(|e| format!("Advance rejected: {e}"))?;
                    ensure!(
                        !evs.is_empty(),
                        "actions say an Advance is due at {:?} but it does nothing",
                        self.now
                    );
                }
                Action::WakeAt(t) => {
                    ensure!(
                        *t > self.now,
                        "WakeAt({t:?}) is not after now {:?}",
                        self.now
                    )
                }
                Action::Dispatch { job, run, devices } => {
                    let j = &self.state.jobs[job];
                    ensure!(
                        j.status == JobStatus::Running && j.current_run().number == *run,
                        "Dispatch proposed for {job} run {run} while {:?}",
                        j.status
                    );
                    ensure!(
                        devices.len() <= MAX_DISPATCH,
                        "Dispatch of {} devices",
                        devices.len()
                    );
                    for d in devices {
                        let dr = j.current_run().device(d);
                        ensure!(
                            dr.is_some_and(|dr| dr.status == DeviceStatus::Pending
                                && dr.batch < j.current_run().batches_started),
                            "Dispatch proposes {d} of {job}, which is not ready: {dr:?}"
                        );
                    }
                }
                Action::Send(req) => {
                    sends.insert((req.job.clone(), req.run, req.device.clone(), req.attempt));
                }
                // Direct methods and desired pushes have their own properties
                // (tests/invocations.rs, tests/pushes.rs).
                Action::Invoke(_) | Action::PushDesired(_) => {}
            }
        }
        let mut running = BTreeSet::new();
        for j in self.state.jobs.values() {
            if matches!(j.status, JobStatus::Running | JobStatus::Stopped) {
                let r = j.current_run();
                for d in &r.devices {
                    if d.status == DeviceStatus::Running {
                        running.insert((j.id.clone(), r.number, d.device.clone(), d.attempts));
                    }
                }
            }
        }
        ensure!(
            sends == running,
            "Send actions {sends:?} differ from the attempts in flight {running:?}"
        );

        // Without Sends, or with fewer free slots, the list is the same but for the Sends and
        // the length of each Dispatch: timers (Advance, WakeAt) never depend on the slots.
        for max in [0, 1, 3, MAX_DISPATCH] {
            let light = actions_with(
                &self.state,
                self.now,
                ActionOptions {
                    max_dispatch: max,
                    sends: false,
                },
            );
            let expected: Vec<Action> = acts
                .iter()
                .filter(|a| !matches!(a, Action::Send(_)))
                .filter_map(|a| match a {
                    Action::Dispatch { job, run, devices } => {
                        let devices: Vec<DeviceId> = devices.iter().take(max).cloned().collect();
                        (!devices.is_empty()).then(|| Action::Dispatch {
                            job: job.clone(),
                            run: *run,
                            devices,
                        })
                    }
                    other => Some(other.clone()),
                })
                .collect();
            ensure!(
                light == expected,
                "actions_with(max_dispatch {max}, no sends) = {light:?}, expected {expected:?}"
            );
        }
        Ok(())
    }

    /// Checks one event against the state just before it is applied.
    fn check_event(
        &mut self,
        cmd: &Command,
        pre: &State,
        k: usize,
        e: &Event,
    ) -> Result<(), String> {
        let state = &self.state;
        let device_event = match e {
            Event::DeviceDispatched {
                job,
                run,
                device,
                attempt,
                ..
            }
            | Event::DeviceSucceeded {
                job,
                run,
                device,
                attempt,
                ..
            }
            | Event::DeviceFailed {
                job,
                run,
                device,
                attempt,
                ..
            } => Some((job, *run, device, *attempt)),
            _ => None,
        };
        let Some((job, run, device, attempt)) = device_event else {
            return self.check_job_event(cmd, k, e);
        };
        let j = state
            .jobs
            .get(job)
            .ok_or_else(|| format!("event {k}: {e:?} for an unknown job"))?;
        let r = j.current_run();
        ensure!(
            r.number == run,
            "event {k}: {e:?} for run {run}, current is {}",
            r.number
        );
        let d = r
            .device(device)
            .ok_or_else(|| format!("event {k}: {e:?} for a device not in the run"))?;
        let key = (job.clone(), run, device.clone());
        // 3. at most one final outcome per (job, run, device), nothing after it
        ensure!(
            !self.final_seen.contains(&key),
            "event {k}: {e:?} after {device} already had its final outcome in {job} run {run}"
        );
        let max = j.spec.retry.max_attempts;
        match e {
            Event::DeviceDispatched { at, .. } => {
                ensure!(
                    matches!(cmd, Command::MarkDispatched { .. }),
                    "event {k}: {e:?} from a command other than MarkDispatched"
                );
                // no device is dispatched outside its job's maintenance window
                ensure!(
                    muster_domain::window::dispatch_open(j, *at),
                    "event {k}: {e:?} outside the maintenance window {:?}",
                    j.spec.schedule.window
                );
                // ... and only after the log recorded that window's opening
                if j.spec.schedule.window.is_some() {
                    ensure!(
                        matches!(j.window, Some(WindowMark::Open { since, until }) if since <= *at && *at < until),
                        "event {k}: {e:?} but the log's window is {:?}",
                        j.window
                    );
                }
                ensure!(
                    pre.jobs
                        .get(job)
                        .is_some_and(|j| j.status == JobStatus::Running)
                        && j.status == JobStatus::Running,
                    "event {k}: {e:?} while the job is {:?}",
                    j.status
                );
                ensure!(
                    d.status == DeviceStatus::Pending && d.batch < r.batches_started,
                    "event {k}: {e:?} for a device that is {:?} in batch {} ({} started)",
                    d.status,
                    d.batch,
                    r.batches_started
                );
                // 7. attempts stay within the policy
                ensure!(
                    attempt == d.attempts + 1 && attempt <= max,
                    "event {k}: {e:?} after {} attempts, max {max}",
                    d.attempts
                );
                if attempt > 1 {
                    self.coverage.hit("redispatch");
                }
                if let Some(limit) = j.spec.rollout.max_devices_per_minute {
                    let times = self.dispatch_times.entry((job.clone(), run)).or_default();
                    times.push(*at);
                    let window_start = at.plus_millis(-60_000);
                    let n = times.iter().filter(|t| **t > window_start).count();
                    ensure!(
                        n <= limit as usize,
                        "event {k}: {n} dispatches of {job} within a minute, limit {limit}"
                    );
                    if n == limit as usize {
                        self.coverage.hit("rate-limit-reached");
                    }
                }
            }
            Event::DeviceSucceeded { .. } => {
                ensure!(
                    d.status == DeviceStatus::Running && attempt == d.attempts,
                    "event {k}: {e:?} for a device that is {:?} at attempt {}",
                    d.status,
                    d.attempts
                );
                self.final_seen.insert(key);
            }
            Event::DeviceFailed {
                reason, retry, at, ..
            } => {
                // Failures the core decides itself happen for the reason they give, and not early.
                let reg = state.registry.devices.get(device);
                if d.status == DeviceStatus::Pending {
                    match reason {
                        FailureReason::DeviceNotFound => {
                            ensure!(reg.is_none(), "event {k}: {e:?} for a registered device")
                        }
                        FailureReason::DeviceDisabled => ensure!(
                            reg.is_some_and(|r| !r.enabled),
                            "event {k}: {e:?} for a device that is enabled or unknown"
                        ),
                        FailureReason::NotConnected => {
                            let since = muster_domain::window::connect_wait_since(j, d, *at);
                            let window = j.spec.connect_window_ms();
                            ensure!(
                                matches!(cmd, Command::Advance { .. })
                                    && reg.is_some_and(|r| r.connection == ConnectionState::Disconnected)
                                    && since.is_some_and(|t| t.plus_millis(window) <= *at),
                                "event {k}: {e:?} but the device is {:?}, ready since {since:?}, connect window {window} ms",
                                reg.map(|r| r.connection)
                            );
                        }
                        _ => {}
                    }
                }
                if matches!(cmd, Command::Advance { .. }) && d.status == DeviceStatus::Running {
                    let deadline = d
                        .dispatched_at
                        .map(|t| t.plus_millis(j.spec.response_window_ms()));
                    ensure!(
                        *reason == FailureReason::Timeout && deadline.is_some_and(|t| t <= *at),
                        "event {k}: {e:?} from Advance before the deadline {deadline:?}"
                    );
                }
                let from_pending = d.status == DeviceStatus::Pending
                    && matches!(
                        reason,
                        FailureReason::NotConnected
                            | FailureReason::DeviceNotFound
                            | FailureReason::DeviceDisabled
                    )
                    && attempt == d.attempts;
                ensure!(
                    (d.status == DeviceStatus::Running && attempt == d.attempts) || from_pending,
                    "event {k}: {e:?} for a device that is {:?} at attempt {}",
                    d.status,
                    d.attempts
                );
                let want_retry = retryable(j.spec.retry, reason) && attempt < max;
                ensure!(
                    *retry == want_retry,
                    "event {k}: {e:?} but the policy {:?} says retry={want_retry}",
                    j.spec.retry
                );
                if *retry {
                    self.coverage.hit("retry");
                } else {
                    self.final_seen.insert(key);
                }
                self.coverage.hit(format!("failed-{reason:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn check_job_event(&mut self, cmd: &Command, k: usize, e: &Event) -> Result<(), String> {
        let state = &self.state;
        match e {
            Event::WindowOpened {
                job,
                since,
                until,
                at,
            } => {
                // a window opening is recorded once, while the job runs, when it is open
                let j = &state.jobs[job];
                ensure!(
                    j.status == JobStatus::Running
                        && matches!(
                            cmd,
                            Command::Advance { .. } | Command::MarkDispatched { .. }
                        ),
                    "event {k}: {e:?} while the job is {:?}, from {cmd:?}",
                    j.status
                );
                let w = j.spec.schedule.window.as_ref().map(|w| w.state(*at));
                ensure!(
                    w == Some(WindowState::Open {
                        since: *since,
                        until: *until
                    }),
                    "event {k}: {e:?} but the window is {w:?}"
                );
                ensure!(
                    self.windows.insert((job.clone(), true, Some(*since))),
                    "event {k}: {e:?} recorded this opening before"
                );
            }
            Event::WindowClosed { job, next_open, at } => {
                let j = &state.jobs[job];
                ensure!(
                    j.status == JobStatus::Running && matches!(cmd, Command::Advance { .. }),
                    "event {k}: {e:?} while the job is {:?}, from {cmd:?}",
                    j.status
                );
                let w = j.spec.schedule.window.as_ref().map(|w| w.state(*at));
                ensure!(
                    w == Some(WindowState::Closed {
                        opens_at: *next_open
                    }),
                    "event {k}: {e:?} but the window is {w:?}"
                );
                ensure!(
                    self.windows.insert((job.clone(), false, *next_open)),
                    "event {k}: {e:?} recorded this closing before"
                );
            }
            Event::BatchStarted {
                job, run, batch, ..
            } => {
                let j = &state.jobs[job];
                let r = j.current_run();
                ensure!(
                    j.status == JobStatus::Running
                        && r.number == *run
                        && *batch == r.batches_started
                        && r.started_batches_done(),
                    "event {k}: {e:?} but the job is {:?}, run {}, {} batches started, done: {}",
                    j.status,
                    r.number,
                    r.batches_started,
                    r.started_batches_done()
                );
                if *batch > 0 {
                    self.coverage.hit("later-batch");
                }
            }
            Event::JobCompleted { job, .. } => {
                let j = &state.jobs[job];
                let r = j.current_run();
                ensure!(
                    j.status == JobStatus::Running
                        && !j.spec.target.continuous
                        && r.batches_started as usize == r.batches.len()
                        && r.stats.all_final(),
                    "event {k}: {e:?} but the job is {:?} with {:?}",
                    j.status,
                    r.stats
                );
            }
            Event::JobFailed {
                job,
                reason: JobFailure::MaxExecutionTimeExceeded,
                at,
            } => {
                let j = &state.jobs[job];
                let started = j.current_run().started_at;
                let max = j.spec.schedule.max_execution_secs;
                ensure!(
                    matches!((started, max), (Some(s), Some(m)) if s.plus_secs(m as i64) <= *at),
                    "event {k}: {e:?} but the run started at {started:?} with max {max:?}"
                );
            }
            Event::JobStarted { job, run, at } => {
                let j = &state.jobs[job];
                ensure!(
                    matches!(j.status, JobStatus::Pending | JobStatus::Scheduled)
                        && j.current_run().number == *run
                        && j.start_at.is_none_or(|s| s <= *at),
                    "event {k}: {e:?} but the job is {:?}, start at {:?}",
                    j.status,
                    j.start_at
                );
            }
            Event::DevicesJoined { job, run, .. } => {
                if run.0 > 0 {
                    self.coverage.hit("join-into-rerun");
                }
                let j = &state.jobs[job];
                ensure!(
                    j.spec.target.continuous && !j.status.is_final(),
                    "event {k}: {e:?} for a job that is {:?}, continuous: {}",
                    j.status,
                    j.spec.target.continuous
                );
            }
            _ => {}
        }
        Ok(())
    }

    // --- turning the script into commands -------------------------------------------------

    /// A batched registry command is never refused and does what its single commands, executed
    /// in order on the same state, do (those refused skipped): the same events and the same
    /// state. (The scripts' continuous targets query tags, which these commands do not touch,
    /// so no joins are involved; `joins_of_a_batch_are_one_batch` covers those.)
    fn batch_equals_singles(
        &mut self,
        batch: Command,
        singles: Vec<Command>,
    ) -> Result<(), TestCaseError> {
        let mut expected = self.state.clone();
        let mut expected_events = Vec::new();
        for c in &singles {
            if let Ok(evs) = expected.execute(c) {
                expected_events.extend(evs);
            }
        }
        if let Err(e) = decide(&self.state, &batch) {
            return Err(self.report(&format!("{batch:?} was refused: {e}")));
        }
        let events = self.apply(batch)?;
        if !events.is_empty() {
            self.coverage.hit("batched-registry-change");
        }
        if events != expected_events {
            return Err(self.report(&format!(
                "a batch gave {events:?}, its single commands {expected_events:?}"
            )));
        }
        if self.state != expected {
            return Err(self.report("a batch left another state than its single commands"));
        }
        Ok(())
    }

    fn pick_job(&self, i: usize) -> Option<JobId> {
        if self.jobs.is_empty() {
            return None;
        }
        Some(self.jobs[i % self.jobs.len()].clone())
    }

    /// A job, or now and then one that does not exist.
    fn pick_job_or_ghost(&self, i: usize) -> JobId {
        if i % 13 == 12 || self.jobs.is_empty() {
            return jid("no-such-job");
        }
        self.jobs[i % self.jobs.len()].clone()
    }

    /// A registered device, or now and then one that is not.
    fn pick_device(&self, i: usize) -> DeviceId {
        if i % 17 == 16 || self.devices.is_empty() {
            return did("ghost-1");
        }
        self.devices[i % self.devices.len()].clone()
    }

    fn spec(&self, g: &JobGen) -> JobSpec {
        let selector = match &g.target {
            TargetGen::Devices(ix, ghost) => {
                let mut ids: Vec<DeviceId> = ix
                    .iter()
                    .map(|i| self.devices[i % self.devices.len()].clone())
                    .collect();
                if *ghost {
                    ids.push(did("ghost-2"));
                }
                TargetSelector::Devices(ids)
            }
            TargetGen::Group(g) => TargetSelector::Group(
                GroupId::new(GROUPS[*g as usize % GROUPS.len()]).expect("valid group id"),
            ),
            TargetGen::Query(site) => TargetSelector::Query(site_query(*site)),
        };
        let continuous = g.continuous && !matches!(selector, TargetSelector::Devices(_));
        let operations = match &g.ops {
            OpsGen::Method {
                response_secs,
                connect_secs,
                with_desired,
            } => {
                let mut ops = vec![Operation::InvokeMethod(MethodCall {
                    name: "reboot".into(),
                    payload: json!({"delay": 1}),
                    response_timeout_secs: *response_secs,
                    connect_timeout_secs: *connect_secs,
                })];
                if *with_desired {
                    ops.push(Operation::PatchDesired {
                        patch: json!({"fw": "2.0"}),
                    });
                }
                ops
            }
            OpsGen::Tags(site) => vec![Operation::PatchTags {
                patch: match site {
                    Some(s) => json!({ "site": SITES[*s as usize] }),
                    None => json!({ "ring": "canary" }),
                },
            }],
            OpsGen::Cloud => vec![Operation::SetCloudProperty {
                name: "owner".into(),
                value: json!("ops"),
            }],
        };
        JobSpec {
            display_name: "property job".into(),
            description: String::new(),
            target: Target {
                selector,
                continuous,
            },
            operations,
            schedule: Schedule {
                start_at: g.start_in_ms.map(|d| self.now.plus_millis(d)),
                max_execution_secs: g.max_exec_secs,
                window: g.window.map(|(every, open)| MaintenanceWindow {
                    cron: format!("*/{every} * * * * *"),
                    duration_secs: open,
                    time_zone: "Europe/Berlin".into(),
                }),
            },
            rollout: Rollout {
                batch: g.batch,
                max_devices_per_minute: g.per_minute,
                ..Default::default()
            },
            cancellation: g.threshold,
            retry: g.retry,
        }
    }

    fn create_job(&mut self, g: &JobGen) -> Result<(), TestCaseError> {
        let id = jid(&format!("job-{}", self.next_job));
        self.next_job += 1;
        let spec = self.spec(g);
        let events = self.apply(Command::CreateJob {
            id: id.clone(),
            spec,
            at: self.now,
        })?;
        if !events.is_empty() {
            self.jobs.push(id);
        }
        Ok(())
    }

    fn setup(&mut self, script: &Script) -> Result<(), TestCaseError> {
        let regs: Vec<DeviceRegistration> = script
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| DeviceRegistration {
                id: did(&format!("dev-{i:03}")),
                display_name: format!("device {i}"),
                model_id: None,
                enabled: d.enabled,
                tags: tags_of(d.site).into(),
            })
            .collect();
        self.devices = regs.iter().map(|r| r.id.clone()).collect();
        self.apply(Command::RegisterDevices {
            devices: regs,
            upsert: false,
            at: self.now,
        })?;
        for (g, q) in [("g-a", site_query(Some(0))), ("g-all", site_query(None))] {
            self.apply(Command::SaveGroup {
                id: GroupId::new(g).expect("valid group id"),
                display_name: g.into(),
                description: String::new(),
                query: q,
                if_version: None,
                at: self.now,
            })?;
        }
        for g in &script.jobs {
            self.create_job(g)?;
        }
        Ok(())
    }

    fn outcome(o: OutcomeGen) -> Outcome {
        match o {
            OutcomeGen::Ok => Outcome::Responded {
                status: 200,
                payload: json!({"ok": true}).into(),
            },
            OutcomeGen::DeviceError => Outcome::Responded {
                status: 500,
                payload: json!({"error": "boom"}).into(),
            },
            OutcomeGen::Timeout => Outcome::Failed(FailureReason::Timeout),
            OutcomeGen::DispatchFailed => Outcome::Failed(FailureReason::DispatchFailed {
                message: "broker refused".into(),
            }),
            OutcomeGen::NotConnected => Outcome::Failed(FailureReason::NotConnected),
        }
    }

    fn op(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        match op {
            Op::Retain(finished_jobs_ms, jobs_ms) => {
                let limits = Retention {
                    finished_jobs_ms: *finished_jobs_ms,
                    jobs_ms: *jobs_ms,
                };
                let due = retention_due(&self.state, &limits, now);
                let before: Vec<JobId> = self.state.jobs.keys().cloned().collect();
                let events = self.apply(Command::ApplyRetention {
                    finished_jobs_ms: *finished_jobs_ms,
                    jobs_ms: *jobs_ms,
                    at: now,
                })?;
                // Later steps pick among the jobs that still exist.
                let state = &self.state;
                self.jobs.retain(|j| state.jobs.contains_key(j));
                // The leader's "due" is exactly "the command would do something".
                if (due == RetentionDue::Now) == events.is_empty() {
                    return Err(self.report(&format!(
                        "retention_due says {due:?} but the command gave {events:?}"
                    )));
                }
                for e in &events {
                    match e {
                        Event::JobDetailExpired { job, .. } => {
                            self.coverage.hit("JobDetailExpired");
                            if !self.state.jobs.get(job).is_some_and(|j| j.detail_expired) {
                                return Err(self.report(&format!("{job}: detail not expired")));
                            }
                        }
                        Event::JobExpired { job, .. } => {
                            self.coverage.hit("JobExpired");
                            if self.state.jobs.contains_key(job) || !before.contains(job) {
                                return Err(self.report(&format!("{job}: not removed")));
                            }
                        }
                        other => {
                            return Err(self.report(&format!("retention gave {other:?}")));
                        }
                    }
                }
            }
            Op::Advance(dt) => {
                self.now = now.plus_millis(*dt);
                self.apply(Command::Advance { at: self.now })?;
            }
            Op::Wait(dt) => self.now = now.plus_millis(*dt),
            Op::AdvanceToWake => {
                let acts = actions(&self.state, now, MAX_DISPATCH);
                if !acts.contains(&Action::Advance) {
                    if let Some(Action::WakeAt(t)) = acts.last() {
                        self.now = *t;
                    }
                }
                self.apply(Command::Advance { at: self.now })?;
            }
            Op::DispatchActions { job, take } => {
                let proposals: Vec<(JobId, RunId, Vec<DeviceId>)> =
                    actions(&self.state, now, MAX_DISPATCH)
                        .into_iter()
                        .filter_map(|a| match a {
                            Action::Dispatch { job, run, devices } => Some((job, run, devices)),
                            _ => None,
                        })
                        .collect();
                if proposals.is_empty() {
                    return Ok(());
                }
                let (id, run, mut devices) = proposals[job % proposals.len()].clone();
                devices.truncate(*take);
                let events = self.apply(Command::MarkDispatched {
                    job: id.clone(),
                    run,
                    devices: devices.clone(),
                    at: now,
                })?;
                // What actions propose, decide accepts: every device is dispatched (or fails at
                // once), unless the threshold cancels the job on the way.
                let cancelled = events
                    .iter()
                    .any(|e| matches!(e, Event::JobCancelled { job, .. } if *job == id));
                if !cancelled {
                    for d in &devices {
                        let handled = events.iter().any(|e| {
                            matches!(e, Event::DeviceDispatched { job, device, .. }
                                | Event::DeviceFailed { job, device, .. } if *job == id && device == d)
                        });
                        if !handled {
                            return Err(self.report(&format!(
                                "actions proposed {d} of {id}, but MarkDispatched skipped it"
                            )));
                        }
                    }
                }
            }
            Op::DispatchPending { job, take } => {
                let Some(id) = self.pick_job(*job) else {
                    return Ok(());
                };
                let r = self.state.jobs[&id].current_run();
                let devices: Vec<DeviceId> = r
                    .devices
                    .iter()
                    .filter(|d| d.status == DeviceStatus::Pending)
                    .take(*take)
                    .map(|d| d.device.clone())
                    .collect();
                let run = r.number;
                self.apply(Command::MarkDispatched {
                    job: id,
                    run,
                    devices,
                    at: now,
                })?;
            }
            Op::DispatchRandom {
                job,
                devices,
                run_twist,
            } => {
                let id = self.pick_job_or_ghost(*job);
                let current = self
                    .state
                    .jobs
                    .get(&id)
                    .map_or(RunId(0), |j| j.current_run().number);
                let run = match run_twist {
                    1 => RunId(current.0 + 1),
                    2 => RunId(current.0.saturating_sub(1)),
                    _ => current,
                };
                let devices = devices.iter().map(|i| self.pick_device(*i)).collect();
                self.apply(Command::MarkDispatched {
                    job: id,
                    run,
                    devices,
                    at: now,
                })?;
            }
            Op::Results(gens) => {
                let sends: Vec<_> = actions(&self.state, now, MAX_DISPATCH)
                    .into_iter()
                    .filter_map(|a| match a {
                        Action::Send(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                if sends.is_empty() {
                    return Ok(());
                }
                let mut results = Vec::new();
                for g in gens {
                    let s = &sends[g.pick % sends.len()];
                    let mut r = DeviceResult {
                        job: s.job.clone(),
                        run: s.run,
                        device: s.device.clone(),
                        attempt: s.attempt,
                        outcome: Self::outcome(g.outcome),
                    };
                    match g.twist {
                        Twist::None => {}
                        Twist::Duplicate => results.push(r.clone()),
                        Twist::WrongAttempt => r.attempt += 1,
                        Twist::StaleAttempt => r.attempt = r.attempt.saturating_sub(1),
                        Twist::WrongRun => r.run = RunId(r.run.0 + 1),
                    }
                    results.push(r);
                }
                self.apply(Command::RecordDeviceResults { results, at: now })?;
            }
            Op::RandomResult {
                job,
                device,
                run,
                attempt,
                outcome,
            } => {
                let r = DeviceResult {
                    job: self.pick_job_or_ghost(*job),
                    run: RunId(*run),
                    device: self.pick_device(*device),
                    attempt: *attempt,
                    outcome: Self::outcome(*outcome),
                };
                self.apply(Command::RecordDeviceResults {
                    results: vec![r],
                    at: now,
                })?;
            }
            Op::Stop(j) => {
                let id = self.pick_job_or_ghost(*j);
                self.apply(Command::StopJob { id, at: now })?;
            }
            Op::Resume(j) => {
                let id = self.pick_job_or_ghost(*j);
                self.apply(Command::ResumeJob { id, at: now })?;
            }
            Op::Cancel(j) => {
                let id = self.pick_job_or_ghost(*j);
                self.apply(Command::CancelJob { id, at: now })?;
            }
            Op::Rerun(j, r) => {
                let id = self.pick_job_or_ghost(*j);
                let rerun_id = RerunId::new(format!("r{r}")).expect("valid rerun id");
                self.apply(Command::RerunJob {
                    id,
                    rerun_id,
                    at: now,
                })?;
            }
            Op::Connect(d, connected) => {
                let device = self.pick_device(*d);
                self.apply(Command::SetConnection {
                    device,
                    connected: *connected,
                    at: now,
                })?;
            }
            Op::ConnectMany(picks) => {
                let changes: Vec<ConnectionChange> = picks
                    .iter()
                    .map(|(d, connected)| ConnectionChange {
                        device: self.pick_device(*d),
                        connected: *connected,
                    })
                    .collect();
                let singles: Vec<Command> = changes
                    .iter()
                    .map(|c| Command::SetConnection {
                        device: c.device.clone(),
                        connected: c.connected,
                        at: now,
                    })
                    .collect();
                self.batch_equals_singles(Command::SetConnections { changes, at: now }, singles)?;
            }
            Op::ReportMany(picks) => {
                let reports: Vec<PropertyReport> = picks
                    .iter()
                    .map(|(d, fw)| PropertyReport {
                        device: self.pick_device(*d),
                        patch: match fw {
                            Some(v) => json!({ "fw": format!("1.{v}") }),
                            None => json!({}),
                        },
                    })
                    .collect();
                let singles: Vec<Command> = reports
                    .iter()
                    .map(|r| Command::ReportProperties {
                        device: r.device.clone(),
                        patch: r.patch.clone(),
                        at: now,
                    })
                    .collect();
                self.batch_equals_singles(
                    Command::ReportPropertiesBatch { reports, at: now },
                    singles,
                )?;
            }
            Op::Tag {
                device,
                site,
                stale_version,
            } => {
                let device = self.pick_device(*device);
                let tags = match site {
                    Some(s) => json!({ "site": SITES[*s as usize] }),
                    None => json!({ "site": null }),
                };
                self.apply(Command::UpdateTwin {
                    device,
                    tags: Some(tags),
                    desired: None,
                    if_version: stale_version.then_some(0),
                    at: now,
                })?;
            }
            Op::Register {
                site,
                enabled,
                existing,
            } => {
                let (id, upsert) = match existing {
                    Some(i) if !self.devices.is_empty() => {
                        (self.devices[i % self.devices.len()].clone(), true)
                    }
                    _ => {
                        let id = did(&format!("new-{:03}", self.next_device));
                        self.next_device += 1;
                        (id, false)
                    }
                };
                let events = self.apply(Command::RegisterDevices {
                    devices: vec![DeviceRegistration {
                        id: id.clone(),
                        display_name: "late device".into(),
                        model_id: None,
                        enabled: *enabled,
                        tags: tags_of(*site).into(),
                    }],
                    upsert,
                    at: now,
                })?;
                if !upsert && !events.is_empty() {
                    self.devices.push(id);
                }
            }
            Op::Identity {
                device,
                enabled,
                condition,
                keys,
            } => {
                let id = match device {
                    Some(i) if !self.devices.is_empty() => {
                        self.devices[i % self.devices.len()].clone()
                    }
                    _ => {
                        let id = did(&format!("hub-{:03}", self.next_device));
                        self.next_device += 1;
                        id
                    }
                };
                let current = self
                    .state
                    .registry
                    .devices
                    .get(&id)
                    .map(|d| d.identity_version);
                let pre_keys = self
                    .state
                    .registry
                    .devices
                    .get(&id)
                    .and_then(|d| d.keys.as_ref().map(|k| k.primary.clone()));
                let condition = match condition {
                    0 => IdentityCondition::Create,
                    1 => IdentityCondition::Exists,
                    2 => IdentityCondition::Version(current.unwrap_or(1)),
                    _ => IdentityCondition::Version(current.unwrap_or(1) + 7),
                };
                let key = |n: u8| base64::engine::general_purpose::STANDARD.encode([n; 32]);
                let events = self.apply(Command::PutDeviceIdentity {
                    identity: DeviceIdentity {
                        id: id.clone(),
                        enabled: *enabled,
                        status_reason: (!enabled).then(|| "test".to_string()),
                        keys: keys.then(|| DeviceKeys {
                            primary: key(1),
                            secondary: key(2),
                        }),
                        iot_edge: false,
                    },
                    condition,
                    fresh_keys: DeviceKeys {
                        primary: key(3),
                        secondary: key(4),
                    },
                    at: now,
                })?;
                if current.is_none() && !events.is_empty() {
                    self.devices.push(id.clone());
                }
                if !events.is_empty() {
                    let d = &self.state.registry.devices[&id];
                    // The caller's keys, else the device's own, else the fresh ones.
                    let want = if *keys {
                        key(1)
                    } else {
                        pre_keys.unwrap_or_else(|| key(3))
                    };
                    prop_assert_eq!(d.keys.as_ref().map(|k| k.primary.clone()), Some(want));
                    prop_assert_eq!(d.enabled, *enabled);
                }
            }
            Op::Delete { device, stale } => {
                let device = self.pick_device(*device);
                let version = self
                    .state
                    .registry
                    .devices
                    .get(&device)
                    .map(|d| d.identity_version);
                let events = self.apply(Command::DeleteDevice {
                    device: device.clone(),
                    if_version: stale.then(|| version.unwrap_or(0) + 1),
                    at: now,
                })?;
                // Deleted exactly when it existed and the etag (if any) matched.
                let existed = version.is_some();
                prop_assert_eq!(
                    self.state.registry.devices.contains_key(&device),
                    existed && *stale
                );
                prop_assert_eq!(events.is_empty(), !existed || *stale);
            }
            Op::Replace {
                device,
                site,
                stale,
            } => {
                let device = self.pick_device(*device);
                self.apply(Command::ReplaceTwin {
                    device,
                    tags: Some(tags_of(*site)),
                    desired: json!({"fw": "3"}),
                    if_version: stale.then_some(0),
                    at: now,
                })?;
            }
            Op::Enable { device, enabled } => {
                let device = self.pick_device(*device);
                self.apply(Command::UpdateDevice {
                    device,
                    display_name: None,
                    model_id: None,
                    enabled: Some(*enabled),
                    if_version: None,
                    at: now,
                })?;
            }
            Op::Create(g) => self.create_job(g)?,
            Op::RedefineGroup(s) => {
                self.apply(Command::SaveGroup {
                    id: GroupId::new("g-a").expect("valid group id"),
                    display_name: "site group".into(),
                    description: String::new(),
                    query: site_query(Some(*s)),
                    if_version: None,
                    at: now,
                })?;
            }
        }
        Ok(())
    }
}

fn run_script(script: &Script) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new();
    h.setup(script)?;
    // The state before any command must hold too.
    if let Err(msg) = check_state(&h.state) {
        return Err(h.report(&msg));
    }
    for (dt, op) in &script.steps {
        h.now = h.now.plus_millis(*dt);
        h.op(op)?;
    }
    // Replay with spills (what a restarting store does) rebuilds the live hot state and cold
    // rows; so does a replay without spills followed by one spill of everything finished
    // (a snapshot of a build before the cold tier).
    let mut hot = State::default();
    let mut cold = MemRows::default();
    for events in &h.by_command {
        for e in events {
            evolve(&mut hot, e);
        }
        cold.absorb(hot.spill(events));
    }
    if hot != h.hot || cold != h.cold {
        return Err(h.report("replay with spills differs from the live hot state or cold rows"));
    }
    let mut late = State::replay(&h.log);
    let mut late_cold = MemRows::default();
    late_cold.absorb(late.spill_all());
    if late != h.hot || late_cold != h.cold {
        return Err(h.report("replay then spill_all differs from the live hot state or cold rows"));
    }
    Ok(h)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `PROPTEST_CASES` overrides the case count for a longer soak; `PROPTEST_MAX_SHRINK_ITERS` and
/// `PROPTEST_MAX_SHRINK_TIME` (ms) bound shrinking.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: env_or("PROPTEST_CASES", cases),
        failure_persistence: None,
        max_shrink_iters: env_or("PROPTEST_MAX_SHRINK_ITERS", 4096),
        max_shrink_time: env_or("PROPTEST_MAX_SHRINK_TIME", 60_000),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Every invariant, after every command of a random interleaving.
    #[test]
    fn invariants_hold_after_every_command(script in script_gen(60)) {
        run_script(&script)?;
    }

    /// Two states fed the same commands produce the same events (and errors), and end equal.
    #[test]
    fn decide_is_deterministic(script in script_gen(40)) {
        let h = run_script(&script)?;
        let mut a = State::default();
        let mut b = State::default();
        for (cmd, recorded) in &h.history {
            let ra = a.execute(cmd);
            let rb = b.execute(cmd);
            prop_assert_eq!(&ra, &rb, "two states disagree on {:?}", cmd);
            prop_assert_eq!(&ra, recorded, "a fresh state disagrees with the run on {:?}", cmd);
        }
        prop_assert!(a == b);
        prop_assert!(a == h.state);
        // and the whole log replayed through the owned path rebuilds it too
        let mut owned = State::default();
        for e in h.log.iter().cloned() {
            apply(&mut owned, e);
        }
        prop_assert!(owned == h.state);
    }
}

/// The generator reaches the interesting corners; otherwise the properties above would pass
/// vacuously.
#[test]
fn scripts_reach_the_interesting_corners() {
    let mut runner = TestRunner::deterministic();
    let strategy = script_gen(60);
    let mut total = Coverage::default();
    for _ in 0..48 {
        let script = strategy.new_tree(&mut runner).expect("a script").current();
        let h = match run_script(&script) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        for (k, v) in h.coverage.counts {
            *total.counts.entry(k).or_default() += v;
        }
    }
    eprintln!("coverage over 48 scripts: {:?}", total.counts);
    for key in [
        "JobStarted",
        "BatchStarted",
        "later-batch",
        "DeviceDispatched",
        "DeviceSucceeded",
        "DeviceFailed",
        "retry",
        "redispatch",
        "failed-Timeout",
        "failed-NotConnected",
        "failed-DeviceNotFound",
        "failed-DeviceDisabled",
        "threshold-batch",
        "threshold-run",
        "final-failure-below-threshold",
        "JobCompleted",
        "JobFailed",
        "JobStopped",
        "JobResumed",
        "RerunStarted",
        "DevicesJoined",
        "JobScheduled",
        "rate-limit-reached",
        "dispatch-while-stopped",
        "rejected",
        "batched-registry-change",
        "spilled",
        "JobDetailExpired",
        "JobExpired",
        "WindowOpened",
        "WindowClosed",
    ] {
        assert!(
            total.counts.get(key).copied().unwrap_or(0) > 0,
            "no script reached {key}: {:?}",
            total.counts
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Fixed cases for the threshold, both directions, on hand-built sequences
// ------------------------------------------------------------------------------------------------

fn fleet(n: usize) -> Vec<DeviceRegistration> {
    (0..n)
        .map(|i| DeviceRegistration {
            id: did(&format!("dev-{i:03}")),
            display_name: String::new(),
            model_id: None,
            enabled: true,
            tags: json!({}).into(),
        })
        .collect()
}

fn method_spec(batch: Option<BatchSize>, threshold: Option<CancellationThreshold>) -> JobSpec {
    JobSpec {
        display_name: "reboot".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query("SELECT * FROM devices".into()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!({}),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout {
            batch,
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation: threshold,
        retry: RetryPolicy::default(),
    }
}

/// Fails devices one by one in a started job and returns after how many final failures the job
/// was cancelled by its threshold (or `None`).
fn failures_until_cancel(
    devices: usize,
    batch: Option<BatchSize>,
    limit: Threshold,
    per_batch: bool,
) -> Option<u64> {
    let mut s = State::default();
    let mut at = Timestamp(T0);
    s.execute(&Command::RegisterDevices {
        devices: fleet(devices),
        upsert: false,
        at,
    })
    .expect("register");
    let id = jid("t");
    s.execute(&Command::CreateJob {
        id: id.clone(),
        spec: method_spec(batch, Some(CancellationThreshold { limit, per_batch })),
        at,
    })
    .expect("create");
    s.execute(&Command::Advance { at }).expect("advance");
    let mut failures = 0;
    loop {
        at = at.plus_millis(1);
        let j = &s.jobs[&id];
        if j.status != JobStatus::Running {
            return None;
        }
        let run = j.current_run();
        let &i = run.ready.first()?;
        let device = run.devices[i as usize].device.clone();
        s.execute(&Command::MarkDispatched {
            job: id.clone(),
            run: run.number,
            devices: vec![device.clone()],
            at,
        })
        .expect("dispatch");
        let events = s
            .execute(&Command::RecordDeviceResults {
                results: vec![muster_domain::responded(
                    &id,
                    RunId(0),
                    &device,
                    1,
                    500,
                    json!({}),
                )],
                at,
            })
            .expect("record");
        failures += 1;
        if events.iter().any(|e| {
            matches!(
                e,
                Event::JobCancelled {
                    reason: CancelReason::Threshold { .. },
                    ..
                }
            )
        }) {
            return Some(failures);
        }
    }
}

#[test]
fn threshold_cancels_exactly_when_crossed() {
    // 10% of 40 is 4: the 5th failure crosses, the 4th does not.
    assert_eq!(
        failures_until_cancel(40, None, Threshold::Percentage(10), false),
        Some(5)
    );
    // Count 3: the 4th failure crosses.
    assert_eq!(
        failures_until_cancel(40, None, Threshold::Count(3), false),
        Some(4)
    );
    // Per batch of 10 with 20%: 2 of 10 is not more than 20%, 3 is.
    assert_eq!(
        failures_until_cancel(
            40,
            Some(BatchSize::Count(10)),
            Threshold::Percentage(20),
            true
        ),
        Some(3)
    );
    // 100% is never crossed.
    assert_eq!(
        failures_until_cancel(5, None, Threshold::Percentage(100), false),
        None
    );
    // A count above the population is never crossed.
    assert_eq!(
        failures_until_cancel(5, None, Threshold::Count(5), false),
        None
    );
}

// ------------------------------------------------------------------------------------------------
// Continuous jobs and reruns
// ------------------------------------------------------------------------------------------------

/// Found by the join property: after a rerun of a continuous job, any change of a device that
/// matches the target and is not in the rerun (for example one that succeeded in run 0) made it
/// join the rerun and run the job again; here a mere connection change did it.
#[test]
fn a_device_that_succeeded_does_not_rejoin_a_rerun_of_a_continuous_job() {
    let mut s = State::default();
    let at = Timestamp(T0);
    let id = jid("c");
    let (d0, d1) = (did("dev-000"), did("dev-001"));
    let mut devices = fleet(2);
    for d in &mut devices {
        d.tags = json!({"site": "a"}).into();
    }
    s.execute(&Command::RegisterDevices {
        devices,
        upsert: false,
        at,
    })
    .unwrap();
    let mut spec = method_spec(None, None);
    spec.target = Target {
        selector: TargetSelector::Query(site_query(Some(0))),
        continuous: true,
    };
    s.execute(&Command::CreateJob {
        id: id.clone(),
        spec,
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    s.execute(&Command::MarkDispatched {
        job: id.clone(),
        run: RunId(0),
        devices: vec![d0.clone(), d1.clone()],
        at,
    })
    .unwrap();
    s.execute(&Command::RecordDeviceResults {
        results: vec![
            muster_domain::responded(&id, RunId(0), &d0, 1, 200, json!({})),
            muster_domain::responded(&id, RunId(0), &d1, 1, 500, json!({})),
        ],
        at,
    })
    .unwrap();
    s.execute(&Command::CancelJob { id: id.clone(), at })
        .unwrap();
    let rerun = s
        .execute(&Command::RerunJob {
            id: id.clone(),
            rerun_id: RerunId::new("r1").unwrap(),
            at,
        })
        .unwrap();
    assert!(
        matches!(&rerun[..], [Event::RerunStarted { devices, .. }] if devices == &vec![d1.clone()])
    );
    // dev-000 succeeded in run 0 and its twin still matches as it did; it only comes online.
    let events = s
        .execute(&Command::SetConnection {
            device: d0.clone(),
            connected: true,
            at,
        })
        .unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::DevicesJoined { devices, .. } if devices.contains(&d0))),
        "dev-000 joined the rerun: {events:?}"
    );
}

/// Found by the join property (with the fix above in place): devices that start matching a
/// continuous job's target while the job has ended are not picked up then; after a rerun, one of
/// them joins the rerun at its next, unrelated change (here it goes offline), while an identical
/// device that stays quiet never joins. Whether such devices belong to the rerun or not, they should
/// be treated alike; the documented rule ("devices that started matching") says not to join them.
#[test]
fn devices_that_matched_while_the_job_had_ended_are_treated_alike_by_its_rerun() {
    let mut s = State::default();
    let at = Timestamp(T0);
    let id = jid("c");
    let d0 = did("dev-000");
    let mut devices = fleet(1);
    devices[0].tags = json!({"site": "a"}).into();
    s.execute(&Command::RegisterDevices {
        devices,
        upsert: false,
        at,
    })
    .unwrap();
    let mut spec = method_spec(None, None);
    spec.target = Target {
        selector: TargetSelector::Query(site_query(Some(0))),
        continuous: true,
    };
    s.execute(&Command::CreateJob {
        id: id.clone(),
        spec,
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    s.execute(&Command::MarkDispatched {
        job: id.clone(),
        run: RunId(0),
        devices: vec![d0.clone()],
        at,
    })
    .unwrap();
    s.execute(&Command::RecordDeviceResults {
        results: vec![muster_domain::responded(
            &id,
            RunId(0),
            &d0,
            1,
            500,
            json!({}),
        )],
        at,
    })
    .unwrap();
    s.execute(&Command::CancelJob { id: id.clone(), at })
        .unwrap();
    // Two devices start matching while the job has ended: nothing joins an ended job.
    let (n1, n2) = (did("new-001"), did("new-002"));
    for n in [&n1, &n2] {
        s.execute(&Command::RegisterDevices {
            devices: vec![DeviceRegistration {
                id: n.clone(),
                display_name: String::new(),
                model_id: None,
                enabled: true,
                tags: json!({"site": "a"}).into(),
            }],
            upsert: false,
            at,
        })
        .unwrap();
    }
    s.execute(&Command::RerunJob {
        id: id.clone(),
        rerun_id: RerunId::new("r1").unwrap(),
        at,
    })
    .unwrap();
    // new-001 goes offline; new-002 does nothing. Their twins match the target exactly alike.
    s.execute(&Command::SetConnection {
        device: n1.clone(),
        connected: false,
        at,
    })
    .unwrap();
    let rerun = s.jobs[&id].current_run();
    assert_eq!(
        rerun.device(&n1).is_some(),
        rerun.device(&n2).is_some(),
        "new-001 in the rerun: {}, new-002 in the rerun: {}",
        rerun.device(&n1).is_some(),
        rerun.device(&n2).is_some()
    );
}

/// Devices that a `SetConnections` makes match a continuous job's query join it together, as one
/// batch; a device that comes online and goes offline again within the command never matched as
/// far as the command's net effect goes, so it does not join; unknown devices are skipped.
#[test]
fn joins_of_a_batch_are_one_batch() {
    let mut s = State::default();
    let at = Timestamp(T0);
    let id = jid("online");
    s.execute(&Command::RegisterDevices {
        devices: fleet(5),
        upsert: false,
        at,
    })
    .unwrap();
    let mut spec = method_spec(None, None);
    spec.target = Target {
        selector: TargetSelector::Query(
            "SELECT * FROM devices WHERE connectionState = 'Connected'".into(),
        ),
        continuous: true,
    };
    s.execute(&Command::CreateJob {
        id: id.clone(),
        spec,
        at,
    })
    .unwrap();
    s.execute(&Command::Advance { at }).unwrap();
    let change = |d: &str, connected| ConnectionChange {
        device: did(d),
        connected,
    };
    let events = s
        .execute(&Command::SetConnections {
            changes: vec![
                change("dev-000", true),
                change("ghost-1", true),
                change("dev-002", true),
                change("dev-001", true),
                change("dev-001", false),
                // Already offline: no event.
                change("dev-003", false),
            ],
            at,
        })
        .expect("a batch is never refused");
    let changed: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectionChanged {
                device, connected, ..
            } => Some((device.to_string(), *connected)),
            _ => None,
        })
        .collect();
    // dev-003 starts Unknown, so `false` is a change for it.
    assert_eq!(
        changed,
        vec![
            ("dev-000".to_string(), true),
            ("dev-002".to_string(), true),
            ("dev-001".to_string(), true),
            ("dev-001".to_string(), false),
            ("dev-003".to_string(), false),
        ]
    );
    let joined: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::DevicesJoined { .. }))
        .collect();
    assert_eq!(joined.len(), 1, "{events:?}");
    let Event::DevicesJoined { devices, .. } = joined[0] else {
        unreachable!()
    };
    assert_eq!(devices, &vec![did("dev-000"), did("dev-002")]);
    let run = s.jobs[&id].current_run();
    assert_eq!(run.stats.pending + run.stats.running, 2);
    assert_eq!(run.devices.len(), 2);
    check_state(&s).unwrap();
    assert_eq!(
        s.registry.devices[&did("dev-001")].connection,
        ConnectionState::Disconnected
    );
}
