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
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// How long a test waits for a condition before failing. Generous: CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(60);

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
}

impl Server {
    /// Starts a node on free ports with its data in `dir/data` and its log in `dir/server.log`.
    pub fn start(dir: &Path) -> anyhow::Result<Server> {
        Server::start_with(dir, &[])
    }

    /// Like [`start`](Self::start), with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        let mut s = Server {
            child: None,
            rest: String::new(),
            grpc: String::new(),
            peer: String::new(),
            data_dir: dir.join("data"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join("server.log"),
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
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        if !self.extra.iter().any(|a| a == "--peer-addr") {
            cmd.args(["--peer-addr", "127.0.0.1:0"]);
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.rest);
        let client = reqwest::Client::new();
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
