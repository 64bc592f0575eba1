//! Commands committed durably through the Raft-of-one on sled: what one node can take.
//!
//! `cargo bench -p muster-benches --bench commit` prints, for three runs and their median:
//! - CreateJob one at a time (each waits for its fsync): ops/s, p50 and p99 latency;
//! - CreateJob from 32 concurrent writers (group commit shares flushes): ops/s;
//! - device results, 1,000 per `RecordDeviceResults` entry, from 32 concurrent writers (`MUSTER_BENCH_WRITERS`):
//!   results/s (the goal: at least 50,000 per second);
//! - CreateJob over gRPC against a whole node (`muster_node::run` on loopback ports, with
//!   authentication: the administrator's SAS token on every call), one at a time: p50 and p99
//!   latency as a client sees it;
//! - three nodes (issue 5): the same device-results measurement on the leader of a three-member
//!   cluster of in-process `Cluster`s, each with its own sled directory and its Raft peer service
//!   on a loopback port (real gRPC between them), default Raft settings: a write returns once a
//!   majority has the entry durably and the leader has applied it.
//!
//! `MUSTER_BENCH_ONLY=one` or `=three` runs one of the two parts. `MUSTER_BENCH_SLED_CACHE_MIB`
//! gives the three nodes another sled page cache than the default (`sled_cache_mib`).
//!
//! Data goes to a temporary directory under `target/` (the real disk, not tmpfs); set
//! `MUSTER_BENCH_DIR` to measure another disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_benches::{
    median, method_job, percentile, procs, raft_of_one, register_fleet, start_job_on_all,
};
use muster_cluster::{now, Cluster, ClusterConfig, MusterNode, PeerService};
use muster_domain::{Command, DeviceResult, Outcome, TargetSelector};
use muster_types::{JobId, RunId};
use serde_json::json;

