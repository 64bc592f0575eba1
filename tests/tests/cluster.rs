//! Three real `muster serve` processes on loopback form a Raft cluster from the same `--peers`
//! list; writes on the leader and on a follower are replicated to every node; after `kill -9` of
//! the leader a new one is elected, nothing acknowledged is lost, and the killed node rejoins and
//! catches up. Reads on a follower are linearizable (read index from the leader). A fourth node
//! joins as a learner, is promoted, and an old member is removed, all through `muster cluster`,
//! while a job runs against Mosquitto and the simulated fleet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_devsim::{Fleet, FleetConfig};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, free_ports, wait_for, Server, TestCluster};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";
const HUB: &str = "api-version=2021-04-12";

/// A method job that starts in an hour, so nothing about it changes while the test runs.
fn later_job(id: &str, devices: &[String]) -> Value {
    json!({
        "jobId": id,
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": {"delay": 5}, "responseTimeoutInSeconds": 30},
        "deviceIds": devices,
        "startTime": "2099-01-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 3600
    })
}

/// Whether `node` has job `id` in its own state (a stale read: no leader involved).
async fn has_job(node: &Server, id: &str) -> bool {
    let Ok(mut jobs) = muster_tests::grpc_channel(&node.grpc)
        .await
        .map(JobServiceClient::new)
    else {
        return false;
    };
    jobs.get_job(pb::GetJobRequest {
        job_id: id.into(),
        stale_ok: true,
    })
    .await
    .is_ok()
}

