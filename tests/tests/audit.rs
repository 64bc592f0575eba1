//! `muster audit` on a real node's data directory: refused while the node runs, and after it
//! stops, `verify` passes, `export` lists every event, `replay` rebuilds the jobs the API showed
//! (from the directory and from the export alone) and `timeline` tells one job's history.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use muster_tests::{data_dir, Server};
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
    assert_eq!(lines.next(), Some("seq,time,type,job,device,body"));
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
