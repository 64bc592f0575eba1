//! The dispatcher against a real broker (Mosquitto at `MUSTER_TEST_MQTT_URL`, default
//! `mqtt://127.0.0.1:1883`) with a simulated fleet, over an in-memory host: the pure core's
//! `State::execute` behind a mutex stands in for Raft and the store.
//!
//! Every test uses its own job ids and device prefix, so tests (and earlier runs leaving retained
//! presence behind) do not interfere. Conditions are awaited with generous timeouts; nothing here
//! asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, StreamExt};
use muster_devsim::{Fleet, FleetConfig, FleetLogin};
use muster_dispatch::{wall_clock as now, DispatchConfig, Dispatcher, Host, HostError, Update};
use muster_domain::{
    BatchSize, CancelReason, CancellationThreshold, Command, ConnectionState, DeviceRegistration,
    DeviceStatus, JobSpec, JobStatus, MethodCall, Operation, RetryPolicy, Rollout, Schedule, State,
    Target, TargetSelector, Threshold,
};
use muster_mqtt::Secret;
use muster_types::{DeviceId, JobId};
use serde_json::json;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::BroadcastStream;

fn broker_url() -> String {
    std::env::var("MUSTER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

fn unique(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{:x}", n % 0xffff_ffff_ffff)
}

/// The core behind a mutex, with a broadcast of what each command applied.
#[derive(Clone)]
struct TestHost {
    state: Arc<Mutex<(State, u64)>>,
    tx: broadcast::Sender<Update>,
    /// Sizes of the `RecordDeviceResults` commands proposed.
    result_batches: Arc<Mutex<Vec<usize>>>,
    /// Sizes of the `SetConnections` commands proposed (a single `SetConnection` counts as 0).
    presence_batches: Arc<Mutex<Vec<usize>>>,
}

impl TestHost {
    fn new() -> Self {
        TestHost {
            state: Arc::new(Mutex::new((State::default(), 0))),
            tx: broadcast::channel(4096).0,
            result_batches: Arc::new(Mutex::new(Vec::new())),
            presence_batches: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn execute(&self, cmd: Command) -> Result<(), HostError> {
        match &cmd {
            Command::RecordDeviceResults { results, .. } => {
                self.result_batches.lock().unwrap().push(results.len());
            }
            Command::SetConnections { changes, .. } => {
                self.presence_batches.lock().unwrap().push(changes.len());
            }
            Command::SetConnection { .. } => self.presence_batches.lock().unwrap().push(0),
            _ => {}
        }
        let mut g = self.state.lock().unwrap();
        let events =
            g.0.execute(&cmd)
                .map_err(|e| HostError::Rejected(e.to_string()))?;
        if events.is_empty() {
            return Ok(());
        }
        g.1 += events.len() as u64;
        let update = Update::Applied;
        drop(g);
        let _ = self.tx.send(update);
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap().0)
    }
}

impl Host for TestHost {
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<(), HostError>> + Send {
        let h = self.clone();
        async move { h.execute(cmd) }
    }

    fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let g = self.state.lock().unwrap();
        f(&g.0, g.1)
    }

    fn updates(&self) -> BoxStream<'static, Update> {
        BroadcastStream::new(self.tx.subscribe())
            .map(|r| r.unwrap_or(Update::Resync))
            .boxed()
    }

    fn now(&self) -> muster_types::Timestamp {
        now()
    }
}

/// A running dispatcher; dropping the stop sender ends it.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn start_dispatcher(host: &TestHost, brokers: Vec<String>) -> Running {
    start_dispatcher_with(
        host,
        DispatchConfig {
            brokers,
            client_id_prefix: unique("disp"),
            ..DispatchConfig::default()
        },
    )
}

fn start_dispatcher_with(host: &TestHost, cfg: DispatchConfig) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let h = host.clone();
    let task = tokio::spawn(async move {
        Dispatcher::run(h, cfg, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { stop, task }
}

fn register(host: &TestHost, ids: &[String], model: &str) {
    let devices = ids
        .iter()
        .map(|id| DeviceRegistration {
            id: DeviceId::new(id.as_str()).unwrap(),
            display_name: id.clone(),
            model_id: Some(model.to_string()),
            enabled: true,
            tags: json!({}).into(),
        })
        .collect();
    host.execute(Command::RegisterDevices {
        devices,
        upsert: false,
        at: now(),
    })
    .unwrap();
}

fn method_job(ids: &[String], response_timeout_secs: u32) -> JobSpec {
    JobSpec {
        display_name: "reboot the building".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Devices(
                ids.iter()
                    .map(|i| DeviceId::new(i.as_str()).unwrap())
                    .collect(),
            ),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!({"delay": 0}),
            response_timeout_secs,
            connect_timeout_secs: 60,
        })],
        schedule: Schedule::default(),
        rollout: Rollout {
            batch: Some(BatchSize::Percentage(25)),
            max_devices_per_minute: None,
            ..Default::default()
        },
        cancellation: Some(CancellationThreshold {
            limit: Threshold::Percentage(10),
            per_batch: false,
        }),
        retry: RetryPolicy::default(),
    }
}

