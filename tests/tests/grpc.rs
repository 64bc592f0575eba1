//! The gRPC API end to end: the real `muster serve` binary on free ports, called with the
//! generated tonic clients. Every RPC of `JobService`, `DeviceService` and `GroupService`, their
//! error codes, paging across pages, `WatchJob`, and the health and reflection services.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::group_service_client::GroupServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{data_dir, wait_for, Server, PATIENCE};
use tonic::Code;

async fn channel(server: &Server) -> muster_tests::AuthChannel {
    muster_tests::leader_channel(server).await.unwrap()
}

fn new_device(id: &str, tags: &str) -> pb::NewDevice {
    pb::NewDevice {
        device_id: id.into(),
        tags_json: tags.into(),
        ..Default::default()
    }
}

fn method(name: &str, payload: &str, timeout: u32) -> pb::Operation {
    pb::Operation {
        kind: Some(pb::operation::Kind::InvokeMethod(pb::MethodCall {
            name: name.into(),
            payload_json: payload.into(),
            response_timeout_secs: timeout,
            connect_timeout_secs: 0,
        })),
    }
}

fn devices_target(ids: &[&str]) -> Option<pb::Target> {
    Some(pb::Target {
        selector: Some(pb::target::Selector::Devices(pb::DeviceList {
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        })),
        continuous: false,
    })
}

/// A job that starts in 2099: nothing about it changes by itself while the test runs. Only
/// target and operations are given; the API fills in the rest.
fn later_spec(ids: &[&str], ops: Vec<pb::Operation>) -> pb::JobSpec {
    pb::JobSpec {
        target: devices_target(ids),
        operations: ops,
        schedule: Some(pb::Schedule {
            start_at_ms: Some(4_070_908_800_000),
            max_execution_secs: None,
        }),
        ..Default::default()
    }
}

fn create(id: &str, spec: pb::JobSpec) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        job_id: id.into(),
        spec: Some(spec),
    }
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}

