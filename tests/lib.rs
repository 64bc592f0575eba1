//! Helpers for the end-to-end tests: start the real `muster` binary on free ports, kill it
//! (gracefully or with SIGKILL), start it again on the same data directory, and wait on
//! conditions with generous timeouts instead of asserting on timing.
//!
//! The binary is `target/<profile>/muster`, found next to the test executable; `cargo test
//! --workspace` builds it (`crates/cli/tests/cli.rs` makes sure). Set `MUSTER_BIN` to test
//! another build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// How long a test waits for a condition before failing. Generous: CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The host name every test node is started with (`--hostname`): the tests' connection string
/// names it, so one credential works on every node.
pub const TEST_HOST: &str = "muster.test";

/// The `iothubowner` primary key every test node's new cluster gets (`--admin-key-file`), so the
/// tests hold the administrator's credential without reading it from a data directory.
pub const TEST_ADMIN_KEY: &str = "bXVzdGVyLXRlc3RzLWFkbWluLWtleS0wMTIzNDU2Nzg=";

/// The administrator's connection string of every test node.
pub fn admin_connection_string() -> String {
    format!("HostName={TEST_HOST};SharedAccessKeyName=iothubowner;SharedAccessKey={TEST_ADMIN_KEY}")
}

/// A SAS token (valid a day) for the administrator of every test node.
pub fn admin_token() -> String {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + 86_400;
    muster_domain::auth::ConnectionString::parse(&admin_connection_string())
        .ok()
        .and_then(|c| c.token(expiry))
        .unwrap_or_default()
}

/// `muster` with the administrator's credential in `MUSTER_TOKEN`, for client commands.
pub fn muster_cmd() -> anyhow::Result<Command> {
    let mut cmd = Command::new(muster_bin()?);
    cmd.env("MUSTER_TOKEN", admin_connection_string());
    Ok(cmd)
}

/// An HTTP client that sends the administrator's token on every request.
pub fn http() -> reqwest::Client {
    http_with(&admin_token())
}

/// An HTTP client that sends `authorization` on every request.
pub fn http_with(authorization: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(authorization) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

pub use muster_api::access::{with_credential, AuthChannel, Bearer};

/// A gRPC channel to `url` carrying the administrator's credential.
pub async fn grpc_channel(url: &str) -> anyhow::Result<AuthChannel> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())?
        .connect()
        .await?;
    Ok(with_credential(channel, Some(&admin_token())))
}

/// The `muster` binary under test.
pub fn muster_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MUSTER_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/muster
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join(format!("muster{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        bail!(
            "{} not found: run the tests with `cargo test --workspace` (which builds it) or set MUSTER_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// One `muster serve` process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the REST gateway.
    pub rest: String,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub grpc: String,
    /// `127.0.0.1:PORT` of the Raft peer listener.
    pub peer: String,
    data_dir: PathBuf,
    extra: Vec<String>,
    log: PathBuf,
    /// The CA that the server's REST/gRPC certificate chains to, when it serves TLS.
    ca_cert: Option<PathBuf>,
    /// How the process is started (group, environment); read again by every restart.
    pub launch: Launch,
}

/// What a [`Server`] process is started with besides its flags: the nemesis harness runs each
/// node under a group of its own (its partition rules match on it), sets a clock skew or arms
/// a crash point (`env`, which its faults set and clear) on a setting every start keeps
/// (`fixed_env`).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub gid: Option<u32>,
    pub env: Vec<(String, String)>,
    pub fixed_env: Vec<(String, String)>,
}

impl Server {
    /// Starts a node on free ports with its data in `dir/data` and its log in `dir/server.log`.
    pub fn start(dir: &Path) -> anyhow::Result<Server> {
        Server::start_with(dir, &[])
    }

