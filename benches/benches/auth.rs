//! What authentication costs a request (issue 13): REST and gRPC latency with auth on vs
//! `--insecure`.
//!
//! ```sh
//! cargo bench -p muster-benches --bench auth
//! ```
//!
//! Per run (default 3, then medians), for each mode in turn (the order rotates between runs, so
//! each mode gets each slot): a whole node in this process (`muster_node::run`: REST, gRPC and a
//! Raft-of-one on sled under `target/bench-data`) on its own two-thread runtime, and a client on
//! this thread sending one request at a time over loopback:
//! - gRPC `CreateJob` (a job scheduled far in the future, so the leader has nothing to do with
//!   it) and REST `PUT /api/jobs/{id}` (IoT Central's shape, over a group selecting no device):
//!   `MUSTER_BENCH_WRITES` each (default 300); each waits for its fsync;
//! - gRPC `GetJob` and REST `GET /api/jobs/{id}`: `MUSTER_BENCH_READS` each (default 2000);
//!   gRPC `ListJobs` (20 a page) and REST `GET /api/jobs` (`maxpagesize=20`):
//!   `MUSTER_BENCH_LISTS` each (default 2000); linearizable reads;
//! - a new connection for each request: gRPC `Endpoint::connect` then one `GetJob` on it, and a
//!   REST `GET /api/jobs/{id}` from a client that keeps no idle connection: `MUSTER_BENCH_CONNECTS`
//!   each (default 200): what setting up a connection (TCP, and the TLS handshake with TLS) costs
//!   on top of the steady-state request. Every other operation reuses one gRPC channel and one
//!   pooled HTTP client per node (steady-state cost per request).
//!
//! p50, p99 and requests/s for each. The modes (`MUSTER_BENCH_MODES`, comma-separated):
//! - `insecure`: `--insecure`, no credential sent;
//! - `auth`: `--hostname` + `--admin-key-file`, the administrator's SAS token (`iothubowner`) on
//!   every request, the same token each time: after the first request the node's cache of
//!   verified tokens answers (what a client holding a token does);
//! - `auth-fresh`: like `auth`, but every request carries a token no request sent before (a
//!   different expiry), so each one is verified from scratch (HMAC-SHA256 against the policy's
//!   keys): the cost the cache saves. The tokens are made before the timed loop.
//!
//! Transports (`MUSTER_BENCH_TRANSPORTS`, comma-separated, default `plain,tls`), every mode
//! under each: see [`Transport`].
//!
//! `MUSTER_BENCH_RUNS` (default 3), `MUSTER_BENCH_DIR` (where node data goes). Without `--bench`
//! (as `cargo test --benches` runs it) it does one tiny pass of each mode as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use muster_benches::procs::{self, InProcessNode};
use muster_benches::{auth, median, method_job, percentile, tls};
use muster_domain::Schedule;
use muster_proto::pb;
use muster_proto::pb::job_service_client::JobServiceClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

/// The `muster` binary's allocator, so the figures are what a node gets.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// IoT Central's API version the REST requests name.
const V: &str = "api-version=2022-07-31";
/// Untimed requests of each kind before the timed ones (connections, caches, allocator).
const WARMUP: usize = 20;
const PAGE: u32 = 20;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Insecure,
    Auth,
    AuthFresh,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Insecure => "insecure",
            Mode::Auth => "auth",
            Mode::AuthFresh => "auth-fresh",
        }
    }

    fn parse(s: &str) -> Mode {
        match s.trim() {
            "insecure" => Mode::Insecure,
            "auth" => Mode::Auth,
            "auth-fresh" => Mode::AuthFresh,
            other => {
                panic!("MUSTER_BENCH_MODES: unknown mode {other:?} (insecure, auth, auth-fresh)")
            }
        }
    }
}