fn create(host: &TestHost, spec: JobSpec) -> JobId {
    let id = JobId::new(unique("job")).unwrap();
    host.execute(Command::CreateJob {
        id: id.clone(),
        spec,
        at: now(),
    })
    .unwrap();
    id
}

async fn eventually(what: &str, host: &TestHost, mut cond: impl FnMut(&State) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if host.with(&mut cond) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let (connected, other) = host.with(|s| {
                let c = s
                    .registry
                    .devices
                    .values()
                    .filter(|d| d.connection == ConnectionState::Connected)
                    .count();
                (c, s.registry.devices.len() - c)
            });
            let batches = host.presence_batches.lock().unwrap().clone();
            panic!(
                "timed out waiting until {what}: {connected} devices connected, {other} not; \
                 presence entries proposed: {batches:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_connected(host: &TestHost, ids: &[String]) {
    eventually("every device is connected", host, |s| {
        ids.iter().all(|id| {
            s.registry
                .devices
                .get(&DeviceId::new(id.as_str()).unwrap())
                .is_some_and(|d| d.connection == ConnectionState::Connected)
        })
    })
    .await;
}

fn job_status(s: &State, id: &JobId) -> JobStatus {
    s.jobs[id].status
}

/// The seed scenario: a method job on 40 devices, 25% batches, cancel above 10% failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_job_on_forty_devices_completes() {
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 40,
        prefix: unique("ok"),
        latency_ms: 2,
        jitter_ms: 5,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;

    let job = create(&host, method_job(&ids, 30));
    eventually("the job completes", &host, |s| {
        job_status(s, &job).is_final()
    })
    .await;
    host.with(|s| {
        let j = &s.jobs[&job];
        assert_eq!(j.status, JobStatus::Completed);
        let stats = j.stats();
        assert_eq!((stats.devices, stats.succeeded), (40, 40));
        let r = j.current_run().devices[0].response.clone().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.payload.value()["method"], "reboot");
        assert_eq!(j.current_run().batches_started, 4);
    });
    let batches = host.result_batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 40, "{batches:?}");
    d.stop().await;
    fleet.shutdown().await;
}

/// Publishes `payload` retained on `topic` (an empty payload clears it) with a client whose own
/// packet limit is large enough for it, and waits until the broker acknowledged it.
async fn publish_retained(topic: &str, payload: Vec<u8>) {
    let url = broker_url();
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("big"), host, port.parse().unwrap());
    opts.set_max_packet_size(1 << 22, 1 << 22);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => break,
                _ => continue,
            }
        }
    })
    .await
    .expect("the broker acknowledges the retained message");
    let _ = client.disconnect().await;
}

