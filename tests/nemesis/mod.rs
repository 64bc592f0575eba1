//! The nemesis harness (issue 18): three real `muster serve` processes, Mosquitto and `muster
//! devsim` in a network namespace of the test's own; concurrent clients; a seeded schedule of
//! partitions, kills, pauses and clock skews; then every node's state and audit chain checked
//! against the recorded history by [`history::check`].
//!
//! Run from `tests/tests/nemesis.rs`. The schedule and the clients' choices come from one seed
//! (`MUSTER_NEMESIS_SEED`); the processes' timing does not, so a seed reproduces the faults, not
//! the interleaving.

pub mod history;
pub mod net;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use muster_proto::pb;
use tokio::time::Instant;

use crate::{muster_audit, AuthChannel, Devsim, Launch, Mosquitto, Server, PATIENCE};
use history::{JobView, NodeView, Op, TwinView};
use schedule::{Fault, Step};

const NODES: usize = 3;
const MQTT_PORT: u16 = 1883;
const PEER_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;

/// One run's setting.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    pub clients: usize,
    pub sim_devices: usize,
    pub twin_devices: usize,
}

/// What one run did and found.
#[derive(Debug)]
pub struct Outcome {
    pub report: history::Report,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    pub schedule: Vec<Step>,
    pub history: Vec<Op>,
    pub logs: String,
}

