//! The query statement over real state: paging, TOP, COUNT/GROUP BY and `devices.jobs`.
//!
//! Property tests check the invariants a client relies on: walking the pages of any query with
//! any page size yields exactly the unpaged rows in the same order; `TOP n` is the first n of
//! them; `COUNT()` with `GROUP BY` equals a recount of the matching documents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use muster_domain::query::{Cursor, Row, Statement};
use muster_domain::{
    Command, DeviceRegistration, DeviceResult, JobSpec, MethodCall, Operation, Outcome,
    RetryPolicy, Rollout, Schedule, State, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId, RunId, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const SITES: [&str; 3] = ["b43", "b44", "b45"];

fn did(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:03}")).unwrap()
}

#[derive(Debug, Clone)]
struct DeviceGen {
    site: Option<usize>,
    fw: Option<u8>,
}

#[derive(Debug, Clone)]
struct JobGen {
    devices: Vec<usize>,
    method: bool,
    /// Per target device: answer with this status (None: no answer yet).
    answers: Vec<Option<i32>>,
}

fn device_gen() -> impl Strategy<Value = DeviceGen> {
    (prop::option::of(0..SITES.len()), prop::option::of(0u8..3))
        .prop_map(|(site, fw)| DeviceGen { site, fw })
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        prop::collection::vec(0usize..40, 1..12),
        any::<bool>(),
        prop::collection::vec(prop::option::of(prop::sample::select(vec![200, 500])), 12),
    )
        .prop_map(|(devices, method, answers)| JobGen {
            devices,
            method,
            answers,
        })
}

/// Registers the devices (with reported `fw`), creates the jobs and runs them part way.
fn build(devices: &[DeviceGen], jobs: &[JobGen]) -> State {
    let mut state = State::default();
    let at = Timestamp(1_000_000);
    let regs: Vec<DeviceRegistration> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| DeviceRegistration {
            id: did(i),
            display_name: format!("device {i}"),
            model_id: None,
            enabled: true,
            tags: match d.site {
                Some(s) => json!({"site": SITES[s]}).into(),
                None => json!({}).into(),
            },
        })
        .collect();
    if !devices.is_empty() {
        state
            .execute(&Command::RegisterDevices {
                devices: regs,
                upsert: false,
                at,
            })
            .unwrap();
    }
    for (i, d) in devices.iter().enumerate() {
        if let Some(fw) = d.fw {
            state
                .execute(&Command::ReportProperties {
                    device: did(i),
                    patch: json!({"fw": fw}),
                    at,
                })
                .unwrap();
        }
    }
    for (k, g) in jobs.iter().enumerate() {
        let ids: Vec<DeviceId> = g
            .devices
            .iter()
            .filter(|&&i| i < devices.len())
            .map(|&i| did(i))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let operations = if g.method {
            vec![Operation::InvokeMethod(MethodCall {
                name: "reboot".into(),
                payload: json!({}),
                response_timeout_secs: 30,
                connect_timeout_secs: 0,
            })]
        } else {
            vec![Operation::PatchTags {
                patch: json!({"ring": "a"}),
            }]
        };
        let job = JobId::new(format!("job-{k}")).unwrap();
        let spec = JobSpec {
            display_name: job.to_string(),
            description: String::new(),
            target: Target {
                selector: TargetSelector::Devices(ids.clone()),
                continuous: false,
            },
            operations,
            schedule: Schedule::default(),
            rollout: Rollout::default(),
            cancellation: None,
            retry: RetryPolicy::default(),
        };
        state
            .execute(&Command::CreateJob {
                id: job.clone(),
                spec,
                at,
            })
            .unwrap();
        state.execute(&Command::Advance { at }).unwrap();
        if !g.method {
            state
                .execute(&Command::MarkDispatched {
                    job,
                    run: RunId(0),
                    devices: ids,
                    at,
                })
                .unwrap();
            continue;
        }
        let answered: Vec<(DeviceId, i32)> = ids
            .iter()
            .zip(&g.answers)
            .filter_map(|(d, a)| a.map(|s| (d.clone(), s)))
            .collect();
        state
            .execute(&Command::MarkDispatched {
                job: job.clone(),
                run: RunId(0),
                devices: answered.iter().map(|(d, _)| d.clone()).collect(),
                at,
            })
            .unwrap();
        let results = answered
            .into_iter()
            .map(|(device, status)| DeviceResult {
                job: job.clone(),
                run: RunId(0),
                device,
                attempt: 1,
                outcome: Outcome::Responded {
                    status,
                    payload: json!({"ok": status == 200}).into(),
                },
            })
            .collect();
        state
            .execute(&Command::RecordDeviceResults { results, at })
            .unwrap();
    }
    state
}

