//! Faults in a three-node cluster of real `muster serve` processes on loopback (issue 5):
//!
//! - the leader is killed (`kill -9`) while a 20,000-device method job runs over a real
//!   Mosquitto (`MUSTER_TEST_MQTT_URL`, default `mqtt://127.0.0.1:1883`) and the simulated fleet:
//!   a new leader is elected, its dispatcher picks the job up, the job completes with exactly one
//!   final outcome per device and statistics that add up, no acknowledged write is lost, and the
//!   killed node restarts and catches up;
//! - a follower is frozen (SIGSTOP) while the leader writes far past a snapshot and purges its
//!   log; resumed (SIGCONT), it installs the snapshot and converges;
//! - a node cut off from the majority refuses writes with a clear error (REST 503 with a JSON
//!   error, gRPC UNAVAILABLE) in bounded time instead of hanging or acknowledging them, and
//!   refused writes are not there afterwards (or, where the refusal said "may or may not take
//!   effect", the test says which happened); a retried write succeeds;
//! - a write forwarded by a follower to a leader that then freezes is refused ("may or may not
//!   have taken effect") soon after another node leads, instead of after the 35 s forward
//!   timeout, a read forwarded with it is answered by the new leader, and the cluster agrees on
//!   whether the write took effect once the old leader resumes.
//!
//! `MUSTER_FAULTS_DEVICES` changes the size of the fleet of the first test (default 20,000).
//! Tests wait on conditions with generous limits, never on timing; the times they print
//! (`--nocapture`) are for information.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_devsim::{Fleet, FleetConfig};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_tests::{
    admin_token, data_dir, wait_for, wait_for_long, with_credential, AuthChannel, Server,
    TestCluster,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

const HUB: &str = "api-version=2021-04-12";
/// How long the large-fleet test waits for one phase (registration, presence, the job).
const LONG: Duration = Duration::from_secs(600);
/// 2099-01-01T00:00:00Z: jobs that start then stay scheduled while a test runs.
const FAR_FUTURE_MS: i64 = 4_070_908_800_000;

