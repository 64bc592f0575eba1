use muster_types::{DeviceId, ScheduledJobId, Timestamp};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::command::Command;
use crate::error::DomainError;
use crate::event::Event;
use crate::spec::{MethodCall, Operation, RetryPolicy, Rollout, Schedule, Target, TargetSelector};
use crate::State;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn template() -> JobSpec {
    JobSpec {
        display_name: "nightly reboot".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Devices(vec![DeviceId::new("d1").unwrap()]),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!({}),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    }
}

fn spec(schedule: JobSchedule) -> ScheduledJobSpec {
    ScheduledJobSpec {
        template: template(),
        schedule,
        enabled: true,
    }
}

/// A schedule from `start` with no end, in UTC.
fn open_ended(start: Timestamp, recurrence: Option<Recurrence>) -> JobSchedule {
    JobSchedule {
        start,
        recurrence,
        end: None,
        time_zone: None,
    }
}

fn sid() -> ScheduledJobId {
    ScheduledJobId::new("nightly").unwrap()
}

/// Saving the schedule `sid()`, if its version is `if_version` (when given).
fn save_cmd(spec: ScheduledJobSpec, if_version: Option<u64>, at: Timestamp) -> Command {
    Command::SaveScheduledJob {
        id: sid(),
        spec,
        if_version,
        at,
    }
}

fn save(state: &mut State, schedule: JobSchedule, at: Timestamp) -> Vec<Event> {
    state.execute(&save_cmd(spec(schedule), None, at)).unwrap()
}

fn occurred(events: &[Event]) -> Vec<(u32, Timestamp, Timestamp)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ScheduledJobOccurred {
                occurrence,
                due,
                at,
                ..
            } => Some((*occurrence, *due, *at)),
            _ => None,
        })
        .collect()
}

/// Daily at 02:30 Europe/Berlin across the spring-forward night: one occurrence per civil day,
/// the one on the missing 02:30 moved to 03:30 (jiff's "compatible"), the others at 02:30 local.
#[test]
fn daily_in_a_zone_keeps_civil_time_across_dst() {
    let s = JobSchedule {
        start: ts("2026-03-27T01:30:00Z"), // 02:30 CET
        recurrence: Some(Recurrence::Daily),
        end: None,
        time_zone: Some("Europe/Berlin".into()),
    };
    let got: Vec<String> = (0..4)
        .map(|i| s.occurrence(i).unwrap().to_rfc3339())
        .collect();
    assert_eq!(
        got,
        [
            "2026-03-27T01:30:00.000Z",
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:30:00.000Z", // 03:30 CEST: 02:30 does not exist that day
            "2026-03-30T00:30:00.000Z", // 02:30 CEST
        ]
    );
}

/// A start in the repeated hour of the fall-back night (the second 02:00 in Berlin) is itself
/// the first occurrence, not the first 02:00 an hour earlier; later days keep 02:00 local.
#[test]
fn a_start_in_the_repeated_hour_is_the_first_occurrence() {
    let s = JobSchedule {
        start: ts("2026-10-25T01:00:00Z"), // 02:00 CET, the second 02:00 that night
        recurrence: Some(Recurrence::Daily),
        end: None,
        time_zone: Some("Europe/Berlin".into()),
    };
    let got: Vec<String> = (0..2)
        .map(|i| s.occurrence(i).unwrap().to_rfc3339())
        .collect();
    assert_eq!(
        got,
        ["2026-10-25T01:00:00.000Z", "2026-10-26T01:00:00.000Z"]
    );
    assert_eq!(s.first_at_or_after(s.start), 0);
}

#[test]
fn monthly_clamps_to_the_last_day_without_drifting() {
    let s = open_ended(ts("2026-01-31T10:00:00Z"), Some(Recurrence::Monthly));
    let got: Vec<String> = (0..3)
        .map(|i| s.occurrence(i).unwrap().to_rfc3339())
        .collect();
    assert_eq!(
        got,
        [
            "2026-01-31T10:00:00.000Z",
            "2026-02-28T10:00:00.000Z",
            "2026-03-31T10:00:00.000Z",
        ]
    );
}

#[test]
fn end_by_date_and_by_count() {
    let mut s = JobSchedule {
        start: ts("2026-01-01T00:00:00Z"),
        recurrence: Some(Recurrence::Weekly),
        end: Some(ScheduleEnd::Date(ts("2026-01-15T00:00:00Z"))),
        time_zone: None,
    };
    assert!(s.occurrence(2).is_some());
    assert!(s.occurrence(3).is_none());
    s.end = Some(ScheduleEnd::Occurrences(2));
    let mut state = State::default();
    save(&mut state, s, ts("2026-01-01T00:00:00Z"));
    let mut all = Vec::new();
    for day in 0..40 {
        let at = ts("2026-01-01T00:00:00Z").plus_secs(day * 86_400);
        all.extend(state.execute(&Command::Advance { at }).unwrap());
    }
    assert_eq!(occurred(&all).len(), 2);
    let s = &state.schedules[&sid()];
    assert!(s.completed());
    assert_eq!(s.jobs.len(), 2);
    assert_eq!(s.jobs[1].as_str(), "nightly-2");
}

