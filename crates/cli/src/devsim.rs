//! `muster devsim`: a simulated device fleet on one or more MQTT brokers, until SIGINT/SIGTERM.
//!
//! Thin by design: flags become a [`muster_devsim::FleetConfig`], `--register` upserts the
//! devices through a node's gRPC `DeviceService.ImportDevices` (in chunks) before they connect,
//! then [`muster_devsim::Fleet::start`] runs them. Once every connection is subscribed and has
//! published presence, one line goes to stdout — `devsim ready: N devices on BROKER[,BROKER]`
//! — which scripts and tests wait for. On a signal the fleet publishes `offline` for every
//! device and disconnects cleanly.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context;
use muster_devsim::{Fleet, FleetConfig, FleetLogin};
use muster_mqtt::{Secret, TlsFiles};
use muster_proto::pb;
use serde_json::json;

use crate::client::{self, ClientOpts, Output};

/// Devices per `ImportDevices` request.
const REGISTER_CHUNK: usize = 5_000;

#[derive(Debug, clap::Args)]
pub struct DevsimArgs {
    /// MQTT broker URL (`mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS); repeat to spread
    /// the devices over several brokers by the same rule as `muster serve --mqtt-url` (give them
    /// in the same order).
    #[arg(long = "broker", value_name = "URL", required = true)]
    brokers: Vec<String>,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Share of method calls that fail (0.0 - 1.0), decided by a seeded RNG.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Status a failed call answers with.
    #[arg(long, default_value_t = 500)]
    fail_status: i32,
    /// How long a device takes to answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra latency, uniform in [0, JITTER_MS].
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Share of devices that start offline (0.0 - 1.0).
    #[arg(long, default_value_t = 0.0)]
    offline_share: f64,
    /// Share of devices that receive requests and never answer (0.0 - 1.0).
    #[arg(long, default_value_t = 0.0)]
    silent_share: f64,
    /// A device (by id) that never answers; repeatable.
    #[arg(long, value_name = "DEVICE_ID")]
    silent: Vec<String>,
    /// A device (by id) whose every call fails; repeatable.
    #[arg(long, value_name = "DEVICE_ID")]
    failing: Vec<String>,
    /// Device ids are `PREFIX-000001`, `PREFIX-000002`, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// The model id (device template) the devices are registered with.
    #[arg(long, default_value = "dtmi:muster:simulated;1")]
    model_id: String,
    /// MQTT connections per broker; 0 picks one per 1000 devices.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Seed of the failure and offline/silent choices (the same seed fails the same devices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// For mqtts:// brokers: the CA certificate(s) (PEM) to trust (default: the system's).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// For mqtts:// brokers that require one: a client certificate (PEM), used by every
    /// connection.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Each device logs in as itself: user name = device id, password =
    /// base64(HMAC-SHA256(secret, device id)) with the fleet secret in this file (what `muster
    /// device credentials --secret-file` provisions). One connection per device.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["username", "connections"])]
    credentials_secret_file: Option<PathBuf>,
    /// One login for every connection (a broker without per-device logins).
    #[arg(long, value_name = "NAME")]
    username: Option<String>,
    /// A file holding the password of --username.
    #[arg(long, value_name = "FILE", requires = "username")]
    password_file: Option<PathBuf>,
    /// Register (upsert) the devices with this node first: its gRPC address, as `--endpoint`
    /// takes it (e.g. http://127.0.0.1:9090).
    #[arg(long, value_name = "ENDPOINT")]
    register: Option<String>,
    /// CA certificate (PEM) of an `https://` --register endpoint (as the client commands'
    /// --ca-cert).
    #[arg(long, value_name = "PEM", env = "MUSTER_CA_CERT")]
    register_ca_cert: Option<std::path::PathBuf>,
    /// The credential `--register` uses (a token, a connection string or @FILE; see
    /// `muster job --help`).
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, default_value = "warn")]
    log: String,
}