/// How the client reaches the node, on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    /// `http://`: HTTP/2 without TLS (gRPC), HTTP/1.1 (REST).
    Plain,
    /// `https://`: the node serves REST and client gRPC with a certificate `muster certs init`
    /// made (NodeConfig `tls.cert`/`tls.key`); the clients (rustls, ring) trust only its CA.
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
        }
    }

    fn parse(s: &str) -> Transport {
        match s.trim() {
            "plain" => Transport::Plain,
            "tls" => Transport::Tls,
            other => panic!("MUSTER_BENCH_TRANSPORTS: unknown transport {other:?} (plain, tls)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    GrpcCreateJob,
    GrpcGetJob,
    GrpcListJobs,
    RestPutJob,
    RestGetJob,
    RestListJobs,
    GrpcConnect,
    RestConnect,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::GrpcCreateJob,
        Op::GrpcGetJob,
        Op::GrpcListJobs,
        Op::RestPutJob,
        Op::RestGetJob,
        Op::RestListJobs,
        Op::GrpcConnect,
        Op::RestConnect,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::GrpcCreateJob => "gRPC CreateJob",
            Op::GrpcGetJob => "gRPC GetJob",
            Op::GrpcListJobs => "gRPC ListJobs",
            Op::RestPutJob => "REST PUT /api/jobs/{id}",
            Op::RestGetJob => "REST GET /api/jobs/{id}",
            Op::RestListJobs => "REST GET /api/jobs",
            Op::GrpcConnect => "gRPC connect + GetJob",
            Op::RestConnect => "REST connect + GET {id}",
        }
    }
}

/// Timed requests per operation.
#[derive(Debug, Clone, Copy)]
struct Counts {
    writes: usize,
    reads: usize,
    lists: usize,
    connects: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

/// Sends `n` requests one after another (`send(i)`), timing each.
async fn timed<F, Fut>(n: usize, mut send: F) -> Result<Sample>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        send(i).await?;
        lat.push(t.elapsed());
    }
    let rps = n as f64 / t0.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Sample {
        p50_us: us(percentile(&mut lat, 50.0)),
        p99_us: us(percentile(&mut lat, 99.0)),
        rps,
    })
}

/// The `Authorization` values of the next `n` requests in `mode`, made before they are timed.
struct Credentials {
    mode: Mode,
    token: String,
    /// `auth-fresh`: the expiry of the next token; each token gets its own.
    next_expiry: i64,
}

impl Credentials {
    fn new(mode: Mode) -> Credentials {
        Credentials {
            mode,
            token: auth::admin_token(),
            next_expiry: auth::expiry_in(86_400),
        }
    }

    fn take(&mut self, n: usize) -> Vec<Option<String>> {
        (0..n)
            .map(|_| match self.mode {
                Mode::Insecure => None,
                Mode::Auth => Some(self.token.clone()),
                Mode::AuthFresh => {
                    self.next_expiry += 1;
                    Some(auth::token_until(self.next_expiry))
                }
            })
            .collect()
    }
}

