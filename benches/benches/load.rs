//! The end-to-end load harness (issue 4): a method job on a simulated fleet through Mosquitto.
//!
//! ```sh
//! cargo build --release -p muster-cli          # the node under test is the real binary
//! cargo bench -p muster-benches --bench load
//! ```
//!
//! Per run (default 3 runs, then medians):
//! 1. **muster**: starts `target/release/muster serve` (a Raft-of-one node on a data directory
//!    under `target/bench-data`), registers the fleet's devices over gRPC `ImportDevices`, starts
//!    the simulated fleet (`muster_devsim::Fleet`, in this process), waits until the registry shows
//!    every device connected (the presence storm, batched into `SetConnections` entries), then creates a
//!    method job over `SELECT * FROM devices` over gRPC and waits for it to complete. It prints
//!    device operations per second (job started -> ended, from the job's own timestamps),
//!    p50/p99 per-device latency (the job's `dispatched_at` -> `finished_at`, i.e. dispatch ->
//!    result recorded) and the node's peak memory (`VmHWM` of its process), then the node's CPU
//!    over the job by kind of thread (`/proc/PID/task/*`: tokio's workers, the device
//!    indexer, sled's IO threads), to see where a change moved CPU without a profiler.
//! 2. **raw**: the node stopped, a plain rumqttc client publishes the same method requests to the
//!    same fleet with the same in-flight window (the dispatcher's `max_in_flight`, 10,000) and
//!    counts the replies: the broker's and simulator's round-trip rate with no muster in between.
//!
//! Environment:
//! - `MUSTER_BENCH_MQTT_URL`: the broker. Unset: the harness starts its own Mosquitto on a free
//!   loopback port with a configuration that lifts the per-client inflight (20) and queue (1000)
//!   limits of a stock Mosquitto, and stops it at the end. (A stock broker drops QoS 1 messages
//!   beyond its queue, which shows as devices timing out.)
//! - `MUSTER_BENCH_DEVICES` (default 100000), `MUSTER_BENCH_RUNS` (default 3),
//!   `MUSTER_BENCH_WINDOW` (default 10000: the raw client's window; the node keeps its own
//!   default `max_in_flight`, also 10000), `MUSTER_BENCH_MOSQUITTO` (default
//!   `/usr/sbin/mosquitto`), `MUSTER_BENCH_DIR` (where node data goes), `MUSTER_BENCH_ONLY`
//!   (`muster` or `raw`: one side only, for profiling), `MUSTER_BENCH_CONNECT_SECS` (default
//!   600: how long the registry may take to show every device connected; a million devices
//!   took over 10 minutes on a machine whose Mosquitto was slow, session 15).
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does nothing: a pass needs a release
//! binary and minutes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use muster_benches::auth::AuthChannel;
use muster_benches::procs::{self, Broker};
use muster_benches::{median, method_job, percentile};
use muster_devsim::{Fleet, FleetConfig};
use muster_dispatch::protocol::{self, Inbound};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const JOB_ID: &str = "load";
const METHOD: &str = "reboot";

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Peak resident set size (`VmHWM`) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds from a `stat` file of `/proc` (a process's or a thread's).
fn cpu_secs_of(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds each kind of thread of a process has used so far: threads named alike but for a
/// trailing number (`sled-io-0`, `sled-io-1`) count together.
fn thread_cpu_secs(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(comm), Some(secs)) = (
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")),
            cpu_secs_of(&format!("/proc/{pid}/task/{tid}/stat")),
        ) else {
            continue;
        };
        let kind = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-')
            .to_owned();
        *out.entry(kind).or_default() += secs;
    }
    out
}

/// What each kind of thread used between two [`thread_cpu_secs`], largest first, as text.
fn thread_cpu_since(now: &BTreeMap<String, f64>, earlier: &BTreeMap<String, f64>) -> String {
    let mut used: Vec<(&String, f64)> = now
        .iter()
        .map(|(k, v)| (k, v - earlier.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 0.05)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds used by the node, the broker and this process (fleet, raw client) over a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    node: f64,
    /// The other members of a cluster, together.
    followers: f64,
    broker: f64,
    harness: f64,
}

#[derive(Debug, Clone, Copy)]
struct CpuMark {
    node: Option<f64>,
    followers: Option<f64>,
    broker: Option<f64>,
    harness: Option<f64>,
}

impl CpuMark {
    fn now(node: Option<u32>, broker: Option<u32>) -> CpuMark {
        CpuMark::with_followers(node, &[], broker)
    }

    fn with_followers(node: Option<u32>, followers: &[u32], broker: Option<u32>) -> CpuMark {
        CpuMark {
            node: node.and_then(cpu_secs),
            followers: followers.iter().map(|p| cpu_secs(*p)).sum(),
            broker: broker.and_then(cpu_secs),
            harness: cpu_secs(std::process::id()),
        }
    }

    fn since(self, earlier: CpuMark) -> Cpu {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => a - b,
            _ => f64::NAN,
        };
        Cpu {
            node: d(self.node, earlier.node),
            followers: d(self.followers, earlier.followers),
            broker: d(self.broker, earlier.broker),
            harness: d(self.harness, earlier.harness),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU s: node {:.1}, followers {:.1}, broker {:.1}, fleet+client {:.1}",
            self.node,
            if self.followers.is_nan() {
                0.0
            } else {
                self.followers
            },
            self.broker,
            self.harness
        )
    }
}

