//! Three real `muster serve` processes on loopback form a Raft cluster from the same `--peers`
//! list; writes on the leader and on a follower are replicated to every node; after `kill -9` of
//! the leader a new one is elected, nothing acknowledged is lost, and the killed node rejoins and
//! catches up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_proto::pb;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, wait_for, Server};
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

/// Free loopback ports: bound on port 0, then released for the nodes to take.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `/readyz` of one node: `Some(is_leader)` when it knows a leader.
async fn ready(c: &reqwest::Client, s: &Server) -> Option<bool> {
    let r = c.get(format!("{}/readyz", s.rest)).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let body: Value = r.json().await.ok()?;
    body["isLeader"].as_bool()
}

/// Waits until one of the running nodes in `alive` says it is the leader; returns its index.
async fn leader_of(c: &reqwest::Client, nodes: &[Server], alive: &[usize]) -> usize {
    let found = std::sync::Mutex::new(None);
    wait_for("a leader", || async {
        for &i in alive {
            if ready(c, &nodes[i]).await == Some(true) {
                *found.lock().unwrap() = Some(i);
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or_else(|e| {
        let logs: Vec<String> = nodes.iter().map(|n| n.log_text()).collect();
        panic!("{e}\n{}", logs.join("\n----\n"))
    });
    let i = found.lock().unwrap().unwrap();
    i
}

/// Whether `node` has job `id` in its own state (a stale read: no leader involved).
async fn has_job(node: &Server, id: &str) -> bool {
    let Ok(mut jobs) = JobServiceClient::connect(node.grpc.clone()).await else {
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
    let ports = free_ports(3);
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<_> = (0..3).map(|_| data_dir().unwrap()).collect();
    let mut nodes: Vec<Server> = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            let addr = format!("127.0.0.1:{}", ports[i]);
            Server::start_with(
                dirs[i].path(),
                &["--node-id", &id, "--peer-addr", &addr, "--peers", &peers],
            )
            .unwrap()
        })
        .collect();
    let c = reqwest::Client::new();
    let all = [0, 1, 2];
    let leader = leader_of(&c, &nodes, &all).await;
    for n in &nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = (leader + 1) % 3;

    // Devices and a job, written on the leader.
    let devices: Vec<String> = (0..4).map(|i| format!("cl-{i:02}")).collect();
    for d in &devices {
        let (s, body) = put(
            &c,
            format!("{}/api/devices/{d}?{CENTRAL}", nodes[leader].rest),
            json!({"displayName": d, "enabled": true}),
        )
        .await;
        assert!((200..300).contains(&s), "{s} {body}");
    }
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-a?{HUB}", nodes[leader].rest),
        later_job("job-a", &devices),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");
    // A write on a follower is forwarded to the leader.
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-b?{HUB}", nodes[follower].rest),
        later_job("job-b", &devices[..2]),
    )
    .await;
    assert!(
        (200..300).contains(&s),
        "write on a follower: {s} {body}\n{}\n----\n{}",
        nodes[follower].log_text(),
        nodes[leader].log_text()
    );

    // Every node has both jobs.
    for n in &nodes {
        for job in ["job-a", "job-b"] {
            wait_for(&format!("{job} on {}", n.grpc), || has_job(n, job))
                .await
                .unwrap();
        }
    }

    // Kill the leader: the other two elect a new one, which still has the acknowledged jobs.
    nodes[leader].kill9().unwrap();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = leader_of(&c, &nodes, &alive).await;
    assert_ne!(new_leader, leader);
    for job in ["job-a", "job-b"] {
        let r = c
            .get(format!("{}/jobs/v2/{job}?{HUB}", nodes[new_leader].rest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{job} lost after the leader died");
    }
    // Two of three still commit.
    let (s, body) = put(
        &c,
        format!("{}/jobs/v2/job-c?{HUB}", nodes[new_leader].rest),
        later_job("job-c", &devices[..1]),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {body}");

    // The killed node restarts from its data directory and catches up.
    nodes[leader].restart().unwrap();
    let back = &nodes[leader];
    for job in ["job-a", "job-b", "job-c"] {
        wait_for(&format!("{job} on the restarted node"), || {
            has_job(back, job)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", back.log_text()));
    }
}
