//! Helpers shared by the benchmarks: fleets, specs and percentiles; [`auth`]: the credential
//! every bench node is started with; [`procs`]: the node and broker processes of the end-to-end
//! harnesses; [`tls`]: certificates and TLS clients.

pub mod procs;

use std::time::Duration;

use muster_domain::{
    DeviceRegistration, JobSpec, MethodCall, Operation, RetryPolicy, Rollout, Schedule, Target,
    TargetSelector,
};
use muster_types::DeviceId;
use serde_json::json;

/// A Raft-of-one `Cluster` on sled in `dir`, once it leads: the node the in-process benches
/// measure.
#[allow(clippy::expect_used)]
pub async fn raft_of_one(dir: &std::path::Path) -> muster_cluster::Cluster {
    use muster_cluster::{Cluster, ClusterConfig, MusterNode};
    let c = Cluster::start(ClusterConfig::new(
        1,
        dir.to_path_buf(),
        MusterNode::default(),
    ))
    .await
    .expect("start a node");
    c.wait_for_leader(Duration::from_secs(30))
        .await
        .expect("the node leads");
    c
}

/// Registers `n` devices `{prefix}-000000...` on `c`, 5,000 per command.
#[allow(clippy::expect_used)]
pub async fn register_fleet(c: &muster_cluster::Cluster, prefix: &str, n: usize) {
    use muster_domain::Command;
    for start in (0..n).step_by(5_000) {
        c.write(Command::RegisterDevices {
            devices: registrations(prefix, start..(start + 5_000).min(n)),
            upsert: false,
            at: muster_cluster::now(),
        })
        .await
        .expect("register the bench fleet");
    }
}