/// The node(s) under test: the real binary, one process, or `MUSTER_BENCH_NODES` processes
/// forming one cluster (`--peers`); the harness talks to the leader.
struct Node {
    nodes: Vec<procs::Node>,
    leader: usize,
}

impl Node {
    async fn start(bin: &Path, mqtt_url: &str, n: usize) -> Result<Node> {
        let nodes =
            procs::start_nodes(bin, n, &["--mqtt-url".to_string(), mqtt_url.to_string()]).await?;
        let leader = procs::leader(&nodes, Duration::from_secs(60)).await?;
        Ok(Node { nodes, leader })
    }

    /// The leader's process.
    fn pid(&self) -> u32 {
        self.nodes[self.leader].pid().unwrap_or(0)
    }

    fn follower_pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.leader)
            .filter_map(|(_, n)| n.pid())
            .collect()
    }

    async fn channel(&self) -> Result<AuthChannel> {
        self.nodes[self.leader].channel().await
    }
}

fn fleet_config(url: &str, devices: usize, run: usize) -> FleetConfig {
    FleetConfig {
        brokers: vec![url.to_string()],
        devices,
        prefix: format!("load{run}"),
        client_id_prefix: "muster-bench-fleet".into(),
        ready_timeout_ms: 300_000,
        ..FleetConfig::default()
    }
}