/// Issue 18: a retained message larger than the dispatcher's limit used to drop its connection,
/// and the broker redelivered it on every resubscribe, so nothing was dispatched any more. It is
/// now skipped, and a job on healthy devices completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_retained_message_does_not_stop_dispatch() {
    let topic = format!("devices/{}/presence", unique("huge"));
    publish_retained(&topic, vec![b'x'; 300 * 1024]).await;

    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 8,
        prefix: unique("big"),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;
    let job = create(&host, method_job(&ids, 30));
    eventually("the job completes", &host, |s| {
        job_status(s, &job).is_final()
    })
    .await;
    host.with(|s| assert_eq!(s.jobs[&job].status, JobStatus::Completed));
    d.stop().await;
    fleet.shutdown().await;
    publish_retained(&topic, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_above_the_threshold_cancel_the_job() {
    let host = TestHost::new();
    let prefix = unique("bad");
    let ids: Vec<String> = (1..=40)
        .map(|n| muster_devsim::device_id(&prefix, n))
        .collect();
    // Six failing devices in the first batch: the fifth failure is more than 10% of 40.
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 40,
        prefix,
        failing: ids[..6].to_vec(),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;

    let job = create(&host, method_job(&ids, 30));
    eventually("the job ends", &host, |s| job_status(s, &job).is_final()).await;
    host.with(|s| {
        let j = &s.jobs[&job];
        assert_eq!(j.status, JobStatus::Cancelled);
        assert!(matches!(
            j.cancel_reason,
            Some(CancelReason::Threshold {
                failures: 5,
                population: 40,
                ..
            })
        ));
        let failed = &j.current_run().devices[0];
        assert_eq!(failed.status, DeviceStatus::Failed);
        assert_eq!(failed.response.as_ref().unwrap().status, 500);
        // Nothing after the first batch was sent.
        assert!(j
            .current_run()
            .devices
            .iter_from(10)
            .all(|d| d.attempts == 0));
    });
    d.stop().await;
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_devices_time_out_through_advance() {
    let host = TestHost::new();
    let prefix = unique("mute");
    let ids: Vec<String> = (1..=4)
        .map(|n| muster_devsim::device_id(&prefix, n))
        .collect();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 4,
        prefix,
        silent: vec![ids[3].clone()],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;

    let mut spec = method_job(&ids, 1);
    spec.rollout.batch = None;
    spec.cancellation = None;
    let job = create(&host, spec);
    eventually("the job ends", &host, |s| job_status(s, &job).is_final()).await;
    host.with(|s| {
        let j = &s.jobs[&job];
        assert_eq!(j.status, JobStatus::Completed);
        let st = j.stats();
        assert_eq!((st.succeeded, st.timed_out), (3, 1));
        assert_eq!(j.current_run().devices[3].status, DeviceStatus::TimedOut);
    });
    d.stop().await;
    fleet.shutdown().await;
}

/// A fleet coming online is recorded in a few `SetConnections` entries, not one per device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_coming_online_takes_few_entries() {
    let host = TestHost::new();
    let n = 600;
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: n,
        prefix: unique("storm"),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    eventually("every device is connected", &host, |s| {
        ids.iter().all(|id| {
            s.registry.devices[&DeviceId::new(id.as_str()).unwrap()].connection
                == ConnectionState::Connected
        })
    })
    .await;
    let batches = host.presence_batches.lock().unwrap().clone();
    assert!(!batches.contains(&0), "a single SetConnection was proposed");
    // Each device's change once (unchanged presence is not proposed), in far fewer entries.
    assert_eq!(batches.iter().sum::<usize>(), n, "{batches:?}");
    assert!(
        batches.len() * 10 <= n,
        "{} entries: {batches:?}",
        batches.len()
    );
    d.stop().await;
    fleet.shutdown().await;
}

/// An offline device waits; when it comes online (presence → SetConnections) it is dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_dispatched_once_it_comes_online() {
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 4,
        prefix: unique("off"),
        offline_share: 0.25,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    eventually("presence is known", &host, |s| {
        let conn: Vec<ConnectionState> = s
            .registry
            .devices
            .values()
            .filter(|d| ids.contains(&d.id.to_string()))
            .map(|d| d.connection)
            .collect();
        conn.iter()
            .filter(|c| **c == ConnectionState::Connected)
            .count()
            == 3
            && conn.contains(&ConnectionState::Disconnected)
    })
    .await;
    let offline = host.with(|s| {
        s.registry
            .devices
            .values()
            .find(|d| {
                d.connection == ConnectionState::Disconnected && ids.contains(&d.id.to_string())
            })
            .unwrap()
            .id
            .clone()
    });

    let mut spec = method_job(&ids, 30);
    spec.rollout.batch = None;
    let job = create(&host, spec);
    eventually("the online devices succeed", &host, |s| {
        s.jobs[&job].stats().succeeded == 3
    })
    .await;
    host.with(|s| assert_eq!(job_status(s, &job), JobStatus::Running));
    fleet.set_online(offline.as_str(), true).unwrap();
    eventually("the job completes", &host, |s| {
        job_status(s, &job) == JobStatus::Completed
    })
    .await;
    d.stop().await;
    fleet.shutdown().await;
}

/// A new leader's dispatcher re-sends what was in flight; the device answers the repeat from
/// its cache and the job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dispatcher_resends_what_was_in_flight() {
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 5,
        prefix: unique("lead"),
        latency_ms: 3000,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let first = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;
    let mut spec = method_job(&ids, 60);
    spec.rollout.batch = None;
    let job = create(&host, spec);
    eventually("all devices are running", &host, |s| {
        s.jobs[&job].stats().running == 5
    })
    .await;
    // The old leader goes away before the answers come.
    first.stop().await;
    let second = start_dispatcher(&host, vec![broker_url()]);
    eventually("the job completes", &host, |s| {
        job_status(s, &job) == JobStatus::Completed
    })
    .await;
    // The repeats were recognised by their rid and answered from the devices' caches.
    assert!(fleet.stats().duplicates >= 1, "{:?}", fleet.stats());
    second.stop().await;
    fleet.shutdown().await;
}