fn fleet_size() -> usize {
    std::env::var("MUSTER_FAULTS_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// A gRPC channel to `node`, retried until it connects.
async fn channel(node: &Server) -> AuthChannel {
    let mut last = String::new();
    for _ in 0..600 {
        match Channel::from_shared(node.grpc.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return with_credential(c, Some(&admin_token())),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "cannot connect to {}: {last}\n{}",
        node.grpc,
        node.log_text()
    );
}

fn jobs(ch: &AuthChannel) -> JobServiceClient<AuthChannel> {
    JobServiceClient::new(ch.clone())
}

fn devices(ch: &AuthChannel) -> DeviceServiceClient<AuthChannel> {
    DeviceServiceClient::new(ch.clone())
}

fn method_op(timeout_secs: u32) -> pb::Operation {
    pb::Operation {
        kind: Some(pb::operation::Kind::InvokeMethod(pb::MethodCall {
            name: "reboot".into(),
            payload_json: json!({"delay": 1}).to_string(),
            response_timeout_secs: timeout_secs,
            connect_timeout_secs: 0,
        })),
    }
}

/// A method job over every registered device, `batch` devices at a time.
fn fleet_job(batch: u32, timeout_secs: u32) -> pb::JobSpec {
    pb::JobSpec {
        display_name: "fleet update".into(),
        target: Some(pb::Target {
            selector: Some(pb::target::Selector::Query("SELECT * FROM devices".into())),
            continuous: false,
        }),
        operations: vec![method_op(timeout_secs)],
        rollout: Some(pb::Rollout {
            batch: Some(pb::BatchSize {
                kind: Some(pb::batch_size::Kind::Count(batch)),
            }),
            max_devices_per_minute: None,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A job that starts in 2099: nothing about it changes while a test runs.
fn later_job() -> pb::JobSpec {
    pb::JobSpec {
        display_name: "later".into(),
        target: Some(pb::Target {
            selector: Some(pb::target::Selector::Devices(pb::DeviceList {
                device_ids: vec!["nobody".into()],
            })),
            continuous: false,
        }),
        operations: vec![method_op(30)],
        schedule: Some(pb::Schedule {
            start_at_ms: Some(FAR_FUTURE_MS),
            max_execution_secs: None,
        }),
        ..Default::default()
    }
}

async fn create(ch: &AuthChannel, id: &str, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
    jobs(ch)
        .create_job(pb::CreateJobRequest {
            job_id: id.into(),
            spec: Some(spec),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get_job(ch: &AuthChannel, id: &str, stale_ok: bool) -> Result<pb::Job, tonic::Status> {
    jobs(ch)
        .get_job(pb::GetJobRequest {
            job_id: id.into(),
            stale_ok,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// [`get_job`], retried while the answer is UNAVAILABLE (for up to a minute): a linearizable
/// read is refused when the leader's one round of confirmation misses its majority, which
/// happens now and then on a loaded machine even with two of three members up.
async fn get_job_retry(
    ch: &AuthChannel,
    id: &str,
    stale_ok: bool,
) -> Result<pb::Job, tonic::Status> {
    let mut tries = 0;
    loop {
        match get_job(ch, id, stale_ok).await {
            Err(s) if s.code() == tonic::Code::Unavailable && tries < 300 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn stats(j: &pb::Job) -> pb::JobStats {
    j.stats.unwrap_or_default()
}

fn status(j: &pb::Job) -> pb::JobStatus {
    pb::JobStatus::try_from(j.status).unwrap_or(pb::JobStatus::Unspecified)
}

fn is_final(j: &pb::Job) -> bool {
    matches!(
        status(j),
        pb::JobStatus::Completed | pb::JobStatus::Failed | pb::JobStatus::Cancelled
    )
}

fn assert_stats_add_up(s: &pb::JobStats) {
    assert_eq!(
        s.pending + s.running + s.succeeded + s.failed + s.timed_out + s.cancelled,
        s.total,
        "{s:?}"
    );
}

/// Every device of the job's current run, as `node` has it (stale read when `stale_ok`).
async fn job_devices(ch: &AuthChannel, id: &str, stale_ok: bool) -> Vec<pb::JobDevice> {
    let mut out = Vec::new();
    let mut token = String::new();
    let mut tries = 0;
    loop {
        let req = pb::ListJobDevicesRequest {
            job_id: id.into(),
            run: None,
            status: 0,
            page_size: 1000,
            page_token: token.clone(),
            stale_ok,
        };
        let page = match jobs(ch).list_job_devices(req).await {
            Ok(p) => p.into_inner(),
            // See get_job_retry.
            Err(s) if s.code() == tonic::Code::Unavailable && tries < 300 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(s) => panic!("ListJobDevices: {s}"),
        };
        out.extend(page.devices);
        token = page.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

/// Every registered device as (id, twin version), from `ch`'s own state.
async fn registry(ch: &AuthChannel) -> Result<Vec<(String, u64)>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = devices(ch)
            .list_devices(pb::ListDevicesRequest {
                page_size: 1000,
                page_token: token,
                stale_ok: true,
            })
            .await?
            .into_inner();
        out.extend(page.devices.into_iter().map(|d| (d.device_id, d.version)));
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(out);
        }
    }
}

/// Every job as (id, status, stats), from `ch`'s own state.
async fn job_list(ch: &AuthChannel) -> Result<Vec<(String, i32, pb::JobStats)>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs(ch)
            .list_jobs(pb::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                stale_ok: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(
            page.jobs
                .into_iter()
                .map(|j| (j.job_id.clone(), j.status, stats(&j))),
        );
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(out);
        }
    }
}

/// How many registered devices the registry does not show connected (stale read).
async fn not_connected(ch: &AuthChannel) -> Option<usize> {
    let r = devices(ch)
        .query_devices(pb::QueryDevicesRequest {
            query: "SELECT * FROM devices WHERE connectionState != 'Connected'".into(),
            page_size: 1000,
            page_token: String::new(),
            ids_only: true,
            stale_ok: true,
        })
        .await
        .ok()?
        .into_inner();
    Some(r.device_ids.len())
}

fn registration(id: &str) -> pb::NewDevice {
    pb::NewDevice {
        device_id: id.into(),
        model_id: Some("dtmi:muster:simulated;1".into()),
        tags_json: json!({"site": "faults"}).to_string(),
        ..Default::default()
    }
}

/// Registers `ids` through `ch` in requests of `chunk`, retrying a request the cluster could not
/// take (an election); a retry that finds the devices already there counts as done.
async fn import(ch: &AuthChannel, ids: &[String], chunk: usize) {
    for part in ids.chunks(chunk) {
        let req = pb::ImportDevicesRequest {
            devices: part.iter().map(|id| registration(id)).collect(),
        };
        let mut tries = 0;
        loop {
            match devices(ch).import_devices(req.clone()).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists && tries > 0 => break,
                Err(s) if s.code() == tonic::Code::Unavailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!("ImportDevices: {s}"),
            }
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Keeps creating small jobs through `ch` until told to stop; collects the ids of those the
/// cluster acknowledged.
fn acknowledged_writer(
    ch: AuthChannel,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let id = format!("{prefix}-{i:05}");
            i += 1;
            if create(&ch, &id, later_job()).await.is_ok() {
                acked.push(id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_job_new_leader_finishes_it_with_one_outcome_per_device() {
    // Longer Raft timeouts than the defaults (heartbeat 100 ms, election 300-600 ms): openraft
    // 0.9 gives an AppendEntries exactly one heartbeat interval to complete, and with a debug
    // build on a shared 2-core machine, entries of 1,000 results or presence changes, sent up
    // to 300 at a time, do not make it in 100 ms; the followers then miss heartbeats and keep
    // calling elections (see the test below). This test is about what a failover preserves,
    // not how fast it is: `benches/benches/failover.rs` measures that with the defaults.
    leader_killed_mid_job("heartbeat_ms = 500\nelection_min_ms = 2000\nelection_max_ms = 4000\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "default Raft timeouts (election 300-600 ms) on a debug build on a loaded 2-core machine: \
            heartbeats are delayed past the election timeout and elections repeat; with 16 entries \
            per AppendEntries the 20k presence storm now passes (10 s, was 123 s) but the job \
            creation can still find no leader for 10 s; run by hand on a quiet machine"]
async fn leader_killed_mid_job_with_default_raft_timeouts() {
    leader_killed_mid_job("").await;
}

/// Three nodes started with `args`, every one ready; with the leader's index and a gRPC channel
/// to each node.
async fn ready_cluster(args: &[&str]) -> (TestCluster, usize, Vec<AuthChannel>) {
    let cluster = TestCluster::start(3, args).unwrap();
    let leader = cluster.leader().await.unwrap();
    let mut chans = Vec::new();
    for node in &cluster.nodes {
        node.wait_ready().await.unwrap();
        chans.push(channel(node).await);
    }
    (cluster, leader, chans)
}

/// The 20,000-device failover scenario, the nodes configured by the TOML text `config`.
async fn leader_killed_mid_job(config: &str) {
    let n = fleet_size();
    let url = muster_tests::mqtt_url();
    let conf_dir = data_dir().unwrap();
    let conf = conf_dir.path().join("node.toml");
    std::fs::write(&conf, config).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let (mut cluster, leader, chans) =
        ready_cluster(&["--mqtt-url", &url, "--config", &conf]).await;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    let prefix = format!("cf-kill-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![url.clone()],
        devices: n,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        // Answers take 0.5-1 s, so devices are in flight whenever the leader dies: the new
        // leader has to resend their attempts (same rid: the device answers from its cache).
        latency_ms: 500,
        jitter_ms: 500,
        ready_timeout_ms: 300_000,
        ..FleetConfig::default()
    };
    let ids = cfg.device_ids().to_vec();

    let t = Instant::now();
    import(&chans[leader], &ids, 1_000).await;
    eprintln!("registered {n} devices in {}", secs(t.elapsed()));
    let t = Instant::now();
    let fleet = Fleet::start(cfg).await.unwrap();
    let lch = chans[leader].clone();
    wait_for_long(&format!("{n} devices connected"), LONG, || {
        let lch = lch.clone();
        async move { not_connected(&lch).await == Some(0) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!(
        "registry shows {n} devices connected after {}",
        secs(t.elapsed())
    );

    // The job, created through a follower (forwarded to the leader), ten batches; long response
    // timeouts, so what is checked is exactly-once outcomes across the failover, not timeouts.
    let batch = (n as u32 / 10).max(1);
    create(&chans[f1], "fleet-update", fleet_job(batch, 600))
        .await
        .unwrap();
    let t_job = Instant::now();
    // Acknowledged writes through the other follower, before, during and after the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = acknowledged_writer(chans[f2].clone(), "ack", stop.clone());

    // Mid-way: a quarter of the devices done, the job still running.
    let last = Mutex::new(pb::JobStats::default());
    wait_for_long("a quarter of the fleet to succeed", LONG, || async {
        let Ok(j) = get_job(&chans[f1], "fleet-update", true).await else {
            return false;
        };
        *last.lock().unwrap() = stats(&j);
        stats(&j).succeeded >= n as u64 / 4
    })
    .await
    .unwrap_or_else(|e| panic!("{e} ({:?})\n{}", last.lock().unwrap(), cluster.logs()));
    let before = stats(&get_job(&chans[leader], "fleet-update", true).await.unwrap());
    assert!(
        before.succeeded < n as u64,
        "the job finished before the leader could be killed: {before:?}"
    );

    cluster.nodes[leader].kill9().unwrap();
    let t_kill = Instant::now();
    let new_leader = cluster.leader_among(&[f1, f2]).await.unwrap();
    let elected = t_kill.elapsed();
    let nch = chans[new_leader].clone();
    let base = stats(&get_job(&nch, "fleet-update", true).await.unwrap()).succeeded;
    let moved = Mutex::new(0u64);
    wait_for_long("the new leader to record device results", LONG, || async {
        let Ok(j) = get_job(&nch, "fleet-update", true).await else {
            return false;
        };
        *moved.lock().unwrap() = stats(&j).succeeded;
        stats(&j).succeeded > base || is_final(&j)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let resumed = t_kill.elapsed();
    eprintln!(
        "leader (node {}) killed with {} of {n} succeeded and {} in flight: new leader node {} \
         known after {}, first new result recorded after {}",
        leader + 1,
        before.succeeded,
        before.running,
        new_leader + 1,
        secs(elected),
        secs(resumed)
    );

    let final_job = Mutex::new(None);
    wait_for_long("the job to end", LONG, || async {
        match get_job(&nch, "fleet-update", true).await {
            Ok(j) if is_final(&j) => {
                *final_job.lock().unwrap() = Some(j);
                true
            }
            _ => false,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!(
        "job of {n} devices ended {} after it was created",
        secs(t_job.elapsed())
    );
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();

    // Linearizable from here on.
    let job = get_job_retry(&nch, "fleet-update", false).await.unwrap();
    assert_eq!(status(&job), pb::JobStatus::Completed, "{job:?}");
    let s = stats(&job);
    assert_stats_add_up(&s);
    assert_eq!((s.total, s.succeeded), (n as u64, n as u64), "{s:?}");
    for b in &job.batches {
        let bs = b.stats.unwrap_or_default();
        assert_stats_add_up(&bs);
        assert_eq!(bs.succeeded, bs.total, "batch {}: {bs:?}", b.index);
    }

    // Each device exactly once, with one final outcome from its one attempt: a resend by the
    // new leader carries the same rid, and the device answers it from its cache.
    let per_device = job_devices(&nch, "fleet-update", false).await;
    assert_eq!(per_device.len(), n);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &per_device {
        *seen.entry(d.device_id.as_str()).or_default() += 1;
        assert_eq!(
            pb::DeviceStatus::try_from(d.status).unwrap(),
            pb::DeviceStatus::Succeeded,
            "{d:?}"
        );
        assert_eq!(d.attempts, 1, "{d:?}");
        assert!(d.finished_at_ms.is_some(), "{d:?}");
    }
    assert!(seen.values().all(|&c| c == 1));
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), want);
    let fs = fleet.stats();
    assert_eq!(
        fs.requests_received - fs.duplicates,
        n as u64,
        "a device ran the method twice (or never): {fs:?}"
    );
    eprintln!(
        "fleet: {} requests, {} recognised as repeats",
        fs.requests_received, fs.duplicates
    );

    // No acknowledged write is lost.
    assert!(!acked.is_empty());
    for id in &acked {
        get_job_retry(&nch, id, false)
            .await
            .unwrap_or_else(|e| panic!("acknowledged job {id} lost after the failover: {e}"));
    }

    // The killed node restarts from its data directory and catches up.
    let t = Instant::now();
    cluster.nodes[leader].restart().unwrap();
    let back = channel(&cluster.nodes[leader]).await;
    let want_job = (status(&job), s);
    wait_for_long("the restarted node to catch up", LONG, || async {
        match get_job(&back, "fleet-update", true).await {
            Ok(j) => (status(&j), stats(&j)) == want_job,
            Err(_) => false,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.nodes[leader].log_text()));
    eprintln!("the restarted node caught up after {}", secs(t.elapsed()));
    let summary = |v: Vec<pb::JobDevice>| {
        v.into_iter()
            .map(|d| (d.device_id, d.status, d.attempts, d.finished_at_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(job_devices(&back, "fleet-update", true).await),
        summary(per_device),
        "the restarted node's per-device outcomes differ from the leader's"
    );
    for id in &acked {
        get_job(&back, id, true)
            .await
            .unwrap_or_else(|e| panic!("{id} missing on the restarted node: {e}"));
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_stopped_past_a_snapshot_installs_it_and_converges() {
    // Snapshots every 200 entries; openraft keeps 1,000 entries behind the last one.
    let conf_dir = data_dir().unwrap();
    let conf = conf_dir.path().join("node.toml");
    std::fs::write(&conf, "snapshot_after = 200\n").unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let (mut cluster, leader, chans) = ready_cluster(&["--config", &conf]).await;
    let f = (leader + 1) % 3;
    let (lch, fch) = (chans[leader].clone(), chans[f].clone());

    let first: Vec<String> = (0..10).map(|i| format!("early-{i:04}")).collect();
    import(&lch, &first, 1).await;
    wait_for("the follower to have the first devices", || async {
        registry(&fch).await.map(|r| r.len()).unwrap_or(0) == first.len()
    })
    .await
    .unwrap();

    // Freeze the follower; write well past snapshot + kept log: 1,600 entries.
    cluster.nodes[f].signal("STOP").unwrap();
    // A job that finishes while the follower is frozen: its rows reach the follower only as
    // the cold rows the snapshot carries.
    let finished = finish_twin_job(&cluster.nodes[leader], "cold-rows", &first).await;
    let t = Instant::now();
    let later: Vec<String> = (0..1_600).map(|i| format!("late-{i:05}")).collect();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let part: Vec<String> = later.iter().skip(w).step_by(8).cloned().collect();
        let lch = lch.clone();
        tasks.push(tokio::spawn(async move { import(&lch, &part, 1).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..3 {
        create(&lch, &format!("while-stopped-{i}"), later_job())
            .await
            .unwrap();
    }
    eprintln!(
        "{} entries written while the follower was stopped, in {}",
        later.len() + 3,
        secs(t.elapsed())
    );

    cluster.nodes[f].signal("CONT").unwrap();
    let t = Instant::now();
    let want = first.len() + later.len();
    wait_for_long(
        "the resumed follower to converge",
        Duration::from_secs(180),
        || async { registry(&fch).await.map(|r| r.len()).unwrap_or(0) == want },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!("the resumed follower converged after {}", secs(t.elapsed()));

    // Same state: the registry and the jobs, read from each node's own state.
    let lead_now = cluster.leader().await.unwrap();
    let lead_ch = channel(&cluster.nodes[lead_now]).await;
    wait_for("the follower's jobs to match the leader's", || async {
        let (a, b) = (job_list(&fch).await, job_list(&lead_ch).await);
        matches!((a, b), (Ok(a), Ok(b)) if a == b && a.len() == 4)
    })
    .await
    .unwrap();
    assert_eq!(
        registry(&fch).await.unwrap(),
        registry(&lead_ch).await.unwrap()
    );

    // The finished job's devices (cold rows) read the same on the follower as on the leader.
    assert_eq!(
        finished_rows(&cluster.nodes[f], &fch, "cold-rows").await,
        finished,
        "the finished job's devices differ on the follower seeded by a snapshot"
    );

    // It got there through a snapshot, and then back-filled the events before it from the
    // others (see `history_backfill.rs`): once that is done its log verifies from seq 1.
    assert!(
        cluster.nodes[f].log_text().contains("installed a snapshot"),
        "the follower caught up from the log, not from a snapshot\n{}",
        cluster.logs()
    );
    wait_for_long(
        "the follower's history back-fill",
        Duration::from_secs(120),
        || async { cluster.nodes[f].log_text().contains("back-fill complete") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(cluster.nodes[f].terminate().unwrap());
    let out = muster_tests::muster_cmd()
        .unwrap()
        .args(["audit", "verify", "--data-dir"])
        .arg(cluster.nodes[f].data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "audit verify on the follower: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_seq: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ok: seqs "))
        .and_then(|r| r.split("..").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected audit verify output: {text}"));
    eprintln!("follower's audit verify: {}", text.trim());
    // It installed a snapshot (above) and then back-filled the history before it.
    assert_eq!(first_seq, 1, "{text}");
    // The snapshot it installed is kept as one file of the binary format, received in chunks.
    let files: Vec<_> = std::fs::read_dir(cluster.nodes[f].data_dir().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(&bytes[..8], b"MUSTSNAP");

    // And again after the follower restarts from its data directory.
    cluster.nodes[f].restart().unwrap();
    let fch = channel(&cluster.nodes[f]).await;
    assert_eq!(
        finished_rows(&cluster.nodes[f], &fch, "cold-rows").await,
        finished,
        "the finished job's devices differ on the restarted follower"
    );
}

/// Creates an IoT Hub twin job over `registered` plus two unregistered ids (which fail
/// `DeviceNotFound`) on `node`, waits for it to complete, and returns its devices as every
/// reader shows them ([`finished_rows`]).
async fn finish_twin_job(node: &Server, id: &str, registered: &[String]) -> FinishedRows {
    let mut ids = registered.to_vec();
    ids.extend(["ghost-1".to_string(), "ghost-2".to_string()]);
    let (code, body, _) = put_within(
        format!("{}/jobs/v2/{id}?{HUB}", node.rest),
        json!({
            "jobId": id,
            "type": "scheduleUpdateTwin",
            "updateTwin": {"properties": {"desired": {"fw": "cold"}}},
            "deviceIds": ids,
        }),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let ch = channel(node).await;
    wait_for("the twin job to complete", || async {
        get_job(&ch, id, false)
            .await
            .is_ok_and(|j| status(&j) == pb::JobStatus::Completed)
    })
    .await
    .unwrap();
    let rows = finished_rows(node, &ch, id).await;
    assert_eq!(rows.grpc.len(), registered.len() + 2, "{rows:?}");
    rows
}

/// A finished job's devices through REST (IoT Central's list with details, two per page),
/// gRPC `ListJobDevices` and the IoT Hub `devices.jobs` query.
#[derive(Debug, PartialEq)]
struct FinishedRows {
    rest: Vec<Value>,
    grpc: Vec<pb::JobDevice>,
    query: Vec<Value>,
}

async fn finished_rows(node: &Server, ch: &AuthChannel, id: &str) -> FinishedRows {
    let c = reqwest::Client::new();
    let mut rest = Vec::new();
    let mut url = format!(
        "{}/api/jobs/{id}/devices?api-version=2022-07-31&maxpagesize=2&details=true",
        node.rest
    );
    loop {
        let page: Value = c
            .get(&url)
            .header("authorization", admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rest.extend(page["value"].as_array().cloned().unwrap_or_default());
        match page["nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    let query: Value = c
        .post(format!("{}/devices/query?{HUB}", node.rest))
        .header("authorization", admin_token())
        .json(&json!({"query": format!("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{id}'")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    FinishedRows {
        rest,
        grpc: job_devices(ch, id, false).await,
        query: query.as_array().cloned().unwrap_or_default(),
    }
}

/// `PUT` on the REST gateway with a client-side limit, so a request that hangs fails the test.
async fn put_within(url: String, body: Value, limit: Duration) -> (u16, Value, Duration) {
    let c = reqwest::Client::builder().timeout(limit).build().unwrap();
    let t = Instant::now();
    let r = c
        .put(url)
        .header("authorization", admin_token())
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the write was neither accepted nor refused: {e}"));
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, v, t.elapsed())
}

fn hub_later_job(id: &str) -> Value {
    json!({
        "jobId": id,
        "type": "scheduleDeviceMethod",
        "cloudToDeviceMethod": {"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30},
        "deviceIds": ["nobody"],
        "startTime": "2099-01-01T00:00:00Z",
        "maxExecutionTimeInSeconds": 3600
    })
}

/// Whether job `id` exists, read linearizably through `ch` (retried through elections).
async fn exists(ch: &AuthChannel, id: &str) -> bool {
    let mut last = String::new();
    for _ in 0..100 {
        match get_job(ch, id, false).await {
            Ok(_) => return true,
            Err(s) if s.code() == tonic::Code::NotFound => return false,
            Err(s) => last = s.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot read job {id}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_refuses_writes() {
    let limit = Duration::from_secs(120);
    let (cluster, leader, chans) = ready_cluster(&[]).await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    create(&chans[leader], "before", later_job()).await.unwrap();

    // 1. The leader alone: both followers frozen.
    cluster.nodes[a].signal("STOP").unwrap();
    cluster.nodes[b].signal("STOP").unwrap();
    // Until the leader notices it has lost its majority (no acknowledgement from one for a few
    // election timeouts), a write is appended and waits for a commit that cannot come; it is
    // refused after 30 s as "may or may not take effect", and may indeed be committed if this
    // node still leads when the others return. Wait until a linearizable read is refused for
    // that reason: from then on writes are refused before anything is appended.
    wait_for("the leader to notice it lost its majority", || async {
        let read = get_job(&chans[leader], "before", false);
        matches!(
            tokio::time::timeout(Duration::from_secs(3), read).await,
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable
                && s.message().contains("has not heard from a majority")
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    let url = format!("{}/jobs/v2/refused-rest?{HUB}", cluster.nodes[leader].rest);
    let (code, body, took) = put_within(url, hub_later_job("refused-rest"), limit).await;
    assert_eq!(code, 503, "{body}");
    let (code, message) = muster_tests::error_of(&body).unwrap();
    assert_eq!(code, "ServiceUnavailable", "{body}");
    assert!(!message.is_empty(), "{body}");
    eprintln!(
        "REST write on the isolated leader refused in {}: {body}",
        secs(took)
    );

    let t = Instant::now();
    let refused = tokio::time::timeout(limit, create(&chans[leader], "refused-grpc", later_job()))
        .await
        .expect("the gRPC write was neither accepted nor refused")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("majority"), "{refused}");
    eprintln!(
        "gRPC write on the isolated leader refused in {}: {}",
        secs(t.elapsed()),
        refused.message()
    );
    // Reads that accept staleness are still served by the isolated node.
    get_job(&chans[leader], "before", true).await.unwrap();

    cluster.nodes[a].signal("CONT").unwrap();
    cluster.nodes[b].signal("CONT").unwrap();
    cluster.leader().await.unwrap();
    // Refused before anything was appended: not there, on any node.
    for ch in &chans {
        assert!(
            !exists(ch, "refused-rest").await,
            "a refused write took effect"
        );
        assert!(
            !exists(ch, "refused-grpc").await,
            "a refused write took effect"
        );
    }
    // Retried, it succeeds (any node: followers forward).
    let mut retried = false;
    for _ in 0..100 {
        match create(&chans[a], "refused-grpc", later_job()).await {
            Ok(_) => {
                retried = true;
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("retried write: {s}"),
        }
    }
    assert!(retried, "the retried write never succeeded");
    for ch in &chans {
        assert!(exists(ch, "refused-grpc").await);
        assert!(exists(ch, "before").await);
    }

    // 2. A follower alone: the leader and the other follower frozen. The follower forwards the
    // write to the leader it knew, which does not answer; it is refused when the forward times
    // out. The refusal says the write may or may not take effect: it may sit in the frozen
    // leader's socket and be executed when it resumes.
    let leader = cluster.leader().await.unwrap();
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.nodes[leader].signal("STOP").unwrap();
    cluster.nodes[other].signal("STOP").unwrap();
    let t = Instant::now();
    let refused = tokio::time::timeout(limit, create(&chans[f], "refused-follower", later_job()))
        .await
        .expect("the write on the isolated follower was neither accepted nor refused")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    eprintln!(
        "gRPC write on the isolated follower refused in {}: {}",
        secs(t.elapsed()),
        refused.message()
    );
    let (code, body, took) = put_within(
        format!(
            "{}/jobs/v2/refused-follower-rest?{HUB}",
            cluster.nodes[f].rest
        ),
        hub_later_job("refused-follower-rest"),
        limit,
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(muster_tests::error_of(&body).is_some(), "{body}");
    eprintln!(
        "REST write on the isolated follower refused in {}: {body}",
        secs(took)
    );
    cluster.nodes[leader].signal("CONT").unwrap();
    cluster.nodes[other].signal("CONT").unwrap();
    cluster.leader().await.unwrap();
    for id in ["refused-follower", "refused-follower-rest"] {
        let there = exists(&chans[f], id).await;
        eprintln!(
            "{id}: refused (\"may or may not take effect\"), {} after the cluster healed",
            if there { "present" } else { "absent" }
        );
        // Retried: created, or already there from the first attempt (not a duplicate).
        match create(&chans[f], id, later_job()).await {
            Ok(_) => assert!(!there),
            Err(s) if s.code() == tonic::Code::AlreadyExists => assert!(there, "{s}"),
            Err(s) => panic!("retry of {id}: {s}"),
        }
        for ch in &chans {
            assert!(exists(ch, id).await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_frozen_leader_is_refused_once_another_leads() {
    let limit = Duration::from_secs(120);
    // Elections after 2-4 s of silence: the follower still forwards to the frozen leader when
    // the write is sent right after the freeze.
    let (cluster, leader, chans) = ready_cluster(&[
        "--heartbeat-ms",
        "500",
        "--election-min-ms",
        "2000",
        "--election-max-ms",
        "4000",
    ])
    .await;
    let f = (leader + 1) % 3;
    create(&chans[f], "before-freeze", later_job())
        .await
        .unwrap();

    cluster.nodes[leader].signal("STOP").unwrap();
    let t = Instant::now();
    // A linearizable read sent at the same time is asked again of the new leader.
    let read = tokio::spawn({
        let ch = chans[f].clone();
        async move { get_job(&ch, "before-freeze", false).await }
    });
    let refused = tokio::time::timeout(limit, create(&chans[f], "during-freeze", later_job()))
        .await
        .expect("the forwarded write was neither accepted nor refused")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    // Only the early refusal names the new leader; the forward timeout says "no answer within".
    assert!(refused.message().contains("leads now"), "{refused}");
    assert!(
        refused
            .message()
            .contains("may or may not have taken effect"),
        "{refused}"
    );
    eprintln!(
        "write forwarded to the frozen leader refused in {}: {}",
        secs(t.elapsed()),
        refused.message()
    );
    let read = tokio::time::timeout(limit, read)
        .await
        .expect("the read was neither answered nor refused")
        .unwrap();
    assert!(
        read.is_ok(),
        "the read through the follower failed: {read:?}"
    );
    // The new leader takes writes through the same follower.
    wait_for(
        "a write through the follower after the failover",
        || async {
            create(&chans[f], "after-freeze", later_job()).await.is_ok()
                || exists(&chans[f], "after-freeze").await
        },
    )
    .await
    .unwrap();

    cluster.nodes[leader].signal("CONT").unwrap();
    cluster.leader().await.unwrap();
    // Whether the refused write took effect, every node says the same once the old leader is
    // back (it has to learn it was deposed and drop or keep the entry as the new leader says).
    let mut seen = BTreeSet::new();
    for ch in &chans {
        wait_for("each node to serve reads again", || async {
            get_job(ch, "after-freeze", false).await.is_ok()
        })
        .await
        .unwrap();
        seen.insert(exists(ch, "during-freeze").await);
    }
    assert_eq!(seen.len(), 1, "the nodes disagree about the refused write");
    eprintln!(
        "during-freeze: refused as \"may or may not have taken effect\", {} after the cluster healed",
        if seen.contains(&true) { "present" } else { "absent" }
    );
}

/// Issue 16: a desired patch committed while its device is offline is pushed by a leader
/// elected after the one that took the patch was killed, because pushes are derived from state
/// (`Action::PushDesired`) and recorded (`MarkDesiredSent`), not remembered by a dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_patch_reaches_its_device_after_the_leader_is_killed() {
    let url = muster_tests::mqtt_url();
    let conf_dir = data_dir().unwrap();
    let conf = conf_dir.path().join("node.toml");
    std::fs::write(
        &conf,
        "heartbeat_ms = 500\nelection_min_ms = 2000\nelection_max_ms = 4000\n",
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let (mut cluster, leader, chans) =
        ready_cluster(&["--mqtt-url", &url, "--config", &conf]).await;
    let survivor = (leader + 1) % 3;
    let prefix = format!("cf-push-{}", std::process::id());
    let cfg = FleetConfig {
        brokers: vec![url.clone()],
        devices: 1,
        prefix: prefix.clone(),
        client_id_prefix: format!("muster-e2e-{prefix}"),
        ..FleetConfig::default()
    };
    let id = cfg.device_ids()[0].clone();
    import(&chans[leader], std::slice::from_ref(&id), 1).await;
    let connection = |ch: AuthChannel, id: String| async move {
        devices(&ch)
            .get_device(pb::GetDeviceRequest {
                device_id: id,
                stale_ok: true,
            })
            .await
            .ok()
            .map(|d| d.into_inner())
    };
    // Online once, then offline: the registry knows it is disconnected.
    let fleet = Fleet::start(cfg.clone()).await.unwrap();
    wait_for("the device online", || {
        let (ch, id) = (chans[leader].clone(), id.clone());
        async move {
            connection(ch, id)
                .await
                .is_some_and(|d| d.connection == pb::ConnectionState::Connected as i32)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    fleet.shutdown().await;
    wait_for("the device offline", || {
        let (ch, id) = (chans[leader].clone(), id.clone());
        async move {
            connection(ch, id)
                .await
                .is_some_and(|d| d.connection == pb::ConnectionState::Disconnected as i32)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // The patch is committed; nobody is there to take it. Then the leader dies.
    devices(&chans[leader])
        .update_twin(pb::UpdateTwinRequest {
            device_id: id.clone(),
            desired_json: Some(json!({"interval": 42}).to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.nodes[leader].kill9().unwrap();
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    cluster
        .leader_among(&alive)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The device comes back and gets the patch from the new leader (devsim reports it back).
    let fleet = Fleet::start(cfg).await.unwrap();
    wait_for_long("the device to report the pushed patch", LONG, || {
        let ch = chans[survivor].clone();
        let id = id.clone();
        async move {
            connection(ch, id).await.is_some_and(|d| {
                serde_json::from_str::<Value>(&d.reported_json).is_ok_and(|r| r["interval"] == 42)
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    fleet.shutdown().await;
}