/// Waits until no registered device is anything but connected.
async fn wait_all_connected(channel: AuthChannel, timeout: Duration) -> Result<()> {
    let mut client = DeviceServiceClient::new(channel);
    let deadline = Instant::now() + timeout;
    loop {
        let device_ids = procs::not_connected(&mut client).await?;
        if device_ids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("devices still not connected after {timeout:?} (e.g. {device_ids:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Clone, Default)]
struct MusterRun {
    /// Fleet start -> every device connected in the registry.
    presence_secs: f64,
    /// CPU used from CreateJob to the job seen complete.
    cpu: Cpu,
    /// The node's CPU over the same span by kind of thread (a single node; a cluster's
    /// leader), as text.
    node_threads: String,
    /// Devices per second from the job's started_at to its ended_at.
    rate: f64,
    /// Devices per second from the client's CreateJob to seeing the job completed.
    wall_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_mib: f64,
    requests_received: u64,
}

async fn muster_phase(
    bin: &Path,
    nodes: usize,
    url: &str,
    broker_pid: Option<u32>,
    fleet_cfg: &FleetConfig,
) -> Result<(MusterRun, Fleet)> {
    let n = fleet_cfg.devices;
    let node = Node::start(bin, url, nodes).await?;
    let channel = node.channel().await?;
    let ids = fleet_cfg.device_ids();
    let t = Instant::now();
    procs::import_devices(
        channel.clone(),
        &ids,
        Some(&fleet_cfg.model_id),
        r#"{"site":"bench"}"#,
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "  registered {n} devices in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mark = CpuMark::with_followers(Some(node.pid()), &node.follower_pids(), broker_pid);
    let fleet = Fleet::start(fleet_cfg.clone()).await?;
    let connected = t.elapsed().as_secs_f64();
    let connect_secs = env_usize("MUSTER_BENCH_CONNECT_SECS", 600) as u64;
    wait_all_connected(channel.clone(), Duration::from_secs(connect_secs)).await?;
    let presence_secs = t.elapsed().as_secs_f64();
    println!(
        "  fleet connected in {connected:.1} s; registry shows all {n} connected after {presence_secs:.1} s ({})",
        CpuMark::with_followers(Some(node.pid()), &node.follower_pids(), broker_pid).since(mark)
    );

    let before = fleet.stats().requests_received;
    let mut jobs = JobServiceClient::new(channel.clone());
    let t = Instant::now();
    let mark = CpuMark::with_followers(Some(node.pid()), &node.follower_pids(), broker_pid);
    let threads_mark = thread_cpu_secs(node.pid());
    jobs.create_job(pb::CreateJobRequest {
        job_id: JOB_ID.into(),
        spec: Some(pb::JobSpec::from(&method_job("SELECT * FROM devices"))),
    })
    .await
    .context("CreateJob")?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let job = loop {
        let job = jobs
            .get_job(pb::GetJobRequest {
                job_id: JOB_ID.into(),
                stale_ok: true,
            })
            .await?
            .into_inner();
        let status = pb::JobStatus::try_from(job.status).unwrap_or(pb::JobStatus::Unspecified);
        if matches!(
            status,
            pb::JobStatus::Completed | pb::JobStatus::Failed | pb::JobStatus::Cancelled
        ) {
            break job;
        }
        if Instant::now() > deadline {
            bail!("job not final after 20 minutes: {:?}", job.stats);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = t.elapsed().as_secs_f64();
    let cpu =
        CpuMark::with_followers(Some(node.pid()), &node.follower_pids(), broker_pid).since(mark);
    let node_threads = thread_cpu_since(&thread_cpu_secs(node.pid()), &threads_mark);
    let stats = job.stats.unwrap_or_default();
    if stats.succeeded != n as u64 {
        bail!(
            "job ended {:?} with {stats:?}; expected {n} succeeded",
            pb::JobStatus::try_from(job.status)
        );
    }
    let (Some(started), Some(ended)) = (job.started_at_ms, job.ended_at_ms) else {
        bail!("the job has no start or end time");
    };
    let span = ((ended - started).max(1)) as f64 / 1e3;

    // Per-device latency: dispatched -> result recorded.
    let mut lat = Vec::with_capacity(n);
    for d in procs::job_devices(channel.clone(), JOB_ID).await? {
        if let (Some(a), Some(b)) = (d.dispatched_at_ms, d.finished_at_ms) {
            lat.push(Duration::from_millis((b - a).max(0) as u64));
        }
    }
    let peak_mib = peak_rss_mib(node.pid()).unwrap_or(f64::NAN);
    let requests_received = fleet.stats().requests_received - before;
    drop(node);
    let r = MusterRun {
        presence_secs,
        cpu,
        node_threads,
        rate: n as f64 / span,
        wall_rate: n as f64 / wall,
        p50_ms: percentile(&mut lat, 50.0).as_secs_f64() * 1e3,
        p99_ms: percentile(&mut lat, 99.0).as_secs_f64() * 1e3,
        peak_mib,
        requests_received,
    };
    Ok((r, fleet))
}

#[derive(Debug, Clone, Default)]
struct RawRun {
    rate: f64,
    cpu: Cpu,
    p50_ms: f64,
    p99_ms: f64,
}

/// The broker's round trip with no muster: a plain client, the dispatcher's subscription and
/// QoS, the same topics and payload, a window of `window` requests in flight.
async fn raw_phase(
    url: &str,
    broker_pid: Option<u32>,
    ids: &[String],
    window: usize,
    run: usize,
) -> Result<RawRun> {
    let n = ids.len();
    let broker = muster_mqtt::BrokerUrl::parse(url)?;
    let mut opts = MqttOptions::new(
        format!("muster-bench-raw-{}-{run}", std::process::id()),
        broker.host,
        broker.port,
    );
    // As the dispatcher's link (DispatchConfig defaults).
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<(String, i32)>>();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(Inbound::Reply { device, status, .. }) =
                        protocol::parse_inbound(&p.topic, &p.payload)
                    {
                        let _ = tx.send(Some((device, status)));
                    }
                }
                Ok(_) => {}
                // The end, after the disconnect below (or a failure, seen as missing replies).
                Err(_) => return,
            }
        }
    });
    client
        .subscribe(protocol::REPLY_FILTER, QoS::AtMostOnce)
        .await?;
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(None)) => {}
        _ => bail!("raw client: not subscribed within 30 s"),
    }
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let rid = format!("raw{run}:0:1");
    let payload = serde_json::json!({"delay": 1});
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut lat = Vec::with_capacity(n);
    let publish = |i: usize| {
        let topic = protocol::method_request_topic(&ids[i], METHOD, &rid);
        let body = serde_json::to_vec(&payload).unwrap();
        let c = client.clone();
        async move { c.publish(topic, QoS::AtLeastOnce, false, body).await }
    };
    let t0 = Instant::now();
    let mark = CpuMark::now(None, broker_pid);
    let mut next = 0;
    while next < n.min(window) {
        sent_at[next] = Some(Instant::now());
        publish(next).await?;
        next += 1;
    }
    let mut done = 0;
    while done < n {
        let msg = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(m)) => m,
            _ => bail!("raw client: {done} of {n} replies, then nothing for 60 s"),
        };
        let Some((device, status)) = msg else {
            continue;
        };
        let Some(&i) = index.get(device.as_str()) else {
            continue;
        };
        let Some(at) = sent_at[i].take() else {
            continue; // a duplicate
        };
        if !(200..300).contains(&status) {
            bail!("raw client: {device} answered {status}");
        }
        lat.push(at.elapsed());
        done += 1;
        if next < n {
            sent_at[next] = Some(Instant::now());
            publish(next).await?;
            next += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = CpuMark::now(None, broker_pid).since(mark);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    Ok(RawRun {
        rate: n as f64 / elapsed,
        cpu,
        p50_ms: percentile(&mut lat, 50.0).as_secs_f64() * 1e3,
        p99_ms: percentile(&mut lat, 99.0).as_secs_f64() * 1e3,
    })
}