#[test]
fn a_schedule_with_nothing_left_is_refused() {
    let state = State::default();
    let err = state
        .clone()
        .execute(&save_cmd(
            spec(open_ended(ts("2020-01-01T00:00:00Z"), None)),
            None,
            ts("2026-01-01T00:00:00Z"),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("no occurrence after"), "{err}");
}

/// A job that already has the next name pushes the occurrence to the next free one.
#[test]
fn a_taken_job_id_is_skipped() {
    let mut state = State::default();
    let at = ts("2026-01-01T00:00:00Z");
    state
        .execute(&Command::CreateJob {
            id: muster_types::JobId::new("nightly-1").unwrap(),
            spec: template(),
            at,
        })
        .unwrap();
    save(&mut state, open_ended(at, None), at);
    state.execute(&Command::Advance { at }).unwrap();
    assert_eq!(state.schedules[&sid()].jobs[0].as_str(), "nightly-2");
}

fn recurrence() -> impl Strategy<Value = Option<Recurrence>> {
    prop_oneof![
        Just(None),
        Just(Some(Recurrence::Daily)),
        Just(Some(Recurrence::Weekly)),
        Just(Some(Recurrence::Monthly)),
        // At least 6 hours, so a gap of days stays a few dozen occurrences.
        (21_600u32..200_000).prop_map(|s| Some(Recurrence::Seconds(s))),
    ]
}

fn zone() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("Europe/Berlin".to_string())),
        Just(Some("America/New_York".to_string())),
        Just(Some("Australia/Lord_Howe".to_string())),
    ]
}

/// 2026-01-01 give or take a year, so DST changes of both hemispheres fall inside.
const BASE: i64 = 1_767_225_600_000;
const YEAR_MS: i64 = 366 * 86_400_000;