/// A desired-property patch reaches the device, which reports it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_patches_are_pushed_and_reported_back() {
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 3,
        prefix: unique("twin"),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;

    // A twin job: the patch is applied at dispatch, then pushed.
    let mut spec = method_job(&ids, 30);
    spec.operations = vec![Operation::PatchDesired {
        patch: json!({"fw": "2.1"}),
    }];
    spec.rollout.batch = None;
    let job = create(&host, spec);
    // And a direct twin update on one device.
    host.execute(Command::UpdateTwin {
        device: DeviceId::new(ids[0].as_str()).unwrap(),
        tags: None,
        desired: Some(json!({"interval": 5})),
        if_version: None,
        at: now(),
    })
    .unwrap();
    eventually("every device reported the patch", &host, |s| {
        ids.iter().all(|id| {
            s.registry.devices[&DeviceId::new(id.as_str()).unwrap()].reported["fw"] == "2.1"
        })
    })
    .await;
    eventually("the direct update was reported too", &host, |s| {
        s.registry.devices[&DeviceId::new(ids[0].as_str()).unwrap()].reported["interval"] == 5
    })
    .await;
    host.with(|s| assert_eq!(job_status(s, &job), JobStatus::Completed));
    d.stop().await;
    fleet.shutdown().await;
}

/// Devices spread over two brokers (Mosquitto and an embedded rumqttd) by the shared rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_spread_over_several_brokers() {
    // The embedded broker takes logins only; the shared Mosquitto accepts any.
    let (user, password) = ("tester".to_string(), Secret::new("tester-password"));
    let embedded = muster_devsim::broker::start_embedded(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &[(user.clone(), password.clone())],
    )
    .unwrap();
    let brokers = vec![broker_url(), embedded.url()];
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: brokers.clone(),
        devices: 20,
        prefix: unique("multi"),
        login: FleetLogin::Shared {
            username: user.clone(),
            password: password.clone(),
        },
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    let on_second = ids
        .iter()
        .filter(|id| muster_dispatch::protocol::broker_index(id, 2) == 1)
        .count();
    assert!(on_second > 0 && on_second < 20);
    register(&host, &ids, fleet.model_id());
    let d = start_dispatcher_with(
        &host,
        DispatchConfig {
            brokers,
            client_id_prefix: unique("disp"),
            username: Some(user),
            password: Some(password),
            ..DispatchConfig::default()
        },
    );
    all_connected(&host, &ids).await;
    let mut spec = method_job(&ids, 30);
    spec.cancellation = None;
    let job = create(&host, spec);
    eventually("the job completes", &host, |s| {
        job_status(s, &job) == JobStatus::Completed
    })
    .await;
    host.with(|s| assert_eq!(s.jobs[&job].stats().succeeded, 20));
    d.stop().await;
    fleet.shutdown().await;
}

#[test]
fn dispatch_and_devsim_place_devices_alike() {
    for n in 1..5 {
        for i in 0..500 {
            let id = muster_devsim::device_id("x", i);
            assert_eq!(
                muster_dispatch::protocol::broker_index(&id, n),
                muster_devsim::broker_index(&id, n)
            );
        }
    }
}

/// A direct method sent by one dispatcher and not answered before it stopped is sent again by
/// the next (same rid: the device answers the repeat from its cache), and the answer ends the
/// invocation long before its 60 s response timeout could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dispatcher_resends_a_direct_method() {
    let host = TestHost::new();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![broker_url()],
        devices: 1,
        prefix: unique("call"),
        latency_ms: 3000,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let ids = fleet.device_ids().to_vec();
    register(&host, &ids, fleet.model_id());
    let first = start_dispatcher(&host, vec![broker_url()]);
    all_connected(&host, &ids).await;
    let id = muster_types::InvocationId::new("0123456789abcdef").unwrap();
    host.execute(Command::InvokeMethod {
        invocation: muster_domain::Invocation {
            id: id.clone(),
            device: DeviceId::new(ids[0].as_str()).unwrap(),
            method: "reboot".into(),
            payload: json!({"delay": 1}),
            response_timeout_secs: 60,
            connect_timeout_secs: 0,
        },
        at: now(),
    })
    .unwrap();
    let sent = std::time::Instant::now();
    while fleet.stats().requests_received == 0 {
        assert!(sent.elapsed() < Duration::from_secs(30), "never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old leader goes away before the answer comes.
    first.stop().await;
    let second = start_dispatcher(&host, vec![broker_url()]);
    eventually("the invocation ends", &host, |s| {
        s.invocations.pending.is_empty()
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "ended by its timeout"
    );
    assert!(fleet.stats().duplicates >= 1, "{:?}", fleet.stats());
    second.stop().await;
    fleet.shutdown().await;
}
