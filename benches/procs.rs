//! Processes for the end-to-end benchmarks: the release `muster` binary as one node or as a
//! cluster of several (`--peers`), and a Mosquitto of the harness's own.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;

use crate::auth::{self, AuthChannel};

/// `target/release/muster`, next to the running bench executable (`target/release/deps/*`).
pub fn muster_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory from the bench executable")?;
    let bin = dir.join("muster");
    if !bin.is_file() {
        bail!(
            "the node binary {} is missing: run cargo build --release -p muster-cli first",
            bin.display()
        );
    }
    Ok(bin)
}

/// A temporary directory under `target/bench-data` (the real disk), or `MUSTER_BENCH_DIR`.
pub fn bench_dir() -> Result<tempfile::TempDir> {
    let base = std::env::var("MUSTER_BENCH_DIR").unwrap_or_else(|_| {
        let d = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-data");
        let _ = std::fs::create_dir_all(d);
        d.to_string()
    });
    Ok(tempfile::tempdir_in(base)?)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// SIGTERM, then SIGKILL if the process has not exited within 15 s.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A Mosquitto started for a harness, with the per-client inflight and queue limits lifted (a
/// stock broker drops QoS 1 messages beyond 1,000 queued per client); stopped on drop.
#[derive(Debug)]
pub struct Broker {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        let bin = std::env::var("MUSTER_BENCH_MOSQUITTO")
            .unwrap_or_else(|_| "/usr/sbin/mosquitto".to_string());
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        // Stock limits: 20 QoS 1 messages in flight and 1000 queued per client, then drops. A
        // simulated connection carries 1000 devices and the dispatcher's one connection carries
        // every request, so both are lifted.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_inflight_messages 1000\n\
                 max_queued_messages 1000000\n\
                 set_tcp_nodelay true\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("mosquitto.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {bin} (is Mosquitto installed?)"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("Mosquitto did not listen on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker {
            child,
            url: format!("mqtt://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// The harness's own broker, or `MUSTER_BENCH_MQTT_URL` if set (then `None` is returned as
    /// the broker: nothing to stop).
    pub fn from_env() -> Result<(Option<Broker>, String)> {
        match std::env::var("MUSTER_BENCH_MQTT_URL") {
            Ok(u) => Ok((None, u)),
            Err(_) => {
                let b = Broker::start()?;
                let u = b.url.clone();
                Ok((Some(b), u))
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// One `muster serve` process on its own data directory; SIGTERM on drop.
#[derive(Debug)]
pub struct Node {
    pub child: Option<Child>,
    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub grpc: String,
    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub rest: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts `bin serve` with `args` added to the data directory and port-0 client addresses.
    /// Unless `args` has `--insecure` or `--hostname`, the node authenticates with the benches'
    /// administrator key and host name ([`auth::serve_args`]); [`channel`](Self::channel) and
    /// [`auth::http`] carry its token.
    pub async fn start(bin: &Path, args: &[String]) -> Result<Node> {
        let dir = bench_dir()?;
        let auth_args = if args.iter().any(|a| a == "--insecure" || a == "--hostname") {
            Vec::new()
        } else {
            auth::serve_args(dir.path())?
        };
        let log_path = dir.path().join("node.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        // The node reads `MUSTER_*` as configuration and refuses keys it does not know.
        for (k, _) in std::env::vars() {
            if k.starts_with("MUSTER_BENCH_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(&auth_args)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = match tokio::time::timeout(Duration::from_secs(30), line).await {
            Ok(Ok(l)) => l,
            _ => {
                let _ = child.kill();
                bail!("the node did not print its addresses within 30 s");
            }
        };
        let find = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let (Some(grpc), Some(rest)) = (find("grpc="), find("rest=")) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("unexpected first line from the node: {line:?}; its log:\n{log}");
        };
        Ok(Node {
            child: Some(child),
            grpc,
            rest,
            log: log_path,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A gRPC channel whose calls carry the administrator's token, retried for 30 s.
    pub async fn channel(&self) -> Result<AuthChannel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tonic::transport::Channel::from_shared(self.grpc.clone())?
                .connect()
                .await
            {
                Ok(c) => return Ok(auth::with_credential(c, Some(&auth::admin_token()))),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `Some(is_leader)` when `GET /readyz` (open) answers 200: the node knows a leader and the
    /// cluster's credentials exist.
    pub async fn ready(&self, http: &reqwest::Client) -> Option<bool> {
        let r = http
            .get(format!("{}/readyz", self.rest))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v["isLeader"].as_bool()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            terminate(c);
        }
    }
}

/// `n` nodes started with the same `--peers` list (ids 1..=n) and `extra` flags each. With
/// `n == 1` the node is a cluster of one (no `--peers`).
pub async fn start_nodes(bin: &Path, n: usize, extra: &[String]) -> Result<Vec<Node>> {
    if n <= 1 {
        let mut args = vec!["--peer-addr".to_string(), "127.0.0.1:0".to_string()];
        args.extend_from_slice(extra);
        return Ok(vec![Node::start(bin, &args).await?]);
    }
    let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>>>()?;
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let mut args = vec![
            "--node-id".to_string(),
            (i + 1).to_string(),
            "--peer-addr".to_string(),
            format!("127.0.0.1:{port}"),
            "--peers".to_string(),
            peers.clone(),
        ];
        args.extend_from_slice(extra);
        nodes.push(Node::start(bin, &args).await?);
    }
    Ok(nodes)
}

/// Waits until one of `nodes` (those still running) says it leads; returns its index.
pub async fn leader(nodes: &[Node], timeout: Duration) -> Result<usize> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.child.is_some() && n.ready(&http).await == Some(true) {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Registers `ids` over gRPC `ImportDevices`, 5,000 a request, each with `model_id` and the tags
/// `tags_json`; a request refused as `Unavailable` is retried until `retry_for` has passed.
pub async fn import_devices(
    channel: AuthChannel,
    ids: &[String],
    model_id: Option<&str>,
    tags_json: &str,
    retry_for: Duration,
) -> Result<()> {
    let mut client = DeviceServiceClient::new(channel);
    let deadline = Instant::now() + retry_for;
    for chunk in ids.chunks(5_000) {
        let req = pb::ImportDevicesRequest {
            devices: chunk
                .iter()
                .map(|id| pb::NewDevice {
                    device_id: id.clone(),
                    display_name: String::new(),
                    model_id: model_id.map(str::to_string),
                    enabled: None,
                    tags_json: tags_json.into(),
                })
                .collect(),
        };
        loop {
            match client.import_devices(req.clone()).await {
                Ok(_) => break,
                // Before the node has elected itself, writes are refused.
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => bail!("ImportDevices: {s}"),
            }
        }
    }
    Ok(())
}

/// One registered device that is anything but connected (none: all are), read stale.
pub async fn not_connected(client: &mut DeviceServiceClient<AuthChannel>) -> Result<Vec<String>> {
    Ok(client
        .query_devices(pb::QueryDevicesRequest {
            query: "SELECT * FROM devices WHERE connectionState != 'Connected'".into(),
            page_size: 1,
            page_token: String::new(),
            ids_only: true,
            stale_ok: true,
        })
        .await?
        .into_inner()
        .device_ids)
}

/// Every device of job `job_id`'s current run, page by page, read stale.
pub async fn job_devices(channel: AuthChannel, job_id: &str) -> Result<Vec<pb::JobDevice>> {
    let mut client = JobServiceClient::new(channel);
    let mut devices = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_job_devices(pb::ListJobDevicesRequest {
                job_id: job_id.into(),
                run: None,
                status: 0,
                page_size: 1000,
                page_token: token,
                stale_ok: true,
            })
            .await?
            .into_inner();
        devices.extend(page.devices);
        if page.next_page_token.is_empty() {
            return Ok(devices);
        }
        token = page.next_page_token;
    }
}

/// The `main` of an end-to-end harness. `cargo bench` passes `--bench`; `cargo test --benches`
/// does not: a full pass needs a release build of the node and minutes, so then it only prints
/// `skipped`. Otherwise runs `bench` on two worker threads; on an error prints `{failed}: {e:#}`
/// and exits with 1.
pub fn harness_main<F>(skipped: &str, failed: &str, bench: impl FnOnce() -> F)
where
    F: std::future::Future<Output = Result<()>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{skipped}");
        return;
    }
    #[allow(clippy::unwrap_used)]
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(bench()) {
        eprintln!("{failed}: {e:#}");
        std::process::exit(1);
    }
}

/// A whole node (`muster_node::run`: REST, gRPC, Raft-of-one on sled, the credentials task) in
/// this process, on loopback port-0 addresses, serving on the runtime it was started on. With
/// `insecure` false it authenticates with the benches' administrator key and host name
/// ([`auth`]); [`start_on`](Self::start_on) returns once `/readyz` says it leads (so its
/// credentials exist).
#[derive(Debug)]
pub struct InProcessNode {
    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub grpc: String,
    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub rest: String,
    /// The CA the node's certificate is from, when it serves TLS.
    pub ca: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl InProcessNode {
    /// Starts the node on `rt` (its sockets and tasks live there, so a bench can give the node
    /// its own threads) and waits up to 60 s until it is ready and leads.
    pub async fn start_on(rt: &tokio::runtime::Handle, insecure: bool) -> Result<InProcessNode> {
        InProcessNode::start_tls_on(rt, insecure, None).await
    }

    /// [`InProcessNode::start_on`], serving REST and client gRPC over TLS with `node-1.pem` and
    /// `node-1.key` from `certs` (what [`crate::tls::certs_init`] wrote) when given: the URLs are
    /// then `https://` and [`InProcessNode::channel`] and [`InProcessNode::http`] trust `ca.pem`.
    pub async fn start_tls_on(
        rt: &tokio::runtime::Handle,
        insecure: bool,
        certs: Option<&Path>,
    ) -> Result<InProcessNode> {
        let dir = bench_dir()?;
        let key = dir.path().join("admin.key");
        std::fs::write(&key, auth::ADMIN_KEY)?;
        let cfg = muster_node::NodeConfig {
            data_dir: Some(dir.path().join("data")),
            grpc_addr: "127.0.0.1:0".into(),
            http_addr: "127.0.0.1:0".into(),
            peer_addr: "127.0.0.1:0".into(),
            insecure,
            hostname: (!insecure).then(|| auth::HOST.to_string()),
            admin_key_file: (!insecure).then_some(key),
            tls: muster_node::TlsSettings {
                cert: certs.map(|c| c.join("node-1.pem")),
                key: certs.map(|c| c.join("node-1.key")),
                ..Default::default()
            },
            ..Default::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let listeners = match muster_node::Listeners::bind(&cfg).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let addrs = listeners
                .grpc_addr()
                .and_then(|g| Ok((g, listeners.http_addr()?)))
                .map_err(|e| e.to_string());
            let _ = addr_tx.send(addrs);
            let r = muster_node::run(cfg, listeners, async move {
                let _ = stop_rx.await;
            })
            .await;
            let _ = done_tx.send(r.map_err(|e| e.to_string()));
        });
        let (grpc, rest) = addr_rx
            .await
            .context("the node task ended")?
            .map_err(anyhow::Error::msg)?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        let node = InProcessNode {
            grpc: format!("{scheme}://{grpc}"),
            rest: format!("{scheme}://{rest}"),
            ca: certs.map(|c| c.join("ca.pem")),
            stop: Some(stop_tx),
            done: Some(done_rx),
            _dir: dir,
        };
        let http = node.http(None)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http.get(format!("{}/readyz", node.rest)).send().await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    if v["isLeader"].as_bool() == Some(true) {
                        return Ok(node);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the in-process node was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gRPC endpoint for the node: TLS trusting the bench CA when the node serves TLS.
    pub fn endpoint(&self) -> Result<tonic::transport::Endpoint> {
        crate::tls::grpc_endpoint(&self.grpc, self.ca.as_deref())
    }

    /// A gRPC channel to the node, connected (no credential: see [`auth::with_credential`]).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(self.endpoint()?.connect().await?)
    }

    /// An HTTP client for the node's REST API (trusting the bench CA when the node serves TLS)
    /// that sends `authorization` on every request (`None`: no credential).
    pub fn http(&self, authorization: Option<&str>) -> Result<reqwest::Client> {
        crate::tls::http_client(self.ca.as_deref(), authorization, true)
    }

    /// Stops the node and waits until it has shut down.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.done.take() {
            Some(d) => d
                .await
                .context("the node task ended")?
                .map_err(anyhow::Error::msg),
            None => Ok(()),
        }
    }
}