async fn bench() -> Result<()> {
    let bin = procs::muster_binary()?;
    let devices = env_usize("MUSTER_BENCH_DEVICES", 100_000);
    let runs = env_usize("MUSTER_BENCH_RUNS", 3).max(1);
    let window = env_usize("MUSTER_BENCH_WINDOW", 10_000).max(1);
    let only = std::env::var("MUSTER_BENCH_ONLY").ok();
    // `--nodes N` (after `--` on the cargo command line) or MUSTER_BENCH_NODES.
    let args: Vec<String> = std::env::args().collect();
    let nodes = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| env_usize("MUSTER_BENCH_NODES", 1))
        .max(1);
    let (broker, url) = Broker::from_env()?;
    let broker_pid = broker.as_ref().map(|b| b.child.id());
    println!(
        "load harness: {devices} devices, {runs} run(s), {nodes} node(s), broker {url}, node {}",
        bin.display()
    );
    let mut results: Vec<(MusterRun, RawRun)> = Vec::new();
    for run in 0..runs {
        println!("run {run} (load average {})", procs::loadavg());
        let cfg = fleet_config(&url, devices, run);
        let (m, fleet) = if only.as_deref() == Some("raw") {
            (MusterRun::default(), Fleet::start(cfg.clone()).await?)
        } else {
            muster_phase(&bin, nodes, &url, broker_pid, &cfg).await?
        };
        println!(
            "  muster: {:.0} device ops/s (job start -> end; {:.0}/s CreateJob -> seen complete), \
             latency p50 {:.0} ms p99 {:.0} ms, node peak RSS {:.0} MiB, \
             {} requests for {devices} devices; {}",
            m.rate, m.wall_rate, m.p50_ms, m.p99_ms, m.peak_mib, m.requests_received, m.cpu
        );
        if !m.node_threads.is_empty() {
            println!("  node CPU s by thread over the job: {}", m.node_threads);
        }
        let raw = if only.as_deref() == Some("muster") {
            RawRun {
                rate: f64::NAN,
                ..RawRun::default()
            }
        } else {
            raw_phase(&url, broker_pid, fleet.device_ids(), window, run).await?
        };
        println!(
            "  raw:    {:.0} round trips/s (window {window}), latency p50 {:.0} ms p99 {:.0} ms, \
             {}; muster/raw = {:.0}%",
            raw.rate,
            raw.p50_ms,
            raw.p99_ms,
            raw.cpu,
            100.0 * m.rate / raw.rate
        );
        drop(fleet);
        results.push((m, raw));
    }
    let med = |f: &dyn Fn(&(MusterRun, RawRun)) -> f64| median(results.iter().map(f).collect());
    let rate = med(&|r| r.0.rate);
    let raw = med(&|r| r.1.rate);
    println!(
        "median of {runs}: muster {rate:.0} device ops/s ({:.0}/s wall), p50 {:.0} ms, p99 {:.0} ms, \
         node peak RSS {:.0} MiB, presence of {devices} devices settled in {:.1} s; \
         raw {raw:.0}/s (p50 {:.0} ms, p99 {:.0} ms); muster/raw {:.0}% (median of per-run ratios {:.0}%)",
        med(&|r| r.0.wall_rate),
        med(&|r| r.0.p50_ms),
        med(&|r| r.0.p99_ms),
        med(&|r| r.0.peak_mib),
        med(&|r| r.0.presence_secs),
        med(&|r| r.1.p50_ms),
        med(&|r| r.1.p99_ms),
        100.0 * rate / raw,
        med(&|r| 100.0 * r.0.rate / r.1.rate),
    );
    Ok(())
}

fn main() {
    procs::harness_main(
        "load harness: skipped (run it with cargo bench -p muster-benches --bench load)",
        "load harness failed",
        bench,
    );
}
