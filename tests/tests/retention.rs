//! Retention (`--retain-finished-jobs`, `--retain-jobs`): a finished job loses its device list,
//! then disappears, while the audit log keeps every event and still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_proto::pb;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, muster_audit, wait_for, Devsim, Server};
use serde_json::{json, Value};

const V: &str = "api-version=2022-07-31";

async fn status_of(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_lose_their_devices_then_themselves_and_the_log_keeps_all() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let mut server = Server::start_with(
        dir.path(),
        &[
            "--mqtt-url",
            &url,
            "--retain-finished-jobs",
            "3s",
            "--retain-jobs",
            "40s",
        ],
    )
    .unwrap();
    server.wait_ready().await.unwrap();
    let prefix = format!("ret-{}", std::process::id());
    let mut devsim = Devsim::start(
        dir.path(),
        &[
            "--broker",
            &url,
            "--devices",
            "12",
            "--prefix",
            &prefix,
            "--latency-ms",
            "5",
            "--register",
            &server.grpc,
        ],
    );
    assert_eq!(
        devsim.first_line(),
        format!("devsim ready: 12 devices on {url}")
    );

    let http = muster_tests::http();
    let r = http
        .put(format!("{}/api/deviceGroups/sim?{V}", server.rest))
        .json(&json!({"displayName": "Simulated", "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let job = json!({
        "displayName": "Report",
        "group": "sim",
        "data": [{"type": "CommandJobData", "target": "dtmi:muster:simulated;1", "path": "getMaxMinReport", "value": "2021-06-15T05:00:00.000Z"}]
    });
    let job_url = format!("{}/api/jobs/ret-1?{V}", server.rest);
    let devices_url = format!("{}/api/jobs/ret-1/devices?{V}", server.rest);
    let r = http.put(&job_url).json(&job).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // The device detail goes first: 410 naming retention, while the job still answers.
    wait_for("ret-1's device list expired", || {
        let (http, u) = (http.clone(), devices_url.clone());
        async move { status_of(&http, &u).await.0 == 410 }
    })
    .await
    .unwrap();
    let (code, body) = status_of(&http, &devices_url).await;
    assert_eq!(code, 410);
    assert!(
        body.to_string().contains("retention"),
        "the 410 names retention: {body}"
    );
    let (code, body) = status_of(&http, &job_url).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "complete", "{body}");

    let ch = muster_tests::grpc_channel(&server.grpc).await.unwrap();
    let mut jobs = JobServiceClient::new(ch);
    let j = jobs
        .get_job(pb::GetJobRequest {
            job_id: "ret-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(j.detail_expired);
    assert_eq!(j.stats.unwrap().total, 12);
    let err = jobs
        .list_job_devices(pb::ListJobDevicesRequest {
            job_id: "ret-1".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // The CLI says so in words, and `job devices` passes the reason on.
    let cli = |args: &[&str]| {
        muster_tests::muster_cmd()
            .unwrap()
            .args(args)
            .args(["--endpoint", &server.grpc])
            .output()
            .unwrap()
    };
    let got = cli(&["job", "get", "ret-1"]);
    let text = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(text.contains("device detail expired"), "{text}");
    let devices = cli(&["job", "devices", "ret-1"]);
    assert!(!devices.status.success());
    let err = String::from_utf8_lossy(&devices.stderr).into_owned();
    assert!(err.contains("retention"), "{err}");

    // A crash and restart keeps the expiry (recovery replays it), and the new leader's
    // retention loop still removes the job later.
    devsim.terminate();
    server.restart().unwrap();
    server.wait_ready().await.unwrap();
    let job_url = format!("{}/api/jobs/ret-1?{V}", server.rest);
    let devices_url = format!("{}/api/jobs/ret-1/devices?{V}", server.rest);
    let (code, body) = status_of(&http, &devices_url).await;
    assert!(
        code == 410 || (code == 404 && status_of(&http, &job_url).await.0 == 404),
        "after a restart the device list is still expired: {code} {body}"
    );

    // Then the job itself: 404 like any unknown job.
    wait_for("ret-1 removed", || {
        let (http, u) = (http.clone(), job_url.clone());
        async move { status_of(&http, &u).await.0 == 404 }
    })
    .await
    .unwrap();

    let data = server.data_dir().to_path_buf();
    assert!(server.terminate().unwrap(), "{}", server.log_text());
    let v = muster_audit(&["verify"], &data).unwrap();
    let out = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(
        v.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(out.contains("ok: seqs 1..="), "{out}");
    let e = muster_audit(&["export", "--job", "ret-1"], &data).unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let kinds: Vec<String> = String::from_utf8_lossy(&e.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for k in [
        "JobCreated",
        "DeviceSucceeded",
        "JobCompleted",
        "JobDetailExpired",
        "JobExpired",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "no {k} in the export: {kinds:?}"
        );
    }
}
