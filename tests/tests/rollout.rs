//! Rollout controls over a real MQTT broker (issue 16): a canary batch that pauses the job, a
//! failing gate that pauses it again, and operators continuing it (REST, then gRPC) until it
//! completes. Needs Mosquitto (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use muster_devsim::{Fleet, FleetConfig};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, grpc_channel, wait_for, Server};
use serde_json::{json, Value};

const CENTRAL: &str = "api-version=2022-07-31";

async fn job(jobs: &mut JobServiceClient<muster_tests::AuthChannel>, id: &str) -> pb::Job {
    jobs.get_job(pb::GetJobRequest {
        job_id: id.into(),
        stale_ok: false,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn devices_of(
    jobs: &mut JobServiceClient<muster_tests::AuthChannel>,
    id: &str,
) -> Vec<pb::JobDevice> {
    jobs.list_job_devices(pb::ListJobDevicesRequest {
        job_id: id.into(),
        run: None,
        status: 0,
        page_size: 1000,
        page_token: String::new(),
        stale_ok: false,
    })
    .await
    .unwrap()
    .into_inner()
    .devices
}

/// Waits until the job is in `status` and returns it.
async fn wait_status(
    server: &Server,
    jobs: &JobServiceClient<muster_tests::AuthChannel>,
    id: &str,
    status: pb::JobStatus,
) -> pb::Job {
    wait_for(&format!("job {id} {status:?}"), || {
        let mut jobs = jobs.clone();
        async move { job(&mut jobs, id).await.status == status as i32 }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    job(&mut jobs.clone(), id).await
}

fn pause_reason(j: &pb::Job) -> pb::pause_reason::Kind {
    j.pause_reason.and_then(|r| r.kind).expect("a pause reason")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_then_failing_gate_pause_and_continue_resumes() {
    let dir = data_dir().unwrap();
    let url = muster_tests::mqtt_url();
    let server = Server::start_with(dir.path(), &["--mqtt-url", &url]).unwrap();
    server.wait_ready().await.unwrap();
    let ch = grpc_channel(&server.grpc).await.unwrap();
    let mut jobs = JobServiceClient::new(ch.clone());
    let registry = DeviceServiceClient::new(ch.clone());
    wait_for("a leader", || {
        let mut jobs = jobs.clone();
        async move { jobs.list_jobs(pb::ListJobsRequest::default()).await.is_ok() }
    })
    .await
    .unwrap();

    // Six devices, batches of two; the first device of the second batch always fails.
    let prefix = format!("ro-gate-{}", std::process::id());
    let cfg = muster_tests::fleet_config(&prefix, 6);
    let ids = cfg.device_ids();
    let cfg = FleetConfig {
        failing: vec![ids[2].clone()],
        ..cfg
    };
    muster_tests::import_tagged(&ch, &ids, &prefix)
        .await
        .unwrap();
    let fleet = Fleet::start(cfg).await.unwrap();
    wait_for("the fleet connected", || {
        let mut registry = registry.clone();
        async move {
            let page = registry
                .list_devices(pb::ListDevicesRequest {
                    page_size: 1000,
                    page_token: String::new(),
                    stale_ok: true,
                })
                .await
                .unwrap()
                .into_inner();
            page.devices
                .iter()
                .filter(|d| d.connection == pb::ConnectionState::Connected as i32)
                .count()
                >= 6
        }
    })
    .await
    .unwrap();

    let http = muster_tests::http();
    let rest = |path: &str| format!("{}{path}?{CENTRAL}", server.rest);
    let group = json!({
        "displayName": "gate fleet",
        "filter": format!("SELECT * FROM devices WHERE tags.devsim = '{prefix}'"),
    });
    let r = http
        .put(rest("/api/deviceGroups/gate-fleet"))
        .json(&group)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    // The canary (first batch) pauses however well it went; every batch must fully succeed.
    let body = json!({
        "displayName": "fw canary",
        "group": "gate-fleet",
        "batch": {"type": "number", "value": 2},
        "data": [{"type": "CommandJobData", "path": "update", "value": {"v": 2}}],
        "rollout": {
            "gate": {"successPercent": 100, "onFailure": "pause", "pauseAfterEachBatch": true}
        }
    });
    let r = http
        .put(rest("/api/jobs/canary"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let created: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        created["rollout"]["gate"]["successPercent"], 100,
        "{created}"
    );

    // 1. The canary batch ran, then the job paused; nothing of the later batches was sent.
    let paused = wait_status(&server, &jobs, "canary", pb::JobStatus::Paused).await;
    assert_eq!(paused.paused_after_batch, Some(0), "{paused:?}");
    assert!(matches!(
        pause_reason(&paused),
        pb::pause_reason::Kind::AfterBatch(_)
    ));
    let devices = devices_of(&mut jobs, "canary").await;
    for d in &devices {
        let want = if d.batch == 0 {
            pb::DeviceStatus::Succeeded
        } else {
            pb::DeviceStatus::Pending
        };
        assert_eq!(d.status, want as i32, "{d:?}");
        if d.batch > 0 {
            assert_eq!(d.attempts, 0, "{d:?}");
        }
    }
    // IoT Central shows it stopped, with the muster extension telling why.
    let got: Value = http
        .get(rest("/api/jobs/canary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "stopped", "{got}");
    assert_eq!(got["rolloutState"]["paused"], true, "{got}");

    // 2. Continue (REST): the second batch runs, one device fails, the gate pauses again.
    let r = http
        .post(rest("/api/jobs/canary/continue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    wait_for("batch 1 finished", || {
        let mut jobs = jobs.clone();
        async move {
            let j = job(&mut jobs, "canary").await;
            j.status == pb::JobStatus::Paused as i32 && j.paused_after_batch == Some(1)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    let paused = job(&mut jobs, "canary").await;
    match pause_reason(&paused) {
        pb::pause_reason::Kind::GateFailed(g) => {
            assert_eq!((g.succeeded, g.devices, g.required_percent), (1, 2, 100))
        }
        other => panic!("expected a failed gate, got {other:?}"),
    }
    assert!(
        paused.status_reason.contains("paused after batch 2"),
        "{paused:?}"
    );
    let devices = devices_of(&mut jobs, "canary").await;
    assert!(
        devices
            .iter()
            .filter(|d| d.batch == 2)
            .all(|d| d.status == pb::DeviceStatus::Pending as i32 && d.attempts == 0),
        "{devices:?}"
    );

    // Continuing a job that is not paused is refused and says why.
    let err = jobs
        .continue_job(pb::ContinueJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // 3. Continue (gRPC): the last batch runs and the job completes.
    let continued = jobs
        .continue_job(pb::ContinueJobRequest {
            job_id: "canary".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(continued.status, pb::JobStatus::Paused as i32);
    let done = wait_status(&server, &jobs, "canary", pb::JobStatus::Completed).await;
    let s = done.stats.unwrap();
    assert_eq!((s.total, s.succeeded, s.failed), (6, 5, 1), "{s:?}");
    let err = jobs
        .continue_job(pb::ContinueJobRequest {
            job_id: "canary".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    fleet.shutdown().await;
}
