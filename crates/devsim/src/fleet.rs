//! The fleet: devices grouped onto a few MQTT connections, each connection driven by one task
//! that owns its devices' state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_mqtt::credentials::FleetSecret;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::rng::{self, SplitMix};
use crate::{broker_index, DevsimError, FleetConfig, FleetLogin, DEVICES_PER_CONNECTION};

/// Subscription filters per SUBSCRIBE packet (two per device).
const FILTERS_PER_SUBSCRIBE: usize = 200;
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// What the fleet has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetStats {
    /// Method requests that reached a simulated device (duplicates, silent and offline included).
    pub requests_received: u64,
    /// Answers published (duplicates answered from the cache included).
    pub requests_answered: u64,
    /// Of those, answers with the failure status.
    pub requests_failed: u64,
    /// Requests recognised as repeats of one already answered.
    pub duplicates: u64,
    /// Requests to offline devices, not answered.
    pub ignored_offline: u64,
    pub desired_patches: u64,
    pub reported_patches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
    desired: AtomicU64,
    reported: AtomicU64,
    /// Whether a refused connection was logged already.
    refused_logged: std::sync::atomic::AtomicBool,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
enum Control {
    SetOnline { device: String, online: bool },
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug)]
struct ConnHandle {
    ctrl: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

/// A running simulated fleet. Dropping it aborts its connections without saying goodbye;
/// [`Fleet::shutdown`] marks every device `offline` first.
#[derive(Debug)]
pub struct Fleet {
    ids: Vec<String>,
    model_id: String,
    owner: HashMap<String, usize>,
    conns: Vec<ConnHandle>,
    counters: Arc<Counters>,
}

/// How the fleet behaves, shared by its connections.
#[derive(Debug)]
struct Behaviour {
    seed: u64,
    fail_rate: f64,
    fail_status: i32,
    latency_ms: u64,
    jitter_ms: u64,
}

#[derive(Debug)]
struct SimDevice {
    index: usize,
    online: bool,
    silent: bool,
    failing: bool,
    desired_version: u64,
    desired: Value,
    /// The last answer, for recognising a repeated request: (method, rid, topic, body).
    last: Option<(String, String, String, Arc<Vec<u8>>)>,
}

impl Fleet {
    /// Connects the fleet and returns once every connection has subscribed for its devices and
    /// published their presence.
    pub async fn start(cfg: FleetConfig) -> Result<Fleet, DevsimError> {
        validate(&cfg)?;
        let brokers = muster_mqtt::endpoints(&cfg.brokers, &cfg.tls)?;
        let per_device = match &cfg.login {
            FleetLogin::PerDevice { secret } => Some(FleetSecret::new(secret.clone())?),
            _ => None,
        };
        let ids = cfg.device_ids();
        let n = ids.len();
        let share = |s: f64| ((n as f64) * s).round() as usize;
        let offline: HashSet<usize> = rng::pick(n, share(cfg.offline_share), cfg.seed ^ 0x0ff1)
            .into_iter()
            .collect();
        let mut silent: HashSet<usize> = rng::pick(n, share(cfg.silent_share), cfg.seed ^ 0x5117)
            .into_iter()
            .collect();
        let named_silent: HashSet<&str> = cfg.silent.iter().map(String::as_str).collect();
        let failing: HashSet<&str> = cfg.failing.iter().map(String::as_str).collect();
        for (i, id) in ids.iter().enumerate() {
            if named_silent.contains(id.as_str()) {
                silent.insert(i);
            }
        }
        let behaviour = Arc::new(Behaviour {
            seed: cfg.seed,
            fail_rate: cfg.fail_rate,
            fail_status: cfg.fail_status,
            latency_ms: cfg.latency_ms,
            jitter_ms: cfg.jitter_ms,
        });

        // Devices per broker, then per connection (contiguous slices).
        let mut per_broker: Vec<Vec<usize>> = vec![Vec::new(); brokers.len()];
        for (i, id) in ids.iter().enumerate() {
            per_broker[broker_index(id, brokers.len())].push(i);
        }
        let counters = Arc::new(Counters::default());
        let mut owner = HashMap::with_capacity(n);
        let mut conns = Vec::new();
        let mut readies = Vec::new();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for (b, members) in per_broker.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            let k = if per_device.is_some() {
                members.len()
            } else if cfg.connections > 0 {
                cfg.connections.min(members.len())
            } else {
                members.len().div_ceil(DEVICES_PER_CONNECTION)
            };
            let chunk = members.len().div_ceil(k.max(1));
            for (c, slice) in members.chunks(chunk.max(1)).enumerate() {
                let devices: Vec<(String, SimDevice)> = slice
                    .iter()
                    .map(|&i| {
                        let id = ids[i].clone();
                        let dev = SimDevice {
                            index: i,
                            online: !offline.contains(&i),
                            silent: silent.contains(&i),
                            failing: failing.contains(id.as_str()),
                            desired_version: 0,
                            desired: json!({}),
                            last: None,
                        };
                        (id, dev)
                    })
                    .collect();
                let conn_index = conns.len();
                for (id, _) in &devices {
                    owner.insert(id.clone(), conn_index);
                }
                let client_id = format!(
                    "{}-{}-{b}-{c}-{}-{stamp:08x}",
                    cfg.client_id_prefix,
                    cfg.prefix,
                    std::process::id()
                );
                let mut opts = brokers[b].options(client_id);
                match (&cfg.login, &per_device) {
                    (FleetLogin::Shared { username, password }, _) => {
                        opts.set_credentials(username.clone(), password.expose());
                    }
                    (_, Some(secret)) => {
                        // One device per connection here.
                        let id = &devices[0].0;
                        opts.set_credentials(id.clone(), secret.device_password(id).expose());
                    }
                    _ => {}
                }
                let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
                let (ready_tx, ready_rx) = oneshot::channel();
                readies.push(ready_rx);
                let task = tokio::spawn(run_connection(
                    opts,
                    devices,
                    behaviour.clone(),
                    counters.clone(),
                    ctrl_rx,
                    ready_tx,
                ));
                conns.push(ConnHandle { ctrl, task });
            }
        }
        let fleet = Fleet {
            ids,
            model_id: cfg.model_id.clone(),
            owner,
            conns,
            counters,
        };
        let all_ready = async {
            for r in readies {
                if r.await.is_err() {
                    return false;
                }
            }
            true
        };
        match tokio::time::timeout(Duration::from_millis(cfg.ready_timeout_ms), all_ready).await {
            Ok(true) => Ok(fleet),
            _ => Err(DevsimError::NotReady(cfg.ready_timeout_ms)),
        }
    }

