//! History survives member replacement: a three-node cluster that snapshots often (and purges
//! its log behind the snapshots) runs a job; its three members are replaced one at a time by
//! new nodes (`--join`, `muster cluster add-learner`, `promote`, `remove` the old one, stop
//! it). Each new node joins through a snapshot, so its event log starts after it, and then
//! back-fills the history before it from the other members, checking the hash chain. At the
//! end only new nodes remain, and the last one's `muster audit verify` covers seq 1 onwards and
//! its export holds every event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use muster_devsim::{Fleet, FleetConfig};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_tests::{
    cluster_cmd, data_dir, free_ports, wait_for_long, AuthChannel, Server, TestCluster,
};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";

/// One entry per device, so the log grows past a snapshot plus the entries kept behind it.
async fn import_one_by_one(ch: &AuthChannel, ids: Vec<String>, tags: Value) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let part: Vec<String> = ids.iter().skip(w).step_by(8).cloned().collect();
        let ch = ch.clone();
        let tags = tags.to_string();
        tasks.push(tokio::spawn(async move {
            for id in part {
                let req = pb::ImportDevicesRequest {
                    devices: vec![pb::NewDevice {
                        device_id: id,
                        tags_json: tags.clone(),
                        ..Default::default()
                    }],
                };
                let mut tries = 0;
                loop {
                    match DeviceServiceClient::new(ch.clone())
                        .import_devices(req.clone())
                        .await
                    {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists && tries > 0 => break,
                        Err(s) if tries < 100 => {
                            tries += 1;
                            eprintln!("ImportDevices (retrying): {s}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(s) => panic!("ImportDevices: {s}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// `historyFromSeq` of member `id` in a status document (0: unknown).
fn history_from(status: &Value, id: u64) -> u64 {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["nodeId"] == id)
        .and_then(|m| m["historyFromSeq"].as_u64())
        .unwrap_or(0)
}

/// The `muster` binary's stdout for `args`, which must succeed.
fn muster(args: &[&str], dir: &std::path::Path) -> String {
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "muster {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_every_member_keeps_the_whole_history() {
    let url = muster_tests::mqtt_url();
    // Snapshots every 200 entries; openraft keeps 1,000 entries behind the last one, so a node
    // added after ~1,300 entries cannot catch up from the log alone.
    let conf_dir = data_dir().unwrap();
    let conf = conf_dir.path().join("node.toml");
    std::fs::write(&conf, "snapshot_after = 200\n").unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let mut cluster = TestCluster::start(3, &["--mqtt-url", &url, "--config", &conf]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let ch = muster_tests::grpc_channel(&cluster.nodes[leader].grpc)
        .await
        .unwrap();

    // A slow fleet and a job over it, running while the members change.
    let prefix = format!("hist-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![url.clone()],
        devices: 40,
        prefix: prefix.clone(),
        model_id: "dtmi:muster:simulated;1".into(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        latency_ms: 300,
        jitter_ms: 100,
        ..FleetConfig::default()
    };
    let fleet_ids = cfg.device_ids();
    import_one_by_one(&ch, fleet_ids, json!({"devsim": prefix})).await;
    let fleet = Fleet::start(cfg).await.unwrap();
    let c = muster_tests::http();
    let r = c
        .put(format!(
            "{}/api/deviceGroups/fleet?{CENTRAL}",
            cluster.nodes[leader].rest
        ))
        .json(&json!({"displayName": "fleet", "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'")}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = c
        .put(format!(
            "{}/api/jobs/replaced?{CENTRAL}",
            cluster.nodes[leader].rest
        ))
        .json(&json!({
            "displayName": "reboot while every member is replaced",
            "group": "fleet",
            "batch": {"type": "number", "value": 4},
            "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "reboot", "value": {}}]
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{status} {}", r.text().await.unwrap());
    // Past a snapshot plus the log kept behind it.
    let filler: Vec<String> = (0..1_400)
        .map(|i| format!("{prefix}-filler-{i:05}"))
        .collect();
    import_one_by_one(&ch, filler, json!({})).await;

    // Replace node 1, 2, 3 by 4, 5, 6, one at a time.
    let mut new_nodes: Vec<(Server, tempfile::TempDir)> = Vec::new();
    for old in 0..3usize {
        let id = (4 + old) as u64;
        let dir = data_dir().unwrap();
        let addr = format!("127.0.0.1:{}", free_ports(1).unwrap()[0]);
        let node = Server::start_with(
            dir.path(),
            &[
                "--node-id",
                &id.to_string(),
                "--join",
                "--peer-addr",
                &addr,
                "--mqtt-url",
                &url,
                "--config",
                &conf,
            ],
        )
        .unwrap();
        // Any member that is still up takes the membership commands (they go to the leader).
        let alive: Vec<String> = cluster.nodes[old..]
            .iter()
            .map(|n| n.grpc.clone())
            .chain(new_nodes.iter().map(|(n, _)| n.grpc.clone()))
            .collect();
        let via = alive[0].clone();
        cluster_cmd(&via, &["add-learner", &id.to_string(), &addr])
            .await
            .unwrap();
        cluster_cmd(&via, &["promote", &id.to_string()])
            .await
            .unwrap();
        // The new member back-fills the history before the snapshot it joined from.
        node.wait_ready().await.unwrap();
        let grpc = node.grpc.clone();
        wait_for_long(
            &format!("node {id} to hold the history from seq 1"),
            Duration::from_secs(120),
            || async {
                cluster_cmd(&grpc, &["status"])
                    .await
                    .is_ok_and(|st| history_from(&st, id) == 1)
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n---- node {id} ----\n{}",
                cluster.logs(),
                node.log_text()
            )
        });
        assert!(
            node.log_text().contains("installed a snapshot"),
            "node {id} was to join through a snapshot:\n{}",
            node.log_text()
        );
        let old_id = (old + 1).to_string();
        let mut last_error = String::new();
        let mut removed = false;
        for _ in 0..60 {
            match cluster_cmd(&grpc, &["remove", &old_id]).await {
                Ok(_) => {
                    removed = true;
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(removed, "remove node {old_id}: {last_error}");
        cluster.nodes[old].terminate().unwrap();
        new_nodes.push((node, dir));
    }

    // Only new nodes are left; the job ends and the last one holds every event.
    let (last, last_dir) = new_nodes.pop().unwrap();
    wait_for_long("the job to end", Duration::from_secs(120), || async {
        let r = c
            .get(format!("{}/api/jobs/replaced?{CENTRAL}", last.rest))
            .send()
            .await;
        let Ok(r) = r else { return false };
        let body: Value = r.json().await.unwrap_or_default();
        matches!(
            body["status"].as_str(),
            Some("completed" | "complete" | "failed" | "cancelled")
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", last.log_text()));
    // The job's history read on the last node starts with its creation (before any snapshot
    // this node installed), through the per-job index of back-filled records.
    let r = c
        .get(format!(
            "{}/api/jobs/replaced/events?{CENTRAL}&maxpagesize=5",
            last.rest
        ))
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["value"][0]["type"], "JobCreated", "{page}");

    let mut last = last;
    let st = cluster_cmd(&last.grpc, &["status"]).await.unwrap();
    assert_eq!(history_from(&st, 6), 1, "{st}");
    assert!(last.terminate().unwrap());
    let dir = last.data_dir().to_path_buf();
    let verify = muster(&["audit", "verify"], &dir);
    let range = verify
        .lines()
        .find_map(|l| l.strip_prefix("ok: seqs "))
        .unwrap_or_else(|| panic!("unexpected audit verify output: {verify}"));
    let (first, end) = range.split_once("..=").unwrap();
    let end: u64 = end
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first, "1", "{verify}");
    let export = muster(&["audit", "export", "--format", "jsonl"], &dir);
    let seqs: Vec<u64> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=end).collect::<Vec<_>>(), "every event, in order");
    eprintln!("the last new node verifies and exports seqs 1..{end}");
    fleet.shutdown().await;
    drop((new_nodes, last_dir));
}
