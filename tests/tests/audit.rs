//! `muster audit` on a real node's data directory: refused while the node runs, and after it
//! stops, `verify` passes, `export` lists every event, `replay` rebuilds the jobs the API showed
//! (from the directory and from the export alone) and `timeline` tells one job's history; and
//! every place that shows events says who caused them (the principal).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use muster_tests::{data_dir, Server, TestCluster};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";
const HUB: &str = "api-version=2021-04-12";

fn audit(args: &[&str], dir: &Path) -> Output {
    muster_tests::muster_cmd()
        .unwrap()
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_a_stopped_nodes_log() {
    let dir = data_dir().unwrap();
    let mut server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let c = muster_tests::http();

    let devices: Vec<String> = (0..6).map(|i| format!("aud-{i:03}")).collect();
    for d in &devices {
        let r = c
            .put(format!("{}/api/devices/{d}?{CENTRAL}", server.rest))
            .json(&json!({"displayName": d, "enabled": true}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    for j in 0..3 {
        let id = format!("aud-job-{j}");
        let r = c
            .put(format!("{}/jobs/v2/{id}?{HUB}", server.rest))
            .json(&json!({
                "jobId": id,
                "type": "scheduleDeviceMethod",
                "cloudToDeviceMethod": {"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30},
                "deviceIds": &devices[..2 * (j + 1)],
                "startTime": "2099-01-01T00:00:00Z",
                "maxExecutionTimeInSeconds": 3600
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    // sled locks the directory: the running node's is refused, with a clear message.
    let data = server.data_dir().to_path_buf();
    let busy = audit(&["verify"], &data);
    assert!(!busy.status.success());
    assert!(
        text(&busy.stderr).contains("in use"),
        "{}",
        text(&busy.stderr)
    );

    // A graceful stop: after `kill -9`, entries committed to the Raft log but not yet applied
    // (apply does not flush) are applied again only when the node restarts.
    assert!(server.terminate().unwrap(), "{}", server.log_text());

    let v = audit(&["verify"], &data);
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    assert!(
        text(&v.stdout).contains("ok: seqs 1..="),
        "{}",
        text(&v.stdout)
    );

    let e = audit(&["export"], &data);
    assert!(e.status.success(), "{}", text(&e.stderr));
    let rows: Vec<Value> = text(&e.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=rows.len() as u64).collect::<Vec<_>>()
    );
    let created: Vec<&Value> = rows.iter().filter(|r| r["type"] == "JobCreated").collect();
    assert_eq!(created.len(), 3);
    assert_eq!(created[0]["job"], "aud-job-0");
    assert_eq!(
        rows.iter()
            .filter(|r| r["type"] == "DeviceRegistered")
            .count(),
        devices.len()
    );

    let one = audit(&["export", "--job", "aud-job-1", "--format", "csv"], &data);
    assert!(one.status.success(), "{}", text(&one.stderr));
    let csv = text(&one.stdout);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("seq,time,type,job,device,principal,body")
    );
    assert!(lines.all(|l| l.contains(",aud-job-1,")), "{csv}");

    let r = audit(&["replay", "--output", "json"], &data);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let replayed: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(replayed["last_seq"].as_u64(), Some(rows.len() as u64));
    assert_eq!(replayed["devices"], json!(devices.len()));
    let jobs = replayed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    for (j, job) in jobs.iter().enumerate() {
        assert_eq!(job["id"], json!(format!("aud-job-{j}")));
        assert_eq!(job["status"], "scheduled");
        assert_eq!(job["stats"]["devices"], json!(2 * (j + 1)));
    }

    // The export alone replays to the same jobs, and its hash chain ends at the node's head.
    let scratch = data_dir().unwrap();
    let file = scratch.path().join("export.jsonl");
    std::fs::write(&file, &e.stdout).unwrap();
    let x = muster_tests::muster_cmd()
        .unwrap()
        .args(["audit", "replay", "--output", "json", "--from-export"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", text(&x.stderr));
    let from_export: Value = serde_json::from_slice(&x.stdout).unwrap();
    assert_eq!(from_export, replayed);
    let head = text(&v.stdout)
        .split("chain head ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(text(&x.stderr).contains(&head), "{}", text(&x.stderr));

    // Before the first job existed there was no job.
    let first_job_seq = created[0]["seq"].as_u64().unwrap();
    let before = audit(
        &[
            "replay",
            "--to-seq",
            &(first_job_seq - 1).to_string(),
            "--output",
            "json",
        ],
        &data,
    );
    let before: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(before["jobs"], json!([]));

    let t = audit(&["timeline", "--job", "aud-job-2"], &data);
    assert!(t.status.success(), "{}", text(&t.stderr));
    assert!(
        text(&t.stdout).contains("on 6 devices"),
        "{}",
        text(&t.stdout)
    );

    // The node still starts on the directory the audit opened.
    server.restart().unwrap();
    server.wait_ready().await.unwrap();
    let r = c
        .get(format!("{}/jobs/v2/aud-job-2?{HUB}", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// "Who stopped job X, when": a stop through REST is recorded with the caller's principal
/// (the administrator's policy, `policy:iothubowner`), and the job's events
/// (`GET /api/jobs/{id}/events`), `muster events follow`, `muster audit export` (JSON Lines and
/// CSV) and `muster audit timeline` of the stopped node's directory all show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_stopped_a_job_is_in_its_events_and_the_export() {
    let dir = data_dir().unwrap();
    let mut server = Server::start(dir.path()).unwrap();
    server.wait_ready().await.unwrap();
    let c = muster_tests::http();
    let job = "who-job";

    let r = c
        .put(format!("{}/api/devices/who-1?{CENTRAL}", server.rest))
        .json(&json!({"displayName": "who-1", "enabled": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = c
        .put(format!("{}/jobs/v2/{job}?{HUB}", server.rest))
        .json(&json!({
            "jobId": job,
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30},
            "deviceIds": ["who-1"],
            "startTime": "2099-01-01T00:00:00Z",
            "maxExecutionTimeInSeconds": 3600
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = c
        .post(format!("{}/api/jobs/{job}/stop?{CENTRAL}", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    // The job's history over REST.
    let page: Value = c
        .get(format!("{}/api/jobs/{job}/events?{CENTRAL}", server.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["value"].as_array().unwrap();
    let stopped: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "JobStopped")
        .collect();
    assert_eq!(stopped.len(), 1, "{page}");
    assert_eq!(stopped[0]["principal"], "policy:iothubowner", "{page}");
    assert!(events.iter().all(|e| e["principal"].is_string()), "{page}");
    let created = events.iter().find(|e| e["type"] == "JobCreated").unwrap();
    assert_eq!(created["principal"], "policy:iothubowner");

    // `muster events follow` (the gRPC EventService) shows it too.
    let follow = muster_tests::muster_cmd()
        .unwrap()
        .args(["events", "follow", "--output", "json", "--endpoint"])
        .arg(&server.grpc)
        .args([
            "--job",
            job,
            "--type",
            "JobStopped",
            "--limit",
            "1",
            "--retry-for",
            "10",
        ])
        .output()
        .unwrap();
    assert!(follow.status.success(), "{}", text(&follow.stderr));
    let line: Value = serde_json::from_str(text(&follow.stdout).trim()).unwrap();
    assert_eq!(line["type"], "JobStopped");
    assert_eq!(line["principal"], "policy:iothubowner");

    let data = server.data_dir().to_path_buf();
    assert!(server.terminate().unwrap(), "{}", server.log_text());

    let v = audit(&["verify"], &data);
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    let e = audit(&["export", "--job", job], &data);
    assert!(e.status.success(), "{}", text(&e.stderr));
    let rows: Vec<Value> = text(&e.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stop = rows.iter().find(|r| r["type"] == "JobStopped").unwrap();
    assert_eq!(stop["principal"], "policy:iothubowner");
    assert_eq!(stop["seq"], stopped[0]["seq"]);
    let csv = audit(&["export", "--job", job, "--format", "csv"], &data);
    let csv = text(&csv.stdout);
    assert!(
        csv.lines()
            .any(|l| l.contains(",JobStopped,who-job,,policy:iothubowner,")),
        "{csv}"
    );
    let t = audit(&["timeline", "--job", job], &data);
    assert!(t.status.success(), "{}", text(&t.stderr));
    assert!(
        text(&t.stdout)
            .lines()
            .any(|l| l.contains("stopped") && l.ends_with("(by policy:iothubowner)")),
        "{}",
        text(&t.stdout)
    );
}

/// A write sent to a follower is forwarded to the leader with its caller's principal (over REST
/// and over gRPC): every replica records the caller's policy, not the leader's `system`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_keeps_its_principal() {
    use muster_proto::pb;

    let cluster = TestCluster::start(3, &[]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = &cluster.nodes[(leader + 1) % 3];
    let c = muster_tests::http();
    let job = "fwd-job";
    let r = c
        .put(format!("{}/jobs/v2/{job}?{HUB}", follower.rest))
        .json(&json!({
            "jobId": job,
            "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30},
            "deviceIds": ["fwd-1"],
            "startTime": "2099-01-01T00:00:00Z",
            "maxExecutionTimeInSeconds": 3600
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Stopped over gRPC on the follower.
    let mut jobs = pb::job_service_client::JobServiceClient::connect(follower.grpc.clone())
        .await
        .unwrap();
    jobs.stop_job(pb::StopJobRequest { job_id: job.into() })
        .await
        .unwrap();

    for node in [&cluster.nodes[leader], follower] {
        let page: Value = c
            .get(format!("{}/api/jobs/{job}/events?{CENTRAL}", node.rest))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["value"].as_array().unwrap();
        for kind in ["JobCreated", "JobStopped"] {
            let e = events.iter().find(|e| e["type"] == kind);
            assert_eq!(
                e.map(|e| e["principal"].clone()),
                Some(json!("policy:iothubowner")),
                "{kind} on {}: {page}",
                node.rest
            );
        }
    }
}
