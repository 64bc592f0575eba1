//! The nemesis harness (issue 18): three real `muster serve` processes, Mosquitto and `muster
//! devsim` (or five nodes: `Config::nodes`) in a network namespace of the test's own; concurrent
//! clients; a seeded schedule of partitions, kills, pauses, clock skews, slow and lossy peer
//! links (through [`proxy`]) and a full disk (the last node's data directory is a tmpfs); then
//! every node's state, event log and audit chain checked against the recorded history by
//! [`history::check`].
//!
//! Run from `tests/tests/nemesis.rs`. The schedule and the clients' choices come from one seed
//! (`MUSTER_NEMESIS_SEED`); the processes' timing does not, so a seed reproduces the faults, not
//! the interleaving.

pub mod history;
pub mod net;
pub mod proxy;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use muster_proto::pb;
use muster_store::crashpoint;
use tokio::time::Instant;

use crate::{muster_audit, AuthChannel, Devsim, Launch, Mosquitto, Server, PATIENCE};
use history::{JobView, NodeView, Op, TwinView};
use proxy::{Impairment, Proxies};
use schedule::{Fault, Step};

/// The size of the last node's data directory (a tmpfs), and the free space below which it
/// refuses writes (`--min-free-disk-mib`).
const DISK_MIB: u64 = 512;
const DISK_RESERVE_MIB: u64 = 32;
/// `errno` for a full file system.
const ENOSPC: i32 = 28;
const MQTT_PORT: u16 = 1883;
const PEER_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;

/// One run's setting.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// 3 or 5.
    pub nodes: usize,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    pub clients: usize,
    pub sim_devices: usize,
    pub twin_devices: usize,
    /// Raft log entries each node keeps behind its snapshot (`MUSTER_TEST_LOG_KEEP`; `None`:
    /// the default 1,000). A small number puts snapshot installs, and their crash points, in
    /// reach; off by default until a node killed during an install starts again (see
    /// ARCHITECTURE.md, the nemesis).
    pub log_keep: Option<u64>,
}