async fn put(c: &reqwest::Client, url: String, body: Value) -> (u16, String) {
    let r = c.put(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_replicate_and_survive_losing_the_leader() {
    let mut cluster = TestCluster::start(3, &[]).unwrap();
    let c = muster_tests::http();
    let all = [0, 1, 2];
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = (leader + 1) % 3;

    // Devices and a job, written on the leader.
    let devices: Vec<String> = (0..4).map(|i| format!("cl-{i:02}")).collect();
    for d in &devices {
        let (s, body) = put(
            &c,
            format!("{}/api/devices/{d}?{CENTRAL}", cluster.nodes[leader].rest),
            json!({"displayName": d, "enabled": true}),
        )
        .await;
        assert!((200..300).contains(&s), "{s} {body}");
    }
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-a?{HUB}", cluster.nodes[leader].rest),
        later_job("job-a", &devices),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");
    // A read on a follower right after a write on the leader sees it (read index), without the
    // caller asking for anything special.
    let r = c
        .get(format!(
            "{}/jobs/v2/job-a?{HUB}",
            cluster.nodes[follower].rest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "linearizable read on a follower");
    // A write on a follower is forwarded to the leader.
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-b?{HUB}", cluster.nodes[follower].rest),
        later_job("job-b", &devices[..2]),
    )
    .await;
    assert!(
        (200..300).contains(&s),
        "write on a follower: {s} {body}\n{}\n----\n{}",
        cluster.nodes[follower].log_text(),
        cluster.nodes[leader].log_text()
    );

    // Every node has both jobs.
    for n in &cluster.nodes {
        for job in ["job-a", "job-b"] {
            wait_for(&format!("{job} on {}", n.grpc), || has_job(n, job))
                .await
                .unwrap();
        }
    }

    // Kill the leader: the other two elect a new one, which still has the acknowledged jobs.
    cluster.nodes[leader].kill9().unwrap();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = cluster.leader_among(&alive).await.unwrap();
    assert_ne!(new_leader, leader);
    for job in ["job-a", "job-b"] {
        let r = c
            .get(format!(
                "{}/jobs/v2/{job}?{HUB}",
                cluster.nodes[new_leader].rest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{job} lost after the leader died");
    }
    // Two of three still commit.
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-c?{HUB}", cluster.nodes[new_leader].rest),
        later_job("job-c", &devices[..1]),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");

    // The killed node restarts from its data directory and catches up.
    cluster.nodes[leader].restart().unwrap();
    let back = &cluster.nodes[leader];
    for job in ["job-a", "job-b", "job-c"] {
        wait_for(&format!("{job} on the restarted node"), || {
            has_job(back, job)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", back.log_text()));
    }
}

async fn cluster_cmd(endpoint: &str, args: &[&str]) -> Value {
    muster_tests::cluster_cmd(endpoint, args).await.unwrap()
}

/// `(id, role)` of every member in a status document.
fn members(status: &Value) -> Vec<(u64, String)> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["nodeId"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn central_status(c: &reqwest::Client, node: &Server, job: &str) -> String {
    let r = c
        .get(format!("{}/api/jobs/{job}?{CENTRAL}", node.rest))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap_or_default();
    body["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_an_old_member_leaves_while_a_job_runs() {
    let url = muster_tests::mqtt_url();
    let mut cluster = TestCluster::start(3, &["--mqtt-url", &url]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let c = muster_tests::http();

    // A slow fleet, so the job is still running while the membership changes.
    let prefix = format!("member-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![url.clone()],
        devices: 60,
        prefix: prefix.clone(),
        model_id: "dtmi:muster:simulated;1".into(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        latency_ms: 300,
        jitter_ms: 100,
        ..FleetConfig::default()
    };
    // Registered through a follower (forwarded to the leader).
    let mut registry = muster_tests::grpc_channel(&cluster.nodes[follower].grpc)
        .await
        .map(DeviceServiceClient::new)
        .unwrap();
    let new: Vec<pb::NewDevice> = cfg
        .device_ids()
        .into_iter()
        .map(|id| pb::NewDevice {
            device_id: id,
            model_id: Some(cfg.model_id.clone()),
            tags_json: json!({"devsim": prefix}).to_string(),
            ..Default::default()
        })
        .collect();
    registry
        .import_devices(pb::ImportDevicesRequest { devices: new })
        .await
        .unwrap();
    let fleet = Fleet::start(cfg).await.unwrap();
    let (s, body) = put(
        &c,
        format!("{}/api/deviceGroups/fleet?{CENTRAL}", cluster.nodes[other].rest),
        json!({"displayName": "fleet", "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'")}),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");
    let (s, body) = put(
        &c,
        format!("{}/api/jobs/grow?{CENTRAL}", cluster.nodes[follower].rest),
        json!({
            "displayName": "reboot while the cluster changes",
            "group": "fleet",
            "batch": {"type": "number", "value": 6},
            "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "reboot", "value": {}}]
        }),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");

    // Node 4 starts empty and waits to be added.
    let dir4 = data_dir().unwrap();
    let addr4 = format!("127.0.0.1:{}", free_ports(1).unwrap()[0]);
    let n4 = Server::start_with(
        dir4.path(),
        &[
            "--node-id",
            "4",
            "--join",
            "--peer-addr",
            &addr4,
            "--mqtt-url",
            &url,
        ],
    )
    .unwrap();

    let st = cluster_cmd(&cluster.nodes[follower].grpc, &["add-learner", "4", &addr4]).await;
    assert!(members(&st).contains(&(4, "learner".into())), "{st}");
    let st = cluster_cmd(&cluster.nodes[other].grpc, &["promote", "4"]).await;
    assert!(members(&st).contains(&(4, "voter".into())), "{st}");
    let removed = (follower + 1) as u64;
    let st = cluster_cmd(
        &cluster.nodes[leader].grpc,
        &["remove", &removed.to_string()],
    )
    .await;
    let m = members(&st);
    assert_eq!(m.len(), 3, "{st}");
    assert!(!m.iter().any(|(id, _)| *id == removed), "{st}");
    assert!(m.iter().all(|(_, role)| role == "voter"), "{st}");
    // The removed node is stopped, as an operator would.
    cluster.nodes[follower].terminate().unwrap();

    // The job finishes with every device succeeded, read (linearizably) on the new node.
    wait_for("the job to end, read on node 4", || async {
        matches!(
            central_status(&c, &n4, "grow").await.as_str(),
            "complete" | "cancelled" | "failed"
        )
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n---- node 4 ----\n{}",
            cluster.logs(),
            n4.log_text()
        )
    });
    assert_eq!(central_status(&c, &n4, "grow").await, "complete");
    let r = c
        .get(format!(
            "{}/api/jobs/grow/devices?{CENTRAL}&maxpagesize=1000",
            n4.rest
        ))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let devices = body["value"].as_array().unwrap();
    assert_eq!(devices.len(), 60);
    assert!(devices.iter().all(|d| d["status"] == "completed"), "{body}");
    assert_eq!(fleet.device_ids().len(), 60);

    // The new member takes writes, and status from it shows three reachable voters.
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/after?{HUB}", n4.rest),
        later_job("after", &[format!("{prefix}-000001")]),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");
    let st = cluster_cmd(&n4.grpc, &["status"]).await;
    let reachable = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reachable"] == true)
        .count();
    assert_eq!(reachable, 3, "{st}");
    assert!(st["leaderId"].is_u64(), "{st}");
}