fn status_of(j: &pb::Job) -> pb::JobStatus {
    pb::JobStatus::try_from(j.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_service_rpcs_and_their_errors() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut devices = DeviceServiceClient::new(ch);

    let ids = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"];
    let count = devices
        .import_devices(pb::ImportDevicesRequest {
            devices: ids.iter().map(|d| new_device(d, "")).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 5);

    // CreateJob, and what it answers.
    let job = jobs
        .create_job(create(
            "job-1",
            later_spec(&ids, vec![method("reboot", r#"{"delay": 5}"#, 30)]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.job_id, "job-1");
    assert_eq!(job.display_name, "job-1");
    assert_eq!(status_of(&job), pb::JobStatus::Scheduled);
    assert_eq!(job.r#type, pb::JobType::Method as i32);
    let stats = job.stats.unwrap();
    assert_eq!((stats.total, stats.pending), (5, 5));
    assert_eq!(job.start_at_ms, Some(4_070_908_800_000));
    let spec = job.spec.unwrap();
    let Some(pb::operation::Kind::InvokeMethod(m)) = &spec.operations[0].kind else {
        panic!("{spec:?}")
    };
    assert_eq!(m.payload_json, r#"{"delay":5}"#);
    assert_eq!(spec.retry.unwrap().max_attempts, 1, "defaults filled in");

    // Errors of CreateJob.
    expect_code(
        jobs.create_job(create("job-1", later_spec(&ids, vec![method("x", "", 30)])))
            .await,
        Code::AlreadyExists,
        "job-1",
    );
    expect_code(
        jobs.create_job(create(
            "bad id!",
            later_spec(&ids, vec![method("x", "", 30)]),
        ))
        .await,
        Code::InvalidArgument,
        "job_id",
    );
    expect_code(
        jobs.create_job(pb::CreateJobRequest {
            job_id: "job-x".into(),
            spec: None,
        })
        .await,
        Code::InvalidArgument,
        "spec",
    );
    expect_code(
        jobs.create_job(create(
            "job-x",
            later_spec(&ids, vec![method("x", "{not json", 30)]),
        ))
        .await,
        Code::InvalidArgument,
        "payload_json",
    );
    expect_code(
        jobs.create_job(create("job-x", later_spec(&ids, vec![])))
            .await,
        Code::InvalidArgument,
        "operations",
    );
    let mut bad_batch = later_spec(&ids, vec![method("x", "", 30)]);
    bad_batch.rollout = Some(pb::Rollout {
        batch: Some(pb::BatchSize {
            kind: Some(pb::batch_size::Kind::Percentage(0)),
        }),
        max_devices_per_minute: None,
        ..Default::default()
    });
    expect_code(
        jobs.create_job(create("job-x", bad_batch)).await,
        Code::InvalidArgument,
        "batch",
    );
    // Issue 18: numbers outside their range are refused, not wrapped.
    let mut huge = later_spec(&ids, vec![method("x", "", 30)]);
    huge.schedule = Some(pb::Schedule {
        start_at_ms: None,
        max_execution_secs: Some(1 << 63),
    });
    expect_code(
        jobs.create_job(create("job-x", huge)).await,
        Code::InvalidArgument,
        "maxExecutionTimeInSeconds",
    );
    for ms in [i64::MAX, i64::MIN] {
        let mut far = later_spec(&ids, vec![method("x", "", 30)]);
        far.schedule = Some(pb::Schedule {
            start_at_ms: Some(ms),
            max_execution_secs: None,
        });
        expect_code(
            jobs.create_job(create("job-x", far)).await,
            Code::InvalidArgument,
            "startTime",
        );
    }
    expect_code(
        jobs.create_job(create(
            "job-x",
            later_spec(&["not valid!"], vec![method("x", "", 30)]),
        ))
        .await,
        Code::InvalidArgument,
        "device_ids",
    );

    // GetJob.
    let got = jobs
        .get_job(pb::GetJobRequest {
            job_id: "job-1".into(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.batches.len(), 1);
    assert_eq!(got.runs.len(), 1);
    expect_code(
        jobs.get_job(pb::GetJobRequest {
            job_id: "nope".into(),
            stale_ok: false,
        })
        .await,
        Code::NotFound,
        "nope",
    );
    expect_code(
        jobs.get_job(pb::GetJobRequest {
            job_id: "".into(),
            stale_ok: true,
        })
        .await,
        Code::InvalidArgument,
        "job_id",
    );

    // More jobs: two twin jobs and two method jobs, for paging and filters.
    let desired = pb::Operation {
        kind: Some(pb::operation::Kind::PatchDesired(
            pb::operation::PatchDesired {
                patch_json: r#"{"fw": "1.2"}"#.into(),
            },
        )),
    };
    for id in ["job-2", "job-4"] {
        jobs.create_job(create(id, later_spec(&ids[..2], vec![desired.clone()])))
            .await
            .unwrap();
    }
    for id in ["job-3", "job-5"] {
        jobs.create_job(create(id, later_spec(&ids[..1], vec![method("m", "", 5)])))
            .await
            .unwrap();
    }

    // ListJobs across pages, in id order, the last page without a token.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 2);
        for j in &page.jobs {
            assert!(
                j.spec.is_none() && j.batches.is_empty(),
                "lists are summaries"
            );
        }
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["job-1", "job-2", "job-3", "job-4", "job-5"]);
    assert_eq!(pages, 3);

    let twins = jobs
        .list_jobs(pb::ListJobsRequest {
            types: vec![pb::JobType::Twin as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let twin_ids: Vec<_> = twins.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(twin_ids, ["job-2", "job-4"]);
    assert!(twins.next_page_token.is_empty());
    expect_code(
        jobs.list_jobs(pb::ListJobsRequest {
            types: vec![42],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "types[0]",
    );
    expect_code(
        jobs.list_jobs(pb::ListJobsRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );

    // Stop, resume, cancel, and the transitions that are not allowed.
    let stopped = jobs
        .stop_job(pb::StopJobRequest {
            job_id: "job-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&stopped), pb::JobStatus::Stopped);
    let stopped_list = jobs
        .list_jobs(pb::ListJobsRequest {
            statuses: vec![pb::JobStatus::Stopped as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped_list.jobs.len(), 1);
    assert_eq!(stopped_list.jobs[0].job_id, "job-3");
    let resumed = jobs
        .resume_job(pb::ResumeJobRequest {
            job_id: "job-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&resumed), pb::JobStatus::Scheduled);
    expect_code(
        jobs.resume_job(pb::ResumeJobRequest {
            job_id: "job-3".into(),
        })
        .await,
        Code::FailedPrecondition,
        "job-3",
    );
    let cancelled = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: "job-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::JobStatus::Cancelled);
    assert!(!cancelled.status_reason.is_empty());
    assert!(cancelled.cancel_reason.is_some());
    expect_code(
        jobs.cancel_job(pb::CancelJobRequest {
            job_id: "job-3".into(),
        })
        .await,
        Code::FailedPrecondition,
        "cancel",
    );
    expect_code(
        jobs.stop_job(pb::StopJobRequest {
            job_id: "ghost".into(),
        })
        .await,
        Code::NotFound,
        "ghost",
    );
    // Nothing failed in job-3 (its device was cancelled), so there is nothing to rerun; a job
    // that is not final cannot be rerun either.
    expect_code(
        jobs.rerun_job(pb::RerunJobRequest {
            job_id: "job-3".into(),
            rerun_id: "r1".into(),
        })
        .await,
        Code::FailedPrecondition,
        "job-3",
    );
    expect_code(
        jobs.rerun_job(pb::RerunJobRequest {
            job_id: "job-1".into(),
            rerun_id: "r1".into(),
        })
        .await,
        Code::FailedPrecondition,
        "job-1",
    );
    expect_code(
        jobs.rerun_job(pb::RerunJobRequest {
            job_id: "job-1".into(),
            rerun_id: "bad rerun".into(),
        })
        .await,
        Code::InvalidArgument,
        "rerun_id",
    );

    // ListJobDevices across pages, in batch order, and filtered.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs
            .list_job_devices(pb::ListJobDevicesRequest {
                job_id: "job-1".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.devices);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let listed_ids: Vec<_> = listed.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(listed_ids, ids);
    assert!(listed
        .iter()
        .all(|d| d.status == pb::DeviceStatus::Pending as i32 && d.attempts == 0));
    let none_failed = jobs
        .list_job_devices(pb::ListJobDevicesRequest {
            job_id: "job-1".into(),
            status: pb::DeviceStatus::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none_failed.devices.is_empty() && none_failed.next_page_token.is_empty());
    expect_code(
        jobs.list_job_devices(pb::ListJobDevicesRequest {
            job_id: "job-1".into(),
            run: Some(7),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "run 7",
    );
    expect_code(
        jobs.list_job_devices(pb::ListJobDevicesRequest {
            job_id: "job-1".into(),
            page_token: "x".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    // A position is not a token: only what next_page_token gave back is.
    expect_code(
        jobs.list_job_devices(pb::ListJobDevicesRequest {
            job_id: "job-1".into(),
            page_token: "1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "restart the listing",
    );
    expect_code(
        jobs.list_jobs(pb::ListJobsRequest {
            page_token: "job-1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "restart the listing",
    );
    expect_code(
        jobs.list_job_devices(pb::ListJobDevicesRequest {
            job_id: "nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "nope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_job_sends_progress_at_once_and_ends_when_the_job_is_cancelled() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut devices = DeviceServiceClient::new(ch);
    devices
        .register_device(pb::RegisterDeviceRequest {
            device: Some(new_device("w-1", "")),
            upsert: false,
        })
        .await
        .unwrap();
    jobs.create_job(create(
        "watched",
        later_spec(&["w-1"], vec![method("reboot", "", 30)]),
    ))
    .await
    .unwrap();

    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first_job = first.job.unwrap();
    assert_eq!(first_job.job_id, "watched");
    assert_eq!(status_of(&first_job), pb::JobStatus::Scheduled);
    assert!(first_job.spec.is_none());
    assert!(first.seq > 0);

    jobs.cancel_job(pb::CancelJobRequest {
        job_id: "watched".into(),
    })
    .await
    .unwrap();
    let mut last = None;
    loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
        {
            Ok(Some(m)) => {
                assert!(m.seq > first.seq);
                last = m.job;
            }
            Ok(None) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(status_of(&last.unwrap()), pb::JobStatus::Cancelled);

    // Watching a job that is already final: one message, then the end.
    let mut again = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: "watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = again.message().await.unwrap().unwrap();
    assert_eq!(status_of(&m.job.unwrap()), pb::JobStatus::Cancelled);
    assert!(again.message().await.unwrap().is_none());

    expect_code(
        jobs.watch_job(pb::WatchJobRequest {
            job_id: "nope".into(),
        })
        .await,
        Code::NotFound,
        "nope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_times_out_and_the_job_can_be_rerun() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut devices = DeviceServiceClient::new(ch);
    devices
        .register_device(pb::RegisterDeviceRequest {
            device: Some(new_device("silent", "")),
            upsert: false,
        })
        .await
        .unwrap();
    // No device answers in this test: the job starts at once and the device times out.
    let spec = pb::JobSpec {
        target: devices_target(&["silent"]),
        operations: vec![method("reboot", "", 1)],
        ..Default::default()
    };
    jobs.create_job(create("quick", spec)).await.unwrap();
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: "quick".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the job ends")
        .unwrap()
    {
        last = m.job;
    }
    let last = last.unwrap();
    assert_eq!(status_of(&last), pb::JobStatus::Completed, "{last:?}");
    assert_eq!(last.stats.unwrap().timed_out, 1);

    let failed = jobs
        .list_job_devices(pb::ListJobDevicesRequest {
            job_id: "quick".into(),
            status: pb::DeviceStatus::TimedOut as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.devices.len(), 1);
    let d = &failed.devices[0];
    assert_eq!(d.device_id, "silent");
    assert_eq!(d.attempts, 1);
    assert!(d.last_error.contains("timeout"), "{d:?}");
    assert!(d.last_error_reason.is_some());

    let rerun = jobs
        .rerun_job(pb::RerunJobRequest {
            job_id: "quick".into(),
            rerun_id: "again".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rerun.run, 1);
    assert_eq!(rerun.rerun_id.as_deref(), Some("again"));
    assert_eq!(rerun.runs.len(), 2);
    // Run 0 keeps its record.
    let run0 = jobs
        .list_job_devices(pb::ListJobDevicesRequest {
            job_id: "quick".into(),
            run: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run0.devices[0].status, pb::DeviceStatus::TimedOut as i32);
    // The same rerun id again is refused: while the rerun is active because the job is not
    // final, afterwards because the id is taken.
    let again = jobs
        .rerun_job(pb::RerunJobRequest {
            job_id: "quick".into(),
            rerun_id: "again".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(again.code(), Code::FailedPrecondition | Code::AlreadyExists),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_groups_health_and_reflection() {
    let dir = data_dir().unwrap();
    let server = Server::start(dir.path()).unwrap();
    let ch = channel(&server).await;
    let mut devices = DeviceServiceClient::new(ch.clone());
    let mut groups = GroupServiceClient::new(ch.clone());

    // RegisterDevice and its errors.
    let d = devices
        .register_device(pb::RegisterDeviceRequest {
            device: Some(pb::NewDevice {
                device_id: "t-00".into(),
                display_name: "Thermostat 0".into(),
                model_id: Some("dtmi:example:thermostat;1".into()),
                enabled: None,
                tags_json: r#"{"site": "b43", "ring": 1}"#.into(),
            }),
            upsert: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.display_name, "Thermostat 0");
    assert!(d.enabled, "enabled unless told otherwise");
    assert_eq!(d.tags_json, r#"{"site":"b43","ring":1}"#);
    assert_eq!(d.connection, pb::ConnectionState::Unknown as i32);
    expect_code(
        devices
            .register_device(pb::RegisterDeviceRequest {
                device: Some(new_device("t-00", "")),
                upsert: false,
            })
            .await,
        Code::AlreadyExists,
        "t-00",
    );
    let upserted = devices
        .register_device(pb::RegisterDeviceRequest {
            device: Some(new_device("t-00", r#"{"site": "b43", "ring": 2}"#)),
            upsert: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(upserted.tags_json.contains("\"ring\":2"));
    expect_code(
        devices
            .register_device(pb::RegisterDeviceRequest {
                device: Some(new_device("no spaces", "")),
                upsert: false,
            })
            .await,
        Code::InvalidArgument,
        "device.device_id",
    );
    expect_code(
        devices
            .register_device(pb::RegisterDeviceRequest {
                device: Some(new_device("t-99", "[1")),
                upsert: false,
            })
            .await,
        Code::InvalidArgument,
        "device.tags_json",
    );
    expect_code(
        devices
            .register_device(pb::RegisterDeviceRequest {
                device: None,
                upsert: false,
            })
            .await,
        Code::InvalidArgument,
        "device",
    );

    // ImportDevices: bulk, all or nothing.
    let batch: Vec<_> = (1..12)
        .map(|i| {
            let site = if i % 2 == 0 { "b43" } else { "b44" };
            new_device(&format!("t-{i:02}"), &format!(r#"{{"site": "{site}"}}"#))
        })
        .collect();
    let n = devices
        .import_devices(pb::ImportDevicesRequest { devices: batch })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 11);
    expect_code(
        devices
            .import_devices(pb::ImportDevicesRequest {
                devices: vec![new_device("t-50", ""), new_device("bad id", "")],
            })
            .await,
        Code::InvalidArgument,
        "devices[1].device_id",
    );
    expect_code(
        devices
            .get_device(pb::GetDeviceRequest {
                device_id: "t-50".into(),
                stale_ok: false,
            })
            .await,
        Code::NotFound,
        "t-50",
    );
    expect_code(
        devices
            .import_devices(pb::ImportDevicesRequest { devices: vec![] })
            .await,
        Code::InvalidArgument,
        "devices",
    );

    // ListDevices across pages.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = devices
            .list_devices(pb::ListDevicesRequest {
                page_size: 5,
                page_token: token,
                stale_ok: false,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.devices.into_iter().map(|d| d.device_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..12).map(|i| format!("t-{i:02}")).collect();
    assert_eq!(all, expected);

    // QueryDevices: matches, pages, ids only, and a bad query named.
    let q = "SELECT * FROM devices WHERE tags.site = 'b43'";
    let first = devices
        .query_devices(pb::QueryDevicesRequest {
            query: q.into(),
            page_size: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.device_ids, ["t-00", "t-02", "t-04", "t-06"]);
    assert_eq!(first.devices.len(), 4);
    let second = devices
        .query_devices(pb::QueryDevicesRequest {
            query: q.into(),
            page_size: 4,
            page_token: first.next_page_token,
            ids_only: true,
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.device_ids, ["t-08", "t-10"]);
    assert!(second.devices.is_empty());
    assert!(second.next_page_token.is_empty());
    expect_code(
        devices
            .query_devices(pb::QueryDevicesRequest {
                query: "SELECT * FROM devices WHERE tags.site ==".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "query",
    );
    expect_code(
        devices
            .query_devices(pb::QueryDevicesRequest {
                query: "DELETE FROM devices".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "SELECT * FROM devices",
    );

    // GetDevice and UpdateTwin with an ETag.
    let before = devices
        .get_device(pb::GetDeviceRequest {
            device_id: "t-01".into(),
            stale_ok: true,
        })
        .await
        .unwrap()
        .into_inner();
    let after = devices
        .update_twin(pb::UpdateTwinRequest {
            device_id: "t-01".into(),
            tags_json: None,
            desired_json: Some(r#"{"fw": "1.2"}"#.into()),
            if_version: Some(before.version),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.desired_json, r#"{"fw":"1.2"}"#);
    assert_eq!(after.desired_version, before.desired_version + 1);
    assert!(after.version > before.version);
    expect_code(
        devices
            .update_twin(pb::UpdateTwinRequest {
                device_id: "t-01".into(),
                tags_json: Some(r#"{"x": 1}"#.into()),
                desired_json: None,
                if_version: Some(before.version),
            })
            .await,
        Code::Aborted,
        "version",
    );
    expect_code(
        devices
            .update_twin(pb::UpdateTwinRequest {
                device_id: "t-01".into(),
                tags_json: None,
                desired_json: Some("{".into()),
                if_version: None,
            })
            .await,
        Code::InvalidArgument,
        "desired_json",
    );
    expect_code(
        devices
            .update_twin(pb::UpdateTwinRequest {
                device_id: "t-01".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "tags_json",
    );
    expect_code(
        devices
            .update_twin(pb::UpdateTwinRequest {
                device_id: "ghost".into(),
                tags_json: Some(r#"{"x": 1}"#.into()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "ghost",
    );

    // Groups.
    let g = groups
        .put_group(pb::PutGroupRequest {
            group_id: "b43".into(),
            display_name: "Building 43".into(),
            query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
            description: Some("the east wing".into()),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.display_name, "Building 43");
    assert_eq!(
        (g.description.as_str(), g.etag.as_str()),
        ("the east wing", "1")
    );
    // Without a description a save keeps it; with a stale etag it is refused and changes
    // nothing; with the current one it saves and the etag moves on.
    let resaved = groups
        .put_group(pb::PutGroupRequest {
            group_id: "b43".into(),
            display_name: "Building 43".into(),
            query: "SELECT * FROM devices WHERE tags.site = 'b43'".into(),
            description: None,
            etag: "\"1\"".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resaved.description, "the east wing");
    assert_eq!(resaved.etag, "2");
    expect_code(
        groups
            .put_group(pb::PutGroupRequest {
                group_id: "b43".into(),
                display_name: "Changed".into(),
                query: "SELECT * FROM devices".into(),
                description: Some(String::new()),
                etag: "1".into(),
            })
            .await,
        Code::Aborted,
        "b43",
    );
    expect_code(
        groups
            .put_group(pb::PutGroupRequest {
                group_id: "b43".into(),
                display_name: "Changed".into(),
                query: "SELECT * FROM devices".into(),
                description: None,
                etag: "not-an-etag".into(),
            })
            .await,
        Code::InvalidArgument,
        "etag",
    );
    expect_code(
        groups
            .put_group(pb::PutGroupRequest {
                group_id: "b43".into(),
                display_name: String::new(),
                query: "SELECT * FROM devices".into(),
                description: Some("x".repeat(5000)),
                etag: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "description",
    );
    let g = resaved;
    groups
        .put_group(pb::PutGroupRequest {
            group_id: "all".into(),
            display_name: String::new(),
            query: "SELECT * FROM devices".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = groups
        .get_group(pb::GetGroupRequest {
            group_id: "b43".into(),
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, g);
    let listed = groups
        .list_groups(pb::ListGroupsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].group_id, "all");
    let rest = groups
        .list_groups(pb::ListGroupsRequest {
            page_size: 1,
            page_token: listed.next_page_token,
            stale_ok: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.groups[0].group_id, "b43");
    assert!(rest.next_page_token.is_empty());
    expect_code(
        groups
            .put_group(pb::PutGroupRequest {
                group_id: "bad".into(),
                display_name: String::new(),
                query: "SELECT nonsense".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "query",
    );
    groups
        .delete_group(pb::DeleteGroupRequest {
            group_id: "all".into(),
        })
        .await
        .unwrap();
    expect_code(
        groups
            .get_group(pb::GetGroupRequest {
                group_id: "all".into(),
                stale_ok: false,
            })
            .await,
        Code::NotFound,
        "all",
    );
    expect_code(
        groups
            .delete_group(pb::DeleteGroupRequest {
                group_id: "all".into(),
            })
            .await,
        Code::NotFound,
        "all",
    );

    // Health: every service SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "muster.v1.JobService",
        "muster.v1.DeviceService",
        "muster.v1.GroupService",
    ] {
        wait_for(service, || {
            let mut health = health.clone();
            async move {
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32
                    })
            }
        })
        .await
        .unwrap();
    }
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        overall.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection (v1) lists the services, as grpcurl asks.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "muster.v1.JobService",
        "muster.v1.DeviceService",
        "muster.v1.GroupService",
        "muster.v1.EventService",
        "muster.v1.ClusterService",
        "muster.v1.ScheduleService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{names:?}");
    }
    // Raft between nodes is served on the peer address only, so it is not listed here.
    assert!(
        !names.iter().any(|n| n.contains("RaftService")),
        "{names:?}"
    );
    // And it can describe a message of the API, so grpcurl can encode requests.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "muster.v1.CreateJobRequest".into(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
}
