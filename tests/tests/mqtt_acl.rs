//! Devices cannot speak for each other (issue 13): a Mosquitto of the test's own with a TLS
//! listener (client certificates required too), no anonymous access, and the password and ACL files `muster device credentials`
//! writes from muster's registry. The node's dispatcher logs in with its own user over
//! `mqtts://`, `muster devsim --credentials-secret-file` logs each device in as itself with its
//! derived password, and a job runs. A rogue client logged in as device A then publishes, for
//! device B, a spoofed method answer, a spoofed `offline` presence (also as its will) and a
//! spoofed reported patch: the broker drops all of them (an observer with the dispatcher's read
//! rights never sees them), and muster never records them (B's outcome is B's own failure, B
//! stays connected, B's twin is unchanged).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_mqtt::credentials::FleetSecret;
use muster_mqtt::{Endpoint, Secret, TlsFiles};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{
    data_dir, free_ports, leader_channel, mqtt_connect, wait_for, Devsim, Mosquitto, MqttClient,
    Server,
};
use rumqttc::{LastWill, QoS};
use serde_json::{json, Value};

const HUB: &str = "api-version=2021-04-12";
const SECRET: &str = "mqtt-acl-test-fleet-secret-0123456789";
const DISPATCHER_PASSWORD: &str = "dispatcher-password-for-the-test";

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A client certificate from the same CA (the broker requires one).
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate (rcgen,
/// ECDSA P-256).
fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "muster test MQTT CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut broker = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    broker
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    broker
        .distinguished_name
        .push(DnType::CommonName, "mosquitto");
    let cert = broker.signed_by(&key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "muster fleet");
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("broker.pem"),
        key: dir.join("broker.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    std::fs::write(&certs.client_cert, client_cert.pem()).unwrap();
    std::fs::write(&certs.client_key, client_key.serialize_pem()).unwrap();
    certs
}

/// deploy/mosquitto/mosquitto.conf's settings, with this test's files and port, and client
/// certificates required as well (its commented-out option). `user root`
/// keeps a Mosquitto started as root from dropping to the `mosquitto` user, who could not read
/// the test's private temporary directory (ignored when not started as root).
fn mosquitto_config(dir: &Path, certs: &Certs, port: u16) -> String {
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
certfile {cert}
keyfile {key}
cafile {ca}
require_certificate true
",
        ca = certs.ca.display(),
        passwd = dir.join("passwd").display(),
        acl = dir.join("acl").display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

async fn devices(ch: &muster_tests::AuthChannel) -> Vec<pb::Device> {
    DeviceServiceClient::new(ch.clone())
        .list_devices(pb::ListDevicesRequest {
            page_size: 1000,
            page_token: String::new(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner()
        .devices
}

async fn device(ch: &muster_tests::AuthChannel, id: &str) -> pb::Device {
    DeviceServiceClient::new(ch.clone())
        .get_device(pb::GetDeviceRequest {
            device_id: id.into(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn job_devices(ch: &muster_tests::AuthChannel, job: &str) -> Vec<pb::JobDevice> {
    JobServiceClient::new(ch.clone())
        .list_job_devices(pb::ListJobDevicesRequest {
            job_id: job.into(),
            run: None,
            status: 0,
            page_size: 1000,
            page_token: String::new(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner()
        .devices
}

fn reported(d: &pb::Device) -> Value {
    serde_json::from_str(&d.reported_json).unwrap_or(Value::Null)
}

/// A test client of the secured broker, logged in as `user` (or anonymously).
async fn client(
    endpoint: &Endpoint,
    id: &str,
    login: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> anyhow::Result<MqttClient> {
    let mut opts = endpoint.options(id);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    if let Some(w) = will {
        opts.set_last_will(w);
    }
    mqtt_connect(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_answer_report_or_go_offline_for_another() {
    let dir = data_dir().unwrap();
    let d = dir.path();
    let certs = make_certs(d);
    let secret_file = write(d, "fleet.secret", &format!("{SECRET}\n"));
    let dispatcher_pw = write(d, "dispatcher.pw", DISPATCHER_PASSWORD);
    let port = free_ports(1).unwrap()[0];
    let url = format!("mqtts://127.0.0.1:{port}");
    let ca = certs.ca.to_string_lossy().into_owned();
    let client_cert = certs.client_cert.to_string_lossy().into_owned();
    let client_key = certs.client_key.to_string_lossy().into_owned();

    // The node first: its dispatcher retries until the broker is up.
    let server = Server::start_with(
        d,
        &[
            "--mqtt-url",
            &url,
            "--mqtt-ca",
            &ca,
            "--mqtt-client-cert",
            &client_cert,
            "--mqtt-client-key",
            &client_key,
            "--mqtt-username",
            "muster-dispatcher",
            "--mqtt-password-file",
            &dispatcher_pw,
        ],
    )
    .unwrap();
    let ch = leader_channel(&server).await.unwrap();
    let ids: Vec<String> = (1..=3).map(|n| format!("acl-{n:06}")).collect();
    let (a, b) = (ids[0].clone(), ids[1].clone());
    // Also a disabled device (no login) and one whose id Mosquitto cannot take as a user name.
    let extra = [("acl-off", false), ("acl:odd", true)];
    DeviceServiceClient::new(ch.clone())
        .import_devices(pb::ImportDevicesRequest {
            devices: ids
                .iter()
                .map(|id| (id.as_str(), true))
                .chain(extra)
                .map(|(id, enabled)| pb::NewDevice {
                    device_id: id.to_string(),
                    display_name: id.to_string(),
                    model_id: None,
                    enabled: Some(enabled),
                    tags_json: String::new(),
                })
                .collect(),
        })
        .await
        .unwrap();

    // Provisioning from the registry.
    let passwd = d.join("passwd");
    let acl = d.join("acl");
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(["device", "--endpoint", &server.grpc, "--output", "json"])
        .args(["credentials", "--secret-file", &secret_file])
        .arg("--passwd-out")
        .arg(&passwd)
        .arg("--acl-out")
        .arg(&acl)
        .args(["--dispatcher-password-file", &dispatcher_pw])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["devices"], 3, "{summary}");
    assert_eq!(summary["disabledSkipped"], 1, "{summary}");
    assert_eq!(summary["leftOut"], json!(["acl:odd"]), "{summary}");
    let passwd_text = std::fs::read_to_string(&passwd).unwrap();
    assert_eq!(passwd_text.lines().count(), 4, "{passwd_text}");
    assert!(passwd_text.starts_with("muster-dispatcher:$7$101$"));

    let broker = Mosquitto::start(d, &mosquitto_config(d, &certs, port), port).unwrap();
    let endpoint = muster_mqtt::endpoints(
        std::slice::from_ref(&url),
        &TlsFiles {
            ca_file: Some(certs.ca.clone()),
            client_cert_file: Some(certs.client_cert.clone()),
            client_key_file: Some(certs.client_key.clone()),
        },
    )
    .unwrap()
    .remove(0);
    // Without a client certificate the TLS handshake fails.
    let no_cert = muster_mqtt::endpoints(
        std::slice::from_ref(&url),
        &TlsFiles {
            ca_file: Some(certs.ca.clone()),
            ..TlsFiles::default()
        },
    )
    .unwrap()
    .remove(0);
    let secret = FleetSecret::new(Secret::new(SECRET)).unwrap();
    let a_pw = secret.device_password(&a);

    // No client certificate, no login, or a wrong login: refused.
    assert!(
        client(&no_cert, "acl-no-cert", Some((&a, a_pw.expose())), None)
            .await
            .is_err()
    );
    assert!(client(&endpoint, "acl-anon", None, None).await.is_err());
    assert!(client(&endpoint, "acl-wrong", Some((&a, "guess")), None)
        .await
        .is_err());
    assert!(
        client(&endpoint, "acl-b-as-a", Some((&b, a_pw.expose())), None)
            .await
            .is_err(),
        "A's password let a client in as B"
    );

    // The fleet, each device as itself; B answers every call with 500 after 3 s.
    let mut devsim = Devsim::start(
        d,
        &[
            "--broker",
            &url,
            "--ca",
            &ca,
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
            "--credentials-secret-file",
            &secret_file,
            "--devices",
            "3",
            "--prefix",
            "acl",
            "--latency-ms",
            "3000",
            "--failing",
            &b,
        ],
    );
    assert_eq!(
        devsim.first_line(),
        format!("devsim ready: 3 devices on {url}"),
        "{}",
        devsim.log()
    );
    let connected = pb::ConnectionState::Connected as i32;
    // (Only the three simulated ones: the disabled and the odd device never connect.)
    wait_for(
        "the 3 devices connected (presence through the ACL)",
        || async {
            devices(&ch)
                .await
                .iter()
                .filter(|x| ids.contains(&x.device_id))
                .all(|x| x.connection == connected)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), broker.log_text()));

    // An observer with the dispatcher's read rights sees what the broker lets through.
    let mut observer = client(
        &endpoint,
        "acl-observer",
        Some(("muster-dispatcher", DISPATCHER_PASSWORD)),
        None,
    )
    .await
    .unwrap();
    for f in [
        "devices/+/methods/res/#",
        "devices/+/presence",
        "devices/+/twin/PATCH/properties/reported/#",
    ] {
        observer.client.subscribe(f, QoS::AtMostOnce).await.unwrap();
    }
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    let b_presence = format!("devices/{b}/presence");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|(t, p)| t == &b_presence && p == b"online") {
        let m = tokio::time::timeout_at(deadline, observer.messages.recv())
            .await
            .expect("the observer saw B's retained presence")
            .unwrap();
        seen.push(m);
    }

    // A job on the three devices.
    let http = muster_tests::http();
    let job = json!({
        "jobId": "acl-job",
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30},
        "deviceIds": ids,
    });
    let r = http
        .put(format!("{}/jobs/v2/acl-job?{HUB}", server.rest))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let running = pb::DeviceStatus::Running as i32;
    wait_for("B's method call sent", || async {
        job_devices(&ch, "acl-job")
            .await
            .iter()
            .any(|x| x.device_id == b && x.status == running)
    })
    .await
    .unwrap();

    // The rogue: logged in as A, speaking for B (its will too).
    let will = LastWill::new(b_presence.clone(), "offline", QoS::AtLeastOnce, true);
    let rogue_will = client(
        &endpoint,
        "acl-rogue-will",
        Some((&a, a_pw.expose())),
        Some(will),
    )
    .await;
    drop(rogue_will); // no DISCONNECT: the broker would publish the will, if the ACL let it
    let rogue = client(&endpoint, "acl-rogue", Some((&a, a_pw.expose())), None)
        .await
        .unwrap();
    let spoofed = json!({"spoofed": true}).to_string();
    for run in 0..=1 {
        rogue
            .client
            .publish(
                format!("devices/{b}/methods/res/200/?$rid=acl-job:{run}:1"),
                QoS::AtLeastOnce,
                false,
                spoofed.clone(),
            )
            .await
            .unwrap();
    }
    rogue
        .client
        .publish(&b_presence, QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    rogue
        .client
        .publish(
            format!("devices/{b}/twin/PATCH/properties/reported/?$rid=66"),
            QoS::AtLeastOnce,
            false,
            spoofed.clone(),
        )
        .await
        .unwrap();
    // A's own topic works: the control that the rogue's messages reached the broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rogue
        .client
        .publish(
            format!("devices/{a}/twin/PATCH/properties/reported/?$rid=67"),
            QoS::AtLeastOnce,
            false,
            json!({"rogueCheck": 1}).to_string(),
        )
        .await
        .unwrap();
    wait_for("A's own reported patch recorded", || async {
        reported(&device(&ch, &a).await)["rogueCheck"] == 1
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), broker.log_text()));
    let control = format!("devices/{a}/twin/PATCH/properties/reported/?$rid=67");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|(t, _)| t == &control) {
        let m = tokio::time::timeout_at(deadline, observer.messages.recv())
            .await
            .expect("the observer saw A's own patch")
            .unwrap();
        seen.push(m);
    }
    // The broker let none of the spoofs through.
    for (t, p) in &seen {
        let text = String::from_utf8_lossy(p);
        assert!(!text.contains("spoofed"), "the broker passed {t}: {text}");
        assert!(
            !(t == &b_presence && p == b"offline"),
            "the broker passed a spoofed offline for B"
        );
    }

    // muster recorded none: B stays connected with its twin unchanged, and its outcome is its
    // own 500.
    let bdev = device(&ch, &b).await;
    assert_eq!(bdev.connection, connected, "{bdev:?}");
    assert!(!bdev.reported_json.contains("spoofed"), "{bdev:?}");
    let completed = wait_for("the job completed", || async {
        let r = http
            .get(format!("{}/jobs/v2/acl-job?{HUB}", server.rest))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["status"] == "completed"
    })
    .await;
    completed.unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log_text(), devsim.log()));
    for jd in job_devices(&ch, "acl-job").await {
        let (status, code) = if jd.device_id == b {
            (pb::DeviceStatus::Failed, 500)
        } else {
            (pb::DeviceStatus::Succeeded, 200)
        };
        assert_eq!(jd.status, status as i32, "{jd:?}");
        assert_eq!(jd.response_status, Some(code), "{jd:?}");
        assert!(
            !jd.response_payload_json
                .as_deref()
                .unwrap_or_default()
                .contains("spoofed"),
            "{jd:?}"
        );
    }
    let bdev = device(&ch, &b).await;
    assert_eq!(bdev.connection, connected, "{bdev:?}");
    assert!(!bdev.reported_json.contains("spoofed"), "{bdev:?}");

    drop(rogue);
    drop(observer);
    assert!(devsim.terminate().success(), "{}", devsim.log());
    drop(broker);
}
