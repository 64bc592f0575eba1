//! Jobs reaching devices over a real MQTT broker: the real `muster serve` binary with
//! `--mqtt-url` pointing at Mosquitto (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`)
//! and a simulated fleet (`muster_devsim::Fleet`, a real MQTT client in this process) on the same
//! broker. Devices are registered through the gRPC API, jobs created through the REST shapes
//! (IoT Central and IoT Hub), and outcomes read back through REST and gRPC.
//!
//! Every test has its own node, its own device-id prefix (test name + process id) and its own job
//! ids, so tests running in parallel on the shared broker do not see each other's devices. Tests
//! wait on conditions ([`wait_for`]), never on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_devsim::{Fleet, FleetConfig};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, grpc_channel, wait_for, AuthChannel, Server};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";
const HUB: &str = "api-version=2021-04-12";
const MODEL: &str = "dtmi:muster:simulated;1";

/// A device-id prefix no other test (nor another test process) uses.
fn unique_prefix(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// One node on Mosquitto, with clients for both APIs.
struct Env {
    _dir: tempfile::TempDir,
    server: Server,
    http: reqwest::Client,
    jobs: JobServiceClient<AuthChannel>,
    devices: DeviceServiceClient<AuthChannel>,
    prefix: String,
}

impl Env {
    async fn start(name: &str) -> Env {
        let dir = data_dir().unwrap();
        let url = muster_tests::mqtt_url();
        let server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
        server.wait_ready().await.unwrap();
        let (jobs, devices) = clients(&server).await;
        Env {
            _dir: dir,
            server,
            http: muster_tests::http(),
            jobs,
            devices,
            prefix: unique_prefix(name),
        }
    }

    /// Reconnects the gRPC clients (after a restart, which picks new ports).
    async fn reconnect(&mut self) {
        self.server.wait_ready().await.unwrap();
        let (jobs, devices) = clients(&self.server).await;
        self.jobs = jobs;
        self.devices = devices;
    }

    fn fleet_config(&self, devices: usize) -> FleetConfig {
        FleetConfig {
            brokers: vec![muster_tests::mqtt_url()],
            devices,
            prefix: self.prefix.clone(),
            model_id: MODEL.into(),
            client_id_prefix: format!("muster-e2e-{}", self.prefix),
            ..FleetConfig::default()
        }
    }

    /// Registers the fleet's devices (tag `devsim` = the prefix, plus `extra_tags(index)`), then
    /// connects the fleet and waits until the registry shows every device connected.
    async fn fleet_with_tags(
        &mut self,
        cfg: FleetConfig,
        extra_tags: impl Fn(usize) -> Value,
    ) -> Fleet {
        let ids = cfg.device_ids();
        let new: Vec<pb::NewDevice> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut tags = json!({"devsim": self.prefix});
                if let (Value::Object(t), Value::Object(extra)) = (&mut tags, extra_tags(i)) {
                    t.extend(extra);
                }
                pb::NewDevice {
                    device_id: id.clone(),
                    model_id: Some(cfg.model_id.clone()),
                    tags_json: tags.to_string(),
                    ..Default::default()
                }
            })
            .collect();
        let count = self
            .devices
            .import_devices(pb::ImportDevicesRequest { devices: new })
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, ids.len() as u64);
        let fleet = Fleet::start(cfg).await.unwrap();
        self.wait_connection(&ids, pb::ConnectionState::Connected)
            .await;
        fleet
    }

    async fn fleet(&mut self, cfg: FleetConfig) -> Fleet {
        self.fleet_with_tags(cfg, |_| json!({})).await
    }

    /// Waits until the registry shows each of `ids` in `state`.
    async fn wait_connection(&self, ids: &[String], state: pb::ConnectionState) {
        let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let what = format!("{} devices {state:?}", ids.len());
        wait_for(&what, || {
            let mut devices = self.devices.clone();
            let want = want.clone();
            async move {
                let all = list_devices(&mut devices).await;
                let ok = all
                    .iter()
                    .filter(|d| want.contains(d.device_id.as_str()) && d.connection == state as i32)
                    .count();
                ok == want.len()
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.server.log_text()));
    }

    fn url(&self, path: &str, version: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}{version}", self.server.rest)
    }

    async fn get(&self, path: &str, version: &str) -> (u16, Value) {
        read(self.http.get(self.url(path, version)).send().await.unwrap()).await
    }

    async fn put(&self, path: &str, version: &str, body: &Value) -> (u16, Value) {
        read(
            self.http
                .put(self.url(path, version))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, path: &str) -> u16 {
        let r = self
            .http
            .post(self.url(path, CENTRAL))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    /// An IoT Central device group of this test's devices.
    async fn central_group(&self, group: &str) {
        let body = json!({
            "displayName": format!("devices of {}", self.prefix),
            "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{}'", self.prefix),
        });
        let (s, got) = self
            .put(&format!("/api/deviceGroups/{group}"), CENTRAL, &body)
            .await;
        assert_eq!(s, 200, "{got}");
    }

    async fn central_job(&self, id: &str, body: &Value) {
        let (s, got) = self.put(&format!("/api/jobs/{id}"), CENTRAL, body).await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(got["status"], "pending", "{got}");
    }

    async fn hub_job(&self, body: &Value) {
        let id = body["jobId"].as_str().unwrap();
        let (s, got) = self.put(&format!("/jobs/v2/{id}"), HUB, body).await;
        assert_eq!(s, 200, "{got}");
    }

    async fn central_status(&self, id: &str) -> String {
        let (s, got) = self.get(&format!("/api/jobs/{id}"), CENTRAL).await;
        assert_eq!(s, 200, "{got}");
        got["status"].as_str().unwrap().to_string()
    }

    /// `GET /api/jobs/{id}/devices`, every page: (id, status) in the order given.
    async fn central_devices(&self, id: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut url = self.url(&format!("/api/jobs/{id}/devices?maxpagesize=1000"), CENTRAL);
        loop {
            let (s, body) = read(self.http.get(&url).send().await.unwrap()).await;
            assert_eq!(s, 200, "{body}");
            for d in body["value"].as_array().unwrap() {
                out.push((
                    d["id"].as_str().unwrap().to_string(),
                    d["status"].as_str().unwrap().to_string(),
                ));
            }
            match body.get("nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_string(),
                None => return out,
            }
        }
    }

    async fn wait_central_status(&self, id: &str, wanted: &[&str]) -> String {
        let last = RefCell::new(String::new());
        wait_for(&format!("job {id} to be one of {wanted:?}"), || async {
            let now = self.central_status(id).await;
            let done = wanted.contains(&now.as_str());
            *last.borrow_mut() = now;
            done
        })
        .await
        .unwrap_or_else(|e| panic!("{e} (last: {})\n{}", last.borrow(), self.server.log_text()));
        last.into_inner()
    }

    /// Waits until the IoT Hub shape shows job `id` `completed`; returns that job.
    async fn wait_hub_completed(&self, id: &str) -> Value {
        let last = RefCell::new(Value::Null);
        wait_for(&format!("job {id} completed"), || async {
            let (_, got) = self.get(&format!("/jobs/v2/{id}"), HUB).await;
            let done = got["status"] == "completed";
            *last.borrow_mut() = got;
            done
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", last.borrow(), self.server.log_text()));
        last.into_inner()
    }

    async fn job(&self, id: &str) -> pb::Job {
        self.jobs
            .clone()
            .get_job(pb::GetJobRequest {
                job_id: id.into(),
                stale_ok: false,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The devices of one run (the latest when `run` is None), every page.
    async fn job_devices(&self, id: &str, run: Option<u32>) -> Vec<pb::JobDevice> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .jobs
                .clone()
                .list_job_devices(pb::ListJobDevicesRequest {
                    job_id: id.into(),
                    run,
                    status: 0,
                    page_size: 1000,
                    page_token: token,
                    stale_ok: false,
                })
                .await
                .unwrap()
                .into_inner();
            out.extend(page.devices);
            token = page.next_page_token;
            if token.is_empty() {
                return out;
            }
        }
    }

    async fn twin(&self, device: &str) -> Value {
        let (s, got) = self.get(&format!("/twins/{device}"), HUB).await;
        assert_eq!(s, 200, "{got}");
        got
    }
}

async fn clients(
    server: &Server,
) -> (
    JobServiceClient<AuthChannel>,
    DeviceServiceClient<AuthChannel>,
) {
    let ch = grpc_channel(&server.grpc).await.unwrap();
    let jobs = JobServiceClient::new(ch.clone());
    wait_for("a leader", || {
        let mut jobs = jobs.clone();
        async move { jobs.list_jobs(pb::ListJobsRequest::default()).await.is_ok() }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    (jobs, DeviceServiceClient::new(ch))
}

async fn list_devices(devices: &mut DeviceServiceClient<AuthChannel>) -> Vec<pb::Device> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = devices
            .list_devices(pb::ListDevicesRequest {
                page_size: 1000,
                page_token: token,
                stale_ok: true,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.devices);
        token = page.next_page_token;
        if token.is_empty() {
            return out;
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

/// The IoT Central job of the first seed ("Run device report": a command, 25% at a time,
/// cancelled above 10% failures over the whole job), on `group`.
fn seed_command_job(group: &str) -> Value {
    json!({
        "displayName": "Run device report",
        "description": "Call command to run the device reports",
        "group": group,
        "batch": {"type": "percentage", "value": 25},
        "cancellationThreshold": {"type": "percentage", "value": 10, "batch": false},
        "data": [{
            "type": "CommandJobData",
            "target": MODEL,
            "path": "getMaxMinReport",
            "value": "2021-06-15T05:00:00.000Z"
        }]
    })
}

fn stats(j: &pb::Job) -> pb::JobStats {
    j.stats.unwrap_or_default()
}

/// The per-status counters are disjoint and cover every device.
fn assert_stats_add_up(s: &pb::JobStats) {
    assert_eq!(
        s.pending + s.running + s.succeeded + s.failed + s.timed_out + s.cancelled,
        s.total,
        "{s:?}"
    );
}

fn device_status(d: &pb::JobDevice) -> pb::DeviceStatus {
    pb::DeviceStatus::try_from(d.status).unwrap()
}

fn is_final(d: &pb::JobDevice) -> bool {
    !matches!(
        device_status(d),
        pb::DeviceStatus::Pending | pb::DeviceStatus::Running
    )
}

/// Requests the fleet received, not counting repeats of one it had answered.
fn distinct_requests(fleet: &Fleet) -> u64 {
    let s = fleet.stats();
    s.requests_received - s.duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_seed_job_runs_batch_after_batch_to_complete() {
    let mut env = Env::start("mj-seed").await;
    let mut cfg = env.fleet_config(40);
    cfg.latency_ms = 5;
    cfg.jitter_ms = 20;
    let fleet = env.fleet(cfg).await;
    env.central_group("fleet").await;
    env.central_job("job-004", &seed_command_job("fleet")).await;

    env.wait_central_status("job-004", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("job-004").await, "complete");

    // Every device of the group, in id order, completed.
    let devices = env.central_devices("job-004").await;
    let ids: Vec<&str> = devices.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, fleet.device_ids());
    assert!(devices.iter().all(|(_, s)| s == "completed"), "{devices:?}");

    // Four batches of ten, each started only once the one before had finished.
    let job = env.job("job-004").await;
    let s = stats(&job);
    assert_eq!((s.total, s.succeeded), (40, 40), "{s:?}");
    assert_stats_add_up(&s);
    assert_eq!(job.batches.len(), 4, "{:?}", job.batches);
    let per_device = env.job_devices("job-004", None).await;
    for b in &job.batches {
        let bs = b.stats.unwrap_or_default();
        assert_eq!(
            (bs.total, bs.succeeded),
            (10, 10),
            "batch {}: {bs:?}",
            b.index
        );
        let started = b.started_at_ms.expect("every batch started");
        if b.index > 0 {
            let previous_done = per_device
                .iter()
                .filter(|d| d.batch == b.index - 1)
                .map(|d| d.finished_at_ms.unwrap())
                .max()
                .unwrap();
            assert!(
                started >= previous_done,
                "batch {} started at {started}, before batch {} finished at {previous_done}",
                b.index,
                b.index - 1
            );
        }
    }
    for d in &per_device {
        assert_eq!(device_status(d), pb::DeviceStatus::Succeeded, "{d:?}");
        assert_eq!(d.attempts, 1, "{d:?}");
        assert_eq!(d.response_status, Some(200), "{d:?}");
    }
    assert_eq!(distinct_requests(&fleet), 40);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_failing_fleet_is_cancelled_by_the_threshold() {
    let mut env = Env::start("mj-threshold").await;
    let mut cfg = env.fleet_config(40);
    cfg.fail_rate = 0.5;
    let fleet = env.fleet(cfg).await;
    env.central_group("fleet").await;
    env.central_job("report", &seed_command_job("fleet")).await;

    env.wait_central_status("report", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("report").await, "cancelled");

    // Cancelled by the threshold: more than 10% of 40, so at the 5th failure, and no more
    // failures are counted after it.
    let job = env.job("report").await;
    let reason = job.cancel_reason.and_then(|r| r.kind);
    assert_eq!(
        reason,
        Some(pb::cancel_reason::Kind::Threshold(
            pb::cancel_reason::ThresholdCrossed {
                failures: 5,
                population: 40,
                batch: None,
            }
        )),
        "{job:?}"
    );
    let s = stats(&job);
    assert_stats_add_up(&s);
    assert_eq!(s.total, 40);
    assert_eq!((s.failed, s.timed_out), (5, 0), "{s:?}");
    assert_eq!(
        s.succeeded + s.failed + s.cancelled,
        40,
        "no device left pending or running: {s:?}"
    );

    // The batch of the 5th failure is the last one started; those before it had at most 4
    // failures between them (a batch starts only when the one before is final); those after it
    // never started and none of their devices was asked.
    let started: Vec<&pb::Batch> = job
        .batches
        .iter()
        .filter(|b| b.started_at_ms.is_some())
        .collect();
    let last = started.len() - 1;
    assert!(job.batches[..=last]
        .iter()
        .all(|b| b.started_at_ms.is_some()));
    let failed_before: u64 = started[..last]
        .iter()
        .map(|b| b.stats.unwrap_or_default().failed)
        .sum();
    assert!(failed_before <= 4, "{:?}", job.batches);
    assert!(started[last].stats.unwrap_or_default().failed >= 1);
    let devices = env.job_devices("report", None).await;
    assert_eq!(devices.len(), 40);
    let mut asked = 0u64;
    for d in &devices {
        assert!(is_final(d), "{d:?}");
        if d.batch as usize > last {
            assert_eq!(device_status(d), pb::DeviceStatus::Cancelled, "{d:?}");
            assert_eq!(d.attempts, 0, "{d:?}");
            assert_eq!(d.dispatched_at_ms, None, "{d:?}");
        }
        if d.attempts > 0 {
            asked += 1;
        }
        if device_status(d) == pb::DeviceStatus::Failed {
            assert_eq!(d.response_status, Some(500), "{d:?}");
        }
    }
    assert_eq!(
        asked,
        10 * (last as u64 + 1),
        "every device of the started batches was asked"
    );
    // The devices received exactly what was dispatched (the later batches nothing).
    wait_for("the fleet to have seen every request", || async {
        distinct_requests(&fleet) >= asked
    })
    .await
    .unwrap();
    assert_eq!(distinct_requests(&fleet), asked);

    // The same in the Central device list: exactly five failed.
    let central = env.central_devices("report").await;
    let failed = central.iter().filter(|(_, s)| s == "failed").count();
    assert_eq!(failed, 5, "{central:?}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_holds_dispatch_and_resume_finishes() {
    let mut env = Env::start("mj-stop").await;
    let mut cfg = env.fleet_config(40);
    cfg.latency_ms = 400;
    let fleet = env.fleet(cfg).await;
    env.central_group("fleet").await;
    env.central_job("slow", &seed_command_job("fleet")).await;

    // Mid-way: the first batch has been sent.
    wait_for("the first devices to be dispatched", || async {
        let s = stats(&env.job("slow").await);
        s.pending < s.total
    })
    .await
    .unwrap();
    assert_eq!(env.post("/api/jobs/slow/stop").await, 204);
    assert_eq!(env.central_status("slow").await, "stopped");

    // Devices already asked may still answer; then nothing moves.
    wait_for("in-flight devices to answer", || async {
        stats(&env.job("slow").await).running == 0
    })
    .await
    .unwrap();
    let held = stats(&env.job("slow").await);
    let started = held.total - held.pending;
    assert!(started > 0 && started < 40, "{held:?}");
    let requests = distinct_requests(&fleet);
    // Longer than a device takes to answer (400 ms) and many dispatcher ticks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = stats(&env.job("slow").await);
    assert_eq!(still, held, "the job moved while stopped");
    assert_eq!(
        distinct_requests(&fleet),
        requests,
        "devices asked while stopped"
    );
    assert_eq!(env.central_status("slow").await, "stopped");

    assert_eq!(env.post("/api/jobs/slow/resume").await, 204);
    env.wait_central_status("slow", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("slow").await, "complete");
    let s = stats(&env.job("slow").await);
    assert_eq!((s.total, s.succeeded), (40, 40), "{s:?}");
    assert_eq!(distinct_requests(&fleet), 40);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_reaches_exactly_the_failed_devices() {
    let mut env = Env::start("mj-rerun").await;
    let mut cfg = env.fleet_config(20);
    let ids = cfg.device_ids();
    let failing: Vec<String> = [2, 9, 17].iter().map(|&i| ids[i].clone()).collect();
    cfg.failing = failing.clone();
    let fleet = env.fleet(cfg.clone()).await;
    env.central_group("fleet").await;
    // No threshold: the job runs to the end with its three failures.
    let body = json!({
        "displayName": "Reboot",
        "group": "fleet",
        "data": [{"type": "CommandJobData", "target": MODEL, "path": "reboot", "value": {}}]
    });
    env.central_job("reboot", &body).await;
    env.wait_central_status("reboot", &["complete", "cancelled", "failed"])
        .await;
    let devices = env.central_devices("reboot").await;
    let failed: Vec<&str> = devices
        .iter()
        .filter(|(_, s)| s == "failed")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(failed, failing, "{devices:?}");
    assert_eq!(devices.len(), 20);
    assert_eq!(distinct_requests(&fleet), 20);

    // The same devices, no longer failing: a new fleet after the first said goodbye.
    fleet.shutdown().await;
    env.wait_connection(&ids, pb::ConnectionState::Disconnected)
        .await;
    cfg.failing.clear();
    let fleet = Fleet::start(cfg).await.unwrap();
    env.wait_connection(&ids, pb::ConnectionState::Connected)
        .await;

    let (s, got) = env
        .put("/api/jobs/reboot/rerun/rerun-1", CENTRAL, &json!({}))
        .await;
    assert_eq!(s, 200, "{got}");
    let rerun: Vec<String> = env
        .central_devices("reboot")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rerun, failing, "the rerun's devices are the failed ones");
    env.wait_central_status("reboot", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("reboot").await, "complete");
    let devices = env.central_devices("reboot").await;
    assert!(devices.iter().all(|(_, s)| s == "completed"), "{devices:?}");
    assert_eq!(devices.len(), 3);
    // Exactly the failed devices were reached again, nobody else.
    assert_eq!(distinct_requests(&fleet), 3);

    // Both runs are kept: the first still shows its failures.
    let job = env.job("reboot").await;
    assert_eq!(job.run, 1);
    assert_eq!(job.rerun_id.as_deref(), Some("rerun-1"));
    assert_eq!(job.runs.len(), 2);
    let s = stats(&job);
    assert_eq!((s.total, s.succeeded), (3, 3), "{s:?}");
    let first = env.job_devices("reboot", Some(0)).await;
    assert_eq!(first.len(), 20);
    let first_failed: Vec<&str> = first
        .iter()
        .filter(|d| device_status(d) == pb::DeviceStatus::Failed)
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(first_failed, failing);
    let second = env.job_devices("reboot", Some(1)).await;
    assert!(second
        .iter()
        .all(|d| device_status(d) == pb::DeviceStatus::Succeeded && d.run == 1));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_update_job_by_query_changes_desired_and_devices_report_back() {
    let mut env = Env::start("mj-twin").await;
    let cfg = env.fleet_config(8);
    let ids = cfg.device_ids();
    // The first half is the canary ring.
    let fleet = env
        .fleet_with_tags(
            cfg,
            |i| json!({"ring": if i < 4 { "canary" } else { "main" }}),
        )
        .await;
    let job = json!({
        "jobId": "set-interval",
        "type": "scheduleUpdateTwin",
        "updateTwin": {"properties": {"desired": {"interval": 30, "fw": {"version": "2.0"}}}},
        "queryCondition": format!("tags.devsim = '{}' AND tags.ring = 'canary'", env.prefix),
    });
    env.hub_job(&job).await;
    let last = env.wait_hub_completed("set-interval").await;
    assert_eq!(
        last["deviceJobStatistics"],
        json!({"deviceCount": 4, "failedCount": 0, "succeededCount": 4, "runningCount": 0, "pendingCount": 0})
    );

    // The canaries' desired properties changed; the devices got the patch and reported it.
    for id in &ids[..4] {
        wait_for(&format!("{id} to report the patch"), || async {
            env.twin(id).await["properties"]["reported"]["interval"] == 30
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.server.log_text()));
        let twin = env.twin(id).await;
        let props = &twin["properties"];
        assert_eq!(props["desired"]["interval"], 30, "{twin}");
        assert_eq!(props["desired"]["fw"], json!({"version": "2.0"}), "{twin}");
        assert_eq!(props["reported"]["fw"], json!({"version": "2.0"}), "{twin}");
    }
    // The main ring is untouched.
    for id in &ids[4..] {
        let twin = env.twin(id).await;
        let props = &twin["properties"];
        assert!(props["desired"].get("interval").is_none(), "{twin}");
        assert!(props["reported"].get("interval").is_none(), "{twin}");
    }
    assert_eq!(fleet.stats().desired_patches, 4);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_is_served_when_it_comes_online() {
    let mut env = Env::start("mj-offline").await;
    let cfg = env.fleet_config(3);
    let ids = cfg.device_ids();
    let fleet = env.fleet(cfg).await;
    let away = ids[1].clone();
    fleet.set_online(&away, false).unwrap();
    env.wait_connection(
        std::slice::from_ref(&away),
        pb::ConnectionState::Disconnected,
    )
    .await;

    // IoT Hub's method job with a connect timeout: an offline device waits for up to a minute.
    let job = json!({
        "jobId": "ping",
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {
            "methodName": "ping",
            "payload": {"n": 1},
            "responseTimeoutInSeconds": 10,
            "connectTimeoutInSeconds": 60
        },
        "deviceIds": ids,
    });
    env.hub_job(&job).await;
    wait_for("the two online devices to succeed", || async {
        stats(&env.job("ping").await).succeeded == 2
    })
    .await
    .unwrap();
    let job_now = env.job("ping").await;
    assert_eq!(
        pb::JobStatus::try_from(job_now.status).unwrap(),
        pb::JobStatus::Running
    );
    let waiting: Vec<pb::JobDevice> = env
        .job_devices("ping", None)
        .await
        .into_iter()
        .filter(|d| d.device_id == away)
        .collect();
    assert_eq!(waiting.len(), 1);
    assert!(!is_final(&waiting[0]), "{:?}", waiting[0]);
    assert_eq!(
        fleet.stats().ignored_offline,
        0,
        "a request was sent to the offline device"
    );

    fleet.set_online(&away, true).unwrap();
    let last = env.wait_hub_completed("ping").await;
    assert_eq!(last["deviceJobStatistics"]["succeededCount"], 3, "{last}");
    let served = env.job_devices("ping", None).await;
    let d = served.iter().find(|d| d.device_id == away).unwrap();
    assert_eq!(device_status(d), pb::DeviceStatus::Succeeded, "{d:?}");
    assert_eq!(d.attempts, 1, "{d:?}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_that_never_answers_times_out() {
    let mut env = Env::start("mj-silent").await;
    let mut cfg = env.fleet_config(3);
    let ids = cfg.device_ids();
    let mute = ids[2].clone();
    cfg.silent = vec![mute.clone()];
    let fleet = env.fleet(cfg).await;
    let job = json!({
        "jobId": "report",
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "report", "payload": {}, "responseTimeoutInSeconds": 2},
        "deviceIds": ids,
    });
    env.hub_job(&job).await;
    let last = env.wait_hub_completed("report").await;
    assert_eq!(
        last["deviceJobStatistics"],
        json!({"deviceCount": 3, "failedCount": 1, "succeededCount": 2, "runningCount": 0, "pendingCount": 0})
    );

    let devices = env.job_devices("report", None).await;
    for d in &devices {
        if d.device_id == mute {
            assert_eq!(device_status(d), pb::DeviceStatus::TimedOut, "{d:?}");
            assert!(
                matches!(
                    d.last_error_reason.as_ref().and_then(|r| r.kind.as_ref()),
                    Some(pb::failure_reason::Kind::Timeout(_))
                ),
                "{d:?}"
            );
            assert!(d.last_error.to_lowercase().contains("time"), "{d:?}");
            assert_eq!(d.response_status, None, "{d:?}");
        } else {
            assert_eq!(device_status(d), pb::DeviceStatus::Succeeded, "{d:?}");
        }
    }
    let s = stats(&env.job("report").await);
    assert_eq!((s.succeeded, s.timed_out, s.total), (2, 1, 3), "{s:?}");
    assert_stats_add_up(&s);
    // The silent device did receive the request (it is connected, it just never answers).
    assert_eq!(distinct_requests(&fleet), 3);
    let central = env.central_devices("report").await;
    assert!(
        central.contains(&(mute.clone(), "failed".to_string())),
        "{central:?}"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_job_then_restart_finishes_with_one_outcome_per_device() {
    let mut env = Env::start("mj-crash").await;
    let mut cfg = env.fleet_config(300);
    cfg.latency_ms = 150;
    cfg.jitter_ms = 150;
    let fleet = env.fleet(cfg).await;
    env.central_group("fleet").await;
    let body = json!({
        "displayName": "Reboot in six batches",
        "group": "fleet",
        "batch": {"type": "number", "value": 50},
        "data": [{"type": "CommandJobData", "target": MODEL, "path": "reboot", "value": {}}]
    });
    env.central_job("crash", &body).await;

    // Mid-way: the first batch is done, the rest is not.
    wait_for("a batch to finish", || async {
        stats(&env.job("crash").await).succeeded >= 50
    })
    .await
    .unwrap();
    let before = stats(&env.job("crash").await);
    assert!(before.succeeded < 300, "not mid-way any more: {before:?}");
    env.server.kill9().unwrap();
    env.server.restart().unwrap();
    env.reconnect().await;

    env.wait_central_status("crash", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("crash").await, "complete");
    let job = env.job("crash").await;
    let s = stats(&job);
    assert_stats_add_up(&s);
    assert_eq!((s.total, s.succeeded), (300, 300), "{s:?}");
    assert!(s.succeeded >= before.succeeded);
    assert_eq!(job.batches.len(), 6);
    for b in &job.batches {
        let bs = b.stats.unwrap_or_default();
        assert_eq!(
            (bs.total, bs.succeeded),
            (50, 50),
            "batch {}: {bs:?}",
            b.index
        );
    }

    // Every device exactly once, with one final outcome, from its first attempt (a resend after
    // the restart carries the same rid, and the device answers it from its cache).
    let devices = env.job_devices("crash", None).await;
    assert_eq!(devices.len(), 300);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &devices {
        *seen.entry(d.device_id.as_str()).or_default() += 1;
        assert_eq!(device_status(d), pb::DeviceStatus::Succeeded, "{d:?}");
        assert_eq!(d.attempts, 1, "{d:?}");
        assert!(d.finished_at_ms.is_some(), "{d:?}");
    }
    assert!(seen.values().all(|&n| n == 1));
    let want: BTreeSet<&str> = fleet.device_ids().iter().map(String::as_str).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), want);
    // No device ran the method twice: repeats were recognised by their rid.
    let fs = fleet.stats();
    assert_eq!(fs.requests_received - fs.duplicates, 300, "{fs:?}");
    fleet.shutdown().await;
}

/// A maintenance window a few seconds wide (issue 16): devices are dispatched only while it is
/// open (every 15 s for 4 s, a six-field cron), the job shows whether it waits and until when,
/// and it still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dispatches_only_inside_its_maintenance_window() {
    let mut env = Env::start("mj-window").await;
    let mut cfg = env.fleet_config(6);
    cfg.jitter_ms = 20;
    let fleet = env.fleet(cfg).await;
    env.central_group("fleet").await;
    let mut body = seed_command_job("fleet");
    body["batch"] = json!({"type": "number", "value": 2});
    body["maintenanceWindow"] =
        json!({"cron": "*/15 * * * * *", "durationSeconds": 4, "timeZone": "Europe/Berlin"});
    env.central_job("windowed", &body).await;

    let (s, got) = env.get("/api/jobs/windowed", CENTRAL).await;
    assert_eq!(s, 200, "{got}");
    let w = &got["maintenanceWindow"];
    assert_eq!(w["cron"], "*/15 * * * * *", "{got}");
    assert_eq!(w["durationSeconds"], 4, "{got}");
    if got["status"] != "complete" {
        assert!(w["state"] == "open" || w["state"] == "waiting", "{got}");
        assert!(w["until"].is_string(), "{got}");
    }
    let job = env.job("windowed").await;
    if job.ended_at_ms.is_none() {
        assert!(job.window.is_some(), "{job:?}");
    }

    env.wait_central_status("windowed", &["complete", "cancelled", "failed"])
        .await;
    assert_eq!(env.central_status("windowed").await, "complete");
    let devices = env.job_devices("windowed", None).await;
    assert_eq!(devices.len(), 6);
    for d in &devices {
        let at = d.dispatched_at_ms.expect("dispatched");
        // Open from each :00, :15, :30, :45 for 4 s (Berlin's offset is whole hours).
        assert!(
            (at / 1000) % 15 < 4,
            "{} dispatched at {at}, outside the window",
            d.device_id
        );
    }
    // An ended job no longer waits for its window.
    assert!(env.job("windowed").await.window.is_none());

    // Its events show each window it ran in, and every dispatch follows the opening of the
    // window it falls in.
    let (s, page) = env.get("/api/jobs/windowed/events", CENTRAL).await;
    assert_eq!(s, 200, "{page}");
    let mut open: Option<(i64, i64)> = None;
    let mut openings = 0;
    for e in page["value"].as_array().expect("a page of events") {
        let kind = e["type"].as_str().unwrap_or_default();
        let body = &e["body"][kind];
        match kind {
            "WindowOpened" => {
                let (since, until) = (body["since"].as_i64(), body["until"].as_i64());
                let (Some(since), Some(until)) = (since, until) else {
                    panic!("{e}");
                };
                assert!(since % 15_000 == 0 && until - since == 4_000, "{e}");
                open = Some((since, until));
                openings += 1;
            }
            "WindowClosed" => {
                let next = body["next_open"].as_i64().expect("a next opening");
                assert!(next % 15_000 == 0, "{e}");
                open = None;
            }
            "DeviceDispatched" => {
                let at = body["at"].as_i64().expect("a time");
                assert!(
                    open.is_some_and(|(since, until)| since <= at && at < until),
                    "{e} outside the recorded window {open:?}: {page}"
                );
            }
            _ => {}
        }
    }
    assert!(openings >= 1, "no WindowOpened in {page}");
    fleet.shutdown().await;

    // And the audit timeline of the stopped node tells them.
    assert!(env.server.terminate().unwrap(), "{}", env.server.log_text());
    let t = muster_tests::muster_audit(&["timeline", "--job", "windowed"], env.server.data_dir())
        .unwrap();
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(
        text.lines()
            .any(|l| l.contains("maintenance window open since") && l.ends_with("(by system)")),
        "{text}"
    );
}