/// Rows as JSON (a twin row as its device id, which identifies it).
fn rows_json(rows: Vec<Row<'_>>) -> Vec<Value> {
    rows.into_iter()
        .map(|row| match row {
            Row::Twin(d) => json!({"twin": d.id.as_str()}),
            Row::Document(v) => v,
        })
        .collect()
}

fn all_rows(statement: &Statement, state: &State) -> Vec<Value> {
    let page = statement
        .page(state, &muster_domain::NoColdRows, None, usize::MAX)
        .unwrap();
    assert!(page.next.is_none());
    rows_json(page.rows)
}

/// Walks every page of `size`, through the text form of the cursor as a client would.
fn paged_rows(statement: &Statement, state: &State, size: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for _ in 0..10_000 {
        let page = statement
            .page(state, &muster_domain::NoColdRows, cursor.as_ref(), size)
            .unwrap();
        assert!(page.rows.len() <= size);
        let last = page.next.is_none();
        if !last {
            assert_eq!(page.rows.len(), size, "a page before the last is full");
        }
        rows.extend(rows_json(page.rows));
        match page.next {
            None => return rows,
            Some(next) => cursor = Some(Cursor::decode(&next.encode("q"), "q").unwrap()),
        }
    }
    panic!("paging did not end");
}

fn query_gen() -> impl Strategy<Value = String> {
    let condition = prop::sample::select(vec![
        "",
        " WHERE tags.site = 'b43'",
        " WHERE tags.site != 'b44'",
        " WHERE properties.reported.fw >= 1",
        " WHERE NOT IS_DEFINED(tags.site)",
        " WHERE deviceId = 'dev-003'",
        " WHERE deviceId IN ['dev-001', 'dev-007', 'dev-100']",
    ]);
    let select = prop::sample::select(vec![
        "SELECT * FROM devices",
        "SELECT deviceId, tags.site FROM devices",
        "SELECT deviceId AS id, properties.reported.fw AS fw FROM devices",
    ]);
    let jobs = prop::sample::select(vec![
        "SELECT * FROM devices.jobs",
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'job-1'",
        "SELECT * FROM devices.jobs WHERE devices.jobs.status = 'completed'",
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobType = 'scheduleDeviceMethod' AND devices.jobs.deviceId >= 'dev-010'",
        "SELECT * FROM devices.jobs WHERE devices.jobs.outcome.deviceMethodResponse.status = 500",
        "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'job-0' AND devices.jobs.status = 'failed'",
        "SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'dev-003'",
        "SELECT * FROM devices.jobs WHERE devices.jobs.status != 'pending' AND devices.jobs.deviceId = 'dev-001'",
    ]);
    let grouped = prop::sample::select(vec![
        "SELECT COUNT() FROM devices",
        "SELECT COUNT() AS n FROM devices WHERE tags.site = 'b43'",
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site",
        "SELECT properties.reported.fw, tags.site, COUNT() FROM devices GROUP BY tags.site, properties.reported.fw",
        "SELECT tags.site FROM devices GROUP BY tags.site",
    ]);
    prop_oneof![
        (select, condition).prop_map(|(s, c)| format!("{s}{c}")),
        jobs.prop_map(String::from),
        grouped.prop_map(String::from),
    ]
}

fn state_gen() -> impl Strategy<Value = State> {
    (
        prop::collection::vec(device_gen(), 0..40),
        prop::collection::vec(job_gen(), 0..4),
    )
        .prop_map(|(devices, jobs)| build(&devices, &jobs))
}

