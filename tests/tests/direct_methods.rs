//! Direct methods on one device over a real broker: the `muster serve` binary on Mosquitto
//! (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`) and `muster devsim` as the fleet.
//! The same device is invoked through IoT Hub's `POST /twins/{id}/methods`, IoT Central's
//! `POST /api/devices/{id}/commands/{name}`, gRPC `DeviceService.InvokeMethod` and
//! `muster device invoke`; each gets the device's status and payload back. A device that is not
//! connected gets IoT Hub's 404 `DeviceNotOnline`, a silent one 504 `GatewayTimeout`, an
//! unregistered one 404 `DeviceNotFound`; bad bodies are 400s naming the field and record
//! nothing. The event log holds who invoked what and the answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::event_service_client::EventServiceClient;
use muster_tests::{data_dir, grpc_channel, muster_cmd, wait_for, Devsim, Server};
use serde_json::{json, Value};

const HUB: &str = "api-version=2021-04-12";
const CENTRAL: &str = "api-version=2022-07-31";

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The error code in either error shape (muster's `error.code` or IoT Hub's `Message`).
fn code(body: &Value) -> String {
    let text = body.to_string();
    for c in [
        "DeviceNotOnline",
        "GatewayTimeout",
        "DeviceNotFound",
        "InvalidInput",
    ] {
        if text.contains(c) {
            return c.to_string();
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_reach_a_simulated_device_through_every_edge() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
    server.wait_ready().await.unwrap();
    let prefix = format!("dm-{}", std::process::id());
    let (ok, silent) = (format!("{prefix}-000001"), format!("{prefix}-000002"));
    let mut devsim = Devsim::start(
        dir.path(),
        &[
            "--broker",
            &url,
            "--devices",
            "2",
            "--prefix",
            &prefix,
            "--silent",
            &silent,
            "--register",
            &server.grpc,
        ],
    );
    assert!(devsim.first_line().starts_with("devsim ready"));
    let mut devices = DeviceServiceClient::new(grpc_channel(&server.grpc).await.unwrap());
    // A registered device that never connects.
    let offline = format!("{prefix}-offline");
    devices
        .register_device(pb::RegisterDeviceRequest {
            device: Some(pb::NewDevice {
                device_id: offline.clone(),
                ..Default::default()
            }),
            upsert: false,
        })
        .await
        .unwrap();
    wait_for("the simulated devices connected", || {
        let mut devices = devices.clone();
        let ids = [ok.clone(), silent.clone()];
        async move {
            let mut all = true;
            for id in ids {
                let d = devices
                    .get_device(pb::GetDeviceRequest {
                        device_id: id,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                all &= d.connection == pb::ConnectionState::Connected as i32;
            }
            all
        }
    })
    .await
    .unwrap();
    let http = muster_tests::http();
    let hub = |d: &str| format!("{}/twins/{d}/methods?{HUB}", server.rest);
    let central =
        |d: &str, c: &str| format!("{}/api/devices/{d}/commands/{c}?{CENTRAL}", server.rest);

    // Bad input first: each a 400 naming the field, and none of them recorded (checked below:
    // the first MethodInvoked in the log is the good call).
    for (body, field) in [
        (json!({"payload": 1}), "methodName"),
        (json!({"methodName": "a b"}), "methodName"),
        (
            json!({"methodName": "m", "responseTimeoutInSeconds": 1}),
            "responseTimeoutInSeconds",
        ),
        (
            json!({"methodName": "m", "connectTimeoutInSeconds": 301}),
            "connectTimeoutInSeconds",
        ),
        (json!({"methodName": "m", "timeout": 5}), "timeout"),
    ] {
        let (status, b) = post(&http, &hub(&ok), body.clone()).await;
        assert_eq!(status, 400, "{body}: {b}");
        assert!(b.to_string().contains(field), "{body}: {b}");
    }
    let (status, b) = post(&http, &central(&ok, "m"), json!({"responseTimeout": 0})).await;
    assert_eq!(status, 400, "{b}");
    assert!(b.to_string().contains("responseTimeout"), "{b}");

    // IoT Hub: the device's status and payload (devsim answers 200 with what it was asked).
    let (status, b) = post(
        &http,
        &hub(&ok),
        json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 10}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        b,
        json!({"status": 200, "payload": {"device": ok, "method": "reboot", "ok": true}})
    );

    // IoT Central: the command answered with its id, response and responseCode.
    let (status, b) = post(
        &http,
        &central(&ok, "getMaxMinReport"),
        json!({"request": "2021-06-15T05:00:00.000Z", "responseTimeout": 10}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["responseCode"], 200, "{b}");
    assert_eq!(b["response"]["method"], "getMaxMinReport", "{b}");
    assert_eq!(b["request"], "2021-06-15T05:00:00.000Z", "{b}");
    assert_eq!(b["connectionTimeout"], 0, "{b}");
    assert_eq!(b["responseTimeout"], 10, "{b}");
    assert_eq!(b["id"].as_str().map(str::len), Some(32), "{b}");

    // IoT Central's command history: the last run of that command on that device, read back
    // from the event log, byte for byte the answer the POST gave; none for another command.
    let (status, history) = get(&http, &central(&ok, "getMaxMinReport")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history, json!({"value": [b.clone()]}));
    let (status, none) = get(&http, &central(&ok, "neverRan")).await;
    assert_eq!((status, none), (200, json!({"value": []})));
    let (status, e) = get(&http, &central("no-such-device", "getMaxMinReport")).await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "DeviceNotFound", "{e}");

    // gRPC.
    let r = devices
        .invoke_method(pb::InvokeMethodRequest {
            device_id: ok.clone(),
            method: "ping".into(),
            payload_json: "{\"n\":1}".into(),
            response_timeout_secs: 10,
            connect_timeout_secs: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 200);
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap();
    assert_eq!(payload["method"], "ping");

    // The CLI prints the status and the payload.
    let out = muster_cmd()
        .unwrap()
        .args([
            "device",
            "invoke",
            &ok,
            "blink",
            "--payload",
            "{\"times\":3}",
        ])
        .args(["--endpoint", &server.grpc])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("status: 200"), "{stdout}");
    assert!(stdout.contains("\"method\":\"blink\""), "{stdout}");

    // Not connected: at once with no connect timeout, after it with one.
    let (status, b) = post(&http, &hub(&offline), json!({"methodName": "reboot"})).await;
    assert_eq!((status, code(&b)), (404, "DeviceNotOnline".into()), "{b}");
    let started = Instant::now();
    let (status, b) = post(
        &http,
        &hub(&offline),
        json!({"methodName": "reboot", "connectTimeoutInSeconds": 1}),
    )
    .await;
    assert_eq!((status, code(&b)), (404, "DeviceNotOnline".into()), "{b}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let (status, b) = post(&http, &central(&offline, "reboot"), json!({})).await;
    assert_eq!((status, code(&b)), (404, "DeviceNotOnline".into()), "{b}");
    let err = devices
        .invoke_method(pb::InvokeMethodRequest {
            device_id: offline.clone(),
            method: "reboot".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // Not registered.
    let (status, b) = post(
        &http,
        &hub(&format!("{prefix}-nobody")),
        json!({"methodName": "m"}),
    )
    .await;
    assert_eq!((status, code(&b)), (404, "DeviceNotFound".into()), "{b}");

    // A device that never answers: 504 once the response timeout (the shortest, 5 s) passed.
    let started = Instant::now();
    let (status, b) = post(
        &http,
        &hub(&silent),
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 5}),
    )
    .await;
    assert_eq!((status, code(&b)), (504, "GatewayTimeout".into()), "{b}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The log: the first invocation is the good hub call, by the administrator's policy, and
    // its answer follows; nothing of the refused requests.
    let mut events = EventServiceClient::new(grpc_channel(&server.grpc).await.unwrap())
        .subscribe(pb::SubscribeRequest {
            from_seq: 0,
            filter: Some(pb::EventFilter {
                types: vec!["MethodInvoked".into(), "MethodResponded".into()],
                device_ids: vec![ok.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, "MethodInvoked");
    assert_eq!(first.principal, "policy:iothubowner");
    let body: Value = serde_json::from_str(&first.body_json).unwrap();
    assert_eq!(
        body["MethodInvoked"]["invocation"]["method"], "reboot",
        "{body}"
    );
    assert_eq!(
        body["MethodInvoked"]["invocation"]["payload"],
        json!({"delay": 1}),
        "{body}"
    );
    let second = events.message().await.unwrap().unwrap();
    assert_eq!(second.r#type, "MethodResponded");
    let body: Value = serde_json::from_str(&second.body_json).unwrap();
    assert_eq!(body["MethodResponded"]["status"], 200, "{body}");
    devsim.terminate();
}

/// Microsoft's SDK (`tests/python/sdk_methods.py`) over HTTPS with the connection string the
/// node wrote: `invoke_device_method` on a simulated device returns its status and payload, and
/// on a device that is not connected raises the SDK's HTTP error with 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_invokes_a_direct_method() {
    let url = muster_tests::mqtt_url();
    let Some(node) = muster_tests::SdkNode::start_with(&["--mqtt-url", &url])
        .await
        .unwrap()
    else {
        return;
    };
    let server = &node.server;
    let http = node.client().unwrap();
    let prefix = format!("dmsdk-{}", std::process::id());
    let cfg = muster_devsim::FleetConfig {
        brokers: vec![url.clone()],
        devices: 1,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..muster_devsim::FleetConfig::default()
    };
    let online = cfg.device_ids()[0].clone();
    let offline = format!("{prefix}-offline");
    for id in [&online, &offline] {
        let r = http
            .put(format!("{}/api/devices/{id}?{CENTRAL}", server.rest))
            .json(&json!({"displayName": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let _fleet = muster_devsim::Fleet::start(cfg).await.unwrap();
    let twin = format!("{}/twins/{online}?{HUB}", server.rest);
    wait_for("the simulated device connected", || {
        let req = http.get(&twin).send();
        async move {
            let Ok(r) = req.await else { return false };
            let v: Value = r.json().await.unwrap_or(Value::Null);
            v["connectionState"] == "Connected"
        }
    })
    .await
    .unwrap();

    let stdout = node
        .run_script("sdk_methods.py", &[&online, &offline])
        .await
        .unwrap();
    assert!(
        stdout.contains(&format!("invoked {online} 200")),
        "{stdout}"
    );
    assert!(stdout.contains("offline 404"), "{stdout}");
}

/// On a three-node cluster a follower takes the call: it forwards the write to the leader, whose
/// dispatcher reaches the device, and answers once it has applied the invocation's end itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_with_the_devices_answer() {
    let url = muster_tests::mqtt_url();
    let cluster = muster_tests::TestCluster::start(3, &["--mqtt-url", &url]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = &cluster.nodes[(leader + 1) % 3];
    let http = muster_tests::http();
    let prefix = format!("dmcl-{}", std::process::id());
    let cfg = muster_devsim::FleetConfig {
        brokers: vec![url.clone()],
        devices: 1,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..muster_devsim::FleetConfig::default()
    };
    let id = cfg.device_ids()[0].clone();
    let r = http
        .put(format!("{}/api/devices/{id}?{CENTRAL}", follower.rest))
        .json(&json!({"displayName": "on a follower"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _fleet = muster_devsim::Fleet::start(cfg).await.unwrap();
    let twin = format!("{}/twins/{id}?{HUB}", follower.rest);
    wait_for("the device connected", || {
        let req = http.get(&twin).send();
        async move {
            let Ok(r) = req.await else { return false };
            let v: Value = r.json().await.unwrap_or(Value::Null);
            v["connectionState"] == "Connected"
        }
    })
    .await
    .unwrap();
    let (status, b) = post(
        &http,
        &format!("{}/twins/{id}/methods?{HUB}", follower.rest),
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 10}),
    )
    .await;
    assert_eq!(status, 200, "{b}\n{}", cluster.logs());
    assert_eq!(b["status"], 200, "{b}");
    assert_eq!(b["payload"]["device"], id.as_str(), "{b}");
}