impl DevsimArgs {
    fn fleet_config(&self) -> anyhow::Result<FleetConfig> {
        for (flag, v) in [
            ("--fail-rate", self.fail_rate),
            ("--offline-share", self.offline_share),
            ("--silent-share", self.silent_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{flag} must be between 0.0 and 1.0, not {v}");
            }
        }
        if self.devices == 0 {
            anyhow::bail!("--devices must be at least 1");
        }
        let login = match (&self.credentials_secret_file, &self.username) {
            (Some(f), _) => FleetLogin::PerDevice {
                // Checked here (length too) so a bad file is reported before connecting.
                secret: {
                    muster_mqtt::credentials::FleetSecret::from_file(f)?;
                    muster_mqtt::read_secret_file(f)?
                },
            },
            (None, Some(u)) => FleetLogin::Shared {
                username: u.clone(),
                password: match &self.password_file {
                    Some(f) => muster_mqtt::read_secret_file(f)?,
                    None => Secret::new(""),
                },
            },
            (None, None) => FleetLogin::Anonymous,
        };
        Ok(FleetConfig {
            brokers: self.brokers.clone(),
            devices: self.devices,
            prefix: self.prefix.clone(),
            model_id: self.model_id.clone(),
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            offline_share: self.offline_share,
            silent_share: self.silent_share,
            silent: self.silent.clone(),
            failing: self.failing.clone(),
            connections: self.connections,
            seed: self.seed,
            tls: TlsFiles {
                ca_file: self.ca.clone(),
                client_cert_file: self.client_cert.clone(),
                client_key_file: self.client_key.clone(),
            },
            login,
            ..FleetConfig::default()
        })
    }
}

/// Upserts the fleet's devices through `ImportDevices`, `REGISTER_CHUNK` per request.
async fn register(
    endpoint: &str,
    ca_cert: Option<std::path::PathBuf>,
    token: Option<&str>,
    cfg: &FleetConfig,
) -> anyhow::Result<()> {
    let opts = ClientOpts {
        endpoint: endpoint.to_string(),
        token: token.map(str::to_string),
        output: Output::Text,
        ca_cert,
        client_cert: None,
        client_key: None,
    };
    let mut devices =
        pb::device_service_client::DeviceServiceClient::new(client::connect(&opts).await?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
    let tags = json!({"simulated": true, "devsim": cfg.prefix}).to_string();
    for chunk in cfg.device_ids().chunks(REGISTER_CHUNK) {
        let request = pb::ImportDevicesRequest {
            devices: chunk
                .iter()
                .map(|id| pb::NewDevice {
                    device_id: id.clone(),
                    display_name: id.clone(),
                    model_id: Some(cfg.model_id.clone()),
                    enabled: Some(true),
                    tags_json: tags.clone(),
                })
                .collect(),
        };
        devices
            .import_devices(request)
            .await
            .map_err(client::rpc)
            .with_context(|| format!("registering the devices with {endpoint}"))?;
    }
    Ok(())
}

pub async fn devsim(args: DevsimArgs) -> anyhow::Result<()> {
    crate::serve::init_tracing(&args.log);
    let cfg = args.fleet_config()?;
    if let Some(endpoint) = &args.register {
        register(
            endpoint,
            args.register_ca_cert.clone(),
            args.token.as_deref(),
            &cfg,
        )
        .await?;
        eprintln!("devsim: registered {} devices with {endpoint}", cfg.devices);
    }
    let fleet = Fleet::start(cfg.clone()).await?;
    // Scripts and tests wait for this line.
    println!(
        "devsim ready: {} devices on {}",
        cfg.devices,
        cfg.brokers.join(",")
    );
    crate::serve::shutdown_signal().await;
    let stats = fleet.stats();
    // A clean goodbye: retained `offline` for every device, then DISCONNECT.
    tokio::time::timeout(Duration::from_secs(15), fleet.shutdown())
        .await
        .context("the fleet did not shut down within 15 s")?;
    eprintln!(
        "devsim stopped: {} requests received, {} answered ({} failed, {} duplicates), {} desired patches",
        stats.requests_received,
        stats.requests_answered,
        stats.requests_failed,
        stats.duplicates,
        stats.desired_patches
    );
    Ok(())
}