fn schedule() -> impl Strategy<Value = JobSchedule> {
    (
        0..YEAR_MS,
        recurrence(),
        prop_oneof![
            Just(None),
            (1u32..8).prop_map(|k| Some(ScheduleEnd::Occurrences(k))),
            (0..YEAR_MS).prop_map(|d| Some(ScheduleEnd::Date(Timestamp::from_millis(d)))),
        ],
        zone(),
    )
        .prop_map(|(start, recurrence, end, time_zone)| {
            let start = Timestamp::from_millis(BASE + start);
            let end = match end {
                Some(ScheduleEnd::Date(d)) => {
                    Some(ScheduleEnd::Date(start.plus_millis(d.millis() / 4)))
                }
                e => e,
            };
            JobSchedule {
                start,
                recurrence,
                end,
                time_zone,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Occurrence times rise strictly with the index.
    #[test]
    fn occurrences_are_monotonic(s in schedule()) {
        let mut last = None;
        for i in 0..40 {
            let Some(t) = s.occurrence(i) else { break };
            prop_assert!(t >= s.start);
            if let Some(l) = last { prop_assert!(t > l, "{i}: {t} after {l}"); }
            last = Some(t);
        }
    }

    /// `first_at_or_after` finds exactly the first occurrence at or after a time.
    #[test]
    fn first_at_or_after_is_exact(s in schedule(), off in -YEAR_MS..4 * YEAR_MS) {
        let t = s.start.plus_millis(off);
        let i = s.first_at_or_after(t);
        if let Some(x) = s.raw(i) { prop_assert!(x >= t.millis()); }
        if i > 0 { prop_assert!(s.raw(i - 1).is_none_or(|x| x < t.millis())); }
    }

    /// Driven by `Advance`s at arbitrary times (gaps as long as an outage), a schedule creates
    /// exactly the occurrences its spec implies: each once, none before it is due or before the
    /// start, none after the end, the count end exact, none skipped; and replaying the log gives
    /// the live state.
    #[test]
    fn advances_create_exactly_the_implied_occurrences(
        s in schedule(),
        gaps in prop::collection::vec(1i64..10 * 86_400_000, 1..20),
    ) {
        let mut state = State::default();
        let created_at = s.start.plus_millis(-1000);
        let mut log = save(&mut state, s.clone(), created_at);
        let mut at = created_at;
        for g in &gaps {
            at = at.plus_millis(*g);
            log.extend(state.execute(&Command::Advance { at }).unwrap());
            // Catch up: actions ask for another Advance while one is due.
            while state.schedules[&sid()].due(at).is_some() {
                let more = state.execute(&Command::Advance { at }).unwrap();
                prop_assert!(!occurred(&more).is_empty(), "due but nothing created");
                log.extend(more);
            }
        }
        let got = occurred(&log);
        // Exactly occurrences 0, 1, 2, ... in order: never twice, none skipped.
        for (k, (i, due, made)) in got.iter().enumerate() {
            prop_assert_eq!(*i as usize, k);
            prop_assert_eq!(Some(*due), s.occurrence(*i));
            prop_assert!(*due >= s.start);
            prop_assert!(*made >= *due, "created before due");
            if let Some(ScheduleEnd::Date(end)) = s.end { prop_assert!(*due <= end); }
        }
        // Every occurrence due by the last Advance was created, up to the count end.
        let cap = match s.end { Some(ScheduleEnd::Occurrences(k)) => k as usize, _ => usize::MAX };
        let implied = (0..).map_while(|i| s.occurrence(i).filter(|t| *t <= at)).take(cap).count();
        prop_assert_eq!(got.len(), implied);
        let live = &state.schedules[&sid()];
        prop_assert_eq!(live.jobs.len(), got.len());
        prop_assert_eq!(State::replay(&log), state);
    }
}

/// The leader's work: an `Advance` when an occurrence is due, else a wake-up at the next one.
#[test]
fn actions_ask_for_an_advance_when_an_occurrence_is_due() {
    use crate::actions::{actions, Action};
    let mut state = State::default();
    let start = ts("2026-01-01T00:00:00Z");
    save(
        &mut state,
        open_ended(start, Some(Recurrence::Seconds(60))),
        start.plus_secs(-10),
    );
    let before = actions(&state, start.plus_secs(-5), 100);
    assert_eq!(before, vec![Action::WakeAt(start)]);
    assert_eq!(actions(&state, start, 100).first(), Some(&Action::Advance));
}

/// Disabling skips what falls due meanwhile; enabling again never re-creates an occurrence that
/// was already created, even within the grace minute.
#[test]
fn disable_then_enable_skips_and_never_repeats() {
    let mut state = State::default();
    let start = ts("2026-01-01T00:00:00Z");
    let every_30s = open_ended(start, Some(Recurrence::Seconds(30)));
    let mut log = save(&mut state, every_30s.clone(), start);
    log.extend(state.execute(&Command::Advance { at: start }).unwrap());
    let mut off = spec(every_30s.clone());
    off.enabled = false;
    let t = start.plus_secs(10);
    log.extend(state.execute(&save_cmd(off, None, t)).unwrap());
    // Disabled across occurrences 1..=4: none is created.
    for s in [30, 60, 90, 120] {
        let at = start.plus_secs(s);
        log.extend(state.execute(&Command::Advance { at }).unwrap());
    }
    assert_eq!(occurred(&log).len(), 1);
    // Enabled at 125 s: occurrences 3 and 4 (90 s, 120 s) are within the grace minute and run;
    // 0 never again.
    let back = start.plus_secs(125);
    log.extend(save(&mut state, every_30s, back));
    for s in [125, 150] {
        let at = start.plus_secs(s);
        while state.schedules[&sid()].due(at).is_some() {
            log.extend(state.execute(&Command::Advance { at }).unwrap());
        }
    }
    let got: Vec<u32> = occurred(&log).iter().map(|o| o.0).collect();
    assert_eq!(got, [0, 3, 4, 5]);
    assert_eq!(State::replay(&log), state);
}

/// The versioned saves' setup: an empty state, and a daily schedule from 2026-01-01 00:00 UTC
/// (returned with its start).
fn daily_from_new_year() -> (State, Timestamp, JobSchedule) {
    let start = ts("2026-01-01T00:00:00Z");
    (
        State::default(),
        start,
        open_ended(start, Some(Recurrence::Daily)),
    )
}

/// A stale etag is refused; the right one replaces.
#[test]
fn saves_are_conditional_on_the_version() {
    let (mut state, start, s) = daily_from_new_year();
    save(&mut state, s.clone(), start);
    let cmd = |v| save_cmd(spec(s.clone()), Some(v), start);
    assert!(matches!(
        state.clone().execute(&cmd(7)),
        Err(DomainError::ScheduledJobVersionMismatch { actual: 1, .. })
    ));
    state.execute(&cmd(1)).unwrap();
    assert_eq!(state.schedules[&sid()].version, 2);
}

#[test]
fn version_zero_creates_only_once() {
    let (mut state, start, s) = daily_from_new_year();
    let create = save_cmd(spec(s), Some(0), start);
    state.execute(&create).unwrap();
    assert_eq!(state.schedules[&sid()].version, 1);
    assert_eq!(
        state.execute(&create),
        Err(DomainError::ScheduledJobExists(sid()))
    );
    assert_eq!(state.schedules[&sid()].version, 1);
}