    /// Like [`start`](Self::start), with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Server::start_inner(dir, extra, None)
    }

    /// Like [`start_with`](Self::start_with) for a server whose `extra` flags turn TLS on with a
    /// certificate from `ca_cert`: [`wait_ready`](Self::wait_ready), [`http_client`](Self::http_client)
    /// and [`leader_channel`] then trust that CA.
    pub fn start_tls(dir: &Path, ca_cert: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Server::start_inner(dir, extra, Some(ca_cert.to_path_buf()))
    }

    fn start_inner(dir: &Path, extra: &[&str], ca_cert: Option<PathBuf>) -> anyhow::Result<Server> {
        let mut s = Server {
            child: None,
            rest: String::new(),
            grpc: String::new(),
            peer: String::new(),
            data_dir: dir.join("data"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join("server.log"),
            ca_cert,
            launch: Launch::default(),
        };
        s.spawn()?;
        Ok(s)
    }

    /// Like [`start_with`](Self::start_with), started as `launch` says.
    pub fn start_launch(dir: &Path, extra: &[&str], launch: Launch) -> anyhow::Result<Server> {
        let mut s = Server {
            child: None,
            rest: String::new(),
            grpc: String::new(),
            peer: String::new(),
            data_dir: dir.join("data"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join("server.log"),
            ca_cert: None,
            launch,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(muster_bin()?);
        cmd.arg("serve").arg("--data-dir").arg(&self.data_dir);
        if !self.extra.iter().any(|a| a == "--grpc-addr") {
            cmd.args(["--grpc-addr", "127.0.0.1:0"]);
        }
        if let Some(gid) = self.launch.gid {
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        cmd.envs(self.launch.fixed_env.iter().map(|(k, v)| (k, v)));
        cmd.envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        if !self.extra.iter().any(|a| a == "--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        if !self.extra.iter().any(|a| a == "--peer-addr") {
            cmd.args(["--peer-addr", "127.0.0.1:0"]);
        }
        if !self
            .extra
            .iter()
            .any(|a| a == "--insecure" || a == "--hostname")
        {
            let key = self.log.with_file_name("admin.key");
            std::fs::write(&key, TEST_ADMIN_KEY)?;
            cmd.args(["--hostname", TEST_HOST])
                .arg("--admin-key-file")
                .arg(key);
        }
        let mut child = cmd
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("start muster")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent && line.starts_with("muster listening:") {
                    let _ = tx.send(line.clone());
                    sent = true;
                }
            }
        });
        self.child = Some(child);
        let line = rx.recv_timeout(PATIENCE).map_err(|_| {
            anyhow!(
                "muster did not report its addresses; log:\n{}",
                self.log_text()
            )
        })?;
        for part in line.split_whitespace() {
            if let Some(v) = part.strip_prefix("rest=") {
                self.rest = v.to_string();
            } else if let Some(v) = part.strip_prefix("grpc=") {
                self.grpc = v.to_string();
            } else if let Some(v) = part.strip_prefix("peer=") {
                self.peer = v.to_string();
            }
        }
        Ok(())
    }

    /// The server's log so far (its stderr), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The CA this server's TLS certificate chains to (`None`: plain HTTP).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// A REST client for this server with the administrator's token: plain, or trusting its CA
    /// when it serves TLS.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        https_client(self.ca_cert(), None)
    }

    /// A gRPC channel to this server with the administrator's credential (TLS with its CA when
    /// it serves TLS), connected.
    pub async fn channel(&self) -> anyhow::Result<AuthChannel> {
        grpc_tls_channel(&self.grpc, self.ca_cert(), None).await
    }

    /// SIGKILL: no shutdown code runs, as in a crash or power loss of the process.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited with success.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        Ok(sigterm_and_wait(&mut c, "muster")?.success())
    }

    /// Starts the process again on the same data directory (new ports).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// How the process ended, once it ended on its own (`None` while it runs, and after
    /// [`kill9`](Self::kill9) or [`terminate`](Self::terminate)).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.rest);
        let client = self.http_client()?;
        wait_for("readyz", || {
            let req = client.get(&url).send();
            async move { matches!(req.await, Ok(r) if r.status().is_success()) }
        })
        .await
        .with_context(|| self.log_text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// Whether `status` is an exit by SIGABRT (`std::process::abort`: an armed crash point).
pub fn aborted(status: std::process::ExitStatus) -> bool {
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(6)
}

/// Sends SIGTERM to `child` and waits up to [`PATIENCE`] for it to exit; after that it is killed
/// and this is an error naming `what`.
pub fn sigterm_and_wait(child: &mut Child, what: &str) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child.id().to_string();
    if !Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success()
    {
        bail!("could not send SIGTERM to {what} (pid {pid})");
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("{what} did not exit within {PATIENCE:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` until it holds, for up to [`PATIENCE`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {PATIENCE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh temporary directory for one server (its data and its log).
pub fn data_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("muster-e2e-").tempdir()?)
}

/// Free loopback ports for flags that need a number before the process starts (`--peers`).
///
/// They come from below the kernel's ephemeral range, so a port released here is not handed out
/// again by a `bind(":0")` elsewhere (another node's gRPC or REST listener, a client socket)
/// before its node takes it; each is checked free by binding it. Within one test process a
/// counter never repeats a port; between processes the start is spread by the process id.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    anyhow::ensure!(
        ports.len() == n,
        "no {n} free ports below the ephemeral range"
    );
    Ok(ports)
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Several real `muster serve` processes forming one Raft cluster from the same `--peers` list
/// (node ids 1..=n, peer ports picked free). Each node's data and log live in its own temporary
/// directory, removed when the cluster is dropped.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<Server>,
    /// The `--peers` value every node was started with.
    pub peers: String,
    dirs: Vec<tempfile::TempDir>,
    ca_cert: Option<PathBuf>,
}

