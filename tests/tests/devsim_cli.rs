//! `muster devsim` as a process: it registers its devices through a node's gRPC API
//! (`--register`), connects them to Mosquitto, says `devsim ready: ...`, serves a job, and on
//! SIGTERM marks every device offline before it exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_mqtt::Secret;
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_tests::{data_dir, wait_for, Devsim, Server};
use serde_json::{json, Value};

const V: &str = "api-version=2022-07-31";

async fn devices_in(
    devices: &mut DeviceServiceClient<muster_tests::AuthChannel>,
) -> Vec<pb::Device> {
    devices
        .list_devices(pb::ListDevicesRequest {
            page_size: 1000,
            page_token: String::new(),
            stale_ok: true,
        })
        .await
        .unwrap()
        .into_inner()
        .devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devsim_registers_serves_a_job_and_goes_offline_on_sigterm() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
    server.wait_ready().await.unwrap();
    let prefix = format!("dc-{}", std::process::id());
    let mut devsim = Devsim::start(
        dir.path(),
        &[
            "--broker",
            &url,
            "--devices",
            "40",
            "--prefix",
            &prefix,
            "--latency-ms",
            "5",
            "--register",
            &server.grpc,
        ],
    );
    let ready = devsim.first_line();
    assert_eq!(ready, format!("devsim ready: 40 devices on {url}"));

    // Registered with the model id and tags, and connected.
    let ch = muster_tests::grpc_channel(&server.grpc).await.unwrap();
    let mut devices = DeviceServiceClient::new(ch);
    let registered = devices_in(&mut devices).await;
    assert_eq!(registered.len(), 40);
    assert_eq!(registered[0].device_id, format!("{prefix}-000001"));
    assert_eq!(registered[39].device_id, format!("{prefix}-000040"));
    for d in &registered {
        assert_eq!(d.model_id.as_deref(), Some("dtmi:muster:simulated;1"));
        let tags: Value = serde_json::from_str(&d.tags_json).unwrap();
        assert_eq!(tags, json!({"simulated": true, "devsim": prefix}));
    }
    let connected = pb::ConnectionState::Connected as i32;
    wait_for("40 devices connected", || {
        let mut devices = devices.clone();
        async move {
            devices_in(&mut devices)
                .await
                .iter()
                .all(|d| d.connection == connected)
        }
    })
    .await
    .unwrap();

    // The first seed's command job runs on them to the end.
    let http = muster_tests::http();
    let r = http
        .put(format!("{}/api/deviceGroups/sim?{V}", server.rest))
        .json(&json!({"displayName": "Simulated", "filter": "SELECT * FROM devices WHERE tags.simulated = true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let job = json!({
        "displayName": "Run device report",
        "group": "sim",
        "batch": {"type": "percentage", "value": 25},
        "cancellationThreshold": {"type": "percentage", "value": 10, "batch": false},
        "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "getMaxMinReport", "value": "2021-06-15T05:00:00.000Z"}]
    });
    let r = http
        .put(format!("{}/api/jobs/job-004?{V}", server.rest))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let status_url = format!("{}/api/jobs/job-004?{V}", server.rest);
    wait_for("job-004 complete", || {
        let req = http.get(&status_url).send();
        async move {
            let body: Value = req.await.unwrap().json().await.unwrap();
            body["status"] == "complete"
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), devsim.log()));
    let body: Value = http
        .get(format!("{}/api/jobs/job-004/devices?{V}", server.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = body["value"].as_array().unwrap();
    assert_eq!(items.len(), 40);
    assert!(items.iter().all(|d| d["status"] == "completed"), "{body}");

    // SIGTERM: a clean exit, and every device is offline (the fleet said goodbye).
    let status = devsim.terminate();
    assert!(status.success(), "{status:?}\n{}", devsim.log());
    assert!(
        devsim
            .log()
            .contains("devsim stopped: 40 requests received"),
        "{}",
        devsim.log()
    );
    let disconnected = pb::ConnectionState::Disconnected as i32;
    wait_for("40 devices disconnected", || {
        let mut devices = devices.clone();
        async move {
            devices_in(&mut devices)
                .await
                .iter()
                .all(|d| d.connection == disconnected)
        }
    })
    .await
    .unwrap();
}

#[test]
fn devsim_refuses_bad_flags_clearly() {
    let run = |args: &[&str]| {
        let out = muster_tests::muster_cmd()
            .unwrap()
            .arg("devsim")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--devices", "3"]);
    assert!(err.contains("--broker"), "{err}");
    let err = run(&["--broker", "mqtt://127.0.0.1:1883", "--fail-rate", "1.5"]);
    assert!(
        err.contains("--fail-rate must be between 0.0 and 1.0"),
        "{err}"
    );
    let err = run(&["--broker", "ws://127.0.0.1:1883"]);
    assert!(err.contains("unsupported scheme"), "{err}");
    // Nothing listens on port 1: registration fails before any device connects.
    let err = run(&[
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--register",
        "http://127.0.0.1:1",
    ]);
    assert!(
        err.contains("cannot reach muster at http://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devsim_and_the_node_spread_devices_over_two_brokers_alike() {
    // A second broker: rumqttd in this test process, next to Mosquitto.
    // It takes logins only (the shared Mosquitto accepts any): the node and the fleet each get
    // one.
    let logins = [
        (
            "muster-dispatcher".to_string(),
            Secret::new("dispatcher-pw"),
        ),
        ("fleet".to_string(), Secret::new("fleet-pw")),
    ];
    let embedded =
        muster_devsim::broker::start_embedded("127.0.0.1:0".parse().unwrap(), &logins).unwrap();
    let (first, second) = (muster_tests::mqtt_url(), embedded.url());
    let dir = data_dir().unwrap();
    let dispatcher_pw = dir.path().join("dispatcher.pw");
    std::fs::write(&dispatcher_pw, "dispatcher-pw\n").unwrap();
    let fleet_pw = dir.path().join("fleet.pw");
    std::fs::write(&fleet_pw, "fleet-pw").unwrap();
    let (dispatcher_pw, fleet_pw) = (
        dispatcher_pw.to_string_lossy().into_owned(),
        fleet_pw.to_string_lossy().into_owned(),
    );
    let server = Server::start_with(
        dir.path(),
        &[
            "--mqtt-url",
            &first,
            "--mqtt-url",
            &second,
            "--mqtt-username",
            "muster-dispatcher",
            "--mqtt-password-file",
            &dispatcher_pw,
        ],
    )
    .unwrap();
    server.wait_ready().await.unwrap();
    let prefix = format!("dc2-{}", std::process::id());
    let mut devsim = Devsim::start(
        dir.path(),
        &[
            "--broker",
            &first,
            "--broker",
            &second,
            "--devices",
            "40",
            "--prefix",
            &prefix,
            "--register",
            &server.grpc,
            "--username",
            "fleet",
            "--password-file",
            &fleet_pw,
        ],
    );
    assert_eq!(
        devsim.first_line(),
        format!("devsim ready: 40 devices on {first},{second}")
    );
    let ids: Vec<String> = (1..=40)
        .map(|n| muster_devsim::device_id(&prefix, n))
        .collect();
    let on_second = ids
        .iter()
        .filter(|id| muster_devsim::broker_index(id, 2) == 1)
        .count();
    assert!(
        on_second > 0 && on_second < 40,
        "{on_second} of 40 on the second broker"
    );

    // A method job over all of them (IoT Hub shape, short timeout): each device is reached on
    // its own broker, so none times out.
    let http = muster_tests::http();
    let r = http
        .put(format!("{}/jobs/v2/ping?api-version=2021-04-12", server.rest))
        .json(&json!({
            "jobId": "ping",
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": 5},
            "deviceIds": ids,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let url = format!("{}/jobs/v2/ping?api-version=2021-04-12", server.rest);
    wait_for("ping completed", || {
        let req = http.get(&url).send();
        async move {
            let body: Value = req.await.unwrap().json().await.unwrap();
            body["status"] == "completed"
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), devsim.log()));
    let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        body["deviceJobStatistics"],
        json!({"deviceCount": 40, "failedCount": 0, "succeededCount": 40, "runningCount": 0, "pendingCount": 0})
    );
    assert!(devsim.terminate().success(), "{}", devsim.log());
}