/// The `muster` binary's allocator, so the figures are what a node gets.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;
const SEQ_CREATES: usize = 300;
const CONC_CREATES: usize = 2_000;
const WRITERS: usize = 32;
const DEVICES: usize = 100_000;
const RESULTS_PER_ENTRY: usize = 1_000;
/// Concurrent writers of device results, i.e. `RecordDeviceResults` commands in flight.
///
/// With 4 (the dispatcher's default `max_result_proposals`) a three-node cluster on two cores
/// keeps only ~1.2 cores busy: each command waits for fsyncs on two nodes, and the throughput is
/// latency-bound. 32 fill the pipeline and measure what the cluster can commit.
/// `MUSTER_BENCH_WRITERS` sets another number.
fn result_writers() -> usize {
    std::env::var("MUSTER_BENCH_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(32)
}

/// Three in-process members of one cluster, each serving Raft on its own loopback port; returns
/// them with the leader first, and their peer servers: abort those before dropping the members,
/// so each store closes while the runtime still runs (a store dropped during the runtime's
/// teardown hung the bench at exit, BENCHMARKS.md session 18).
async fn three_nodes(
    dirs: &[tempfile::TempDir],
) -> (
    Vec<Cluster>,
    Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers: std::collections::BTreeMap<u64, String> =
        (1..=3u64).zip(addrs.iter().cloned()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let me = MusterNode {
            peer_addr: addrs[i].clone(),
            ..MusterNode::default()
        };
        let mut cfg = ClusterConfig::new(i as u64 + 1, dir.path().to_path_buf(), me);
        cfg.peers = peers.clone();
        if let Some(mib) = std::env::var("MUSTER_BENCH_SLED_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            cfg.sled_cache = mib * 1024 * 1024;
        }
        nodes.push(Cluster::start(cfg).await.unwrap());
    }
    let mut servers = Vec::new();
    for (l, c) in listeners.into_iter().zip(&nodes) {
        let server = tonic::transport::Server::builder()
            .add_service(PeerService::server(c.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
        servers.push(tokio::spawn(server));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = nodes.iter().position(Cluster::is_leader) {
            nodes.swap(0, i);
            // Every member knows the leader (the followers' records are written by then too).
            for n in &nodes {
                n.wait_for_leader(Duration::from_secs(30)).await.unwrap();
            }
            return (nodes, servers);
        }
        assert!(Instant::now() < deadline, "no leader among three nodes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bench_dir() -> tempfile::TempDir {
    procs::bench_dir().unwrap()
}

/// A job on one explicit device: what is measured is the commit path, not target resolution.
fn create(id: String) -> Command {
    let mut spec = method_job("SELECT * FROM devices");
    spec.target.selector = TargetSelector::Devices(vec![muster_benches::device("b", 1)]);
    Command::CreateJob {
        id: JobId::new(id).unwrap(),
        spec,
        at: now(),
    }
}

/// (ops/s, p50, p99) of sequential CreateJob.
async fn sequential_creates(c: &Cluster, run: usize) -> (f64, Duration, Duration) {
    let mut lat = Vec::with_capacity(SEQ_CREATES);
    let t0 = Instant::now();
    for i in 0..SEQ_CREATES {
        let t = Instant::now();
        c.write(create(format!("seq-{run}-{i}"))).await.unwrap();
        lat.push(t.elapsed());
    }
    let rate = SEQ_CREATES as f64 / t0.elapsed().as_secs_f64();
    (rate, percentile(&mut lat, 50.0), percentile(&mut lat, 99.0))
}

async fn concurrent_creates(c: &Cluster, run: usize) -> f64 {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..CONC_CREATES).step_by(WRITERS) {
                c.write(create(format!("conc-{run}-{i}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    CONC_CREATES as f64 / t0.elapsed().as_secs_f64()
}

/// Starts a job over the whole fleet and dispatches every device; then times recording one
/// result for each, `RESULTS_PER_ENTRY` per command.
async fn device_results(c: &Cluster, run: usize) -> f64 {
    let id = JobId::new(format!("results-{run}")).unwrap();
    let devices = start_job_on_all(c, &id).await;
    assert_eq!(devices.len(), DEVICES);
    for chunk in devices.chunks(10_000) {
        c.write(Command::MarkDispatched {
            job: id.clone(),
            run: RunId(0),
            devices: chunk.to_vec(),
            at: now(),
        })
        .await
        .unwrap();
    }
    let chunks: Vec<Vec<DeviceResult>> = devices
        .chunks(RESULTS_PER_ENTRY)
        .map(|ch| {
            ch.iter()
                .map(|d| DeviceResult {
                    job: id.clone(),
                    run: RunId(0),
                    device: d.clone(),
                    attempt: 1,
                    outcome: Outcome::Responded {
                        status: 200,
                        payload: json!({"ok": true}).into(),
                    },
                })
                .collect()
        })
        .collect();
    let chunks = Arc::new(std::sync::Mutex::new(chunks));
    // A mark for profiling only the timed part (attach a profiler when it appears).
    eprintln!("results phase starts");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..result_writers() {
        let (c, chunks) = (c.clone(), chunks.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = chunks.lock().unwrap().pop();
                let Some(results) = next else { return };
                c.write(Command::RecordDeviceResults { results, at: now() })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = DEVICES as f64 / t0.elapsed().as_secs_f64();
    let done = c.reader().read(|s| s.jobs[&id].stats().succeeded);
    assert_eq!(done, DEVICES as u64);
    rate
}

const GRPC_CREATES: usize = 500;

/// (p50, p99) of CreateJob over gRPC, through a whole node on loopback, authenticated with the
/// administrator's token (issue 13; `cargo bench --bench auth` compares with `--insecure`).
async fn grpc_creates(run: usize) -> (Duration, Duration) {
    use muster_benches::auth;
    use muster_proto::pb::job_service_client::JobServiceClient;
    use muster_proto::pb::CreateJobRequest;

    let node = procs::InProcessNode::start_on(&tokio::runtime::Handle::current(), false)
        .await
        .unwrap();
    let mut client = JobServiceClient::new(auth::with_credential(
        node.channel().await.unwrap(),
        Some(&auth::admin_token()),
    ));
    let spec = muster_proto::pb::JobSpec::from(&method_job("SELECT * FROM devices"));
    let mut lat = Vec::with_capacity(GRPC_CREATES);
    for i in 0..GRPC_CREATES {
        let req = CreateJobRequest {
            job_id: format!("grpc-{run}-{i}"),
            spec: Some(spec.clone()),
        };
        let t = Instant::now();
        client.create_job(req).await.unwrap();
        lat.push(t.elapsed());
    }
    node.stop().await.unwrap();
    (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a tiny smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if !full {
            let dir = bench_dir();
            let c = raft_of_one(dir.path()).await;
            c.write(create("smoke".into())).await.unwrap();
            c.shutdown().await;
            return;
        }
        let only = std::env::var("MUSTER_BENCH_ONLY").unwrap_or_default();
        if only != "one" {
            let mut res3 = vec![];
            for run in 0..RUNS {
                let dirs = [bench_dir(), bench_dir(), bench_dir()];
                let (nodes, servers) = three_nodes(&dirs).await;
                let t = Instant::now();
                register_fleet(&nodes[0], "b", DEVICES).await;
                let setup = t.elapsed();
                let r = device_results(&nodes[0], run).await;
                // The followers apply the same entries.
                for f in &nodes[1..] {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while f.reader().read(|s| {
                        s.jobs
                            .get(&JobId::new(format!("results-{run}")).unwrap())
                            .map(|j| j.stats().succeeded)
                    }) != Some(DEVICES as u64)
                    {
                        assert!(Instant::now() < deadline, "a follower did not catch up");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                println!(
                    "run {run}: three nodes: device results {r:.0}/s (registering {DEVICES} devices took {setup:?})"
                );
                for n in &nodes {
                    n.shutdown().await;
                }
                for s in servers {
                    s.abort();
                    let _ = s.await;
                }
                drop(nodes);
                res3.push(r);
            }
            println!(
                "median of {RUNS}: three nodes: device results {:.0}/s ({RESULTS_PER_ENTRY} per entry, {} writers)",
                median(res3),
                result_writers()
            );
            if only == "three" {
                return;
            }
        }
        let (mut seq, mut p50s, mut p99s, mut conc, mut res) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut g50s, mut g99s) = (vec![], vec![]);
        for run in 0..RUNS {
            let dir = bench_dir();
            let c = raft_of_one(dir.path()).await;
            register_fleet(&c, "b", DEVICES).await;
            let (rate, p50, p99) = sequential_creates(&c, run).await;
            let crate_ = concurrent_creates(&c, run).await;
            let r = device_results(&c, run).await;
            println!(
                "run {run}: CreateJob sequential {rate:.0}/s (p50 {p50:?}, p99 {p99:?}); \
                 CreateJob x{WRITERS} writers {crate_:.0}/s; device results {r:.0}/s"
            );
            c.shutdown().await;
            let (g50, g99) = grpc_creates(run).await;
            println!("run {run}: CreateJob over gRPC p50 {g50:?}, p99 {g99:?}");
            g50s.push(g50.as_secs_f64() * 1e3);
            g99s.push(g99.as_secs_f64() * 1e3);
            seq.push(rate);
            p50s.push(p50.as_secs_f64() * 1e3);
            p99s.push(p99.as_secs_f64() * 1e3);
            conc.push(crate_);
            res.push(r);
        }
        println!(
            "median of {RUNS}: CreateJob sequential {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; \
             CreateJob with {WRITERS} writers {:.0}/s; device results {:.0}/s \
             ({RESULTS_PER_ENTRY} per entry, {} writers); \
             CreateJob over gRPC p50 {:.2} ms, p99 {:.2} ms",
            median(seq),
            median(p50s),
            median(p99s),
            median(conc),
            median(res),
            result_writers(),
            median(g50s),
            median(g99s)
        );
    });
}
