//! The simulated fleet against a real broker: Mosquitto at `MUSTER_TEST_MQTT_URL` (default
//! `mqtt://127.0.0.1:1883`), and the embedded rumqttd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_devsim::{broker, Fleet, FleetConfig, FleetLogin};
use muster_mqtt::Secret;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

fn broker_url() -> String {
    std::env::var("MUSTER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A prefix no other test (or earlier run) uses, so retained presence does not leak in.
fn unique(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{:x}", n % 0xffff_ffff_ffff)
}

/// A raw MQTT client playing the service side: it subscribes to everything about the given
/// devices (not to `devices/#`: the shared broker may hold retained presence of many others)
/// and forwards (topic, payload).
async fn service(
    url: &str,
    ids: &[String],
    login: Option<&(String, Secret)>,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = MqttOptions::new(unique("svc"), host, port.parse().unwrap());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((u, p)) = login {
        opts.set_credentials(u.clone(), p.expose());
    }
    let (client, mut el) = AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let filters = ids
        .iter()
        .map(|id| rumqttc::SubscribeFilter::new(format!("devices/{id}/#"), QoS::AtLeastOnce));
    client.subscribe_many(filters).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
        .await
        .expect("service subscribed");
    (client, rx)
}

async fn wait_for(
    what: &str,
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    mut pred: impl FnMut(&str, &[u8]) -> bool,
) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (t, p) = rx.recv().await.expect("service connection alive");
            if pred(&t, &p) {
                return (t, p);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn exercise(url: String, login: Option<(String, Secret)>) {
    let prefix = unique("ds");
    let ids: Vec<String> = (1..=6)
        .map(|n| muster_devsim::device_id(&prefix, n))
        .collect();
    let (svc, mut rx) = service(&url, &ids, login.as_ref()).await;
    let cfg = FleetConfig {
        brokers: vec![url.clone()],
        devices: 6,
        prefix: prefix.clone(),
        connections: 2,
        silent: vec![ids[4].clone()],
        failing: vec![ids[1].clone()],
        latency_ms: 5,
        login: match &login {
            Some((username, password)) => FleetLogin::Shared {
                username: username.clone(),
                password: password.clone(),
            },
            None => FleetLogin::Anonymous,
        },
        ..FleetConfig::default()
    };
    let fleet = Fleet::start(cfg).await.unwrap();
    assert_eq!(fleet.device_ids(), ids.as_slice());

    // Every device says it is online.
    let mut online = HashMap::new();
    while online.len() < 6 {
        let (t, p) = wait_for("presence online", &mut rx, |t, _| {
            t.starts_with(&format!("devices/{prefix}-")) && t.ends_with("/presence")
        })
        .await;
        online.insert(t, p);
    }
    assert!(online.values().all(|p| p == b"online"));

    // A request is answered, a repeat of it too (from the cache), a failing device fails.
    for id in [&ids[0], &ids[0], &ids[1]] {
        svc.publish(
            format!("devices/{id}/methods/POST/reboot/?$rid=j:0:1"),
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    }
    let (t, p) = wait_for("reply 0", &mut rx, |t, _| {
        t.starts_with(&format!("devices/{}/methods/res/", ids[0]))
    })
    .await;
    assert_eq!(t, format!("devices/{}/methods/res/200/?$rid=j:0:1", ids[0]));
    let body: serde_json::Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["method"], "reboot");
    let (t, _) = wait_for("reply 1", &mut rx, |t, _| {
        t.starts_with(&format!("devices/{}/methods/res/", ids[1]))
    })
    .await;
    assert_eq!(t, format!("devices/{}/methods/res/500/?$rid=j:0:1", ids[1]));

    // A silent device receives and never answers; an offline one ignores the request.
    fleet.set_online(&ids[5], false).unwrap();
    let (_, p) = wait_for("presence offline of one", &mut rx, |t, _| {
        t == format!("devices/{}/presence", ids[5])
    })
    .await;
    assert_eq!(p, b"offline");
    for id in [&ids[4], &ids[5]] {
        svc.publish(
            format!("devices/{id}/methods/POST/ping/?$rid=j:0:1"),
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    }

    // Desired patches are applied once and echoed as reported properties.
    svc.publish(
        format!(
            "devices/{}/twin/PATCH/properties/desired/?$version=1",
            ids[2]
        ),
        QoS::AtLeastOnce,
        false,
        r#"{"fw":"2.0"}"#,
    )
    .await
    .unwrap();
    let (_, p) = wait_for("reported", &mut rx, |t, _| {
        t.starts_with(&format!(
            "devices/{}/twin/PATCH/properties/reported/",
            ids[2]
        ))
    })
    .await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&p).unwrap()["fw"],
        "2.0"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = fleet.stats();
        if s.requests_received >= 5 && s.ignored_offline >= 1 {
            assert_eq!(s.duplicates, 1);
            assert_eq!(s.requests_failed, 1);
            assert_eq!(s.requests_answered, 3);
            assert_eq!(s.desired_patches, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stats: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A clean shutdown marks every device offline.
    fleet.shutdown().await;
    let mut offline = std::collections::HashSet::new();
    while offline.len() < 6 {
        let (t, _) = wait_for("offline at shutdown", &mut rx, |t, p| {
            t.starts_with(&format!("devices/{prefix}-"))
                && t.ends_with("/presence")
                && p == b"offline"
        })
        .await;
        offline.insert(t);
    }
    // ... and then clears their retained presence: a new subscriber gets none. (`shutdown`
    // returns once the broker closed the connection, so it has read the clearing messages.)
    // Retained messages arrive right after the subscription, before a message published after
    // it.
    let (late, mut late_rx) = service(&url, &ids, login.as_ref()).await;
    let marker = format!("devices/{}/marker", ids[0]);
    late.publish(marker.clone(), QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    let mut before_marker = Vec::new();
    wait_for("the marker", &mut late_rx, |t, p| {
        if t == marker {
            return true;
        }
        before_marker.push((t.to_string(), p.to_vec()));
        false
    })
    .await;
    assert!(
        before_marker.is_empty(),
        "retained after shutdown: {before_marker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_speaks_the_protocol_on_mosquitto() {
    exercise(broker_url(), None).await;
}

fn login() -> (String, Secret) {
    ("fleet".to_string(), Secret::new("fleet-password"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_speaks_the_protocol_on_the_embedded_broker() {
    let b = broker::start_embedded(SocketAddr::from(([127, 0, 0, 1], 0)), &[login()]).unwrap();
    assert_ne!(b.addr().port(), 0);
    exercise(b.url(), Some(login())).await;
}

/// Whether the broker at `url` accepts a connection with `login` (a CONNACK with success).
async fn accepted(url: &str, login: Option<(&str, &str)>) -> bool {
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = MqttOptions::new(unique("probe"), host, port.parse().unwrap());
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let (_client, mut el) = AsyncClient::new(opts, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code == rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    outcome == Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_anonymous_clients_and_wrong_logins() {
    assert!(broker::start_embedded(SocketAddr::from(([127, 0, 0, 1], 0)), &[]).is_err());
    let b = broker::start_embedded(SocketAddr::from(([127, 0, 0, 1], 0)), &[login()]).unwrap();
    assert!(!accepted(&b.url(), None).await, "anonymous client accepted");
    assert!(!accepted(&b.url(), Some(("fleet", "guess"))).await);
    assert!(!accepted(&b.url(), Some(("nobody", "fleet-password"))).await);
    assert!(accepted(&b.url(), Some(("fleet", "fleet-password"))).await);
}