impl TestCluster {
    /// Starts `n` nodes with `extra` flags on each (for instance `--mqtt-url`).
    pub fn start(n: usize, extra: &[&str]) -> anyhow::Result<TestCluster> {
        TestCluster::start_inner(n, extra, None)
    }

    /// Like [`start`](Self::start), over TLS everywhere with the certificates `muster certs
    /// init --node 1= --node 2= ...` wrote to `certs` (see [`certs_init`]): node `i` serves REST
    /// and gRPC with `node-i.pem` and uses it for mutual TLS on the peer port with `ca.pem`.
    pub fn start_tls(n: usize, certs: &Path, extra: &[&str]) -> anyhow::Result<TestCluster> {
        TestCluster::start_inner(n, extra, Some(certs))
    }

    /// Like [`start`](Self::start), after `prepare(i, dir)` ran on node index `i`'s directory
    /// (its data goes to `dir/data`), for instance to mount a file system there.
    pub fn start_prepared(
        n: usize,
        extra: &[&str],
        prepare: &mut dyn FnMut(usize, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<TestCluster> {
        TestCluster::start_with_prepare(n, extra, None, prepare)
    }

    fn start_inner(n: usize, extra: &[&str], certs: Option<&Path>) -> anyhow::Result<TestCluster> {
        TestCluster::start_with_prepare(n, extra, certs, &mut |_, _| Ok(()))
    }

    fn start_with_prepare(
        n: usize,
        extra: &[&str],
        certs: Option<&Path>,
        prepare: &mut dyn FnMut(usize, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<TestCluster> {
        let ports = free_ports(n)?;
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let dirs = (0..n).map(|_| data_dir()).collect::<Result<Vec<_>, _>>()?;
        for (i, dir) in dirs.iter().enumerate() {
            prepare(i, dir.path())?;
        }
        let mut nodes = Vec::with_capacity(n);
        for (i, dir) in dirs.iter().enumerate() {
            let id = (i + 1).to_string();
            let addr = format!("127.0.0.1:{}", ports[i]);
            let mut args: Vec<String> = ["--node-id", &id, "--peer-addr", &addr, "--peers", &peers]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if let Some(certs) = certs {
                args.extend(tls_flags(certs, i + 1));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ca = certs.map(|c| c.join("ca.pem"));
            nodes.push(Server::start_inner(dir.path(), &args, ca)?);
        }
        Ok(TestCluster {
            nodes,
            peers,
            dirs,
            ca_cert: certs.map(|c| c.join("ca.pem")),
        })
    }

    /// A REST client with the administrator's token that trusts the cluster's CA when it runs
    /// TLS.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        https_client(self.ca_cert.as_deref(), None)
    }

    /// The temporary directory of node index `i` (0-based), for starting a process of its own there.
    pub fn dir(&self, i: usize) -> &Path {
        self.dirs[i].path()
    }

    /// `Some(is_leader)` when node index `i` answers `/readyz` (it knows a leader).
    pub async fn ready(&self, client: &reqwest::Client, i: usize) -> Option<bool> {
        let r = client
            .get(format!("{}/readyz", self.nodes[i].rest))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let body: serde_json::Value = r.json().await.ok()?;
        body["isLeader"].as_bool()
    }

    /// Waits until one of the nodes in `alive` (indexes) says it is the leader; returns its index.
    /// The error carries every node's log.
    pub async fn leader_among(&self, alive: &[usize]) -> anyhow::Result<usize> {
        let client = self.http_client()?;
        let found = std::sync::Mutex::new(None);
        let waited = wait_for("a leader", || async {
            for &i in alive {
                if self.ready(&client, i).await == Some(true) {
                    if let Ok(mut f) = found.lock() {
                        *f = Some(i);
                    }
                    return true;
                }
            }
            false
        })
        .await;
        if let Err(e) = waited {
            bail!("{e}\n{}", self.logs());
        }
        let i = found.lock().map_err(|_| anyhow!("poisoned"))?.take();
        i.ok_or_else(|| anyhow!("no leader"))
    }

    /// Waits for a leader among all nodes.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.leader_among(&all).await
    }

    /// Every node's log, separated, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("---- node {} ----\n{}", i + 1, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Signals and process ids, for fault tests (SIGSTOP a node, resume it).
impl Server {
    /// The operating system's id of the running process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends signal `sig` (as `kill` spells it: `STOP`, `CONT`, `TERM`, ...) to the process. A
    /// stopped process (`STOP`) keeps its sockets open but answers nothing until `CONT`, as a
    /// node frozen by a long pause or a partition would; [`kill9`](Self::kill9) and drop still
    /// end it.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the server is not running"))?
            .to_string();
        if !Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()?
            .success()
        {
            bail!("could not send SIG{sig} to muster (pid {pid})");
        }
        Ok(())
    }
}

/// Like [`wait_for`], for up to `patience` instead of [`PATIENCE`] (large fleets on a shared CI
/// machine).
pub async fn wait_for_long<F, Fut>(
    what: &str,
    patience: Duration,
    mut cond: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gRPC channel to `server`, returned once it answers a linearizable read (a leader is
/// known). The error names the server's log.
pub async fn leader_channel(server: &Server) -> anyhow::Result<AuthChannel> {
    use muster_proto::pb;
    let channel = server.channel().await?;
    let jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
    wait_for("a leader", || {
        let mut jobs = jobs.clone();
        async move { jobs.list_jobs(pb::ListJobsRequest::default()).await.is_ok() }
    })
    .await
    .with_context(|| server.log_text())?;
    Ok(channel)
}

/// A `muster devsim` child (stdout lines on a channel, stderr in `dir/devsim.log`); killed if
/// the test ends early.
#[derive(Debug)]
pub struct Devsim {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Devsim {
    /// Runs `muster devsim ARGS`.
    #[allow(clippy::expect_used)]
    pub fn start(dir: &Path, args: &[&str]) -> Devsim {
        let stderr = dir.join("devsim.log");
        let mut child = muster_cmd()
            .expect("the muster binary")
            .arg("devsim")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("devsim.log"))
            .spawn()
            .expect("start muster devsim");
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Devsim {
            child,
            lines,
            stderr,
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first line on stdout (`devsim ready: ...`); panics with the log if none comes.
    #[allow(clippy::panic)]
    pub fn first_line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("devsim printed nothing; log:\n{}", self.log()))
    }

    /// SIGTERM, then the exit status.
    #[allow(clippy::expect_used)]
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm_and_wait(&mut self.child, "devsim").expect("devsim exits")
    }
}

impl Drop for Devsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Mosquitto of the test's own (`mosquitto -c dir/mosquitto.conf`), for tests that need a
/// broker configured differently from the shared one (logins, ACLs, TLS). Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    log: PathBuf,
}

impl Mosquitto {
    /// Writes `config` to `dir/mosquitto.conf`, starts Mosquitto on it, and returns once
    /// `port` (one of the config's listeners) accepts connections.
    pub fn start(dir: &Path, config: &str, port: u16) -> anyhow::Result<Mosquitto> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config)?;
        let log = dir.join("mosquitto.log");
        // Debian puts it in /usr/sbin, which is not on every user's PATH.
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&log)?)
            .spawn()
            .context("start mosquitto (is it installed? .ci/run installs it)")?;
        let mut m = Mosquitto {
            child: Some(child),
            log,
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                bail!("mosquitto exited ({status}):\n{}", m.log_text());
            }
            if std::time::Instant::now() > deadline {
                bail!("mosquitto did not listen on {port}:\n{}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGHUP: Mosquitto reloads its password and ACL files.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("mosquitto is not running"))?;
        if !Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?
            .success()
        {
            bail!("could not send SIGHUP to mosquitto (pid {pid})");
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An MQTT client of the test's own (a rogue device, an observer), connected: every publish it
/// receives arrives on `messages` as (topic, payload). Dropping it drops the connection without
/// a DISCONNECT (so a will is published).
#[derive(Debug)]
pub struct MqttClient {
    pub client: rumqttc::AsyncClient,
    pub messages: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects with `opts` and returns once the broker accepted the connection (CONNACK success),
/// or the error it refused it with (within 10 s). It does not reconnect.
pub async fn mqtt_connect(opts: rumqttc::MqttOptions) -> anyhow::Result<MqttClient> {
    use rumqttc::{Event, Packet};
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("connection refused or failed: {e}")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK within 10 s"))??;
    if first.code != rumqttc::ConnectReturnCode::Success {
        bail!("connection refused: {:?}", first.code);
    }
    let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
            }
        }
    });
    Ok(MqttClient {
        client,
        messages,
        task,
    })
}

/// A device SAS token for `id` on `host`, signed with `key` (base64), expiring `secs` from
/// now (negative: already expired).
pub fn device_token(host: &str, id: &str, key: &str, secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    muster_domain::auth::sign_device(host, id, key, now + secs).unwrap_or_default()
}

/// Logs in to the broker (or device gateway) at `addr` (`HOST:PORT`) as an Azure IoT device
/// does: client id `client_id`, user name `{host}/{id}/?api-version=2021-04-12`, password
/// `token`. Ok once the CONNACK accepted it.
pub async fn device_connect(
    addr: &str,
    client_id: &str,
    host: &str,
    id: &str,
    token: &str,
) -> anyhow::Result<MqttClient> {
    let (h, p) = addr
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{addr} is not HOST:PORT"))?;
    let mut opts = rumqttc::MqttOptions::new(client_id, h, p.parse()?);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_credentials(muster_domain::auth::device_user(host, id), token);
    mqtt_connect(opts).await
}

/// Runs `muster certs init --out OUT ARGS...` (for example `--node 1= --node 2= --client ops`)
/// and fails with its output if it fails.
pub fn certs_init(out: &Path, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(muster_bin()?)
        .args(["certs", "init", "--out"])
        .arg(out)
        .args(args)
        .output()?;
    if !o.status.success() {
        bail!(
            "muster certs init failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// The `serve` flags for node `id` of a cluster whose certificates `muster certs init` wrote to
/// `certs`: its node certificate on REST, gRPC and the peer port, and the cluster CA.
pub fn tls_flags(certs: &Path, id: usize) -> Vec<String> {
    let path = |f: String| certs.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        path(format!("node-{id}.pem")),
        "--tls-key".into(),
        path(format!("node-{id}.key")),
        "--peer-ca".into(),
        path("ca.pem".into()),
    ]
}

/// A reqwest client (rustls) sending the administrator's token: trusting only `ca` when given,
/// presenting `identity` (a certificate and key, PEM files) when given.
pub fn https_client(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<reqwest::Client> {
    https_client_as(ca, identity, Some(&admin_token()))
}

/// Like [`https_client`], sending `authorization` (none: the client certificate alone).
pub fn https_client_as(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    authorization: Option<&str>,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = authorization {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(a)?,
        );
    }
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .default_headers(headers);
    if let Some(ca) = ca {
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert)?;
        pem.extend(std::fs::read(key)?);
        b = b.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// A tonic endpoint for `url`: TLS trusting only `ca` and presenting `identity` when the URL is
/// `https://`.
pub fn grpc_endpoint(
    url: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<tonic::transport::Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5));
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(endpoint.tls_config(tls)?)
}

/// [`grpc_endpoint`], connected, its calls carrying the administrator's credential.
pub async fn grpc_tls_channel(
    url: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<AuthChannel> {
    let channel = grpc_endpoint(url, ca, identity)?.connect().await?;
    Ok(with_credential(channel, Some(&admin_token())))
}

impl std::fmt::Debug for SdkNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkNode")
            .field("rest", &self.server.rest)
            .finish_non_exhaustive()
    }
}

/// A node for Microsoft's Python SDK: HTTPS with muster's own CA, `--hostname` set to the
/// REST address (the host the SDK signs for and connects to), and the administrator's
/// connection string the node wrote to `admin.credential`.
pub struct SdkNode {
    pub server: Server,
    /// `HostName=...;SharedAccessKeyName=iothubowner;SharedAccessKey=...`
    pub connection_string: String,
    pub python: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl SdkNode {
    /// `None` (the caller skips) when `MUSTER_TEST_PYTHON` is not set outside CI; under `CI` a
    /// missing Python is an error, since `.ci/run` makes the SDK's venv.
    pub async fn start() -> anyhow::Result<Option<SdkNode>> {
        SdkNode::start_with(&[]).await
    }

    /// [`SdkNode::start`] with `extra` serve flags (for instance `--mqtt-url URL`).
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<Option<SdkNode>> {
        let Ok(python) = std::env::var("MUSTER_TEST_PYTHON") else {
            if std::env::var_os("CI").is_some() {
                bail!("MUSTER_TEST_PYTHON is not set: .ci/run makes the SDK's venv and sets it");
            }
            eprintln!("skipped: set MUSTER_TEST_PYTHON to a Python with azure-iot-hub installed");
            return Ok(None);
        };
        let dir = data_dir()?;
        let certs = dir.path().join("certs");
        certs_init(&certs, &["--node", "1=127.0.0.1"])?;
        let port = free_ports(1)?[0];
        let addr = format!("127.0.0.1:{port}");
        let mut flags: Vec<String> = tls_flags(&certs, 1);
        flags.extend([
            "--http-addr".into(),
            addr.clone(),
            "--hostname".into(),
            addr.clone(),
        ]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let node_dir = dir.path().join("node");
        std::fs::create_dir_all(&node_dir)?;
        let server = Server::start_tls(&node_dir, &certs.join("ca.pem"), &flags)?;
        server.wait_ready().await?;
        let file = server.data_dir().join("admin.credential");
        wait_for("admin.credential", || {
            let exists = file.exists();
            async move { exists }
        })
        .await?;
        let connection_string = std::fs::read_to_string(&file)?.trim().to_string();
        if !connection_string.starts_with(&format!("HostName={addr};")) {
            bail!("unexpected connection string {connection_string}");
        }
        Ok(Some(SdkNode {
            server,
            connection_string,
            python,
            ca: certs.join("ca.pem"),
            _dir: dir,
        }))
    }

    /// The CA file the SDK must trust (`REQUESTS_CA_BUNDLE`).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// An HTTPS client for this node signing with the administrator's connection string.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        connection_client(&self.connection_string, &self.ca)
    }

    /// Runs `tests/python/SCRIPT` with the connection string and `args`, trusting muster's CA;
    /// fails with the script's output and the node's log unless it exits 0. Returns stdout.
    pub async fn run_script(&self, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let out = tokio::process::Command::new(&self.python)
            .arg(&path)
            .arg(&self.connection_string)
            .args(args)
            .env("REQUESTS_CA_BUNDLE", &self.ca)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{script} failed:\nstdout:\n{stdout}\nstderr:\n{}\nnode log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.server.log_text()
            );
        }
        Ok(stdout)
    }
}

