//! IoT Hub's REST shape against the real binary: `PUT /jobs/v2/{jobId}` with the seed's bodies
//! (method and twin-update jobs, `queryCondition` and `deviceIds`), `GET` with
//! `deviceJobStatistics`, `/cancel`, `/jobs/v2/query` paged with the continuation token (header
//! and query parameter), and twins with ETags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, error_of, wait_for, Server};
use serde_json::{json, Value};

/// The seed's api-version.
const V: &str = "api-version=2016-09-30-preview";
const STATS: [&str; 5] = [
    "deviceCount",
    "failedCount",
    "succeededCount",
    "runningCount",
    "pendingCount",
];

struct Api {
    c: reqwest::Client,
    base: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}{V}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        read(self.c.get(self.url(path)).send().await.unwrap()).await
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        read(self.c.put(self.url(path)).json(body).send().await.unwrap()).await
    }

    async fn job(&self, id: &str) -> Value {
        let (s, body) = self.get(&format!("/jobs/v2/{id}")).await;
        assert_eq!(s, 200, "{body}");
        body
    }

    async fn register(&self, id: &str, building: &str) {
        let (s, got) = read(
            self.c
                .put(format!(
                    "{}/api/devices/{id}?api-version=2022-07-31",
                    self.base
                ))
                .json(&json!({"displayName": id}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "{got}");
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

async fn read(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn start() -> (tempfile::TempDir, Server, Api) {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let api = Api {
        c: muster_tests::http(),
        base: server.rest.clone(),
    };
    (dir, server, api)
}

fn stats_keys(job: &Value) -> Vec<&str> {
    job["deviceJobStatistics"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_twin_jobs_as_the_seed_shows_them() {
    let (_dir, _server, api) = start().await;
    for i in 0..3 {
        api.register(&format!("b43-{i}"), "43").await;
    }
    api.register("b44-0", "44").await;

    // "Jobs to execute direct methods": the seed's body, with its placeholders filled in
    // (queryCondition form; timeoutInSeconds is the seed's name for the response timeout).
    let method_job = json!({
        "jobId": "reboot-43",
        "type": "scheduleDirectRequest",
        "cloudToDeviceMethod": {
            "methodName": "reboot",
            "payload": {"delaySeconds": 5},
            "timeoutInSeconds": 1
        },
        "queryCondition": "tags.building = '43'",
        "startTime": "2020-01-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 3600
    });
    let (s, got) = api.put("/jobs/v2/reboot-43", &method_job).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["jobId"], "reboot-43");
    assert_eq!(got["type"], "scheduleDeviceMethod");
    assert_eq!(got["status"], "pending");
    assert_eq!(got["queryCondition"], "tags.building = '43'");
    assert_eq!(got["maxExecutionTimeInSeconds"], 3600);
    assert_eq!(got["cloudToDeviceMethod"]["methodName"], "reboot");
    assert_eq!(
        got["cloudToDeviceMethod"]["payload"],
        json!({"delaySeconds": 5})
    );
    assert_eq!(got["cloudToDeviceMethod"]["responseTimeoutInSeconds"], 1);
    assert!(got["startTime"]
        .as_str()
        .unwrap()
        .starts_with("2020-01-01T00:00:00"));
    assert_eq!(stats_keys(&got), STATS);
    assert_eq!(got["deviceJobStatistics"]["deviceCount"], 3);
    assert_eq!(got["deviceJobStatistics"]["pendingCount"], 3);

    // Devices never answer here: after 1 s each times out, and the job ends with every device
    // counted as failed.
    wait_for("reboot-43 completes", || async {
        api.job("reboot-43").await["status"] == "completed"
    })
    .await
    .unwrap();
    let done = api.job("reboot-43").await;
    assert_eq!(stats_keys(&done), STATS);
    assert_eq!(
        done["deviceJobStatistics"],
        json!({"deviceCount": 3, "failedCount": 3, "succeededCount": 0, "runningCount": 0, "pendingCount": 0})
    );
    assert!(done["endTime"].is_string(), "{done}");

    // "Jobs to update device twin properties": the seed's body (deviceIds form).
    let twin_job = json!({
        "jobId": "fw-43",
        "type": "scheduleTwinUpdate",
        "updateTwin": {"properties": {"desired": {"fw": "1.2"}}, "tags": {"ring": "canary"}},
        "deviceIds": ["b43-0", "b43-1"],
        "startTime": "2020-01-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 600
    });
    let (s, got) = api.put("/jobs/v2/fw-43", &twin_job).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["type"], "scheduleUpdateTwin");
    assert_eq!(
        got["updateTwin"]["properties"]["desired"],
        json!({"fw": "1.2"})
    );
    assert_eq!(got["updateTwin"]["tags"], json!({"ring": "canary"}));
    assert_eq!(got["queryCondition"], "deviceId IN ['b43-0', 'b43-1']");
    wait_for("fw-43 completes", || async {
        api.job("fw-43").await["status"] == "completed"
    })
    .await
    .unwrap();
    let done = api.job("fw-43").await;
    assert_eq!(done["deviceJobStatistics"]["succeededCount"], 2);
    let (s, twin) = api.get("/twins/b43-1").await;
    assert_eq!(s, 200);
    assert_eq!(twin["properties"]["desired"]["fw"], "1.2");
    assert_eq!(twin["tags"], json!({"building": "43", "ring": "canary"}));
    let (_, twin) = api.get("/twins/b44-0").await;
    assert!(twin["properties"]["desired"].get("fw").is_none(), "{twin}");

    // A duplicate id is a 409, and the first job is untouched.
    let (s, got) = api.put("/jobs/v2/fw-43", &twin_job).await;
    assert_eq!(s, 409, "{got}");
    assert_eq!(error_of(&got).unwrap().0, "JobExists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_job() {
    let (_dir, _server, api) = start().await;
    api.register("c-0", "1").await;
    let job = json!({
        "jobId": "later",
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot"},
        "deviceIds": ["c-0"],
        "startTime": "2099-01-01T00:00:00Z"
    });
    let (s, got) = api.put("/jobs/v2/later", &job).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["status"], "scheduled");
    let r = api
        .c
        .post(api.url("/jobs/v2/later/cancel"))
        .send()
        .await
        .unwrap();
    let (s, got) = read(r).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["status"], "cancelled");
    assert_eq!(api.job("later").await["status"], "cancelled");
    let (s, got) = read(
        api.c
            .post(api.url("/jobs/v2/later/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 409, "{got}");
    let (s, got) = read(
        api.c
            .post(api.url("/jobs/v2/missing/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404, "{got}");
    assert_eq!(error_of(&got).unwrap().0, "JobNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_with_the_continuation_token() {
    let (_dir, _server, api) = start().await;
    api.register("q-0", "1").await;
    // Seven scheduled method jobs and three twin jobs (which complete at once).
    for i in 0..7 {
        let (s, got) = api
            .put(
                &format!("/jobs/v2/m-{i}"),
                &json!({
                    "type": "scheduleDeviceMethod",
                    "cloudToDeviceMethod": {"methodName": "ping"},
                    "deviceIds": ["q-0"],
                    "startTime": "2099-01-01T00:00:00Z"
                }),
            )
            .await;
        assert_eq!(s, 200, "{got}");
    }
    for i in 0..3 {
        let (s, got) = api
            .put(
                &format!("/jobs/v2/t-{i}"),
                &json!({
                    "type": "scheduleUpdateTwin",
                    "updateTwin": {"tags": {"n": i}},
                    "deviceIds": ["q-0"]
                }),
            )
            .await;
        assert_eq!(s, 200, "{got}");
    }

    // Through the x-ms-continuation header, as the SDKs do.
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = api.c.get(api.url("/jobs/v2/query?pageSize=3"));
        if let Some(t) = &token {
            req = req.header("x-ms-continuation", t);
        }
        let r = req.send().await.unwrap();
        let next = r
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_string());
        let (s, body) = read(r).await;
        assert_eq!(s, 200, "{body}");
        // The reference's QueryResult: the token in the body and in the header.
        assert_eq!(body["type"], "jobResponse", "{body}");
        assert_eq!(
            body["continuationToken"].as_str(),
            next.as_deref(),
            "{body}"
        );
        pages += 1;
        for j in body["items"].as_array().unwrap() {
            ids.push(j["jobId"].as_str().unwrap().to_string());
        }
        match next {
            None => break,
            Some(t) => token = Some(t),
        }
        assert!(pages < 20);
    }
    assert_eq!(pages, 4);
    assert_eq!(
        ids,
        ["m-0", "m-1", "m-2", "m-3", "m-4", "m-5", "m-6", "t-0", "t-1", "t-2"]
    );

    // Through the continuationToken query parameter, as the seed shows, with a type filter.
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            None => "/jobs/v2/query?jobType=scheduleDirectRequest&pageSize=4".to_string(),
            Some(t) => format!(
                "/jobs/v2/query?jobType=scheduleDirectRequest&pageSize=4&continuationToken={t}"
            ),
        };
        let r = api.c.get(api.url(&path)).send().await.unwrap();
        let next = r
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_string());
        let (s, body) = read(r).await;
        assert_eq!(s, 200, "{body}");
        for j in body["items"].as_array().unwrap() {
            assert_eq!(j["type"], "scheduleDeviceMethod");
            ids.push(j["jobId"].as_str().unwrap().to_string());
        }
        match next {
            None => break,
            Some(t) => token = Some(t),
        }
    }
    assert_eq!(ids, ["m-0", "m-1", "m-2", "m-3", "m-4", "m-5", "m-6"]);

    // Status filter: the twin jobs complete on their own.
    wait_for("twin jobs complete", || async {
        let (_, body) = api
            .get("/jobs/v2/query?jobType=scheduleUpdateTwin&jobStatus=completed")
            .await;
        body["items"].as_array().is_some_and(|a| a.len() == 3)
    })
    .await
    .unwrap();
    let (s, body) = api.get("/jobs/v2/query?jobStatus=scheduled").await;
    assert_eq!(s, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 7);
    let (s, body) = api.get("/jobs/v2/query?jobStatus=queued").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.get("/jobs/v2/query?jobStatus=bogus").await;
    assert_eq!(s, 400, "{body}");
    assert!(error_of(&body).unwrap().1.contains("jobStatus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_patch_with_etags() {
    let (_dir, _server, api) = start().await;
    api.register("tw-1", "7").await;

    let r = api.c.get(api.url("/twins/tw-1")).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let (s, twin) = read(r).await;
    assert_eq!(s, 200);
    assert_eq!(twin["deviceId"], "tw-1");
    assert_eq!(etag, format!("\"{}\"", twin["etag"].as_str().unwrap()));
    assert_eq!(twin["tags"], json!({"building": "7"}));
    for k in [
        "deviceId",
        "etag",
        "version",
        "status",
        "tags",
        "properties",
    ] {
        assert!(twin.get(k).is_some(), "twin lacks {k}: {twin}");
    }

    // Conditional PATCH with the current ETag: applied, and the ETag moves on.
    let r = api
        .c
        .patch(api.url("/twins/tw-1"))
        .header("If-Match", &etag)
        .json(&json!({"properties": {"desired": {"interval": 30}}, "tags": {"floor": 3}}))
        .send()
        .await
        .unwrap();
    let new_etag = r.headers()["etag"].to_str().unwrap().to_string();
    let (s, twin) = read(r).await;
    assert_eq!(s, 200, "{twin}");
    assert_ne!(new_etag, etag);
    assert_eq!(twin["properties"]["desired"]["interval"], 30);
    assert_eq!(twin["tags"], json!({"building": "7", "floor": 3}));

    // The old ETag no longer matches: 412, nothing written.
    let r = api
        .c
        .patch(api.url("/twins/tw-1"))
        .header("If-Match", &etag)
        .json(&json!({"tags": {"floor": 4}}))
        .send()
        .await
        .unwrap();
    let (s, err) = read(r).await;
    assert_eq!(s, 412, "{err}");
    assert_eq!(error_of(&err).unwrap().0, "PreconditionFailed");
    let (_, twin) = api.get("/twins/tw-1").await;
    assert_eq!(twin["tags"]["floor"], 3);

    // `*` and no header are unconditional; a merge patch null removes a tag.
    let r = api
        .c
        .patch(api.url("/twins/tw-1"))
        .header("If-Match", "*")
        .json(&json!({"tags": {"floor": null}}))
        .send()
        .await
        .unwrap();
    let (s, twin) = read(r).await;
    assert_eq!(s, 200, "{twin}");
    assert_eq!(twin["tags"], json!({"building": "7"}));

    let (s, err) = api.get("/twins/nobody").await;
    assert_eq!(s, 404, "{err}");
    assert_eq!(error_of(&err).unwrap().0, "DeviceNotFound");
    let r = api
        .c
        .patch(api.url("/twins/nobody"))
        .json(&json!({"tags": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
