//! Scheduled (recurring) jobs, IoT Central's `/api/scheduledJobs` (issue 16), over a real node,
//! Mosquitto and devsim: a schedule every 2 s with 3 occurrences creates exactly three jobs, each
//! run to completion on the devices, also across a crash of the node between occurrences (the
//! ones that fell due while it was down are created when it is back, none twice). Needs Mosquitto
//! (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_devsim::Fleet;
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::schedule_service_client::ScheduleServiceClient;
use muster_tests::{data_dir, grpc_channel, wait_for, Server};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn now_rfc3339() -> String {
    muster_types::Timestamp::from_millis(now_ms()).to_rfc3339()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The jobs the schedule created, as `GET /api/scheduledJobs/{id}/jobs` lists them.
async fn created_jobs(http: &reqwest::Client, server: &Server, id: &str) -> Vec<Value> {
    let url = format!("{}/api/scheduledJobs/{id}/jobs?{CENTRAL}", server.rest);
    let (status, page) = get(http, &url).await;
    assert_eq!(status, 200, "{page}");
    page["value"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_schedule_creates_each_occurrence_once_across_a_crash() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let mut server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
    server.wait_ready().await.unwrap();
    let ch = grpc_channel(&server.grpc).await.unwrap();
    let registry = DeviceServiceClient::new(ch.clone());
    wait_for("a leader", || {
        let mut registry = registry.clone();
        async move {
            registry
                .list_devices(pb::ListDevicesRequest::default())
                .await
                .is_ok()
        }
    })
    .await
    .unwrap();

    let prefix = format!("sched-{}", std::process::id());
    let cfg = muster_tests::fleet_config(&prefix, 3);
    let ids = cfg.device_ids();
    muster_tests::import_tagged(&ch, &ids, &prefix)
        .await
        .unwrap();
    let _fleet = Fleet::start(cfg).await.unwrap();

    let http = muster_tests::http();
    let rest = |server: &Server, path: &str| format!("{}{path}?{CENTRAL}", server.rest);
    let r = http
        .put(rest(&server, "/api/deviceGroups/sched-fleet"))
        .json(&json!({
            "displayName": "scheduled fleet",
            "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // Every 2 s from now, three times (`intervalSeconds` is muster's extension for a period
    // shorter than IoT Central's daily).
    let body = json!({
        "displayName": "nightly ping",
        "group": "sched-fleet",
        "data": [{"type": "CommandJobData", "path": "ping", "value": {"n": 1}}],
        "schedule": {
            "start": now_rfc3339(),
            "intervalSeconds": 2,
            "end": {"type": "occurrences", "occurrences": 3}
        }
    });
    let r = http
        .put(rest(&server, "/api/scheduledJobs/nightly"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let saved: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["id"], "nightly", "{saved}");
    assert_eq!(saved["group"], "sched-fleet", "{saved}");
    assert_eq!(saved["enabled"], true, "{saved}");
    assert_eq!(saved["completed"], false, "{saved}");
    assert_eq!(saved["schedule"]["end"]["occurrences"], 3, "{saved}");
    assert_eq!(saved["data"][0]["path"], "ping", "{saved}");

    // 1. The first occurrence creates its job, which runs on the fleet.
    wait_for("the first occurrence", || {
        let http = http.clone();
        let server = &server;
        async move { !created_jobs(&http, server, "nightly").await.is_empty() }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));

    // 2. A crash between occurrences: what falls due while the node is down is created when it
    //    is back, late but not skipped.
    server.kill9().unwrap();
    let killed_ms = now_ms();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let restarted_ms = now_ms();
    server.restart().unwrap();
    server.wait_ready().await.unwrap();

    let done = wait_for("three completed jobs", || {
        let http = http.clone();
        let server = &server;
        async move {
            let jobs = created_jobs(&http, server, "nightly").await;
            jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "complete")
        }
    })
    .await;
    if let Err(e) = done {
        let jobs = created_jobs(&http, &server, "nightly").await;
        let (_, sj) = get(&http, &rest(&server, "/api/scheduledJobs/nightly")).await;
        panic!("{e}\njobs: {jobs:?}\nschedule: {sj}\n{}", server.log_text());
    }

    let jobs = created_jobs(&http, &server, "nightly").await;
    let names: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["nightly-1", "nightly-2", "nightly-3"]);
    for j in &jobs {
        assert_eq!(j["displayName"], "nightly ping", "{j}");
        let devices_url = rest(
            &server,
            &format!("/api/jobs/{}/devices", j["id"].as_str().unwrap()),
        );
        let (_, devices) = get(&http, &devices_url).await;
        let devices = devices["value"].as_array().unwrap();
        assert_eq!(devices.len(), 3, "{devices:?}");
        assert!(
            devices.iter().all(|d| d["status"] == "completed"),
            "{devices:?}"
        );
    }
    let (_, sj) = get(&http, &rest(&server, "/api/scheduledJobs/nightly")).await;
    assert_eq!(sj["completed"], true, "{sj}");

    // 3. Nothing more comes, and the job's history names the occurrence that made it.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(created_jobs(&http, &server, "nightly").await.len(), 3);
    let (_, history) = get(&http, &rest(&server, "/api/jobs/nightly-2/events")).await;
    let occurred: Vec<&Value> = history["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "ScheduledJobOccurred")
        .collect();
    assert_eq!(occurred.len(), 1, "{history}");
    assert_eq!(
        occurred[0]["body"]["ScheduledJobOccurred"]["occurrence"], 1,
        "{history}"
    );
    // The occurrences due while the node was down were created after it was back.
    let mut late = 0;
    for j in ["nightly-2", "nightly-3"] {
        let (_, history) = get(&http, &rest(&server, &format!("/api/jobs/{j}/events"))).await;
        for e in history["value"].as_array().unwrap() {
            if e["type"] == "ScheduledJobOccurred" {
                let body = &e["body"]["ScheduledJobOccurred"];
                if body["due"].as_i64().unwrap() > killed_ms {
                    assert!(body["at"].as_i64().unwrap() >= restarted_ms, "{history}");
                    late += 1;
                }
            }
        }
    }
    assert!(late >= 1, "no occurrence fell due while the node was down");

    // 4. gRPC sees the same.
    let ch = grpc_channel(&server.grpc).await.unwrap();
    let mut schedules = ScheduleServiceClient::new(ch);
    let s = schedules
        .get_schedule(pb::GetScheduleRequest {
            id: "nightly".into(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.created, 3);
    assert!(s.completed);
    assert_eq!(s.next_at_ms, None);
    let listed = schedules
        .list_schedule_jobs(pb::ListScheduleJobsRequest {
            id: "nightly".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 2);
    assert!(!listed.next_page_token.is_empty());
    let rest = schedules
        .list_schedule_jobs(pb::ListScheduleJobsRequest {
            id: "nightly".into(),
            page_size: 2,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids = |jobs: &[pb::Job]| jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>();
    assert!(ids(&rest.jobs)
        .iter()
        .all(|id| !ids(&listed.jobs).contains(id)));
    // A job id is a position, not a token this API issued.
    let forged = schedules
        .list_schedule_jobs(pb::ListScheduleJobsRequest {
            id: "nightly".into(),
            page_size: 2,
            page_token: "nightly-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    assert!(
        forged.message().contains("restart the listing"),
        "{forged:?}"
    );
}

/// The routes' answers for what a caller gets wrong, and the list's paging: no MQTT needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_job_routes_validate_and_page() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let http = muster_tests::http();
    let rest = |path: &str| format!("{}{path}?{CENTRAL}", server.rest);
    let r = http
        .put(rest("/api/deviceGroups/g1"))
        .json(&json!({"displayName": "g1", "filter": "SELECT * FROM devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = |schedule: Value| {
        json!({
            "displayName": "weekly reboot",
            "group": "g1",
            "data": [{"type": "CommandJobData", "path": "reboot"}],
            "schedule": schedule,
        })
    };
    let put = |id: &str, b: Value| {
        http.put(rest(&format!("/api/scheduledJobs/{id}")))
            .json(&b)
            .send()
    };

    // Bad input: 400 naming the field.
    for (schedule, field) in [
        (json!({"recurrence": "daily"}), "schedule.start"),
        (
            json!({"start": "2030-01-01T00:00:00Z", "recurrence": "hourly"}),
            "schedule.recurrence",
        ),
        (
            json!({"start": "2030-01-01T00:00:00Z", "end": {"type": "occurrences", "occurrences": 0}}),
            "schedule.end.occurrences",
        ),
        (
            json!({"start": "2030-01-01T00:00:00Z", "recurrence": "daily", "timeZone": "Mars/Olympus"}),
            "schedule.timeZone",
        ),
        (json!({"start": "2001-01-01T00:00:00Z"}), "schedule"),
    ] {
        let r = put("bad", body(schedule.clone())).await.unwrap();
        let status = r.status().as_u16();
        let err: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{schedule}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{schedule}: {message}");
    }
    let (status, _) = get(&http, &rest("/api/scheduledJobs/none")).await;
    assert_eq!(status, 404);

    // Three schedules, listed two per page with a nextLink.
    for id in ["a", "b", "c"] {
        let r = put(
            id,
            body(
                json!({"start": "2030-01-06T02:00:00Z", "recurrence": "weekly",
                        "end": {"type": "date", "date": "2030-12-31"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let (_, page) = get(
        &http,
        &format!("{}&maxpagesize=2", rest("/api/scheduledJobs")),
    )
    .await;
    assert_eq!(page["value"].as_array().unwrap().len(), 2, "{page}");
    let next = page["nextLink"].as_str().unwrap().to_string();
    let (_, page2) = get(&http, &next).await;
    assert_eq!(page2["value"][0]["id"], "c", "{page2}");
    assert!(page2.get("nextLink").is_none(), "{page2}");

    // PATCH disables; a stale etag is a 412; DELETE is a 204, then 404.
    let (_, a) = get(&http, &rest("/api/scheduledJobs/a")).await;
    let etag = a["etag"].as_str().unwrap().to_string();
    let r = http
        .patch(rest("/api/scheduledJobs/a"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let patched: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["enabled"], false, "{patched}");
    assert_eq!(patched["schedule"]["recurrence"], "weekly", "{patched}");
    assert_ne!(patched["etag"], etag.as_str(), "{patched}");
    let r = http
        .patch(rest("/api/scheduledJobs/a"))
        .json(&json!({"enabled": true, "etag": etag}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412, "{}", r.text().await.unwrap());
    let r = http
        .delete(rest("/api/scheduledJobs/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, _) = get(&http, &rest("/api/scheduledJobs/a")).await;
    assert_eq!(status, 404);
}
