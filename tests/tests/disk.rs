//! A node whose disk fills up (issue 18): its data directory is a small tmpfs mounted by the
//! test (CI runs as root; the test says so and passes without checking anything when mounting
//! is not permitted), filled with a ballast file until the file system has no byte left.
//!
//! The node must answer writes with a clear error (507 in each REST shape's body, gRPC
//! `RESOURCE_EXHAUSTED`), keep serving reads, say not ready, not damage its log, and accept
//! writes again once the ballast is deleted, without a restart.
//!
//! A follower whose disk fills refuses the leader's entries instead of failing to store them
//! (and stopping): the others go on committing, it stays up and not ready, and it catches up by
//! itself once space is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_tests::{data_dir, error_of, muster_audit, wait_for, AuthChannel, Server, TestCluster};
use serde_json::{json, Value};

const HUB: &str = "api-version=2021-04-12";
const CENTRAL: &str = "api-version=2022-07-31";

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason) when this process may not mount.
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system refuses (ENOSPC); returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last partial block, byte by byte is too slow; a small write finds the end.
    while let Ok(n) = f.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    written
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_serves_reads_and_recovers_without_a_restart() {
    let dir = data_dir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("data"), "64m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs for the data directory ({why}); run as root");
            return;
        }
    };
    let mut server = Server::start_with(dir.path(), &["--min-free-disk-mib", "16"]).unwrap();
    server.wait_ready().await.unwrap();
    let c = server.http_client().unwrap();
    let rest = server.rest.clone();
    let url = move |path: &str, version: &str| format!("{rest}{path}?{version}");

    let (s, b, _) = call(c.put(url("/devices/before", HUB)).json(&json!({}))).await;
    assert_eq!(s, 200, "{b}");
    let (s, b, _) = call(
        c.put(url("/api/devices/central-before", CENTRAL))
            .json(&json!({"displayName": "before"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let ballast = disk.0.join("ballast");
    let filled = fill(&ballast);
    assert!(filled > 0);
    assert!(muster_store::free_space(&disk.0).unwrap() < 16 * 1024 * 1024);

    // Writes: 507 in IoT Hub's shape and in IoT Central's, saying what to do.
    let (s, b, h) = call(c.put(url("/devices/during", HUB)).json(&json!({}))).await;
    assert_eq!(s, 507, "{b}");
    let (code, message) = error_of(&b).unwrap();
    assert_eq!(code, "InsufficientStorage");
    assert!(b.get("ExceptionMessage").is_some(), "IoT Hub's shape: {b}");
    assert_eq!(h["iothub-errorcode"], "InsufficientStorage");
    assert!(
        message.contains("Free disk space") && message.contains("reads are still served"),
        "{message}"
    );
    let (s, b, h) = call(
        c.put(url("/api/devices/central-during", CENTRAL))
            .json(&json!({"displayName": "during"})),
    )
    .await;
    assert_eq!(s, 507, "{b}");
    assert_eq!(error_of(&b).unwrap().0, "InsufficientStorage");
    assert!(
        b["error"]["requestId"].is_string(),
        "IoT Central's shape: {b}"
    );
    assert_eq!(h["x-ms-error-code"], "InsufficientStorage");
    // gRPC: RESOURCE_EXHAUSTED.
    let mut devices = DeviceServiceClient::new(server.channel().await.unwrap());
    let err = devices
        .import_devices(pb::ImportDevicesRequest {
            devices: vec![pb::NewDevice {
                device_id: "grpc-during".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("MiB free"), "{}", err.message());

    // Reads go on; the node is alive but out of rotation.
    let (s, b, _) = call(c.get(url("/devices/before", HUB))).await;
    assert_eq!(s, 200, "{b}");
    let (s, b, _) = call(c.get(url("/api/devices/central-before", CENTRAL))).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = call(c.get(format!("{}/healthz", server.rest))).await;
    assert_eq!(s, 200);
    let (s, b, _) = call(c.get(format!("{}/readyz", server.rest))).await;
    assert_eq!(s, 503, "{b}");
    assert!(error_of(&b).unwrap().1.contains("MiB free"), "{b}");
    // The leader's own work (ticks, credentials) is refused too, without stopping the node.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(server.is_running(), "{}", server.log_text());

    // Space returns: writes are accepted again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    wait_for("writes accepted again", || {
        let req = c.put(url("/devices/after", HUB)).json(&json!({})).send();
        async move { matches!(req.await, Ok(r) if r.status().as_u16() == 200) }
    })
    .await
    .unwrap();
    server.wait_ready().await.unwrap();
    devices
        .import_devices(pb::ImportDevicesRequest {
            devices: vec![pb::NewDevice {
                device_id: "grpc-after".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    for (path, want) in [
        ("/devices/before", 200),
        ("/devices/after", 200),
        ("/devices/grpc-after", 200),
        ("/devices/during", 404),
        ("/devices/grpc-during", 404),
    ] {
        let (s, b, _) = call(c.get(url(path, HUB))).await;
        assert_eq!(s, want, "{path}: {b}");
    }

    // The log is whole.
    assert!(server.terminate().unwrap(), "{}", server.log_text());
    let out = muster_audit(&["verify"], server.data_dir()).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(disk);
}

async fn import(ch: &AuthChannel, id: &str) -> Result<(), tonic::Status> {
    DeviceServiceClient::new(ch.clone())
        .import_devices(pb::ImportDevicesRequest {
            devices: vec![pb::NewDevice {
                device_id: id.into(),
                ..Default::default()
            }],
        })
        .await
        .map(|_| ())
}

/// Whether the node behind `ch` has device `id` in its own state (no leader asked).
async fn has_device(ch: &AuthChannel, id: &str) -> bool {
    DeviceServiceClient::new(ch.clone())
        .get_device(pb::GetDeviceRequest {
            device_id: id.into(),
            stale_ok: true,
        })
        .await
        .is_ok()
}

/// The value of the unlabelled metric `name` on the node at `rest` (0 when it cannot be read).
async fn metric(c: &reqwest::Client, rest: &str, name: &str) -> f64 {
    let Ok(r) = c.get(format!("{rest}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_refuses_entries_stays_up_and_catches_up() {
    let probe = data_dir().unwrap();
    if let Err(why) = Tmpfs::mount(&probe.path().join("probe"), "1m") {
        eprintln!("skipped: cannot mount a tmpfs for the data directories ({why}); run as root");
        return;
    }
    // Every node's data directory is a small tmpfs: which one ends up a follower is known only
    // once a leader is elected.
    let mut disks = Vec::new();
    let mut cluster =
        TestCluster::start_prepared(3, &["--min-free-disk-mib", "16"], &mut |_, dir| {
            disks.push(Tmpfs::mount(&dir.join("data"), "64m").map_err(anyhow::Error::msg)?);
            Ok(())
        })
        .unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = (leader + 1) % 3;
    let c = cluster.http_client().unwrap();
    let on_leader = cluster.nodes[leader].channel().await.unwrap();
    let on_follower = cluster.nodes[follower].channel().await.unwrap();
    let follower_rest = cluster.nodes[follower].rest.clone();

    import(&on_leader, "before").await.unwrap();
    wait_for("the follower to apply the first write", || {
        has_device(&on_follower, "before")
    })
    .await
    .unwrap();

    let leader_rest = cluster.nodes[leader].rest.clone();
    let term = metric(&c, &leader_rest, "muster_raft_term").await;
    assert!(term > 0.0);
    let data = cluster.dir(follower).join("data");
    let ballast = data.join("ballast");
    assert!(fill(&ballast) > 0);
    assert!(muster_store::free_space(&data).unwrap() < 16 * 1024 * 1024);

    // The leader and the other follower are a majority: writes go on.
    let during: Vec<String> = (0..5).map(|i| format!("during-{i}")).collect();
    for id in &during {
        import(&on_leader, id).await.unwrap();
    }
    // The follower refuses them, again and again, without stopping and without calling an
    // election: each refusal still tells its Raft that the leader is there. Twenty refusals
    // (two seconds at the heartbeat pace) outlast its election timeout.
    wait_for("the follower to refuse the leader's entries 20 times", || {
        let c = c.clone();
        let rest = follower_rest.clone();
        async move { metric(&c, &rest, "muster_raft_writes_refused_disk_full_total").await >= 20.0 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(
        cluster.nodes[follower].is_running(),
        "{}",
        cluster.nodes[follower].log_text()
    );
    assert_eq!(
        cluster.ready(&c, leader).await,
        Some(true),
        "the leader kept its place\n{}",
        cluster.logs()
    );
    assert_eq!(
        metric(&c, &follower_rest, "muster_raft_term").await,
        term,
        "the follower called no election\n{}",
        cluster.logs()
    );
    assert!(!has_device(&on_follower, "during-0").await);
    assert!(has_device(&on_follower, "before").await);
    let (s, b, _) = call(c.get(format!("{follower_rest}/readyz"))).await;
    assert_eq!(s, 503, "{b}");
    assert!(error_of(&b).unwrap().1.contains("MiB free"), "{b}");
    let log = cluster.nodes[follower].log_text();
    assert!(log.contains("refusing the leader's entries"), "{log}");

    // Space returns: the follower catches up without a restart, and serves writes again.
    std::fs::remove_file(&ballast).unwrap();
    for id in &during {
        wait_for("the follower to catch up", || has_device(&on_follower, id))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
    cluster.nodes[follower].wait_ready().await.unwrap();
    import(&on_follower, "after").await.unwrap();
    wait_for("the follower to apply its own write", || {
        has_device(&on_follower, "after")
    })
    .await
    .unwrap();
    assert!(cluster.nodes[follower]
        .log_text()
        .contains("accepting the leader's entries again"));
    // Nor did its return unseat the leader.
    assert_eq!(
        metric(&c, &leader_rest, "muster_raft_term").await,
        term,
        "no election since the disk filled\n{}",
        cluster.logs()
    );

    // Its log is whole.
    for n in &mut cluster.nodes {
        assert!(n.terminate().unwrap(), "{}", n.log_text());
    }
    let out = muster_audit(&["verify"], cluster.nodes[follower].data_dir()).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(disks);
}
