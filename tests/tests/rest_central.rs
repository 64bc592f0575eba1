//! IoT Central's REST shape against the real binary: the seed's own request bodies, responses
//! compared field for field with the seed's examples, stop/resume/rerun, device groups, devices,
//! and list paging followed through `nextLink` to the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_tests::{data_dir, wait_for, Server};
use serde_json::{json, Value};

/// The seed's api-version (`?api-version=preview`).
const V: &str = "api-version=preview";
const TEMPLATE: &str = "dtmi:modelDefinition:zomtmdxh:eqod32zbyl";
const GROUP: &str = "833d7a7d-8f99-4e04-9e56-745806bdba6e";

struct Api {
    c: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            c: muster_tests::http(),
            base: server.rest.clone(),
        }
    }

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

    async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        read(
            self.c
                .patch(self.url(path))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str) -> (u16, String) {
        let r = self.c.post(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn delete(&self, path: &str) -> (u16, String) {
        let r = self.c.delete(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn status_of(&self, job: &str) -> String {
        let (s, body) = self.get(&format!("/api/jobs/{job}")).await;
        assert_eq!(s, 200, "{body}");
        body["status"].as_str().unwrap().to_string()
    }

    /// Follows `nextLink` from `first` to the last page; returns every item and the pages seen.
    async fn all_pages(&self, first: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut pages = 0;
        let mut url = self.url(first);
        loop {
            let (s, body) = read(self.c.get(&url).send().await.unwrap()).await;
            assert_eq!(s, 200, "{url}: {body}");
            pages += 1;
            items.extend(body["value"].as_array().unwrap().iter().cloned());
            match body.get("nextLink") {
                None => return (items, pages),
                Some(link) => {
                    let link = link.as_str().unwrap();
                    assert!(
                        link.starts_with(&self.base),
                        "nextLink {link} is not a full URL on {}",
                        self.base
                    );
                    assert!(link.contains("api-version=preview"), "{link}");
                    url = link.to_string();
                }
            }
            assert!(pages < 100, "nextLink never ends");
        }
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

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// `v` with its `status` replaced, to compare a live job with a seed example.
fn with_status(v: &Value, status: &str) -> Value {
    let mut v = v.clone();
    v["status"] = json!(status);
    v
}

async fn start() -> (tempfile::TempDir, Server) {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    (dir, server)
}

/// The four thermostats of the seed's `GET /api/jobs/job-004/devices` example, and the device
/// group the seed's jobs run on.
async fn seed_fleet(api: &Api) {
    for i in 1..=4 {
        let id = format!("therm-0{i}");
        let body = json!({"displayName": format!("Thermostat {i}"), "template": TEMPLATE, "enabled": true});
        let (s, got) = api.put(&format!("/api/devices/{id}"), &body).await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(
            got,
            json!({"id": id, "etag": "1", "displayName": format!("Thermostat {i}"), "simulated": false,
                   "provisioned": false, "template": TEMPLATE, "enabled": true})
        );
    }
    let group = json!({
        "displayName": "Thermostats",
        "filter": format!("SELECT * FROM devices WHERE $template = \"{TEMPLATE}\""),
    });
    let (s, got) = api.put(&format!("/api/deviceGroups/{GROUP}"), &group).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(keys(&got), ["id", "etag", "displayName", "filter"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_as_the_seed_shows_them() {
    let (_dir, server) = start().await;
    let api = Api::new(&server);
    seed_fleet(&api).await;

    // "Create a job": the seed's request body, byte for byte.
    let create: Value = serde_json::from_str(
        r#"{
  "displayName": "Set target temperature",
  "description": "Set target temperature device property",
  "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
  "batch": {
    "type": "percentage",
    "value": 25
  },
  "cancellationThreshold": {
    "type": "percentage",
    "value": 10,
    "batch": false
  },
  "data": [
    {
      "type": "PropertyJobData",
      "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
      "path": "targetTemperature",
      "value": "55"
    }
  ]
}"#,
    )
    .unwrap();
    // ... and the seed's response: the initial status is pending.
    let expected: Value = serde_json::from_str(
        r#"{
  "id": "job-006",
  "displayName": "Set target temperature",
  "description": "Set target temperature device property",
  "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
  "batch": {
    "type": "percentage",
    "value": 25
  },
  "cancellationThreshold": {
    "type": "percentage",
    "value": 10,
    "batch": false
  },
  "data": [
    {
      "type": "PropertyJobData",
      "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
      "path": "targetTemperature",
      "value": "55"
    }
  ],
  "status": "pending"
}"#,
    )
    .unwrap();
    let (s, got) = api.put("/api/jobs/job-006", &create).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got, expected);
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&expected).unwrap(),
        "field order differs from the seed"
    );

    // A property job succeeds for each device when it is sent: it completes, batch by batch.
    wait_for("job-006 complete", || async {
        api.status_of("job-006").await == "complete"
    })
    .await
    .unwrap();
    let (s, got) = api.get("/api/jobs/job-006").await;
    assert_eq!(s, 200);
    assert_eq!(got, with_status(&expected, "complete"));

    // "Get the devices of a job": exactly the seed's example.
    let (s, got) = api.get("/api/jobs/job-006/devices").await;
    assert_eq!(s, 200, "{got}");
    let seed_devices: Value = serde_json::from_str(
        r#"{
  "value": [
    {
      "id": "therm-01",
      "status": "completed"
    },
    {
      "id": "therm-02",
      "status": "completed"
    },
    {
      "id": "therm-03",
      "status": "completed"
    },
    {
      "id": "therm-04",
      "status": "completed"
    }
  ]
}"#,
    )
    .unwrap();
    assert_eq!(got, seed_devices);

    // The list example's jobs, PUT as GET shows them (id and status included: both accepted).
    let job_005: Value = serde_json::from_str(
        r#"{
      "id": "job-005",
      "displayName": "Set target temperature",
      "description": "Set target temperature device property",
      "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
      "data": [
        {
          "type": "PropertyJobData",
          "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
          "path": "targetTemperature",
          "value": 56
        }
      ],
      "status": "complete"
    }"#,
    )
    .unwrap();
    let job_004: Value = serde_json::from_str(
        r#"{
  "id": "job-004",
  "displayName": "Run device report",
  "description": "Call command to run the device reports",
  "group": "833d7a7d-8f99-4e04-9e56-745806bdba6e",
  "batch": {
    "type": "percentage",
    "value": 25
  },
  "cancellationThreshold": {
    "type": "percentage",
    "value": 10,
    "batch": false
  },
  "data": [
    {
      "type": "CommandJobData",
      "target": "dtmi:modelDefinition:zomtmdxh:eqod32zbyl",
      "path": "getMaxMinReport",
      "value": "2021-06-15T05:00:00.000Z"
    }
  ],
  "status": "complete"
}"#,
    )
    .unwrap();
    for (id, body) in [("job-005", &job_005), ("job-004", &job_004)] {
        let (s, got) = api.put(&format!("/api/jobs/{id}"), body).await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(got, with_status(body, "pending"));
    }

    // Stop and resume job-004 (a command job: devices have 30 s to answer, so it is still
    // going): 204 with no body, and the status follows.
    let (s, body) = api.post("/api/jobs/job-004/stop").await;
    assert_eq!((s, body.as_str()), (204, ""));
    assert_eq!(api.status_of("job-004").await, "stopped");
    let (s, got) = api.get("/api/jobs/job-004").await;
    assert_eq!(s, 200);
    assert_eq!(got, with_status(&job_004, "stopped"));
    let (s, body) = api.post("/api/jobs/job-004/stop").await;
    assert_eq!(s, 409, "stopping a stopped job: {body}");
    let (s, body) = api.post("/api/jobs/job-004/resume").await;
    assert_eq!((s, body.as_str()), (204, ""));
    let status = api.status_of("job-004").await;
    assert!(
        ["pending", "running"].contains(&status.as_str()),
        "resumed job is {status}"
    );
    let (s, body) = api.post("/api/jobs/job-004/resume").await;
    assert_eq!(s, 409, "resuming a job that is not stopped: {body}");

    // "Get job information": the list, each item as the seed shows it.
    wait_for("job-005 complete", || async {
        api.status_of("job-005").await == "complete"
    })
    .await
    .unwrap();
    let (s, list) = api.get("/api/jobs").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(keys(&list), ["value"], "a single page has no nextLink");
    let items = list["value"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["job-004", "job-005", "job-006"]);
    assert_eq!(items[1], job_005);
    assert_eq!(keys(&items[0]), keys(&job_004));
    assert_eq!(items[0]["data"], job_004["data"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_runs_the_failed_devices_again() {
    let (_dir, server) = start().await;
    let api = Api::new(&server);
    seed_fleet(&api).await;
    // A job whose devices time out after 1 s (created through the IoT Hub shape, which lets the
    // caller set the timeout; devices never answer in this test).
    let r = api
        .c
        .put(format!("{}/jobs/v2/report?api-version=2021-04-12", api.base))
        .json(&json!({
            "jobId": "report",
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "getMaxMinReport", "payload": {}, "responseTimeoutInSeconds": 1},
            "deviceIds": ["therm-01", "therm-02"]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // Not ended yet (or just ended): a rerun before the end is a 409; after it, allowed.
    wait_for("report ends", || async {
        let s = api.status_of("report").await;
        s == "complete" || s == "failed"
    })
    .await
    .unwrap();
    let (s, got) = api.get("/api/jobs/report/devices").await;
    assert_eq!(s, 200);
    assert_eq!(
        got,
        json!({"value": [{"id": "therm-01", "status": "failed"}, {"id": "therm-02", "status": "failed"}]})
    );

    let (s, got) = api
        .put("/api/jobs/report/rerun/rerun-001", &json!({}))
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["id"], "report");
    assert!(
        ["pending", "running"].contains(&got["status"].as_str().unwrap()),
        "{got}"
    );
    // The rerun's devices are the failed ones, and they are being tried again.
    let (s, got) = api.get("/api/jobs/report/devices").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = got["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["therm-01", "therm-02"]);

    wait_for("rerun ends", || async {
        let s = api.status_of("report").await;
        s == "complete" || s == "failed"
    })
    .await
    .unwrap();
    let (s, got) = api
        .put("/api/jobs/report/rerun/rerun-001", &json!({}))
        .await;
    assert_eq!(s, 409, "same rerun id twice: {got}");
    assert_eq!(got["error"]["code"], "RerunExists");
    let (s, got) = api.put("/api/jobs/nope/rerun/rerun-002", &json!({})).await;
    assert_eq!(s, 404, "{got}");
    assert_eq!(got["error"]["code"], "JobNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_groups_and_devices() {
    let (_dir, server) = start().await;
    let api = Api::new(&server);
    seed_fleet(&api).await;

    // Groups: get, list, replace, delete.
    let (s, g) = api.get(&format!("/api/deviceGroups/{GROUP}")).await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(
        g,
        json!({
            "id": GROUP,
            "etag": "1",
            "displayName": "Thermostats",
            "filter": format!("SELECT * FROM devices WHERE $template = \"{TEMPLATE}\""),
        })
    );
    let (s, got) = api
        .put(
            "/api/deviceGroups/all-devices",
            &json!({"id": "all-devices", "displayName": "All", "filter": "SELECT * FROM devices"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    let (s, list) = api.get("/api/deviceGroups").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [GROUP, "all-devices"]);
    let (s, got) = api
        .put(
            "/api/deviceGroups/all-devices",
            &json!({"displayName": "Everything", "filter": "SELECT * FROM devices"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["displayName"], "Everything");
    assert_eq!(got["etag"], "2", "{got}");

    // PATCH changes only what it is given; a stale etag is a 412 and changes nothing.
    let (s, got) = api
        .patch(
            "/api/deviceGroups/all-devices",
            &json!({"description": "every device"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(
        got,
        json!({"id": "all-devices", "etag": "3", "displayName": "Everything",
               "filter": "SELECT * FROM devices", "description": "every device"})
    );
    let (s, e) = api
        .patch(
            "/api/deviceGroups/all-devices",
            &json!({"displayName": "Stale", "etag": "2"}),
        )
        .await;
    assert_eq!(s, 412, "{e}");
    assert_eq!(e["error"]["code"], "PreconditionFailed", "{e}");
    let (s, e) = api
        .patch("/api/deviceGroups/nope", &json!({"displayName": "x"}))
        .await;
    assert_eq!(s, 404, "{e}");
    assert_eq!(e["error"]["code"], "DeviceGroupNotFound", "{e}");
    let (_, got) = api.get("/api/deviceGroups/all-devices").await;
    assert_eq!(got["displayName"], "Everything");

    // The group's devices, paged like every Central list.
    let (devices, pages) = api
        .all_pages("/api/deviceGroups/all-devices/devices?maxpagesize=2")
        .await;
    let (_, all) = api.get("/api/devices").await;
    assert_eq!(devices, all["value"].as_array().unwrap().clone());
    assert!(pages >= 2, "{pages}");
    let (s, only) = api.get(&format!("/api/deviceGroups/{GROUP}/devices")).await;
    assert_eq!(s, 200, "{only}");
    for d in only["value"].as_array().unwrap() {
        assert_eq!(d["template"], TEMPLATE, "{d}");
    }

    // The group list filters on id and displayName and sorts on displayName.
    let (s, list) = api
        .get("/api/deviceGroups?filter=contains(displayName,%20'Every')")
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["value"][0]["id"], "all-devices");
    let (s, list) = api
        .get("/api/deviceGroups?orderby=displayName%20desc")
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["value"][0]["displayName"], "Thermostats", "{list}");
    let (s, e) = api
        .get("/api/deviceGroups?filter=enabled%20eq%20true")
        .await;
    assert_eq!(s, 400, "{e}");

    let (s, body) = api.delete("/api/deviceGroups/all-devices").await;
    assert_eq!((s, body.as_str()), (204, ""));
    let (s, got) = api.get("/api/deviceGroups/all-devices").await;
    assert_eq!(s, 404, "{got}");
    assert_eq!(got["error"]["code"], "DeviceGroupNotFound");
    let (s, _) = api.delete("/api/deviceGroups/all-devices").await;
    assert_eq!(s, 404);

    // Devices: get, update (create-or-update), list.
    let (s, d) = api.get("/api/devices/therm-02").await;
    assert_eq!(s, 200);
    assert_eq!(
        d,
        json!({"id": "therm-02", "etag": "1", "displayName": "Thermostat 2", "simulated": false,
               "provisioned": false, "template": TEMPLATE, "enabled": true})
    );
    let (s, d) = api
        .put(
            "/api/devices/therm-02",
            &json!({"displayName": "Lobby thermostat", "template": TEMPLATE, "enabled": false}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["displayName"], "Lobby thermostat");
    assert_eq!(d["enabled"], false);
    assert_eq!(d["etag"], "2");
    let (s, d) = api.get("/api/devices/therm-02").await;
    assert_eq!(s, 200);
    assert_eq!(d["displayName"], "Lobby thermostat");
    let (s, d) = api.put("/api/devices/plain-sensor", &json!({})).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(
        d,
        json!({"id": "plain-sensor", "etag": "1", "displayName": "plain-sensor",
               "simulated": false, "provisioned": false, "enabled": true})
    );
    let (s, list) = api.get("/api/devices").await;
    assert_eq!(s, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 5);
    let (s, got) = api.get("/api/devices/therm-99").await;
    assert_eq!(s, 404);
    assert_eq!(got["error"]["code"], "DeviceNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_next_link_to_the_end() {
    let (_dir, server) = start().await;
    let api = Api::new(&server);
    let ids: Vec<String> = (0..11).map(|i| format!("pg-{i:02}")).collect();
    for id in &ids {
        let (s, got) = api.put(&format!("/api/devices/{id}"), &json!({})).await;
        assert_eq!(s, 200, "{got}");
    }
    let (items, pages) = api.all_pages("/api/devices?maxpagesize=3").await;
    assert_eq!(pages, 4);
    let seen: Vec<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // Jobs too, and the devices of one job.
    let (s, got) = api
        .put(
            "/api/deviceGroups/pg",
            &json!({"displayName": "pg", "filter": "SELECT * FROM devices"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    for j in 0..5 {
        let body = json!({
            "displayName": format!("page job {j}"),
            "group": "pg",
            "data": [{"type": "CloudPropertyJobData", "path": "CustomerName", "value": "Contoso"}]
        });
        let (s, got) = api.put(&format!("/api/jobs/pj-{j}"), &body).await;
        assert_eq!(s, 200, "{got}");
    }
    let (items, pages) = api.all_pages("/api/jobs?maxpagesize=2").await;
    assert_eq!(pages, 3);
    let seen: Vec<&str> = items.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(seen, ["pj-0", "pj-1", "pj-2", "pj-3", "pj-4"]);

    let (items, pages) = api.all_pages("/api/jobs/pj-0/devices?maxpagesize=4").await;
    assert_eq!(pages, 3);
    let seen: Vec<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // Exactly one full page: no nextLink.
    let (s, got) = api.get("/api/jobs?maxpagesize=5").await;
    assert_eq!(s, 200);
    assert!(got.get("nextLink").is_none(), "{got}");
}