fn grpc_request<T>(msg: T, authorization: Option<&String>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = authorization.and_then(|a| tonic::metadata::MetadataValue::try_from(a).ok()) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

fn rest_request(
    req: reqwest::RequestBuilder,
    authorization: Option<&String>,
) -> reqwest::RequestBuilder {
    match authorization {
        Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
        None => req,
    }
}

async fn rest_send(req: reqwest::RequestBuilder) -> Result<()> {
    let r = req.send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// A job scheduled in 2099: created and stored, never started.
fn later_job() -> pb::JobSpec {
    let mut spec = method_job("SELECT * FROM devices WHERE deviceId = 'nobody'");
    spec.schedule = Schedule {
        start_at: Some(muster_types::Timestamp::from_millis(4_070_908_800_000)),
        max_execution_secs: None,
        window: None,
    };
    pb::JobSpec::from(&spec)
}

fn central_job() -> serde_json::Value {
    json!({
        "displayName": "bench",
        "group": "nobody",
        "data": [{"type": "CommandJobData", "target": "dtmi:muster:bench;1", "path": "reboot", "value": "1"}]
    })
}

struct Client {
    grpc: JobServiceClient<Channel>,
    /// New connections ([`Op::GrpcConnect`]).
    endpoint: Endpoint,
    http: reqwest::Client,
    /// A client keeping no idle connection ([`Op::RestConnect`]).
    http_fresh: reqwest::Client,
    rest: String,
    creds: Credentials,
}

impl Client {
    /// One timed phase of `n` requests of `op`; `tag` keeps the written job ids apart.
    async fn phase(&mut self, op: Op, n: usize, tag: &str) -> Result<Sample> {
        let auths = self.creds.take(n);
        let (grpc, http, rest) = (&self.grpc, &self.http, &self.rest);
        let (endpoint, http_fresh) = (&self.endpoint, &self.http_fresh);
        let s = match op {
            Op::GrpcCreateJob => {
                let spec = later_job();
                timed(n, |i| {
                    let req = grpc_request(
                        pb::CreateJobRequest {
                            job_id: format!("g-{tag}-{i}"),
                            spec: Some(spec.clone()),
                        },
                        auths[i].as_ref(),
                    );
                    let mut c = grpc.clone();
                    async move {
                        c.create_job(req).await?;
                        Ok(())
                    }
                })
                .await
            }
            Op::GrpcGetJob => {
                timed(n, |i| {
                    let req = grpc_request(
                        pb::GetJobRequest {
                            job_id: "g-warm-0".into(),
                            stale_ok: false,
                        },
                        auths[i].as_ref(),
                    );
                    let mut c = grpc.clone();
                    async move {
                        c.get_job(req).await?;
                        Ok(())
                    }
                })
                .await
            }
            Op::GrpcListJobs => {
                timed(n, |i| {
                    let req = grpc_request(
                        pb::ListJobsRequest {
                            page_size: PAGE,
                            ..Default::default()
                        },
                        auths[i].as_ref(),
                    );
                    let mut c = grpc.clone();
                    async move {
                        c.list_jobs(req).await?;
                        Ok(())
                    }
                })
                .await
            }
            Op::RestPutJob => {
                let body = central_job();
                timed(n, |i| {
                    rest_send(rest_request(
                        http.put(format!("{rest}/api/jobs/r-{tag}-{i}?{V}"))
                            .json(&body),
                        auths[i].as_ref(),
                    ))
                })
                .await
            }
            Op::RestGetJob => {
                timed(n, |i| {
                    rest_send(rest_request(
                        http.get(format!("{rest}/api/jobs/r-warm-0?{V}")),
                        auths[i].as_ref(),
                    ))
                })
                .await
            }
            Op::RestListJobs => {
                timed(n, |i| {
                    rest_send(rest_request(
                        http.get(format!("{rest}/api/jobs?{V}&maxpagesize={PAGE}")),
                        auths[i].as_ref(),
                    ))
                })
                .await
            }
            Op::GrpcConnect => {
                timed(n, |i| {
                    let req = grpc_request(
                        pb::GetJobRequest {
                            job_id: "g-warm-0".into(),
                            stale_ok: false,
                        },
                        auths[i].as_ref(),
                    );
                    let endpoint = endpoint.clone();
                    async move {
                        let mut c = JobServiceClient::new(endpoint.connect().await?);
                        c.get_job(req).await?;
                        Ok(())
                    }
                })
                .await
            }
            Op::RestConnect => {
                timed(n, |i| {
                    rest_send(rest_request(
                        http_fresh.get(format!("{rest}/api/jobs/r-warm-0?{V}")),
                        auths[i].as_ref(),
                    ))
                })
                .await
            }
        };
        s.with_context(|| op.name())
    }
}

/// One node in `mode`: every operation measured once.
async fn measure(
    node_rt: &tokio::runtime::Handle,
    mode: Mode,
    transport: Transport,
    certs: Option<&Path>,
    counts: Counts,
) -> Result<BTreeMap<Op, Sample>> {
    let certs = match transport {
        Transport::Plain => None,
        Transport::Tls => Some(certs.context("TLS without certificates")?),
    };
    let node = InProcessNode::start_tls_on(node_rt, mode == Mode::Insecure, certs).await?;
    let mut client = Client {
        grpc: JobServiceClient::new(node.channel().await?),
        endpoint: node.endpoint()?,
        http: node.http(None)?,
        http_fresh: tls::http_client(node.ca.as_deref(), None, false)?,
        rest: node.rest.clone(),
        creds: Credentials::new(mode),
    };
    // The group the REST jobs target: no device matches, so they complete at once.
    let auths = client.creds.take(1);
    rest_send(rest_request(
        client
            .http
            .put(format!("{}/api/deviceGroups/nobody?{V}", client.rest))
            .json(&json!({"displayName": "nobody", "filter": "SELECT * FROM devices WHERE deviceId = 'nobody'"})),
        auths[0].as_ref(),
    ))
    .await
    .context("PUT the bench group")?;
    for op in Op::ALL {
        client.phase(op, WARMUP, "warm").await?;
    }
    let mut out = BTreeMap::new();
    for op in Op::ALL {
        let n = match op {
            Op::GrpcCreateJob | Op::RestPutJob => counts.writes,
            Op::GrpcGetJob | Op::RestGetJob => counts.reads,
            Op::GrpcListJobs | Op::RestListJobs => counts.lists,
            Op::GrpcConnect | Op::RestConnect => counts.connects,
        };
        out.insert(op, client.phase(op, n, "t").await?);
    }
    node.stop().await?;
    Ok(out)
}

async fn bench(full: bool, node_rt: &tokio::runtime::Handle) -> Result<()> {
    let (runs, counts) = if full {
        (
            env_usize("MUSTER_BENCH_RUNS", 3),
            Counts {
                writes: env_usize("MUSTER_BENCH_WRITES", 300),
                reads: env_usize("MUSTER_BENCH_READS", 2000),
                lists: env_usize("MUSTER_BENCH_LISTS", 2000),
                connects: env_usize("MUSTER_BENCH_CONNECTS", 200),
            },
        )
    } else {
        (
            1,
            Counts {
                writes: 3,
                reads: 3,
                lists: 3,
                connects: 3,
            },
        )
    };
    let modes: Vec<Mode> = std::env::var("MUSTER_BENCH_MODES")
        .unwrap_or_else(|_| "insecure,auth,auth-fresh".into())
        .split(',')
        .map(Mode::parse)
        .collect();
    let mut transports: Vec<Transport> = std::env::var("MUSTER_BENCH_TRANSPORTS")
        .unwrap_or_else(|_| "plain,tls".into())
        .split(',')
        .map(Transport::parse)
        .collect();
    // The certificates every TLS node serves with, made once by the `muster` binary.
    let certs_dir = procs::bench_dir()?;
    if transports.contains(&Transport::Tls) {
        match procs::muster_binary() {
            Ok(bin) => tls::certs_init(&bin, certs_dir.path())?,
            // The smoke pass (`cargo test --benches`) may run before the binary is built.
            Err(e) if !full => {
                println!("auth bench: TLS skipped: {e:#}");
                transports.retain(|t| *t != Transport::Tls);
            }
            Err(e) => return Err(e.context("TLS needs `muster certs init`")),
        }
    }
    let columns: Vec<(Transport, Mode)> = transports
        .iter()
        .flat_map(|t| modes.iter().map(move |m| (*t, *m)))
        .collect();
    println!(
        "auth bench: {runs} runs, {counts:?} of each kind, modes {:?}, transports {:?}, load average {}",
        modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        transports.iter().map(|t| t.name()).collect::<Vec<_>>(),
        procs::loadavg()
    );
    let mut all: BTreeMap<(Transport, Mode, Op), Vec<Sample>> = BTreeMap::new();
    for run in 0..runs {
        for k in 0..columns.len() {
            let (transport, mode) = columns[(k + run) % columns.len()];
            let res = measure(node_rt, mode, transport, Some(certs_dir.path()), counts)
                .await
                .with_context(|| format!("{} {}", transport.name(), mode.name()))?;
            for (op, s) in res {
                println!(
                    "run {run} {:<5} {:<10} {:<24} p50 {:>7.0} µs  p99 {:>7.0} µs  {:>6.0} req/s",
                    transport.name(),
                    mode.name(),
                    op.name(),
                    s.p50_us,
                    s.p99_us,
                    s.rps
                );
                all.entry((transport, mode, op)).or_default().push(s);
            }
        }
        println!("  (load average {})", procs::loadavg());
    }
    println!(
        "\nmedian of {runs} runs: p50 / p99 µs, requests/s (loopback, one request at a time)\n"
    );
    let mut header = "| operation |".to_string();
    for (t, m) in &columns {
        header.push_str(&format!(" {} {} |", m.name(), t.name()));
    }
    println!("{header}");
    println!("|---|{}", "---|".repeat(columns.len()));
    for op in Op::ALL {
        let mut line = format!("| {} |", op.name());
        for (t, m) in &columns {
            let xs = &all[&(*t, *m, op)];
            let med = |f: fn(&Sample) -> f64| median(xs.iter().map(f).collect());
            line.push_str(&format!(
                " {:.0} / {:.0} µs, {:.0}/s |",
                med(|s| s.p50_us),
                med(|s| s.p99_us),
                med(|s| s.rps)
            ));
        }
        println!("{line}");
    }
    println!("\nraw p50s per run, µs\n");
    println!("{header}");
    println!("|---|{}", "---|".repeat(columns.len()));
    for op in Op::ALL {
        let mut line = format!("| {} |", op.name());
        for (t, m) in &columns {
            let xs: Vec<String> = all[&(*t, *m, op)]
                .iter()
                .map(|s| format!("{:.0}", s.p50_us))
                .collect();
            line.push_str(&format!(" {} |", xs.join(", ")));
        }
        println!("{line}");
    }
    println!("(load average {})", procs::loadavg());
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: a tiny smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    // The node gets two threads of its own (as the binary on this 2-vCPU machine); the client
    // sends one request at a time from this thread.
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("node")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = client_rt.block_on(bench(full, node_rt.handle())) {
        eprintln!("auth bench failed: {e:#}");
        std::process::exit(1);
    }
}
