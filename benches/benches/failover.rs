//! Failover time of a three-node cluster (issue 5): from `kill -9` of the leader while a method
//! job runs to (a) a new leader known, (b) the first device result recorded by the new leader
//! (dispatch resumed), (c) the first client write accepted on a survivor.
//!
//! ```sh
//! cargo build --release -p muster-cli
//! cargo bench -p muster-benches --bench failover
//! ```
//!
//! Per trial: three `target/release/muster serve` processes (`--peers`, default election and
//! heartbeat settings: heartbeat 100 ms, election timeout 300-600 ms) on a Mosquitto the
//! harness starts (or `MUSTER_BENCH_MQTT_URL`), a simulated fleet (`muster_devsim::Fleet`, 50-150
//! ms to answer), a method job over every device in batches; once a fifth of the devices have
//! succeeded the leader is killed with SIGKILL. Meanwhile the harness
//! - polls every survivor's `GET /readyz` every 10 ms: (a) is when one says it leads;
//! - keeps creating small jobs through a survivor, one after another: (c) is when the first one
//!   *sent after the kill* is acknowledged;
//! - after the job completes, reads every device's `finished_at` (stamped by the leader that
//!   recorded the result, on the same host's clock): (b) is the earliest one after the kill.
//!
//! `MUSTER_BENCH_TRIALS` (default 5), `MUSTER_BENCH_DEVICES` (default 5000). Without `--bench`
//! (as `cargo test --benches` runs it) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use muster_benches::auth::AuthChannel;
use muster_benches::procs::{self, Broker};
use muster_benches::{median, method_job};
use muster_devsim::{Fleet, FleetConfig};
use muster_domain::{BatchSize, Schedule};
use muster_proto::pb;
use muster_proto::pb::device_service_client::DeviceServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;