/// A route template (`/api/jobs/{id}`) with each parameter filled in with `x1`.
pub fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            break;
        };
        out.push_str("x1");
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

/// The `(code, message)` of an error body in any of the three shapes the gateway answers in:
/// IoT Hub's (`{"Message": "ErrorCode:CODE;message", "ExceptionMessage"}`), IoT Central's and
/// muster's (`{"error": {"code", "message", ...}}`). `None` for anything else.
pub fn error_of(body: &serde_json::Value) -> Option<(String, String)> {
    if let Some(m) = body.get("Message").and_then(|m| m.as_str()) {
        let rest = m.strip_prefix("ErrorCode:")?;
        let (code, message) = rest.split_once(';')?;
        return Some((code.to_string(), message.to_string()));
    }
    let e = body.get("error")?;
    Some((
        e.get("code")?.as_str()?.to_string(),
        e.get("message")?.as_str()?.to_string(),
    ))
}

/// An HTTPS client trusting `ca` and sending a SAS token (valid a day) made from `conn`, a
/// connection string such as [`SdkNode`] holds.
pub fn connection_client(conn: &str, ca: &Path) -> anyhow::Result<reqwest::Client> {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + 86_400;
    let token = muster_domain::auth::ConnectionString::parse(conn)
        .ok()
        .and_then(|c| c.token(expiry))
        .ok_or_else(|| anyhow!("not a connection string muster can sign with"))?;
    https_client_as(Some(ca), None, Some(&token))
}