/// Creates a method job over every registered device on `c`, starts it (`Advance`) and returns
/// its devices in dispatch order; the caller dispatches and answers them as its measurement needs.
#[allow(clippy::expect_used)]
pub async fn start_job_on_all(
    c: &muster_cluster::Cluster,
    id: &muster_types::JobId,
) -> Vec<DeviceId> {
    use muster_cluster::now;
    use muster_domain::Command;
    c.write(Command::CreateJob {
        id: id.clone(),
        spec: method_job("SELECT * FROM devices"),
        at: now(),
    })
    .await
    .expect("create the bench job");
    c.write(Command::Advance { at: now() })
        .await
        .expect("start the bench job");
    c.reader().read(|s| {
        s.jobs
            .get(id)
            .map(|j| {
                j.current_run()
                    .devices
                    .iter()
                    .map(|d| d.device.clone())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// `{prefix}-{i:06}`, the simulator's naming. The benches pass fixed, valid prefixes.
#[allow(clippy::expect_used)]
pub fn device(prefix: &str, i: usize) -> DeviceId {
    DeviceId::new(format!("{prefix}-{i:06}")).expect("bench device prefixes are valid ids")
}

pub fn registrations(prefix: &str, range: std::ops::Range<usize>) -> Vec<DeviceRegistration> {
    range
        .map(|i| DeviceRegistration {
            id: device(prefix, i),
            display_name: String::new(),
            model_id: None,
            enabled: true,
            tags: json!({"site": "bench"}).into(),
        })
        .collect()
}

/// A method job over the devices a query selects, one batch, long timeouts.
pub fn method_job(query: &str) -> JobSpec {
    JobSpec {
        display_name: "bench".into(),
        description: String::new(),
        target: Target {
            selector: TargetSelector::Query(query.into()),
            continuous: false,
        },
        operations: vec![Operation::InvokeMethod(MethodCall {
            name: "reboot".into(),
            payload: json!({"delay": 1}),
            response_timeout_secs: 3600,
            connect_timeout_secs: 0,
        })],
        schedule: Schedule::default(),
        rollout: Rollout::default(),
        cancellation: None,
        retry: RetryPolicy::default(),
    }
}

/// The `p`th percentile (0..=100) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// The median of a few runs' figures.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Authentication (issue 13) as the benches use it, the same approach as `tests/lib.rs`: every
/// node a bench starts gets `--hostname` [`HOST`] and `--admin-key-file` holding [`ADMIN_KEY`], so
/// the harness holds the administrator's credential without reading it from a data directory,
/// and sends [`admin_token`] on every REST request ([`http`]) and gRPC call ([`with_credential`]).
pub mod auth {
    use std::path::Path;

    /// The host name SAS tokens are signed for (`--hostname`, NodeConfig `hostname`).
    pub const HOST: &str = "muster.bench";

    /// The `iothubowner` primary key of every bench node's new cluster (base64 of 32 bytes).
    pub const ADMIN_KEY: &str = "bXVzdGVyLWJlbmNoLWFkbWluLWtleS0wMTIzNDU2Nzg=";

    /// Unix seconds `secs` from now.
    pub fn expiry_in(secs: i64) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            + secs
    }

    /// A SAS token for `iothubowner` on [`HOST`] expiring at `expiry` (Unix seconds).
    pub fn token_until(expiry: i64) -> String {
        muster_domain::auth::sign(HOST, ADMIN_KEY, "iothubowner", expiry).unwrap_or_default()
    }

    /// The administrator's SAS token, valid a day.
    pub fn admin_token() -> String {
        token_until(expiry_in(86_400))
    }

    /// Writes [`ADMIN_KEY`] to `dir/admin.key` and returns the `muster serve` flags that use it.
    pub fn serve_args(dir: &Path) -> std::io::Result<Vec<String>> {
        let key = dir.join("admin.key");
        std::fs::write(&key, ADMIN_KEY)?;
        Ok(vec![
            "--hostname".into(),
            HOST.into(),
            "--admin-key-file".into(),
            key.display().to_string(),
        ])
    }

    /// An HTTP client that sends `authorization` on every request (`None`: no credential).
    pub fn http_with(authorization: Option<&str>) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = authorization.and_then(|a| reqwest::header::HeaderValue::from_str(a).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default()
    }

    /// An HTTP client that sends the administrator's token on every request.
    pub fn http() -> reqwest::Client {
        http_with(Some(&admin_token()))
    }

    pub use muster_api::access::{with_credential, AuthChannel, Bearer};
}

/// TLS (issue 13) as the benches use it, the same approach as `tests/lib.rs`: `muster certs init`
/// writes a CA and a node certificate for 127.0.0.1; the node serves REST and client gRPC with it
/// (NodeConfig `tls.cert`/`tls.key`, `--tls-cert`/`--tls-key`) and the clients trust only the CA.
pub mod tls {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::{bail, Result};

    /// Runs `bin certs init --out out --node 1=127.0.0.1`: `ca.pem`, `node-1.pem`, `node-1.key`.
    pub fn certs_init(bin: &Path, out: &Path) -> Result<()> {
        let o = std::process::Command::new(bin)
            .args(["certs", "init", "--out"])
            .arg(out)
            .args(["--node", "1=127.0.0.1"])
            .output()?;
        if !o.status.success() {
            bail!(
                "muster certs init failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// A reqwest client sending `authorization` on every request (`None`: no credential):
    /// rustls trusting only `ca` when given (plain HTTP otherwise). `pool`: false opens a new
    /// connection for every request.
    pub fn http_client(
        ca: Option<&Path>,
        authorization: Option<&str>,
        pool: bool,
    ) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(a) = authorization {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(a)?,
            );
        }
        let mut b = reqwest::Client::builder().default_headers(headers);
        if !pool {
            b = b.pool_max_idle_per_host(0);
        }
        if let Some(ca) = ca {
            b = b
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
        }
        Ok(b.build()?)
    }

    /// A tonic endpoint for `url`; TLS trusting only `ca` when the URL is `https://`.
    pub fn grpc_endpoint(url: &str, ca: Option<&Path>) -> Result<tonic::transport::Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig};
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(5));
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        Ok(endpoint.tls_config(tls)?)
    }
}