fn top(text: &str, n: u64) -> String {
    text.replacen("SELECT ", &format!("SELECT TOP {n} "), 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pages_concatenate_to_the_unpaged_rows(state in state_gen(), text in query_gen(), size in 1usize..7) {
        let statement = Statement::parse(&text).unwrap();
        let all = all_rows(&statement, &state);
        prop_assert_eq!(paged_rows(&statement, &state, size), all);
    }

    #[test]
    fn top_n_is_the_first_n_rows_over_pages(state in state_gen(), text in query_gen(), n in 1u64..12, size in 1usize..5) {
        let all = all_rows(&Statement::parse(&text).unwrap(), &state);
        let statement = Statement::parse(&top(&text, n)).unwrap();
        prop_assert_eq!(statement.top(), Some(n));
        let expected: Vec<Value> = all.into_iter().take(n as usize).collect();
        prop_assert_eq!(paged_rows(&statement, &state, size), expected.clone());
        prop_assert_eq!(all_rows(&statement, &state), expected);
    }

    #[test]
    fn count_by_group_equals_a_recount(state in state_gen(), condition in prop::sample::select(vec!["", " WHERE IS_DEFINED(properties.reported.fw)", " WHERE tags.site != 'b43'"])) {
        let grouped = Statement::parse(&format!(
            "SELECT tags.site AS site, COUNT() AS n FROM devices{condition} GROUP BY tags.site"
        )).unwrap();
        let plain = Statement::parse(&format!("SELECT * FROM devices{condition}")).unwrap();
        let mut recount: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for row in plain.page(&state, &muster_domain::NoColdRows, None, usize::MAX).unwrap().rows {
            let Row::Twin(d) = row else { panic!("SELECT * gives twins") };
            let site = d.tags.get("site").and_then(Value::as_str).map(String::from);
            *recount.entry(site).or_default() += 1;
        }
        let mut counted: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for row in all_rows(&grouped, &state) {
            let site = row.get("site").and_then(Value::as_str).map(String::from);
            prop_assert!(counted.insert(site, row["n"].as_u64().unwrap()).is_none(), "one row per group");
        }
        prop_assert_eq!(&counted, &recount);
        let total = Statement::parse(&format!("SELECT COUNT() AS n FROM devices{condition}")).unwrap();
        let rows = all_rows(&total, &state);
        prop_assert_eq!(rows, vec![json!({"n": recount.values().sum::<u64>()})]);
    }

    #[test]
    fn device_jobs_have_one_row_per_device_and_job(state in state_gen()) {
        let rows = all_rows(&Statement::parse("SELECT * FROM devices.jobs").unwrap(), &state);
        let expected: usize = state.jobs.values().map(|j| j.current_run().index.len()).sum();
        prop_assert_eq!(rows.len(), expected);
        for (id, job) in &state.jobs {
            let text = format!("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{id}'");
            let rows = all_rows(&Statement::parse(&text).unwrap(), &state);
            prop_assert_eq!(rows.len(), job.current_run().index.len());
            for row in rows {
                let device = DeviceId::new(row["deviceId"].as_str().unwrap()).unwrap();
                let run = job.current_run().device(&device).unwrap();
                let response = &row["outcome"]["deviceMethodResponse"];
                match &run.response {
                    Some(r) => prop_assert_eq!(response["status"].as_i64(), Some(i64::from(r.status))),
                    None => prop_assert!(response.is_null()),
                }
            }
        }
    }
}

#[test]
fn device_job_rows_show_each_outcome() {
    let devices: Vec<DeviceGen> = (0..3)
        .map(|_| DeviceGen {
            site: None,
            fw: None,
        })
        .collect();
    let jobs = vec![JobGen {
        devices: vec![0, 1, 2],
        method: true,
        answers: vec![Some(200), Some(500), None],
    }];
    let state = build(&devices, &jobs);
    let rows = all_rows(
        &Statement::parse("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'job-0'").unwrap(),
        &state,
    );
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    // The third device was never sent the method.
    assert_eq!(statuses, ["completed", "failed", "pending"]);
    assert_eq!(
        rows[0]["outcome"]["deviceMethodResponse"],
        json!({"status": 200, "payload": {"ok": true}})
    );
    assert_eq!(rows[1]["error"]["code"], "DeviceMethodFailed");
    assert_eq!(rows[0]["jobType"], "scheduleDeviceMethod");
    assert!(rows[2]["outcome"]["deviceMethodResponse"].is_null());
    for key in [
        "startTimeUtc",
        "createdDateTimeUtc",
        "lastUpdatedDateTimeUtc",
    ] {
        assert!(rows[0][key].is_string(), "{key}");
    }
}

#[test]
fn a_cursor_of_another_query_or_garbage_is_refused() {
    let devices: Vec<DeviceGen> = (0..5)
        .map(|_| DeviceGen {
            site: None,
            fw: None,
        })
        .collect();
    let state = build(&devices, &[]);
    let twins = Statement::parse("SELECT * FROM devices").unwrap();
    let next = twins
        .page(&state, &muster_domain::NoColdRows, None, 2)
        .unwrap()
        .next
        .unwrap();
    let count = Statement::parse("SELECT COUNT() FROM devices").unwrap();
    let err = count
        .page(&state, &muster_domain::NoColdRows, Some(&next), 2)
        .unwrap_err();
    assert!(err.message().contains("another query"), "{err}");
    // Its text form is bound to the query's text: another query refuses it, whatever its kind.
    let token = next.encode("SELECT * FROM devices");
    assert_eq!(
        Cursor::decode(&token, "  SELECT * FROM devices ").unwrap(),
        next
    );
    let err = Cursor::decode(&token, "SELECT * FROM devices WHERE status = 'enabled'").unwrap_err();
    assert!(err.message().contains("another listing"), "{err}");
    // The last one is `d:0:dev` without a check: a position, not an issued token.
    for garbage in ["", "!!", "eDox", "ZDp4OmRldg", "ZDowOmRldg"] {
        assert!(Cursor::decode(garbage, "q").is_err(), "{garbage}");
    }
}
