//! Device round trips per second against a real broker, two ways:
//!
//! 1. raw: one MQTT client publishes a method request to each of N simulated devices (at most
//!    `window` unanswered) and counts the replies: the broker plus devsim;
//! 2. job: the dispatcher runs a method job over the same N devices with an in-memory host:
//!    broker, devsim, dispatcher and the core's decide/evolve (no Raft, no disk).
//!
//! `cargo run --release -p muster-dispatch --example roundtrip -- [devices] [window]`
//! (broker from `MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`).

use std::error::Error;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, StreamExt};
use muster_devsim::{Fleet, FleetConfig};
use muster_dispatch::{wall_clock as now, DispatchConfig, Dispatcher, Host, HostError, Update};
use muster_domain::{
    Command, DeviceRegistration, JobSpec, JobStatus, MethodCall, Operation, RetryPolicy, Rollout,
    Schedule, State, Target, TargetSelector,
};
use muster_types::{DeviceId, JobId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Clone)]
struct MemHost {
    state: Arc<Mutex<(State, u64)>>,
    tx: broadcast::Sender<Update>,
}

impl MemHost {
    fn execute(&self, cmd: &Command) -> Result<(), HostError> {
        let mut g = self
            .state
            .lock()
            .map_err(|_| HostError::Other("poisoned".into()))?;
        let events =
            g.0.execute(cmd)
                .map_err(|e| HostError::Rejected(e.to_string()))?;
        if events.is_empty() {
            return Ok(());
        }
        g.1 += events.len() as u64;
        let u = Update::Applied;
        drop(g);
        let _ = self.tx.send(u);
        Ok(())
    }
}

impl Host for MemHost {
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<(), HostError>> + Send {
        let h = self.clone();
        async move { h.execute(&cmd) }
    }

    fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

fn unique(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{tag}{:x}", n % 0xffff_ffff_ffff)
}

async fn raw(url: &str, ids: &[String], window: usize) -> Res<f64> {
    let hp = url.trim_start_matches("mqtt://");
    let (host, port) = hp.rsplit_once(':').ok_or("broker url")?;
    let mut opts = MqttOptions::new(unique("rt"), host, port.parse()?);
    opts.set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 10_000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.contains("/methods/res/") => {
                    let _ = tx.send(());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe("devices/+/methods/res/#", QoS::AtMostOnce)
        .await?;
    rx.recv().await.ok_or("no suback")?;
    let started = Instant::now();
    let (mut sent, mut got) = (0usize, 0usize);
    while got < ids.len() {
        while sent < ids.len() && sent - got < window {
            let topic = format!("devices/{}/methods/POST/ping/?$rid=raw:0:1", ids[sent]);
            client.publish(topic, QoS::AtLeastOnce, false, "{}").await?;
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(())) => got += 1,
            _ => return Err(format!("stalled at {got}/{} replies", ids.len()).into()),
        }
    }
    Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
}

async fn job(url: &str, ids: &[String], model: &str) -> Res<f64> {
    let host = MemHost {
        state: Arc::new(Mutex::new((State::default(), 0))),
        tx: broadcast::channel(65_536).0,
    };
    let devices = ids
        .iter()
        .map(|id| {
            Ok(DeviceRegistration {
                id: DeviceId::new(id.as_str())?,
                display_name: id.clone(),
                model_id: Some(model.to_string()),
                enabled: true,
                tags: json!({}).into(),
            })
        })
        .collect::<Res<Vec<_>>>()?;
    host.execute(&Command::RegisterDevices {
        devices,
        upsert: false,
        at: now(),
    })?;
    let (stop, stop_rx) = oneshot::channel::<()>();
    let h = host.clone();
    let cfg = DispatchConfig {
        brokers: vec![url.to_string()],
        client_id_prefix: unique("rtd"),
        ..DispatchConfig::default()
    };
    let task = tokio::spawn(Dispatcher::run(h, cfg, async {
        let _ = stop_rx.await;
    }));
    // Let presence settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = JobId::new(unique("rtjob"))?;
    let spec = JobSpec {
        display_name: "roundtrip".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Devices(
                ids.iter()
                    .map(|i| DeviceId::new(i.as_str()))
                    .collect::<Result<_, _>>()?,
            ),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "ping".into(),
            payload: json!({}),
            response_timeout_secs: 60,
            connect_timeout_secs: 60,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    };
    let started = Instant::now();
    host.execute(&Command::CreateJob {
        id: id.clone(),
        spec,
        at: now(),
    })?;
    loop {
        let (status, done) = host.read(|s, _| {
            let j = &s.jobs[&id];
            (j.status, j.stats().succeeded)
        });
        if status == JobStatus::Completed {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("job not done: {status:?}, {done} succeeded").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = task.await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let window: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let url =
        std::env::var("MUSTER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let t = Instant::now();
    let fleet = Fleet::start(FleetConfig {
        brokers: vec![url.clone()],
        devices: n,
        prefix: unique("rt"),
        ..FleetConfig::default()
    })
    .await?;
    println!(
        "fleet of {n} devices ready in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let ids = fleet.device_ids().to_vec();
    let r = raw(&url, &ids, window).await?;
    println!("raw: {r:.0} round trips/s (window {window})");
    let j = job(&url, &ids, fleet.model_id()).await?;
    println!("job through the dispatcher: {j:.0} devices/s");
    println!("{:?}", fleet.stats());
    fleet.shutdown().await;
    Ok(())
}
