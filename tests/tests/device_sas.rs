//! Devices log in with their IoT Hub SAS keys (issue 15), as an Azure IoT device does: client id
//! = device id, user name `{host}/{deviceId}/?api-version=...`, password a SAS token signed with
//! the primary or secondary key that `PUT /devices/{id}` returned.
//!
//! With Mosquitto (its own, no anonymous access, the password and ACL files of `muster device
//! credentials`, written once with only the dispatcher's and the gateway's logins) devices
//! created over REST while it runs connect to muster's device gateway, which checks the token
//! and logs the device in under its own login, keeping it to its own topics; a direct method
//! then travels through both to the device and back. In dev mode the embedded rumqttd checks
//! the token itself. Either way a token that is expired, signed with the wrong key, made for
//! another device, or for a disabled device is refused; through the gateway, regenerating keys,
//! disabling or deleting a device also closes its open session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use muster_tests::{
    data_dir, device_connect, device_token, free_ports, http, http_with, wait_for, DevServer,
    Mosquitto, Server,
};
use rumqttc::QoS;
use serde_json::{json, Value};

const V: &str = "api-version=2021-04-12";
const HOST: &str = "sas-test.azure-devices.example";
const DISPATCHER_PASSWORD: &str = "dispatcher-password-for-the-sas-test";
const GATEWAY_PASSWORD: &str = "gateway-password-for-the-sas-test";
const NEW_PRIMARY: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";
const NEW_SECONDARY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `PUT /devices/{id}` (with `If-Match: *` when `update`); returns the device.
async fn put_device(c: &reqwest::Client, rest: &str, id: &str, update: bool, body: Value) -> Value {
    let mut req = c.put(format!("{rest}/devices/{id}?{V}")).json(&body);
    if update {
        req = req.header("If-Match", "*");
    }
    let (status, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn keys(device: &Value) -> (String, String) {
    let k = &device["authentication"]["symmetricKey"];
    (
        k["primaryKey"].as_str().unwrap().to_string(),
        k["secondaryKey"].as_str().unwrap().to_string(),
    )
}

/// Every login that must be refused, against the broker or gateway at `addr`: a wrong key, an
/// expired token, another device's token, a good token under another client id, an unknown
/// device.
async fn assert_refusals(addr: &str, id: &str, key: &str, other: (&str, &str)) {
    let wrong = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let cases = [
        ("a wrong key", id, id, device_token(HOST, id, wrong, 3600)),
        ("an expired token", id, id, device_token(HOST, id, key, -5)),
        (
            "another device's token",
            id,
            id,
            device_token(HOST, other.0, other.1, 3600),
        ),
        (
            "its token under another client id",
            other.0,
            id,
            device_token(HOST, id, key, 3600),
        ),
        (
            "an unknown device",
            "nobody",
            "nobody",
            device_token(HOST, "nobody", key, 3600),
        ),
    ];
    for (what, client, user, token) in cases {
        assert!(
            device_connect(addr, client, HOST, user, &token)
                .await
                .is_err(),
            "{what} was let in"
        );
    }
}

/// The device answers one direct method through its MQTT session, as IoT Hub's device SDKs do
/// on muster's topics, while the test invokes it with `POST /twins/{id}/methods`.
async fn invoke_through(
    device: &mut muster_tests::MqttClient,
    c: &reqwest::Client,
    rest: &str,
    id: &str,
) {
    device
        .client
        .subscribe(format!("devices/{id}/methods/POST/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .client
        .publish(
            format!("devices/{id}/presence"),
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    wait_for("the device is connected", || {
        let req = c.get(format!("{rest}/devices/{id}?{V}"));
        async move { send(req).await.1["connectionState"] == "Connected" }
    })
    .await
    .unwrap();
    let call = c
        .post(format!("{rest}/twins/{id}/methods?{V}"))
        .json(&json!({"methodName": "ping", "payload": {"n": 1}, "responseTimeoutInSeconds": 30}));
    let call = tokio::spawn(send(call));
    let (topic, payload) = tokio::time::timeout(muster_tests::PATIENCE, device.messages.recv())
        .await
        .expect("the method call reached the device")
        .unwrap();
    assert!(
        topic.starts_with(&format!("devices/{id}/methods/POST/ping/")),
        "{topic}"
    );
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["n"], 1);
    let rid = topic.split_once("$rid=").unwrap().1;
    device
        .client
        .publish(
            format!("devices/{id}/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            r#"{"pong":true}"#,
        )
        .await
        .unwrap();
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": 200, "payload": {"pong": true}}));
}

fn mosquitto_config(dir: &Path, port: u16) -> String {
    format!(
        "per_listener_settings false
allow_anonymous false
password_file {passwd}
acl_file {acl}
user root
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
max_queued_messages 100000
max_inflight_messages 0
listener {port} 127.0.0.1
",
        passwd = dir.join("passwd").display(),
        acl = dir.join("acl").display(),
    )
}

/// Waits until the device's connection is closed (its client's event loop ended).
async fn wait_closed(device: &mut muster_tests::MqttClient, what: &str) {
    tokio::time::timeout(muster_tests::PATIENCE, async {
        while device.messages.recv().await.is_some() {}
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
}

/// A device logged in through `gateway` with a will on `will_topic`.
async fn connect_with_will(
    gateway: &str,
    id: &str,
    token: &str,
    will_topic: &str,
) -> anyhow::Result<muster_tests::MqttClient> {
    let (h, p) = gateway.rsplit_once(':').unwrap();
    let mut opts = rumqttc::MqttOptions::new(id, h, p.parse()?);
    opts.set_credentials(muster_domain::auth::device_user(HOST, id), token);
    opts.set_last_will(rumqttc::LastWill::new(
        will_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    muster_tests::mqtt_connect(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_through_the_gateway_to_mosquitto_with_their_sas_keys() {
    let dir = data_dir().unwrap();
    let d = dir.path();
    let dispatcher_pw = d.join("dispatcher.pw");
    std::fs::write(&dispatcher_pw, DISPATCHER_PASSWORD).unwrap();
    let gateway_pw = d.join("gateway.pw");
    std::fs::write(&gateway_pw, GATEWAY_PASSWORD).unwrap();
    let ports = free_ports(2).unwrap();
    let url = format!("mqtt://127.0.0.1:{}", ports[0]);
    let gateway = format!("127.0.0.1:{}", ports[1]);
    let server = Server::start_with(
        d,
        &[
            "--mqtt-url",
            &url,
            "--mqtt-username",
            "muster-dispatcher",
            "--mqtt-password-file",
            dispatcher_pw.to_str().unwrap(),
            "--device-gateway-addr",
            &gateway,
            "--device-gateway-password-file",
            gateway_pw.to_str().unwrap(),
        ],
    )
    .unwrap();
    server.wait_ready().await.unwrap();

    // The broker's side, written once before any device exists: the dispatcher's and the
    // gateway's logins and the ACL. No device is ever added to it.
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(["device", "--endpoint", &server.grpc, "--output", "json"])
        .arg("credentials")
        .arg("--passwd-out")
        .arg(d.join("passwd"))
        .arg("--acl-out")
        .arg(d.join("acl"))
        .arg("--dispatcher-password-file")
        .arg(&dispatcher_pw)
        .arg("--gateway-password-file")
        .arg(&gateway_pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = Mosquitto::start(d, &mosquitto_config(d, ports[0]), ports[0]).unwrap();

    // Devices created over REST while everything runs log in at once: the primary key's token
    // gets in through the gateway, and the session is a real one: a direct method reaches the
    // device through Mosquitto and its answer comes back.
    let c = http();
    let one = put_device(&c, &server.rest, "sas-1", false, json!({})).await;
    let two = put_device(&c, &server.rest, "sas-2", false, json!({})).await;
    let (primary, secondary) = keys(&one);
    let (two_primary, _) = keys(&two);
    let token = device_token(HOST, "sas-1", &primary, 3600);
    let mut device = device_connect(&gateway, "sas-1", HOST, "sas-1", &token)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    invoke_through(&mut device, &c, &server.rest, "sas-1").await;
    // The secondary key signs too.
    let token2 = device_token(HOST, "sas-1", &secondary, 3600);
    drop(
        device_connect(&gateway, "sas-1", HOST, "sas-1", &token2)
            .await
            .unwrap(),
    );
    // That second session took over the first (same client id, as MQTT says).
    wait_closed(&mut device, "a session taken over").await;
    let mut device = device_connect(&gateway, "sas-1", HOST, "sas-1", &token)
        .await
        .unwrap();
    assert_refusals(&gateway, "sas-1", &primary, ("sas-2", &two_primary)).await;
    // The token is no password for Mosquitto itself: the gateway cannot be bypassed with it.
    assert!(device_connect(&url, "sas-1", HOST, "sas-1", &token)
        .await
        .is_err());

    // One gateway login for every device, yet no device speaks for another: a publish on
    // another device's topic, a subscription to another's calls, and a will on another's
    // presence each end that device's connection (or refuse it).
    let token_two = device_token(HOST, "sas-2", &two_primary, 3600);
    let mut rogue = device_connect(&gateway, "sas-2", HOST, "sas-2", &token_two)
        .await
        .unwrap();
    rogue
        .client
        .publish(
            "devices/sas-1/methods/res/200/?$rid=1",
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    wait_closed(&mut rogue, "a publish for another device").await;
    let mut rogue = device_connect(&gateway, "sas-2", HOST, "sas-2", &token_two)
        .await
        .unwrap();
    rogue
        .client
        .subscribe("devices/+/methods/POST/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_closed(&mut rogue, "a subscription to every device's calls").await;
    assert!(
        connect_with_will(&gateway, "sas-2", &token_two, "devices/sas-1/presence")
            .await
            .is_err(),
        "a will on another device's presence was let in"
    );
    drop(
        connect_with_will(&gateway, "sas-2", &token_two, "devices/sas-2/presence")
            .await
            .unwrap(),
    );

    // Regenerated keys: the open session (alive: a method goes through) is closed, the old
    // token no longer gets in, a token from the new key does.
    invoke_through(&mut device, &c, &server.rest, "sas-1").await;
    put_device(
        &c,
        &server.rest,
        "sas-1",
        true,
        json!({"authentication": {"type": "sas", "symmetricKey":
            {"primaryKey": NEW_PRIMARY, "secondaryKey": NEW_SECONDARY}}}),
    )
    .await;
    wait_closed(&mut device, "keys regenerated").await;
    assert!(device_connect(&gateway, "sas-1", HOST, "sas-1", &token)
        .await
        .is_err());
    let fresh = device_token(HOST, "sas-1", NEW_PRIMARY, 3600);
    let mut device = device_connect(&gateway, "sas-1", HOST, "sas-1", &fresh)
        .await
        .unwrap();

    // Disabled: the connected device is cut off, and refused with a token signed by its own
    // key.
    invoke_through(&mut device, &c, &server.rest, "sas-1").await;
    put_device(
        &c,
        &server.rest,
        "sas-1",
        true,
        json!({"status": "disabled", "statusReason": "lost"}),
    )
    .await;
    wait_closed(&mut device, "device disabled").await;
    assert!(device_connect(&gateway, "sas-1", HOST, "sas-1", &fresh)
        .await
        .is_err());

    // Deleted: the same for sas-2.
    let mut two = device_connect(&gateway, "sas-2", HOST, "sas-2", &token_two)
        .await
        .unwrap();
    let del = c
        .delete(format!("{}/devices/sas-2?{V}", server.rest))
        .header("If-Match", "*");
    let (status, body) = send(del).await;
    assert_eq!(status, 204, "{body}");
    wait_closed(&mut two, "device deleted").await;
    assert!(device_connect(&gateway, "sas-2", HOST, "sas-2", &token_two)
        .await
        .is_err());
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_to_the_dev_broker_with_their_sas_keys() {
    let dir = data_dir().unwrap();
    let dev = DevServer::start(dir.path(), &["--dev-devices", "2"]).unwrap();
    let c = http_with(&dev.token);
    let one = put_device(&c, &dev.rest, "dev-sas-1", false, json!({})).await;
    let two = put_device(&c, &dev.rest, "dev-sas-2", false, json!({})).await;
    let (primary, secondary) = keys(&one);
    let (two_primary, _) = keys(&two);
    let broker = dev.mqtt.clone();
    for key in [&primary, &secondary] {
        let token = device_token(HOST, "dev-sas-1", key, 3600);
        drop(
            device_connect(&broker, "dev-sas-1", HOST, "dev-sas-1", &token)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", dev.log_text())),
        );
    }
    let token = device_token(HOST, "dev-sas-1", &primary, 3600);
    let mut device = device_connect(&broker, "dev-sas-1", HOST, "dev-sas-1", &token)
        .await
        .unwrap();
    invoke_through(&mut device, &c, &dev.rest, "dev-sas-1").await;
    assert_refusals(&broker, "dev-sas-1", &primary, ("dev-sas-2", &two_primary)).await;

    invoke_through(&mut device, &c, &dev.rest, "dev-sas-1").await;
    put_device(
        &c,
        &dev.rest,
        "dev-sas-1",
        true,
        json!({"authentication": {"type": "sas", "symmetricKey":
            {"primaryKey": NEW_PRIMARY, "secondaryKey": NEW_SECONDARY}}}),
    )
    .await;
    // The open session ends (the node takes its client id over), the old token is refused.
    wait_closed(&mut device, "keys regenerated (dev broker)").await;
    assert!(
        device_connect(&broker, "dev-sas-1", HOST, "dev-sas-1", &token)
            .await
            .is_err()
    );
    let fresh = device_token(HOST, "dev-sas-1", NEW_PRIMARY, 3600);
    let mut device = device_connect(&broker, "dev-sas-1", HOST, "dev-sas-1", &fresh)
        .await
        .unwrap();
    invoke_through(&mut device, &c, &dev.rest, "dev-sas-1").await;
    put_device(
        &c,
        &dev.rest,
        "dev-sas-1",
        true,
        json!({"status": "disabled"}),
    )
    .await;
    wait_closed(&mut device, "device disabled (dev broker)").await;
    assert!(
        device_connect(&broker, "dev-sas-1", HOST, "dev-sas-1", &fresh)
            .await
            .is_err()
    );
}