    /// The simulated devices' ids, in order.
    pub fn device_ids(&self) -> &[String] {
        &self.ids
    }

    /// The model id to register the devices with.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Brings a device online (publishes retained `online`, answers again) or takes it offline.
    pub fn set_online(&self, device: &str, online: bool) -> Result<(), DevsimError> {
        let &c = self
            .owner
            .get(device)
            .ok_or_else(|| DevsimError::UnknownDevice(device.to_string()))?;
        self.conns[c]
            .ctrl
            .send(Control::SetOnline {
                device: device.to_string(),
                online,
            })
            .map_err(|_| DevsimError::Stopped)
    }

    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FleetStats {
            requests_received: get(&c.received),
            requests_answered: get(&c.answered),
            requests_failed: get(&c.failed),
            duplicates: get(&c.duplicates),
            ignored_offline: get(&c.ignored),
            desired_patches: get(&c.desired),
            reported_patches: get(&c.reported),
        }
    }

    /// Publishes `offline` for every device, clears their retained presence, then disconnects
    /// (waiting up to 10 s).
    pub async fn shutdown(mut self) {
        let conns = std::mem::take(&mut self.conns);
        let mut waits = Vec::new();
        for c in &conns {
            let (tx, rx) = oneshot::channel();
            if c.ctrl.send(Control::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
        for c in conns {
            c.task.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.conns {
            c.task.abort();
        }
    }
}

fn validate(cfg: &FleetConfig) -> Result<(), DevsimError> {
    let bad = |m: &str| Err(DevsimError::Config(m.to_string()));
    if cfg.brokers.is_empty() {
        return bad("give at least one broker URL");
    }
    for (name, v) in [
        ("fail_rate", cfg.fail_rate),
        ("offline_share", cfg.offline_share),
        ("silent_share", cfg.silent_share),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(DevsimError::Config(format!(
                "{name} must be between 0 and 1, got {v}"
            )));
        }
    }
    if matches!(cfg.login, FleetLogin::PerDevice { .. }) && cfg.connections > 0 {
        return bad(
            "with per-device logins every device has its own connection: leave connections at 0",
        );
    }
    if cfg.prefix.is_empty() || cfg.prefix.contains(['+', '#', '/', ' ']) {
        return bad("prefix must be non-empty and hold no '+', '#', '/' or space");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    mut opts: MqttOptions,
    devices: Vec<(String, SimDevice)>,
    behaviour: Arc<Behaviour>,
    counters: Arc<Counters>,
    mut ctrl: mpsc::UnboundedReceiver<Control>,
    ready: oneshot::Sender<()>,
) {
    let order: Arc<Vec<String>> = Arc::new(devices.iter().map(|(id, _)| id.clone()).collect());
    let mut devices: HashMap<String, SimDevice> = devices.into_iter().collect();
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(1000);
    if let Some(first) = order.first() {
        // The will covers the connection, so it can speak for one device only.
        opts.set_last_will(LastWill::new(
            presence_topic(first),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, order.len() * 2 + 1024);
    let filters_expected = (order.len() * 2).div_ceil(FILTERS_PER_SUBSCRIBE);
    let mut subacks = 0usize;
    let mut ready = Some(ready);
    let mut shutting_down: Option<oneshot::Sender<()>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut reported_rid = 0u64;
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    subacks = 0;
                    let (c, ids) = (client.clone(), order.clone());
                    tokio::spawn(async move {
                        let filters: Vec<SubscribeFilter> = ids
                            .iter()
                            .flat_map(|id| {
                                [
                                    SubscribeFilter::new(format!("devices/{id}/methods/POST/#"), QoS::AtLeastOnce),
                                    SubscribeFilter::new(
                                        format!("devices/{id}/twin/PATCH/properties/desired/#"),
                                        QoS::AtLeastOnce,
                                    ),
                                ]
                            })
                            .collect();
                        for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
                            if c.subscribe_many(chunk.to_vec()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == filters_expected && shutting_down.is_none() {
                        // Presence after the subscriptions: when `online` is seen, the device
                        // can be reached.
                        let presence: Vec<(String, bool)> = order
                            .iter()
                            .map(|id| (id.clone(), devices.get(id).is_some_and(|d| d.online)))
                            .collect();
                        let c = client.clone();
                        let r = ready.take();
                        tokio::spawn(async move {
                            for (id, online) in presence {
                                let body: &'static str = if online { "online" } else { "offline" };
                                if c.publish(presence_topic(&id), QoS::AtLeastOnce, true, body).await.is_err() {
                                    return;
                                }
                            }
                            if let Some(r) = r {
                                let _ = r.send(());
                            }
                        });
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    handle_publish(
                        &client,
                        &mut devices,
                        &behaviour,
                        &counters,
                        &p.topic,
                        &p.payload,
                        &mut reported_rid,
                    );
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    drain_until_closed(&mut eventloop).await;
                    if let Some(done) = shutting_down.take() {
                        let _ = done.send(());
                    }
                    return;
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    if shutting_down.is_some() {
                        return;
                    }
                    if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_))
                        && !counters.refused_logged.swap(true, Ordering::Relaxed)
                    {
                        // A wrong login: say so once per fleet, not at debug level.
                        warn!(error = %e, "the broker refused a devsim connection (login?); retrying");
                    } else {
                        debug!(error = %e, "devsim connection failed; reconnecting");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
            c = ctrl.recv() => match c {
                Some(Control::SetOnline { device, online }) => {
                    if let Some(d) = devices.get_mut(&device) {
                        d.online = online;
                        let body: &'static str = if online { "online" } else { "offline" };
                        publish(&client, presence_topic(&device), true, body.as_bytes().to_vec(), Duration::ZERO);
                    }
                }
                Some(Control::Shutdown(done)) => {
                    shutting_down = Some(done);
                    let (c, ids) = (client.clone(), order.clone());
                    tokio::spawn(async move {
                        for id in ids.iter() {
                            if c.publish(presence_topic(id), QoS::AtLeastOnce, true, "offline").await.is_err() {
                                return;
                            }
                        }
                        // Then forget them: an empty retained message removes the broker's
                        // retained one (subscribers ignore it). Fleets come and go; left
                        // retained, every gone device's presence is sent to each new
                        // subscriber of `devices/+/presence`, and a long-lived broker ends up
                        // feeding hundreds of thousands of them to every muster that starts.
                        for id in ids.iter() {
                            if c.publish(presence_topic(id), QoS::AtLeastOnce, true, Vec::new()).await.is_err() {
                                return;
                            }
                        }
                        let _ = c.disconnect().await;
                    });
                }
                None => {
                    // The fleet handle is gone (dropped): stop quietly.
                    return;
                }
            }
        }
    }
}

/// After DISCONNECT, reads until the broker closes the connection. Dropping a socket with
/// unread data (acks) in it makes the kernel send a reset, and the broker may then discard what
/// it had not yet read (the last presence messages) and publish the will.
async fn drain_until_closed(eventloop: &mut rumqttc::EventLoop) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

fn presence_topic(id: &str) -> String {
    format!("devices/{id}/presence")
}

/// Queues a publish without blocking the connection's event loop: a full request queue (the
/// loop is what drains it) or a delay moves the publish to a task of its own.
fn publish(client: &AsyncClient, topic: String, retain: bool, payload: Vec<u8>, delay: Duration) {
    if delay.is_zero() {
        match client.try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload.clone()) {
            Ok(()) => return,
            Err(_) => {
                let c = client.clone();
                tokio::spawn(async move {
                    let _ = c.publish(topic, QoS::AtLeastOnce, retain, payload).await;
                });
            }
        }
        return;
    }
    let c = client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = c.publish(topic, QoS::AtLeastOnce, retain, payload).await;
    });
}

fn handle_publish(
    client: &AsyncClient,
    devices: &mut HashMap<String, SimDevice>,
    b: &Behaviour,
    counters: &Counters,
    topic: &str,
    payload: &[u8],
    reported_rid: &mut u64,
) {
    let Some(rest) = topic.strip_prefix("devices/") else {
        return;
    };
    let Some((id, rest)) = rest.split_once('/') else {
        return;
    };
    let Some(dev) = devices.get_mut(id) else {
        return;
    };
    if let Some(rest) = rest.strip_prefix("methods/POST/") {
        let Some((method, query)) = rest.split_once('/') else {
            return;
        };
        let Some(rid) = query.strip_prefix("?$rid=") else {
            return;
        };
        bump(&counters.received);
        if !dev.online {
            bump(&counters.ignored);
            return;
        }
        if dev.silent {
            return;
        }
        if let Some((m, r, t, body)) = &dev.last {
            if m == method && r == rid {
                bump(&counters.duplicates);
                bump(&counters.answered);
                publish(
                    client,
                    t.clone(),
                    false,
                    body.as_ref().clone(),
                    Duration::ZERO,
                );
                return;
            }
        }
        let mut rng = SplitMix::new(
            b.seed
                ^ rng::mix(dev.index as u64 + 1)
                ^ rng::fnv1a(rid.as_bytes()).rotate_left(17)
                ^ rng::fnv1a(method.as_bytes()),
        );
        let fail = dev.failing || rng.next_f64() < b.fail_rate;
        let delay = Duration::from_millis(b.latency_ms + rng.up_to(b.jitter_ms));
        let (status, body) = if fail {
            bump(&counters.failed);
            (
                b.fail_status,
                json!({"device": id, "method": method, "error": "simulated failure"}),
            )
        } else {
            (200, json!({"device": id, "method": method, "ok": true}))
        };
        let body = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
        let reply = format!("devices/{id}/methods/res/{status}/?$rid={rid}");
        dev.last = Some((
            method.to_string(),
            rid.to_string(),
            reply.clone(),
            body.clone(),
        ));
        bump(&counters.answered);
        publish(client, reply, false, body.as_ref().clone(), delay);
    } else if let Some(query) = rest.strip_prefix("twin/PATCH/properties/desired/") {
        if !dev.online {
            return;
        }
        let Some(version) = query
            .strip_prefix("?$version=")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        if version <= dev.desired_version {
            return; // a repeat
        }
        let Ok(patch) = serde_json::from_slice::<Value>(payload) else {
            warn!(device = id, "desired patch is not JSON");
            return;
        };
        dev.desired_version = version;
        merge_patch(&mut dev.desired, &patch);
        bump(&counters.desired);
        *reported_rid += 1;
        let topic = format!(
            "devices/{id}/twin/PATCH/properties/reported/?$rid={}",
            reported_rid
        );
        bump(&counters.reported);
        publish(client, topic, false, payload.to_vec(), Duration::ZERO);
    }
}

/// JSON merge patch (RFC 7386), as the twin applies it.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let bad = FleetConfig {
            fail_rate: 1.5,
            ..FleetConfig::default()
        };
        assert!(validate(&bad).is_err());
        let bad = FleetConfig {
            prefix: "a/b".into(),
            ..FleetConfig::default()
        };
        assert!(validate(&bad).is_err());
        assert!(validate(&FleetConfig::default()).is_ok());
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let mut d = json!({"a": 1, "b": {"c": 1}});
        merge_patch(&mut d, &json!({"a": null, "b": {"d": 2}}));
        assert_eq!(d, json!({"b": {"c": 1, "d": 2}}));
    }
}
