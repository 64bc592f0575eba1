//! The README's quickstart, as a new user runs it: `muster serve --dev` (no data directory, no
//! broker: an embedded one and 100 simulated devices), the two curl PUTs of the README (a device
//! group, then the first seed's job), and `muster job watch`, which exits 0 once the job is
//! complete. On SIGTERM the node exits 0 and removes its temporary data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use muster_tests::{muster_bin, wait_for, PATIENCE};
use serde_json::Value;

/// `muster serve --dev` on free ports; killed if the test ends early.
struct DevNode {
    child: Child,
    /// The token the banner prints (`export MUSTER_TOKEN='...'`).
    token: String,
    rest: String,
    grpc: String,
    data: PathBuf,
    log: PathBuf,
}

impl DevNode {
    fn start(log_dir: &std::path::Path) -> DevNode {
        let log = log_dir.join("dev.log");
        let mut child = muster_tests::muster_cmd()
            .unwrap()
            .args([
                "serve",
                "--dev",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--mqtt-addr",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info,openraft=warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let next = || {
            rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!(
                    "muster serve --dev printed too little; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
        };
        // `muster listening: rest=http://... grpc=http://... mqtt=mqtt://...`
        let listening = next();
        assert!(listening.starts_with("muster listening:"), "{listening}");
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|p| p.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {listening:?}"))
                .to_string()
        };
        let (rest, grpc, mqtt) = (field("rest="), field("grpc="), field("mqtt="));
        assert!(mqtt.starts_with("mqtt://127.0.0.1:"), "{listening}");
        // `dev mode: 100 simulated devices (sim-000001 ... sim-000100), data in DIR`
        let banner = next();
        assert!(
            banner.starts_with("dev mode: 100 simulated devices (sim-000001 ... sim-000100)"),
            "{banner}"
        );
        let data = PathBuf::from(banner.rsplit_once("data in ").unwrap().1);
        assert!(data.is_dir(), "{banner}");
        // The rest of the banner names the commands to try, with the real ports.
        let mut tries = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
            tries.push_str(&line);
            tries.push('\n');
            if line.contains("muster job watch") {
                break;
            }
        }
        assert!(
            tries.contains(&format!("{rest}/api/jobs/reboot-all")),
            "{tries}"
        );
        assert!(
            tries.contains(&format!("muster job watch reboot-all --endpoint {grpc}")),
            "{tries}"
        );
        // Auth is on in dev mode too: the banner exports a ready token and the curl lines use it.
        let token = tries
            .lines()
            .find_map(|l| l.trim().strip_prefix("export MUSTER_TOKEN='"))
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or_else(|| panic!("no MUSTER_TOKEN in the banner:\n{tries}"))
            .to_string();
        assert!(
            tries.contains("-H \"Authorization: $MUSTER_TOKEN\""),
            "{tries}"
        );
        DevNode {
            child,
            token,
            rest,
            grpc,
            data,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        muster_tests::sigterm_and_wait(&mut self.child, "muster serve --dev").unwrap()
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -X PUT URL -H 'content-type: application/json' -d BODY`: the README's calls, with the
/// bodies exactly as the README writes them.
async fn curl_put(token: &str, url: &str, body: &str) -> (u16, String) {
    let r = muster_tests::http_with(token)
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quickstart_on_serve_dev_ends_with_the_job_complete() {
    let logs = tempfile::tempdir().unwrap();
    let mut node = DevNode::start(logs.path());
    let http = muster_tests::http();
    let ready = format!("{}/readyz", node.rest);
    wait_for("readyz", || {
        let req = http.get(&ready).send();
        async move { matches!(req.await, Ok(r) if r.status().is_success()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));

    let (s, body) = curl_put(
        &node.token,
        &format!("{}/api/deviceGroups/all?api-version=2022-07-31", node.rest),
        r#"{"displayName": "All devices", "filter": "SELECT * FROM devices"}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = curl_put(
        &node.token,
        &format!("{}/api/jobs/reboot-all?api-version=2022-07-31", node.rest),
        r#"{"displayName": "Reboot", "group": "all",
       "batch": {"type": "percentage", "value": 25},
       "cancellationThreshold": {"type": "percentage", "value": 10, "batch": false},
       "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "reboot", "value": {}}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // `muster job watch reboot-all --endpoint GRPC` exits 0 once the job is complete.
    let bin = muster_bin().unwrap();
    let grpc = node.grpc.clone();
    let token = node.token.clone();
    let watch = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .env("MUSTER_TOKEN", token)
            .args(["job", "watch", "reboot-all", "--endpoint", &grpc])
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("job watch did not end")
        .unwrap();
    assert!(
        out.status.success(),
        "job watch: {:?}\nstdout:\n{}\nstderr:\n{}\nnode log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );

    // `muster job devices reboot-all --output json`: all 100 simulated devices succeeded.
    let out = muster_tests::muster_cmd()
        .unwrap()
        .env("MUSTER_TOKEN", &node.token)
        .args(["job", "devices", "reboot-all", "--output", "json"])
        .args(["--endpoint", &node.grpc])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 100);
    assert!(
        devices.iter().all(|d| d["status"] == "succeeded"),
        "{devices:?}"
    );
    let (s, job) = {
        let r = http
            .get(format!(
                "{}/api/jobs/reboot-all?api-version=2022-07-31",
                node.rest
            ))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(job["status"], "complete", "{job}");

    // Ctrl-C / SIGTERM: a clean exit, and the temporary data directory is gone.
    let status = node.terminate();
    assert!(status.success(), "{status:?}\n{}", node.log());
    assert!(!node.data.exists(), "{} still exists", node.data.display());
}