const JOB: &str = "failover";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn wait_connected(ch: AuthChannel) -> Result<()> {
    let mut client = DeviceServiceClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if procs::not_connected(&mut client).await?.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("devices not connected after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job(ch: &AuthChannel, stale_ok: bool) -> Result<pb::Job> {
    Ok(JobServiceClient::new(ch.clone())
        .get_job(pb::GetJobRequest {
            job_id: JOB.into(),
            stale_ok,
        })
        .await?
        .into_inner())
}

fn later_job() -> pb::JobSpec {
    let mut spec = method_job("SELECT * FROM devices WHERE deviceId = 'nobody'");
    spec.schedule = Schedule {
        start_at: Some(muster_types::Timestamp::from_millis(4_070_908_800_000)),
        max_execution_secs: None,
        window: None,
    };
    pb::JobSpec::from(&spec)
}

#[derive(Debug, Clone, Copy)]
struct Trial {
    elected_ms: f64,
    first_result_ms: f64,
    first_write_ms: f64,
}

async fn trial(bin: &std::path::Path, url: &str, devices: usize, n: usize) -> Result<Trial> {
    let mut nodes =
        procs::start_nodes(bin, 3, &["--mqtt-url".to_string(), url.to_string()]).await?;
    let leader = procs::leader(&nodes, Duration::from_secs(60)).await?;
    let mut chans = Vec::new();
    for node in &nodes {
        chans.push(node.channel().await?);
    }
    let cfg = FleetConfig {
        brokers: vec![url.to_string()],
        devices,
        prefix: format!("fo{n}"),
        client_id_prefix: format!("muster-bench-failover-{n}"),
        latency_ms: 50,
        jitter_ms: 100,
        ready_timeout_ms: 120_000,
        ..FleetConfig::default()
    };
    procs::import_devices(
        chans[leader].clone(),
        &cfg.device_ids(),
        None,
        "{}",
        Duration::from_secs(60),
    )
    .await?;
    let fleet = Fleet::start(cfg.clone()).await?;
    wait_connected(chans[leader].clone()).await?;

    let mut spec = method_job("SELECT * FROM devices");
    spec.rollout.batch = Some(BatchSize::Count((devices as u32 / 20).max(1)));
    JobServiceClient::new(chans[leader].clone())
        .create_job(pb::CreateJobRequest {
            job_id: JOB.into(),
            spec: Some(pb::JobSpec::from(&spec)),
        })
        .await
        .context("CreateJob")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = job(&chans[leader], true).await?.stats.unwrap_or_default();
        if s.succeeded >= devices as u64 / 5 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the job did not get going: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // A client writing through a survivor, one job after another.
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let writer = {
        let (ch, stop, killed_at) = (chans[survivors[0]].clone(), stop.clone(), killed_at.clone());
        tokio::spawn(async move {
            let mut client = JobServiceClient::new(ch);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                i += 1;
                let ok = client
                    .create_job(pb::CreateJobRequest {
                        job_id: format!("w-{i}"),
                        spec: Some(later_job()),
                    })
                    .await
                    .is_ok();
                let kill = *killed_at.lock().unwrap();
                if let Some(k) = kill {
                    if ok && sent > k {
                        return Some(k.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let kill_wall = wall_ms();
    let t_kill = Instant::now();
    nodes[leader].kill9();
    *killed_at.lock().unwrap() = Some(t_kill);
    let new_leader = procs::leader(&nodes, Duration::from_secs(60)).await?;
    let elected = t_kill.elapsed();

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let j = job(&chans[new_leader], true).await?;
        let status = pb::JobStatus::try_from(j.status).unwrap_or(pb::JobStatus::Unspecified);
        if status == pb::JobStatus::Completed {
            break;
        }
        if Instant::now() > deadline {
            bail!("the job did not complete after the failover: {:?}", j.stats);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_write = match tokio::time::timeout(Duration::from_secs(60), writer).await {
        Ok(Ok(Some(d))) => d,
        _ => bail!("no write was acknowledged after the kill"),
    };
    stop.store(true, Ordering::Relaxed);

    // The earliest result stamped after the kill was recorded by the new leader.
    let mut first_after: Option<i64> = None;
    for d in procs::job_devices(chans[new_leader].clone(), JOB).await? {
        if let Some(f) = d.finished_at_ms.filter(|f| *f >= kill_wall) {
            first_after = Some(first_after.map_or(f, |x| x.min(f)));
        }
    }
    let first_result = first_after.context("no result recorded after the kill")? - kill_wall;
    fleet.shutdown().await;
    drop(nodes);
    Ok(Trial {
        elected_ms: elected.as_secs_f64() * 1e3,
        first_result_ms: first_result as f64,
        first_write_ms: first_write.as_secs_f64() * 1e3,
    })
}

fn p90(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let i = ((xs.len() as f64 - 1.0) * 0.9).round() as usize;
    xs.get(i).copied().unwrap_or(f64::NAN)
}

async fn bench() -> Result<()> {
    let bin = procs::muster_binary()?;
    let trials = env_usize("MUSTER_BENCH_TRIALS", 5).max(1);
    let devices = env_usize("MUSTER_BENCH_DEVICES", 5_000).max(20);
    let (_broker, url) = Broker::from_env()?;
    println!(
        "failover: {trials} trial(s), 3 nodes, {devices} devices, broker {url}, load average {}",
        procs::loadavg()
    );
    let mut results = Vec::new();
    for n in 0..trials {
        let t = trial(&bin, &url, devices, n).await?;
        println!(
            "trial {n}: new leader after {:.0} ms, first result recorded by it after {:.0} ms, \
             first write acknowledged after {:.0} ms (load average {})",
            t.elected_ms,
            t.first_result_ms,
            t.first_write_ms,
            procs::loadavg()
        );
        results.push(t);
    }
    let col = |f: fn(&Trial) -> f64| results.iter().map(f).collect::<Vec<_>>();
    println!(
        "median / p90 of {trials}: new leader {:.0} / {:.0} ms; dispatch resumed (first result) \
         {:.0} / {:.0} ms; first write acknowledged {:.0} / {:.0} ms",
        median(col(|t| t.elected_ms)),
        p90(col(|t| t.elected_ms)),
        median(col(|t| t.first_result_ms)),
        p90(col(|t| t.first_result_ms)),
        median(col(|t| t.first_write_ms)),
        p90(col(|t| t.first_write_ms)),
    );
    Ok(())
}

fn main() {
    procs::harness_main(
        "failover: skipped (run it with cargo bench -p muster-benches --bench failover)",
        "failover harness failed",
        bench,
    );
}
