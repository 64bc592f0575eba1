//! IoT Hub's `POST /devices/query` against the real binary: `SELECT *` over devices rendered as
//! `GET /twins/{id}` renders them, paged with `x-ms-max-item-count` / `x-ms-continuation`,
//! projections, `COUNT()` with `GROUP BY`, `TOP n` across pages, bad queries answered 400 naming
//! what to fix, and `devices.jobs` after a method job really ran on a simulated fleet over
//! Mosquitto (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use muster_devsim::{Fleet, FleetConfig};
use muster_tests::{data_dir, error_of, wait_for, Server};
use serde_json::{json, Value};

const HUB: &str = "api-version=2021-04-12";

struct Api {
    c: reqwest::Client,
    base: String,
}

/// One answer of `POST /devices/query`.
struct Answer {
    status: u16,
    body: Value,
    item_type: Option<String>,
    continuation: Option<String>,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}?{HUB}", self.base)
    }

    async fn query(&self, body: &Value, size: Option<&str>, token: Option<&str>) -> Answer {
        let mut req = self.c.post(self.url("/devices/query")).json(body);
        if let Some(size) = size {
            req = req.header("x-ms-max-item-count", size);
        }
        if let Some(token) = token {
            req = req.header("x-ms-continuation", token);
        }
        let r = req.send().await.unwrap();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (item_type, continuation) = (header("x-ms-item-type"), header("x-ms-continuation"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            item_type,
            continuation,
        }
    }

    /// Every page of `query` at `size` rows per page: (pages, rows, item type).
    async fn all_pages(&self, query: &str, size: usize) -> (usize, Vec<Value>, String) {
        let mut rows = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let size = size.to_string();
            let a = self
                .query(&json!({ "query": query }), Some(&size), token.as_deref())
                .await;
            assert_eq!(a.status, 200, "{query}: {}", a.body);
            let item_type = a.item_type.unwrap_or_default();
            rows.extend(a.body.as_array().unwrap().iter().cloned());
            pages += 1;
            assert!(pages < 100, "paging does not end");
            match a.continuation {
                None => return (pages, rows, item_type),
                Some(t) => token = Some(t),
            }
        }
    }

    async fn register(&self, id: &str, building: Option<&str>) {
        let r = self
            .c
            .put(format!(
                "{}/api/devices/{id}?api-version=2022-07-31",
                self.base
            ))
            .json(&json!({ "displayName": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        if let Some(building) = building {
            let r = self
                .c
                .patch(self.url(&format!("/twins/{id}")))
                .json(&json!({"tags": {"building": building}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.c.get(self.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }
}

async fn start(extra: &[&str]) -> (tempfile::TempDir, Server, Api) {
    let dir = data_dir().unwrap();
    let server = Server::start_with(dir.path(), extra).unwrap();
    server.wait_ready().await.unwrap();
    let api = Api {
        c: muster_tests::http(),
        base: server.rest.clone(),
    };
    (dir, server, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_queries_page_project_count_and_refuse_bad_input() {
    let (_dir, _server, api) = start(&[]).await;
    // 12 devices: b43 x5, b44 x4, none x3.
    for i in 0..12 {
        let building = match i % 4 {
            0 | 1 => Some("b43"),
            2 => Some("b44"),
            _ if i < 4 => Some("b43"),
            _ => None,
        };
        api.register(&format!("q-{i:02}"), building).await;
    }
    let mut want: BTreeMap<Option<&str>, u64> = BTreeMap::new();
    for i in 0..12 {
        let building = match i % 4 {
            0 | 1 => Some("b43"),
            2 => Some("b44"),
            _ if i < 4 => Some("b43"),
            _ => None,
        };
        *want.entry(building).or_default() += 1;
    }

    // SELECT * in pages of 5: 5 + 5 + 2, each row exactly what GET /twins/{id} answers.
    let (pages, rows, item_type) = api.all_pages("SELECT * FROM devices", 5).await;
    assert_eq!((pages, rows.len(), item_type.as_str()), (3, 12, "twin"));
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("q-{i:02}")).collect();
    assert_eq!(ids, expected);
    for row in [&rows[0], &rows[11]] {
        let id = row["deviceId"].as_str().unwrap();
        assert_eq!(row, &api.get(&format!("/twins/{id}")).await);
    }

    // WHERE as for job targets, and a projection with a nested path and an alias: raw rows.
    let (_, rows, item_type) = api
        .all_pages(
            "SELECT deviceId, tags.building AS b FROM devices WHERE tags.building = 'b44'",
            2,
        )
        .await;
    assert_eq!(item_type, "raw");
    assert_eq!(
        rows,
        vec![
            json!({"deviceId": "q-02", "b": "b44"}),
            json!({"deviceId": "q-06", "b": "b44"}),
            json!({"deviceId": "q-10", "b": "b44"}),
        ]
    );

    // COUNT() with GROUP BY: one row per building (devices without one form their own group).
    let (_, rows, item_type) = api
        .all_pages(
            "SELECT tags.building AS building, COUNT() AS n FROM devices GROUP BY tags.building",
            1,
        )
        .await;
    assert_eq!(item_type, "raw");
    let got: BTreeMap<Option<&str>, u64> = rows
        .iter()
        .map(|r| (r["building"].as_str(), r["n"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want);
    let a = api
        .query(&json!({"query": "SELECT COUNT() FROM devices"}), None, None)
        .await;
    assert_eq!(a.body, json!([{"$1": 12}]));

    // TOP 3 in pages of 2: two pages, three rows, the first three devices.
    let (pages, rows, _) = api.all_pages("SELECT TOP 3 deviceId FROM devices", 2).await;
    assert_eq!(pages, 2);
    assert_eq!(
        rows,
        vec![
            json!({"deviceId": "q-00"}),
            json!({"deviceId": "q-01"}),
            json!({"deviceId": "q-02"})
        ]
    );

    // Bad input: 400 with a message naming what to fix.
    let bad = [
        (
            json!({"query": "SELECT * FROM devices WHERE tags.x LIKE 'a%'"}),
            "LIKE",
        ),
        (
            json!({"query": "SELECT * FROM devices.modules"}),
            "FROM devices or FROM devices.jobs",
        ),
        (
            json!({"query": "SELECT deviceId, COUNT() FROM devices"}),
            "GROUP BY",
        ),
        (
            json!({"query": "SELECT * FROM devices.jobs WHERE tags.a = 1"}),
            "job's fields",
        ),
        (json!({"query": ""}), "empty"),
        (json!({"query": 7}), "query"),
        (json!({}), "query"),
        (
            json!({"query": "SELECT * FROM devices", "extra": 1}),
            "extra",
        ),
    ];
    for (body, fragment) in bad {
        let a = api.query(&body, None, None).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        let message = error_of(&a.body).map(|(_, m)| m).unwrap_or_default();
        assert!(message.contains(fragment), "{body}: {message}");
    }
    let all = json!({"query": "SELECT * FROM devices"});
    let a = api.query(&all, Some("0"), None).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        error_of(&a.body).unwrap().1.contains("x-ms-max-item-count"),
        "{}",
        a.body
    );
    let a = api.query(&all, None, Some("not-a-token")).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        error_of(&a.body).unwrap().1.contains("x-ms-continuation"),
        "{}",
        a.body
    );
    // A token of another query (a device position handed to an aggregate).
    let first = api.query(&all, Some("2"), None).await;
    let token = first.continuation.unwrap();
    let a = api
        .query(
            &json!({"query": "SELECT COUNT() FROM devices"}),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        error_of(&a.body).unwrap().1.contains("another query"),
        "{}",
        a.body
    );
    let r = api
        .c
        .post(format!("{}/devices/query?api-version=1999-01-01", api.base))
        .json(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_jobs_show_every_devices_outcome_of_a_method_job() {
    let url = muster_tests::mqtt_url();
    let (_dir, server, api) = start(&["--mqtt-url", &url]).await;
    let prefix = format!("hq-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![url],
        devices: 6,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..FleetConfig::default()
    };
    let ids = cfg.device_ids();
    let failing = vec![ids[1].clone(), ids[4].clone()];
    let cfg = FleetConfig {
        failing: failing.clone(),
        fail_status: 500,
        ..cfg
    };
    for id in &ids {
        api.register(id, None).await;
    }
    let _fleet = Fleet::start(cfg).await.unwrap();
    let connected =
        json!({"query": "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'"});
    wait_for("the fleet is connected", || async {
        let a = api.query(&connected, None, None).await;
        a.body == json!([{"n": 6}])
    })
    .await
    .unwrap();

    // WHERE sees the twin as GET /twins/{id} renders it: every connected device has a
    // lastActivityTime after IoT Hub's "never", and the same value the GET shows.
    let active = json!({"query": "SELECT deviceId, lastActivityTime FROM devices WHERE lastActivityTime > '0001-01-01T00:00:00Z' AND connectionState = 'Connected'"});
    let rows = api.query(&active, None, None).await.body;
    assert_eq!(rows.as_array().unwrap().len(), 6, "{rows}");
    let twin = api.get(&format!("/twins/{}", ids[0])).await;
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["deviceId"] == ids[0].as_str())
        .unwrap();
    assert_eq!(
        row["lastActivityTime"], twin["lastActivityTime"],
        "{row} {twin}"
    );

    let r = api
        .c
        .put(api.url("/jobs/v2/hq-reboot"))
        .json(&json!({
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 0}, "responseTimeoutInSeconds": 10},
            "deviceIds": ids,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    wait_for("the job completes", || async {
        api.get("/jobs/v2/hq-reboot").await["status"] == "completed"
    })
    .await
    .unwrap();

    let query = "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'hq-reboot'";
    let (pages, rows, item_type) = api.all_pages(query, 4).await;
    assert_eq!((pages, item_type.as_str()), (2, "deviceJob"), "{rows:?}");
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &rows {
        let id = row["deviceId"].as_str().unwrap();
        assert_eq!(row["jobId"], "hq-reboot");
        assert_eq!(row["jobType"], "scheduleDeviceMethod");
        for key in [
            "startTimeUtc",
            "createdDateTimeUtc",
            "lastUpdatedDateTimeUtc",
        ] {
            assert!(row[key].is_string(), "{key}: {row}");
        }
        let response = &row["outcome"]["deviceMethodResponse"];
        assert_eq!(response["payload"]["device"], id, "{row}");
        if failing.iter().any(|f| f == id) {
            assert_eq!(row["status"], "failed", "{row}");
            assert_eq!(response["status"], 500, "{row}");
            assert_eq!(row["error"]["code"], "DeviceMethodFailed", "{row}");
        } else {
            assert_eq!(row["status"], "completed", "{row}");
            assert_eq!(response["status"], 200, "{row}");
            assert_eq!(response["payload"]["ok"], true, "{row}");
            assert!(row.get("error").is_none(), "{row}");
        }
    }
    // WHERE over the job's fields, nested ones included.
    let (_, rows, _) = api
        .all_pages(
            "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'hq-reboot' AND devices.jobs.outcome.deviceMethodResponse.status = 500",
            10,
        )
        .await;
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(got, failing.iter().map(String::as_str).collect::<Vec<_>>());

    // The same rows through gRPC and the CLI: `muster query` pages with a small page size.
    let cli = |args: &[&str]| {
        let out = muster_tests::muster_cmd()
            .unwrap()
            .args(args)
            .args(["--endpoint", &server.grpc, "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "muster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let got = cli(&["query", query, "--page-size", "4"]);
    assert_eq!(got["itemType"], "deviceJob");
    assert_eq!(
        got["items"],
        Value::Array(api.all_pages(query, 1000).await.1)
    );
    // `muster device jobs`: the device's one job, typed, with its outcome.
    let got = cli(&["device", "jobs", &failing[0]]);
    let jobs = got.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{got}");
    assert_eq!(jobs[0]["jobId"], "hq-reboot");
    assert_eq!(jobs[0]["status"], "failed");
    assert_eq!(jobs[0]["outcome"]["deviceMethodResponse"]["status"], 500);
    assert_eq!(jobs[0]["error"]["code"], "DeviceMethodFailed");
    let bad = muster_tests::muster_cmd()
        .unwrap()
        .args([
            "query",
            "SELECT * FROM devices.modules",
            "--endpoint",
            &server.grpc,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FROM devices or FROM devices.jobs"));
    drop(server);
}