/// `muster serve --dev` on free ports (REST, gRPC, peer, embedded broker), its data in
/// `dir/data`, its log in `dir/dev.log`; killed when dropped.
#[derive(Debug)]
pub struct DevServer {
    child: Child,
    /// `http://127.0.0.1:PORT` of the REST gateway (and the console at `/ui`).
    pub rest: String,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub grpc: String,
    /// The administrator's token the banner prints (`export MUSTER_TOKEN='...'`).
    pub token: String,
    /// `mqtt://127.0.0.1:PORT` of the embedded broker.
    pub mqtt: String,
    log: PathBuf,
}

impl DevServer {
    /// Starts dev mode with `extra` flags (for instance `--dev-devices 20 --dev-fail-rate 0.3`)
    /// and waits for the banner's token.
    pub fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<DevServer> {
        let log = dir.join("dev.log");
        let mut child = Command::new(muster_bin()?)
            .arg("serve")
            .arg("--dev")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--peer-addr",
                "127.0.0.1:0",
                "--mqtt-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start muster serve --dev")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut s = DevServer {
            child,
            rest: String::new(),
            grpc: String::new(),
            token: String::new(),
            mqtt: String::new(),
            log,
        };
        let deadline = std::time::Instant::now() + PATIENCE;
        while s.token.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "muster serve --dev printed no token; log:\n{}",
                    s.log_text()
                )
            })?;
            for part in line.split_whitespace() {
                if let Some(v) = part.strip_prefix("rest=") {
                    s.rest = v.to_string();
                } else if let Some(v) = part.strip_prefix("grpc=") {
                    s.grpc = v.to_string();
                } else if let Some(v) = part.strip_prefix("mqtt=") {
                    s.mqtt = v.to_string();
                }
            }
            if let Some(t) = line.trim().strip_prefix("export MUSTER_TOKEN='") {
                s.token = t.trim_end_matches('\'').to_string();
            }
        }
        Ok(s)
    }

    /// Its log (stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit status (a graceful shutdown).
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        sigterm_and_wait(&mut self.child, "muster serve --dev")
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where browser tests leave screenshots: `target/test-artifacts/NAME` of the workspace.
pub fn artifacts_dir(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `muster cluster ARGS --endpoint ENDPOINT --output json` and returns the status it prints.
pub async fn cluster_cmd(endpoint: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = tokio::process::Command::from(muster_cmd()?)
        .arg("cluster")
        .args(args)
        .args(["--endpoint", endpoint, "--output", "json"])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "muster cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `muster audit ARGS --data-dir DIR` on a stopped node's data directory.
pub fn muster_audit(args: &[&str], dir: &Path) -> anyhow::Result<std::process::Output> {
    Ok(muster_cmd()?
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()?)
}

/// The Mosquitto the end-to-end tests use (`MUSTER_TEST_MQTT_URL`; `.ci/run` starts one on
/// 127.0.0.1:1883).
pub fn mqtt_url() -> String {
    std::env::var("MUSTER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A devsim fleet of `devices` on the test broker, ids `{prefix}-…`, with the client-id prefix
/// the broker's test ACLs expect.
pub fn fleet_config(prefix: &str, devices: usize) -> muster_devsim::FleetConfig {
    muster_devsim::FleetConfig {
        brokers: vec![mqtt_url()],
        devices,
        prefix: prefix.to_owned(),
        model_id: "dtmi:muster:simulated;1".into(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..muster_devsim::FleetConfig::default()
    }
}

/// Registers `ids` in one import, each tagged `{"devsim": prefix}` so a group or query can
/// select the fleet.
pub async fn import_tagged(
    channel: &AuthChannel,
    ids: &[String],
    prefix: &str,
) -> anyhow::Result<()> {
    use muster_proto::pb;
    let mut registry = pb::device_service_client::DeviceServiceClient::new(channel.clone());
    registry
        .import_devices(pb::ImportDevicesRequest {
            devices: ids
                .iter()
                .map(|id| pb::NewDevice {
                    device_id: id.clone(),
                    tags_json: serde_json::json!({ "devsim": prefix }).to_string(),
                    ..Default::default()
                })
                .collect(),
        })
        .await?;
    Ok(())
}

/// The nemesis harness and history checker (issue 18); `tests/tests/nemesis.rs` runs it.
#[path = "nemesis/mod.rs"]
pub mod nemesis;