/// What one run did and found.
#[derive(Debug)]
pub struct Outcome {
    pub report: history::Report,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// What the faults did: packets dropped by partitions, chunks the proxy delayed,
    /// connections it cut, nodes that exited on a full disk (and were restarted).
    pub effects: BTreeMap<&'static str, u64>,
    /// Crash points armed (`crash-point` faults): (times armed, times reached), by point.
    pub points: BTreeMap<&'static str, (u64, u64)>,
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
    proxies: Proxies,
    /// The last node's data directory, a tmpfs of its own.
    disk: Tmpfs,
    effects: BTreeMap<&'static str, u64>,
    /// Nodes filled by a `DiskFull` whose exit since is expected.
    filled: Vec<usize>,
    /// Crash points: (times armed, times reached), by point.
    points: BTreeMap<&'static str, (u64, u64)>,
    /// A node armed at an install point is still cut off.
    install_cut: bool,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// A tmpfs mounted at a directory (inside the run's own mount namespace), unmounted when dropped.
#[derive(Debug)]
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()?;
        if !out.status.success() {
            bail!("mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn ballast(&self) -> PathBuf {
        // Beside the data directory's contents, on the same file system.
        self.0.join("nemesis-ballast")
    }

    /// Bytes free, as `statvfs` says (through `stat -f`: no libc dependency for one call).
    fn free(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.0)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks * size),
            _ => bail!("stat -f {}: {text}", self.0.display()),
        }
    }

    /// Writes the ballast until `leave` bytes are free (0: until the file system refuses).
    fn fill(&self, leave: u64) -> anyhow::Result<u64> {
        let target = self.free()?.saturating_sub(leave);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while leave > 0 && written + chunk.len() as u64 <= target {
            // The node writes meanwhile, so the file system may fill before the target.
            match f.write_all(&chunk) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if leave == 0 {
            // To the last byte: big writes, then small ones, until ENOSPC.
            for size in [1 << 20, 4096, 1] {
                while let Ok(n) = f.write(&chunk[..size]) {
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                }
            }
        }
        Ok(written)
    }

    fn unfill(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.ballast()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn node_flags(n: usize, nodes: usize) -> Vec<String> {
    // Peers dial each other through the proxy.
    let peers = (1..=nodes)
        .map(|i| format!("{i}={}:{PEER_PORT}", net::proxy_ip(i)))
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
        "--min-free-disk-mib".into(),
        DISK_RESERVE_MIB.to_string(),
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
    /// Inside the namespace: addresses and rules, Mosquitto, the proxies, the nodes (waits
    /// for a leader), and devsim's fleet registered and connected.
    pub async fn start(config: &Config) -> anyhow::Result<Harness> {
        let nodes_n = config.nodes;
        net::setup(nodes_n)?;
        let dir = crate::data_dir()?;
        let mosquitto = Mosquitto::start(
            dir.path(),
            &format!(
                "listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 0\n"
            ),
            MQTT_PORT,
        )?;
        let proxies = Proxies::start(nodes_n, PEER_PORT, config.seed).await?;
        let disk = Tmpfs::mount(&dir.path().join(format!("node-{nodes_n}/data")), DISK_MIB)?;
        let mut nodes = Vec::new();
        for n in 1..=nodes_n {
            let node_dir = dir.path().join(format!("node-{n}"));
            std::fs::create_dir_all(&node_dir)?;
            let flags = node_flags(n, nodes_n);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let launch = Launch {
                gid: Some(net::node_gid(n)),
                env: Vec::new(),
                // With `log_keep`, a follower a few hundred entries behind is sent a snapshot
                // (1,000 past the last one otherwise): installs, and their crash points, happen
                // within a fault.
                fixed_env: config
                    .log_keep
                    .map(|n| vec![("MUSTER_TEST_LOG_KEEP".into(), n.to_string())])
                    .unwrap_or_default(),
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
            proxies,
            disk,
            effects: BTreeMap::new(),
            filled: Vec::new(),
            points: BTreeMap::new(),
            install_cut: false,
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
            for n in 1..=self.nodes.len() {
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
        let count = self.nodes.len();
        let others = move |n: usize| (1..=count).filter(move |&o| o != n);
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
                // The others in two halves that cannot reach each other; `n` reaches all.
                let rest: Vec<usize> = others(n).collect();
                let (a, b) = rest.split_at(rest.len() / 2);
                for &x in a {
                    for &y in b {
                        net::cut(x, y)?;
                        net::cut(y, x)?;
                    }
                }
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
            Fault::Delay { node, ms } => {
                let ms = Duration::from_millis(ms);
                let what = Impairment {
                    delay: ms,
                    jitter: ms,
                    cut_per_mille: 0,
                };
                self.proxies.impair(node, what);
                Ok(Some(fault))
            }
            Fault::Lossy { node, per_mille } => {
                let what = Impairment {
                    cut_per_mille: per_mille,
                    ..Impairment::default()
                };
                self.proxies.impair(node, what);
                Ok(Some(fault))
            }
            Fault::CrashPoint {
                node,
                leader,
                point,
                nth,
            } => {
                let node = if leader {
                    match self.leader(Duration::from_secs(5)).await {
                        Ok(n) => n,
                        Err(_) => return Ok(None),
                    }
                } else {
                    node
                };
                if fault.needs_lag() {
                    for o in others(node) {
                        net::cut(node, o)?;
                        net::cut(o, node)?;
                    }
                }
                self.points.entry(point).or_default().0 += 1;
                let server = self.node(node);
                server.launch.env = vec![(crashpoint::ENV.into(), format!("{point}:{nth}"))];
                if let Err(e) = tokio::task::block_in_place(|| server.restart()) {
                    // It may abort before it printed its addresses (a replayed apply); the
                    // heal tells that from a failed start.
                    if server.exited().is_none() {
                        return Err(e);
                    }
                }
                Ok(Some(Fault::CrashPoint {
                    node,
                    leader,
                    point,
                    nth,
                }))
            }
            Fault::DiskFull { node, leave_mib } => {
                let written =
                    tokio::task::block_in_place(|| self.disk.fill(leave_mib * 1024 * 1024))?;
                eprintln!(
                    "nemesis: node {node}'s disk filled with {} MiB of ballast",
                    written >> 20
                );
                self.filled.push(node);
                Ok(Some(fault))
            }
        }
    }

    /// Ends `fault`.
    fn heal(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Isolate(_) | Fault::IsolateLeader | Fault::Bridge(_) | Fault::OneWay { .. } => {
                self.heal_partition()
            }
            Fault::Delay { node, .. } | Fault::Lossy { node, .. } => {
                self.proxies.impair(node, Impairment::default());
                Ok(())
            }
            Fault::DiskFull { .. } => self.disk.unfill(),
            Fault::Kill(n) => tokio::task::block_in_place(|| self.node(n).restart()),
            Fault::Pause(n) => self.node(n).signal("CONT"),
            Fault::Skew { node, .. } => {
                let server = self.node(node);
                server.launch.env.clear();
                tokio::task::block_in_place(|| server.restart())
            }
            Fault::CrashPoint { node, point, .. } => {
                if self.install_cut {
                    self.heal_partition()?;
                    self.install_cut = false;
                }
                let server = &mut self.nodes[node - 1];
                let status = server.exited();
                let log = server.log_text();
                let reached = log
                    .lines()
                    .rev()
                    .take(20)
                    .any(|l| l.contains(crashpoint::REACHED));
                let what = match status {
                    Some(s) if crate::aborted(s) && reached => {
                        self.points.entry(point).or_default().1 += 1;
                        "crash-points-hit"
                    }
                    Some(_) => "exits-unexpected-restarted",
                    None => "crash-points-not-reached",
                };
                eprintln!("nemesis: node {node}, armed at {point}: {what} ({status:?})");
                if what == "exits-unexpected-restarted" {
                    for line in log.lines().rev().take(3).collect::<Vec<_>>().iter().rev() {
                        eprintln!("    {line}");
                    }
                }
                *self.effects.entry(what).or_default() += 1;
                server.launch.env.clear();
                tokio::task::block_in_place(|| server.restart())
            }
        }
    }

    /// Lifts every partition rule; counts what they dropped.
    fn heal_partition(&mut self) -> anyhow::Result<()> {
        let dropped = net::heal()?;
        *self
            .effects
            .entry("packets-dropped-by-partitions")
            .or_default() += dropped;
        eprintln!("nemesis: healed; the partition dropped {dropped} packets");
        Ok(())
    }

    /// Holds `fault` for `hold`. A node armed at a crash point is watched meanwhile: once it
    /// aborted it is healed (restarted without the point) at once, and the rest of `hold`
    /// passes without a fault; for an install point its partition ends 4 s before the end
    /// (half-way in a short hold), so that it catches up from the leader (by a snapshot if it
    /// fell behind the leader's kept log).
    async fn hold(&mut self, fault: Fault, hold: Duration) -> anyhow::Result<()> {
        let Fault::CrashPoint { node, .. } = fault else {
            tokio::time::sleep(hold).await;
            return self.heal(fault);
        };
        let start = Instant::now();
        self.install_cut = fault.needs_lag();
        let lift = hold.saturating_sub(Duration::from_secs(4)).max(hold / 2);
        loop {
            let elapsed = start.elapsed();
            if self.install_cut && elapsed >= lift {
                self.heal_partition()?;
                self.install_cut = false;
            }
            if elapsed >= hold || self.nodes[node - 1].exited().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.heal(fault)?;
        tokio::time::sleep(hold.saturating_sub(start.elapsed())).await;
        Ok(())
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
            self.restart_exited()?;
            let Some(applied) = self.inject(step.fault).await? else {
                continue;
            };
            *counts.entry(step.fault.kind()).or_default() += 1;
            eprintln!("nemesis: {:?} for {:?}", applied, step.hold);
            self.hold(applied, step.hold).await?;
        }
        self.restart_exited()?;
        let (delayed, cut) = self.proxies.counts();
        self.effects.insert("chunks-delayed-by-proxy", delayed);
        self.effects.insert("connections-cut-by-proxy", cut);
        Ok(counts)
    }

    /// Restarts a node that exited on its own (not killed by the nemesis, which restarts
    /// those itself): counted as expected when its disk was filled and its log ends on the
    /// file system's refusal, as unexpected otherwise.
    fn restart_exited(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let n = i + 1;
            if self.nodes[i].is_running() {
                continue;
            }
            let log = self.nodes[i].log_text();
            let enospc = log
                .lines()
                .rev()
                .take(20)
                .any(|l| l.contains("No space left on device"));
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            let what = if self.filled.contains(&n) && enospc {
                "exits-on-full-disk-restarted"
            } else {
                "exits-unexpected-restarted"
            };
            let status = self.nodes[i].exited();
            eprintln!("nemesis: node {n} had exited ({what}, {status:?}); its log ends:");
            for line in tail.iter().rev() {
                eprintln!("    {line}");
            }
            *self.effects.entry(what).or_default() += 1;
            let server = &mut self.nodes[i];
            tokio::task::block_in_place(|| server.restart())?;
        }
        Ok(())
    }

    /// The last node's data directory's size, for the report.
    pub fn disk_used_mib(&self) -> u64 {
        self.disk
            .free()
            .map(|free| DISK_MIB.saturating_sub(free >> 20))
            .unwrap_or(0)
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
            if open.is_empty() {
                break;
            }
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
                    devices: list_devices(&mut jobs, &job.job_id, None).await?,
                    earlier: BTreeMap::new(),
                };
                for run in 0..job.run {
                    let devices = list_devices(&mut jobs, &job.job_id, Some(run)).await?;
                    v.earlier.insert(run, devices);
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
            for n in 1..=self.nodes.len() {
                if let Ok(v) = self.view(n, twin_devices).await {
                    views.push(v);
                }
            }
            let complete = views.len() == self.nodes.len();
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
                if last.len() != self.nodes.len() {
                    bail!("could not read every node's state\n{}", self.logs());
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(last)
    }

    /// Stops every node (SIGTERM), runs `muster audit verify` on its data directory and reads
    /// its job events (`muster audit export`) for the dispatch rule.
    pub fn audit(&mut self, views: &mut [NodeView]) -> anyhow::Result<()> {
        for (i, server) in self.nodes.iter_mut().enumerate() {
            server.terminate()?;
            let export = muster_audit(&["export"], server.data_dir())?;
            if !export.status.success() {
                bail!(
                    "muster audit export on node {}: {}",
                    i + 1,
                    String::from_utf8_lossy(&export.stderr)
                );
            }
            let log = log_events(&String::from_utf8_lossy(&export.stdout))
                .with_context(|| format!("node {}'s export", i + 1))?;
            if let Some(v) = views.iter_mut().find(|v| v.node == i + 1) {
                v.log = log;
            }
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

/// One run's (`None`: the current run's) device rows: (device, status) in listed order.
async fn list_devices(
    jobs: &mut pb::job_service_client::JobServiceClient<AuthChannel>,
    job: &str,
    run: Option<u32>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs
            .list_job_devices(pb::ListJobDevicesRequest {
                job_id: job.to_string(),
                run,
                page_size: 500,
                page_token: token,
                stale_ok: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        for d in page.devices {
            let status = name(pb::DeviceStatus::try_from(d.status).map(|s| s.as_str_name()));
            rows.push((d.device_id, status));
        }
        if page.next_page_token.is_empty() {
            return Ok(rows);
        }
        token = page.next_page_token;
    }
}

/// The job events of a JSON Lines export, reduced for the dispatch rule. A run's batches are
/// cut as the domain cuts them: its device list in chunks of the spec's batch size.
fn log_events(export: &str) -> anyhow::Result<Vec<(u64, history::LogEvent)>> {
    use history::LogEvent as L;
    use muster_domain::event::Event as E;
    const WANTED: [&str; 10] = [
        "JobCreated",
        "RerunStarted",
        "BatchStarted",
        "DeviceDispatched",
        "JobStopped",
        "JobResumed",
        "JobCancelled",
        "JobCompleted",
        "JobFailed",
        "JobExpired",
    ];
    let mut out = Vec::new();
    let mut batch_size: BTreeMap<String, Option<muster_domain::spec::BatchSize>> = BTreeMap::new();
    let cut = |size: Option<muster_domain::spec::BatchSize>, devices: &[muster_types::DeviceId]| {
        let per = size.map_or(devices.len().max(1), |b| b.per_batch(devices.len()));
        devices
            .chunks(per.max(1))
            .map(|c| c.iter().map(|d| d.as_str().to_string()).collect())
            .collect()
    };
    for line in export.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line)?;
        if !WANTED.contains(&row["type"].as_str().unwrap_or_default()) {
            continue;
        }
        let seq = row["seq"].as_u64().unwrap_or_default();
        let event: E = serde_json::from_value(row["body"].clone())?;
        let e = match event {
            E::JobCreated {
                job, spec, devices, ..
            } => {
                let size = spec.rollout.batch;
                batch_size.insert(job.as_str().to_string(), size);
                L::RunStarted {
                    job: job.as_str().into(),
                    run: 0,
                    batches: cut(size, &devices),
                }
            }
            E::RerunStarted {
                job, run, devices, ..
            } => {
                let size = batch_size.get(job.as_str()).copied().flatten();
                L::RunStarted {
                    job: job.as_str().into(),
                    run: run.0,
                    batches: cut(size, &devices),
                }
            }
            E::BatchStarted {
                job, run, batch, ..
            } => L::BatchStarted {
                job: job.as_str().into(),
                run: run.0,
                batch,
            },
            E::DeviceDispatched {
                job, run, device, ..
            } => L::Dispatched {
                job: job.as_str().into(),
                run: run.0,
                device: device.as_str().into(),
            },
            E::JobStopped { job, .. } => L::Stopped {
                job: job.as_str().into(),
            },
            E::JobResumed { job, .. } => L::Resumed {
                job: job.as_str().into(),
            },
            E::JobCancelled { job, .. }
            | E::JobCompleted { job, .. }
            | E::JobFailed { job, .. }
            | E::JobExpired { job, .. } => L::Ended {
                job: job.as_str().into(),
            },
            _ => continue,
        };
        out.push((seq, e));
    }
    Ok(out)
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
    let steps = schedule::schedule(config.seed, config.duration, config.nodes);
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
            channels: (1..=config.nodes)
                .map(lazy_channel)
                .collect::<Result<_, _>>()?,
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
    // Whatever the nemesis did, nothing stays cut, slow, full, frozen or down.
    let _ = net::heal();
    for n in 1..=config.nodes {
        h.proxies.impair(n, Impairment::default());
    }
    h.disk.unfill()?;
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
    let mut effects = h.effects.clone();
    effects.insert("last-node-data-mib-at-end", h.disk_used_mib());
    // What the snapshot crash points need to be reached: snapshots built, and installed by a
    // follower that fell behind the leader's log.
    let lines = |what: &str| logs.lines().filter(|l| l.contains(what)).count() as u64;
    effects.insert("snapshots-built", lines("built a snapshot"));
    effects.insert(
        "snapshots-installed",
        lines("installed a snapshot from the leader"),
    );
    let report = history::check(&history, &views, &initial);
    Ok(Outcome {
        report,
        faults,
        effects,
        points: h.points.clone(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::history::LogEvent as L;
    use super::*;
    use muster_domain::event::Event;
    use muster_domain::spec::{
        BatchSize, JobSpec, MethodCall, Operation, RetryPolicy, Rollout, Schedule, Target,
        TargetSelector,
    };
    use muster_types::{DeviceId, JobId, RerunId, RunId, Timestamp};

    fn ids(list: &[&str]) -> Vec<DeviceId> {
        list.iter().map(|d| DeviceId::new(*d).unwrap()).collect()
    }

    fn spec(batch: Option<BatchSize>) -> JobSpec {
        JobSpec {
            display_name: "nemesis".into(),
            description: String::new(),
            target: Target {
                selector: TargetSelector::Devices(ids(&["a", "b", "c"])),
                continuous: false,
            },
            operations: vec![Operation::InvokeMethod(MethodCall {
                name: "reboot".into(),
                payload: serde_json::json!({}),
                response_timeout_secs: 5,
                connect_timeout_secs: 0,
            })],
            schedule: Schedule::default(),
            rollout: Rollout {
                batch,
                ..Rollout::default()
            },
            cancellation: None,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn an_export_reduces_to_runs_cut_into_batches_and_the_job_events() {
        let job = JobId::new("j").unwrap();
        let at = Timestamp(0);
        let events = [
            Event::JobCreated {
                job: job.clone(),
                spec: Box::new(spec(Some(BatchSize::Count(2)))),
                devices: ids(&["a", "b", "c"]),
                at,
            },
            Event::BatchStarted {
                job: job.clone(),
                run: RunId(0),
                batch: 0,
                at,
            },
            Event::DeviceDispatched {
                job: job.clone(),
                run: RunId(0),
                device: ids(&["a"])[0].clone(),
                attempt: 1,
                at,
            },
            Event::JobStopped {
                job: job.clone(),
                at,
            },
            Event::RerunStarted {
                job: job.clone(),
                run: RunId(1),
                rerun_id: RerunId::new("r").unwrap(),
                devices: ids(&["a", "b", "c"]),
                at,
            },
        ];
        let mut text: String = events
            .iter()
            .zip(1u64..)
            .map(|(e, seq)| {
                serde_json::json!({"seq": seq, "type": e.kind(), "body": e}).to_string() + "\n"
            })
            .collect();
        // Other events are skipped without decoding their bodies.
        text.push_str(r#"{"seq":6,"type":"TwinPatched","body":{}}"#);
        let batches = || {
            vec![
                vec!["a".to_string(), "b".to_string()],
                vec!["c".to_string()],
            ]
        };
        assert_eq!(
            log_events(&text).unwrap(),
            vec![
                (
                    1,
                    L::RunStarted {
                        job: "j".into(),
                        run: 0,
                        batches: batches(),
                    }
                ),
                (
                    2,
                    L::BatchStarted {
                        job: "j".into(),
                        run: 0,
                        batch: 0,
                    }
                ),
                (
                    3,
                    L::Dispatched {
                        job: "j".into(),
                        run: 0,
                        device: "a".into(),
                    }
                ),
                (4, L::Stopped { job: "j".into() }),
                (
                    5,
                    L::RunStarted {
                        job: "j".into(),
                        run: 1,
                        batches: batches(),
                    }
                ),
            ]
        );
    }
}