/// The processes of one run.
#[derive(Debug)]
pub struct Harness {
    pub nodes: Vec<Server>,
    devsim: Option<Devsim>,
    _mosquitto: Mosquitto,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn node_flags(n: usize) -> Vec<String> {
    let peers = (1..=NODES)
        .map(|i| format!("{i}={}:{PEER_PORT}", net::node_ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let ip = net::node_ip(n);
    [
        "--node-id".to_string(),
        n.to_string(),
        "--peers".into(),
        peers,
        "--peer-addr".into(),
        format!("{ip}:{PEER_PORT}"),
        "--http-addr".into(),
        format!("{ip}:{HTTP_PORT}"),
        "--grpc-addr".into(),
        format!("{ip}:{GRPC_PORT}"),
        "--mqtt-url".into(),
        format!("mqtt://127.0.0.1:{MQTT_PORT}"),
        // Snapshots and their installation happen within a short run.
        "--snapshot-after".into(),
        "300".into(),
    ]
    .into()
}

fn grpc_url(n: usize) -> String {
    format!("http://{}:{GRPC_PORT}", net::node_ip(n))
}

/// A channel to node `n` that connects on first use and again after the node restarts.
fn lazy_channel(n: usize) -> anyhow::Result<AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(grpc_url(n))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    Ok(crate::with_credential(channel, Some(&crate::admin_token())))
}

impl Harness {
    /// Inside the namespace: addresses and rules, Mosquitto, the three nodes (waits for a
    /// leader), and devsim's fleet registered and connected.
    pub async fn start(config: &Config) -> anyhow::Result<Harness> {
        net::setup(NODES)?;
        let dir = crate::data_dir()?;
        let mosquitto = Mosquitto::start(
            dir.path(),
            &format!(
                "listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 0\n"
            ),
            MQTT_PORT,
        )?;
        let mut nodes = Vec::new();
        for n in 1..=NODES {
            let node_dir = dir.path().join(format!("node-{n}"));
            std::fs::create_dir_all(&node_dir)?;
            let flags = node_flags(n);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let launch = Launch {
                gid: Some(net::node_gid(n)),
                env: Vec::new(),
            };
            nodes.push(Server::start_launch(&node_dir, &flags, launch)?);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut h = Harness {
            nodes,
            devsim: None,
            _mosquitto: mosquitto,
            dir,
            http,
        };
        h.leader(PATIENCE).await.with_context(|| h.logs())?;
        let devices = config.sim_devices.to_string();
        let register = grpc_url(1);
        let devsim = Devsim::start(
            h.dir.path(),
            &[
                "--broker",
                &format!("mqtt://127.0.0.1:{MQTT_PORT}"),
                "--devices",
                &devices,
                "--register",
                &register,
                "--latency-ms",
                "20",
                "--jitter-ms",
                "300",
                "--fail-rate",
                "0.1",
                "--prefix",
                "sim",
                "--seed",
                &config.seed.to_string(),
            ],
        );
        let line = devsim.first_line();
        if !line.starts_with("devsim ready") {
            bail!("devsim: {line}\n{}", devsim.log());
        }
        h.devsim = Some(devsim);
        Ok(h)
    }

    /// The node (1-based) that says it leads, among those answering; waits up to `patience`.
    pub async fn leader(&self, patience: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + patience;
        loop {
            for n in 1..=NODES {
                let url = format!("http://{}:{HTTP_PORT}/readyz", net::node_ip(n));
                if let Ok(r) = self.http.get(url).send().await {
                    if r.status().is_success() {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        if body["isLeader"].as_bool() == Some(true) {
                            return Ok(n);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("---- node {} ----\n{}", i + 1, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node(&mut self, n: usize) -> &mut Server {
        &mut self.nodes[n - 1]
    }

    /// Starts `fault`; returns it as applied (the leader resolved), or `None` when it could
    /// not be (no leader to isolate).
    async fn inject(&mut self, fault: Fault) -> anyhow::Result<Option<Fault>> {
        let others = |n: usize| (1..=NODES).filter(move |&o| o != n);
        match fault {
            Fault::IsolateLeader => match self.leader(Duration::from_secs(5)).await {
                Ok(n) => {
                    for o in others(n) {
                        net::cut(n, o)?;
                        net::cut(o, n)?;
                    }
                    Ok(Some(Fault::Isolate(n)))
                }
                Err(_) => Ok(None),
            },
            Fault::Isolate(n) => {
                for o in others(n) {
                    net::cut(n, o)?;
                    net::cut(o, n)?;
                }
                Ok(Some(fault))
            }
            Fault::Bridge(n) => {
                let pair: Vec<usize> = others(n).collect();
                net::cut(pair[0], pair[1])?;
                net::cut(pair[1], pair[0])?;
                Ok(Some(fault))
            }
            Fault::OneWay { from, to } => {
                net::cut(from, to)?;
                Ok(Some(fault))
            }
            Fault::Kill(n) => {
                self.node(n).kill9()?;
                Ok(Some(fault))
            }
            Fault::Pause(n) => {
                self.node(n).signal("STOP")?;
                Ok(Some(fault))
            }
            Fault::Skew { node, ms } => {
                let server = self.node(node);
                server.launch.env = vec![("MUSTER_TEST_CLOCK_SKEW_MS".into(), ms.to_string())];
                tokio::task::block_in_place(|| server.restart())?;
                Ok(Some(fault))
            }
        }
    }

    /// Ends `fault`.
    fn heal(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Isolate(_) | Fault::IsolateLeader | Fault::Bridge(_) | Fault::OneWay { .. } => {
                let dropped = net::heal()?;
                eprintln!("nemesis: healed; the partition dropped {dropped} packets");
                Ok(())
            }
            Fault::Kill(n) => tokio::task::block_in_place(|| self.node(n).restart()),
            Fault::Pause(n) => self.node(n).signal("CONT"),
            Fault::Skew { node, .. } => {
                let server = self.node(node);
                server.launch.env.clear();
                tokio::task::block_in_place(|| server.restart())
            }
        }
    }

    /// Plays `steps` (or until `until`); counts the faults injected by kind.
    pub async fn nemesis(
        &mut self,
        steps: &[Step],
        until: Instant,
    ) -> anyhow::Result<BTreeMap<&'static str, usize>> {
        let mut counts = BTreeMap::new();
        for step in steps {
            tokio::time::sleep(step.quiet).await;
            if Instant::now() + step.hold > until {
                break;
            }
            let Some(applied) = self.inject(step.fault).await? else {
                continue;
            };
            *counts.entry(step.fault.kind()).or_default() += 1;
            eprintln!("nemesis: {:?} for {:?}", applied, step.hold);
            tokio::time::sleep(step.hold).await;
            self.heal(applied)?;
        }
        Ok(counts)
    }

    /// After the faults: resume what was stopped, let jobs finish for a while, then cancel
    /// what has not, so every job ends final. Retries through elections.
    pub async fn settle(&self, jobs: &[String]) -> anyhow::Result<()> {
        let leader = self.leader(PATIENCE).await.with_context(|| self.logs())?;
        let ch = lazy_channel(leader)?;
        let mut client = pb::job_service_client::JobServiceClient::new(ch);
        let final_ = |s: i32| {
            matches!(
                pb::JobStatus::try_from(s),
                Ok(pb::JobStatus::Completed | pb::JobStatus::Failed | pb::JobStatus::Cancelled)
            )
        };
        for job in jobs {
            let _ = client
                .resume_job(pb::ResumeJobRequest {
                    job_id: job.clone(),
                })
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut open: Vec<String> = jobs.to_vec();
        while !open.is_empty() {
            let mut still = Vec::new();
            for job in &open {
                let req = pb::GetJobRequest {
                    job_id: job.clone(),
                    stale_ok: false,
                };
                match client.get_job(req).await {
                    Ok(j) if final_(j.get_ref().status) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    _ => still.push(job.clone()),
                }
            }
            open = still;
            if Instant::now() > deadline {
                for job in &open {
                    let _ = client
                        .cancel_job(pb::CancelJobRequest {
                            job_id: job.clone(),
                        })
                        .await;
                }
            }
            if Instant::now() > deadline + PATIENCE {
                bail!(
                    "jobs not final after cancelling them: {open:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// What node `n` holds (stale reads: its own state) of every job and of `twin_devices`.
    pub async fn view(&self, n: usize, twin_devices: &[String]) -> anyhow::Result<NodeView> {
        let ch = lazy_channel(n)?;
        let mut jobs = pb::job_service_client::JobServiceClient::new(ch.clone());
        let mut devices = pb::device_service_client::DeviceServiceClient::new(ch);
        let mut view = NodeView {
            node: n,
            ..NodeView::default()
        };
        let mut token = String::new();
        loop {
            let page = jobs
                .list_jobs(pb::ListJobsRequest {
                    page_size: 100,
                    page_token: token,
                    stale_ok: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for j in page.jobs {
                let job = jobs
                    .get_job(pb::GetJobRequest {
                        job_id: j.job_id.clone(),
                        stale_ok: true,
                    })
                    .await?
                    .into_inner();
                let s = job.stats.unwrap_or_default();
                let mut v = JobView {
                    status: name(pb::JobStatus::try_from(job.status).map(|s| s.as_str_name())),
                    run: job.run,
                    stats: [
                        s.total,
                        s.pending,
                        s.running,
                        s.succeeded,
                        s.failed,
                        s.timed_out,
                        s.cancelled,
                    ],
                    devices: Vec::new(),
                };
                let mut dtoken = String::new();
                loop {
                    let page = jobs
                        .list_job_devices(pb::ListJobDevicesRequest {
                            job_id: job.job_id.clone(),
                            page_size: 500,
                            page_token: dtoken,
                            stale_ok: true,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    for d in page.devices {
                        let status =
                            name(pb::DeviceStatus::try_from(d.status).map(|s| s.as_str_name()));
                        v.devices.push((d.device_id, status));
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    dtoken = page.next_page_token;
                }
                view.jobs.insert(job.job_id, v);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        for d in twin_devices {
            let dev = devices
                .get_device(pb::GetDeviceRequest {
                    device_id: d.clone(),
                    stale_ok: true,
                })
                .await?
                .into_inner();
            view.twins.insert(
                d.clone(),
                TwinView {
                    keys: workload::tag_keys(&dev.tags_json),
                    version: dev.version,
                },
            );
        }
        Ok(view)
    }

    /// Every node's view once they agree (up to a generous wait; then as they are, and the
    /// checker reports the difference).
    pub async fn views(&self, twin_devices: &[String]) -> anyhow::Result<Vec<NodeView>> {
        let deadline = Instant::now() + PATIENCE * 2;
        let mut last = Vec::new();
        loop {
            let mut views = Vec::new();
            for n in 1..=NODES {
                if let Ok(v) = self.view(n, twin_devices).await {
                    views.push(v);
                }
            }
            let complete = views.len() == NODES;
            let same = complete
                && views
                    .windows(2)
                    .all(|w| w[0].jobs == w[1].jobs && w[0].twins == w[1].twins);
            if complete {
                last = views;
            }
            if same {
                break;
            }
            if Instant::now() > deadline {
                if last.len() != NODES {
                    bail!("could not read every node's state\n{}", self.logs());
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(last)
    }

    /// Stops every node (SIGTERM) and runs `muster audit verify` on its data directory.
    pub fn audit(&mut self, views: &mut [NodeView]) -> anyhow::Result<()> {
        for (i, server) in self.nodes.iter_mut().enumerate() {
            server.terminate()?;
            let out = muster_audit(&["verify"], server.data_dir())?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if let Some(v) = views.iter_mut().find(|v| v.node == i + 1) {
                v.audit = Some(history::parse_audit(out.status.success(), &text));
            }
        }
        Ok(())
    }

    /// Registers the workload's twin devices; returns each one's twin version.
    pub async fn twin_devices(&self, ids: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
        let leader = self.leader(PATIENCE).await?;
        let mut devices =
            pb::device_service_client::DeviceServiceClient::new(lazy_channel(leader)?);
        let mut versions = BTreeMap::new();
        for id in ids {
            let d = devices
                .register_device(pb::RegisterDeviceRequest {
                    device: Some(pb::NewDevice {
                        device_id: id.clone(),
                        tags_json: "{}".into(),
                        ..Default::default()
                    }),
                    upsert: false,
                })
                .await?
                .into_inner();
            versions.insert(id.clone(), d.version);
        }
        Ok(versions)
    }
}

/// `JOB_STATUS_COMPLETED` -> `completed`, `DEVICE_STATUS_TIMED_OUT` -> `timed_out`.
fn name(s: Result<&str, impl std::fmt::Debug>) -> String {
    match s {
        Ok(s) => s
            .trim_start_matches("JOB_STATUS_")
            .trim_start_matches("DEVICE_STATUS_")
            .to_lowercase(),
        Err(e) => format!("{e:?}"),
    }
}

/// One whole run inside the namespace: start, workload and nemesis together, heal, settle,
/// read every node, audit, check.
pub async fn run(config: Config) -> anyhow::Result<Outcome> {
    let mut h = Harness::start(&config).await?;
    let twin_ids: Vec<String> = (0..config.twin_devices)
        .map(|i| format!("nem-{i}"))
        .collect();
    let initial = h.twin_devices(&twin_ids).await?;
    let sim: Vec<String> = (1..=config.sim_devices)
        .map(|i| format!("sim-{i:06}"))
        .collect();
    let steps = schedule::schedule(config.seed, config.duration, NODES);
    eprintln!(
        "nemesis: seed {}, {} faults over {:?}, {} clients",
        config.seed,
        steps.len(),
        config.duration,
        config.clients
    );
    let shared = Arc::new(Mutex::new(workload::Shared::default()));
    let start = Instant::now();
    let until = start + config.duration;
    let mut clients = Vec::new();
    for id in 0..config.clients {
        let client = workload::Client {
            id,
            channels: (1..=NODES).map(lazy_channel).collect::<Result<_, _>>()?,
            sim_devices: sim.clone(),
            twin_devices: twin_ids.clone(),
            seed: config.seed,
        };
        clients.push(tokio::spawn(workload::run(
            client,
            shared.clone(),
            start,
            until,
        )));
    }
    let faults = h.nemesis(&steps, until).await;
    // Whatever the nemesis did, nothing stays cut, frozen or down.
    let _ = net::heal();
    for server in &mut h.nodes {
        let _ = server.signal("CONT");
        if !server.is_running() || !server.launch.env.is_empty() {
            server.launch.env.clear();
            tokio::task::block_in_place(|| server.restart())?;
        }
    }
    let faults = faults?;
    for c in clients {
        c.await?;
    }
    let (history, jobs) = {
        let s = shared.lock().map_err(|_| anyhow!("a client panicked"))?;
        (s.history.clone(), s.jobs.clone())
    };
    h.settle(&jobs).await?;
    let mut views = h.views(&twin_ids).await?;
    let logs = h.logs();
    h.audit(&mut views)?;
    let report = history::check(&history, &views, &initial);
    Ok(Outcome {
        report,
        faults,
        schedule: steps,
        history,
        logs,
    })
}

/// Writes the history, one operation a line, to `path` (kept for a failing run).
pub fn save_history(path: &Path, history: &[Op]) -> anyhow::Result<()> {
    let text: String = history.iter().map(|o| format!("{o}\n")).collect();
    std::fs::write(path, text)?;
    Ok(())
}
