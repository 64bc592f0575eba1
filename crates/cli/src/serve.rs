//! `muster serve`: configuration layering and the signal handling around `muster_node::run`.
//!
//! Precedence, lowest first: built-in defaults, the `--config` TOML file, `MUSTER_*` environment
//! variables (`MUSTER_HTTP_ADDR=...`), then flags given on the command line.

use std::path::PathBuf;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use muster_node::{Listeners, NodeConfig};
use serde::Serialize;

#[derive(Debug, clap::Args, Serialize)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where the node keeps its data (Raft log, event log, snapshots).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Client gRPC address (host:port; port 0 picks one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<String>,
    /// REST gateway address (host:port; port 0 picks one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    /// Raft peer address (host:port; port 0 picks one), served to the other members only.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_addr: Option<String>,
    /// The peer addresses of all initial members, this node included, the same list on every
    /// node: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. A new node then joins that cluster instead of
    /// starting a cluster of one; the member with the smallest id forms it once a majority is up.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<String>,
    /// This node's id in the cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    /// A new data directory waits to be added to a running cluster (`muster cluster add-learner
    /// ID HOST:PORT`, then `promote ID`) instead of starting a cluster of one.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    join: bool,
    /// The client gRPC address other nodes and clients should use to reach this one, when it
    /// differs from --grpc-addr (a container bound to 0.0.0.0, a NAT).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_grpc_addr: Option<String>,
    /// The REST address to advertise, when it differs from --http-addr.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_http_addr: Option<String>,
    /// Raft heartbeat interval in milliseconds (default 100).
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_ms: Option<u64>,
    /// Shortest election timeout in milliseconds (default 300): a follower that hears no
    /// heartbeat for a random time between this and --election-max-ms starts an election.
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    election_min_ms: Option<u64>,
    /// Longest election timeout in milliseconds (default 600).
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    election_max_ms: Option<u64>,
    /// Build a snapshot after this many applied log entries (default 20000); the log behind a
    /// snapshot is purged, and a node that falls further behind receives the snapshot.
    #[arg(long, value_name = "ENTRIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_after: Option<u64>,
    /// Also build a snapshot once this many events were applied since the last one (default
    /// 200000, and at least one per registered device; 0: by entries only). One entry carries
    /// up to 1,000 device results, so this is what bounds the log a restart replays when jobs
    /// are large.
    #[arg(long, value_name = "EVENTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_after_events: Option<u64>,
    /// The storage engine's (sled's) page cache in MiB (default 16): how much of what was
    /// written (finished runs' device rows, the event and Raft logs) is kept in memory.
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sled_cache_mib: Option<u64>,
    /// The host name clients address this service by (`HOST[:PORT]`), written into the
    /// connection strings muster prints; SAS tokens must be signed for it (or for a member's
    /// address). Default: the advertised REST address.
    #[arg(long, value_name = "HOST[:PORT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// A file with the base64 primary key a new cluster gives its `iothubowner` policy (from
    /// your secret store) instead of a random one.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_key_file: Option<PathBuf>,
    /// Connections the REST listener, and separately the gRPC listener, hold at once (default
    /// 4096); more wait until one closes. Keep both well below `ulimit -n`.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// A REST connection that sends no complete request within this many milliseconds of
    /// opening or of its last answer, or a gRPC connection that sends nothing, is closed
    /// (default 10000).
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_timeout_ms: Option<u64>,
    /// Writes are refused (HTTP 507, gRPC RESOURCE_EXHAUSTED) while the data directory's disk
    /// has less than this many MiB free; reads go on, and writes resume once space is freed
    /// (default 256; 0: no check).
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    min_free_disk_mib: Option<u64>,
    /// Retention (`retention.finished_jobs`): a finished job's per-device detail is dropped
    /// this long after it ended, e.g. `30d` as IoT Hub; its summary stays. Default: keep.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip)]
    retain_finished_jobs: Option<String>,
    /// Retention (`retention.jobs`): a finished job is removed this long after it ended; its
    /// events stay in the audit log. Default: keep.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip)]
    retain_jobs: Option<String>,
    /// MQTT broker URL (`mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS); repeat to spread
    /// devices over several brokers.
    #[arg(long = "mqtt-url", value_name = "URL")]
    #[serde(skip)]
    mqtt_urls: Vec<String>,
    /// For mqtts:// brokers: the CA certificate(s) (PEM) to trust (default: the system's).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    mqtt_ca: Option<PathBuf>,
    /// For mqtts:// brokers that require one: the dispatcher's client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "mqtt_client_key")]
    #[serde(skip)]
    mqtt_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "mqtt_client_cert")]
    #[serde(skip)]
    mqtt_client_key: Option<PathBuf>,
    /// The dispatcher's broker user name (`muster device credentials --dispatcher-user`).
    #[arg(long, value_name = "NAME")]
    #[serde(skip)]
    mqtt_username: Option<String>,
    /// A file holding the dispatcher's broker password.
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    #[serde(skip)]
    mqtt_password_file: Option<PathBuf>,
    /// Devices log in here with their IoT Hub SAS tokens (`device_gateway.listen`, `HOST:PORT`):
    /// muster checks each CONNECT and forwards it to the broker under the gateway's own login,
    /// keeping each device to its own topics.
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "device_gateway_password_file"
    )]
    #[serde(skip)]
    device_gateway_addr: Option<String>,
    /// A file holding the gateway's broker password (`device_gateway.password_file`; `muster
    /// device credentials --gateway-password-file` writes its login).
    #[arg(long, value_name = "FILE", requires = "device_gateway_addr")]
    #[serde(skip)]
    device_gateway_password_file: Option<PathBuf>,
    /// The gateway's broker user name (`device_gateway.username`, default `muster-gateway`).
    #[arg(long, value_name = "NAME", requires = "device_gateway_addr")]
    #[serde(skip)]
    device_gateway_user: Option<String>,
    /// Dev mode: data in a temporary directory (unless --data-dir), an embedded MQTT broker, and
    /// a registered simulated fleet.
    #[arg(long)]
    #[serde(skip)]
    dev: bool,
    /// Dev mode: number of simulated devices.
    #[arg(long, requires = "dev")]
    #[serde(skip)]
    dev_devices: Option<usize>,
    /// Dev mode: share of method calls that fail (0.0 - 1.0).
    #[arg(long, requires = "dev")]
    #[serde(skip)]
    dev_fail_rate: Option<f64>,
    /// Dev mode: how long a simulated device takes to answer, in milliseconds.
    #[arg(long, requires = "dev")]
    #[serde(skip)]
    dev_latency_ms: Option<u64>,
    /// Dev mode: where the embedded MQTT broker listens (port 0 picks one).
    #[arg(long, requires = "dev")]
    #[serde(skip)]
    mqtt_addr: Option<String>,
    #[command(flatten)]
    #[serde(rename = "tls", skip_serializing_if = "TlsArgs::is_empty")]
    tls: TlsArgs,
    /// No protection, for experiments only (MUSTER_INSECURE=true), logged loudly: authentication
    /// off (every caller may do everything), and the node starts even with REST/gRPC on a
    /// non-loopback address without TLS or peers beyond loopback without peer TLS.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added unless given). Off by default.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, default_value = "info,openraft=warn,rumqttd=off")]
    #[serde(skip)]
    log: String,
}

/// The `[tls]` settings as flags (`MUSTER_TLS__CERT=...` in the environment).
#[derive(Debug, Default, clap::Args, Serialize)]
pub struct TlsArgs {
    /// Certificate chain (PEM) of the REST and client gRPC listeners; with --tls-key, they
    /// serve TLS only (`muster certs init` makes one).
    #[arg(long = "tls-cert", value_name = "PEM", requires = "tls_key")]
    #[serde(rename = "cert", skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "PEM", requires = "tls_cert")]
    #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) of client certificates: a REST or gRPC client may present one it signed (its
    /// subject CN identifies the caller); a client without one is still served. Use a CA other
    /// than --peer-ca's: a certificate from the cluster CA opens the peer port.
    #[arg(long = "tls-client-ca", value_name = "PEM")]
    #[serde(rename = "client_ca", skip_serializing_if = "Option::is_none")]
    tls_client_ca: Option<PathBuf>,
    /// The role (administrator, builder, operator, viewer, auditor) of a caller that presents a
    /// certificate from --tls-client-ca and no Authorization header; it acts as `cert:SUBJECT`.
    /// Unset, a certificate alone authenticates nothing.
    #[arg(
        long = "tls-client-role",
        value_name = "ROLE",
        requires = "tls_client_ca"
    )]
    #[serde(rename = "client_role", skip_serializing_if = "Option::is_none")]
    tls_client_role: Option<String>,
    /// The cluster CA (PEM): the peer port requires mutual TLS, every member's certificate
    /// signed by it, both when it serves and when it dials.
    #[arg(long = "peer-ca", value_name = "PEM")]
    #[serde(rename = "peer_ca", skip_serializing_if = "Option::is_none")]
    peer_ca: Option<PathBuf>,
    /// This node's certificate (PEM) on the peer port, from the cluster CA; default --tls-cert.
    #[arg(long = "peer-cert", value_name = "PEM", requires = "peer_key")]
    #[serde(rename = "peer_cert", skip_serializing_if = "Option::is_none")]
    peer_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert; default --tls-key.
    #[arg(long = "peer-key", value_name = "PEM", requires = "peer_cert")]
    #[serde(rename = "peer_key", skip_serializing_if = "Option::is_none")]
    peer_key: Option<PathBuf>,
}

impl TlsArgs {
    fn is_empty(&self) -> bool {
        self.tls_cert.is_none()
            && self.tls_key.is_none()
            && self.tls_client_ca.is_none()
            && self.tls_client_role.is_none()
            && self.peer_ca.is_none()
            && self.peer_cert.is_none()
            && self.peer_key.is_none()
    }
}

fn load(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(path) = &args.config {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file(path));
    }
    // Only settings muster knows are read from the environment: orchestrators inject variables
    // of their own with the same prefix (Kubernetes: MUSTER_SERVICE_HOST for a Service named
    // `muster`), which must not stop a node from starting. The TOML file stays strict.
    let known = known_settings();
    for (key, _) in std::env::vars() {
        if let Some(rest) = key.strip_prefix("MUSTER_") {
            let top = rest
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !known.contains(&top) && !CLIENT_ENV.contains(&top.as_str()) {
                tracing::warn!("ignoring environment variable {key}: not a muster setting");
            }
        }
    }
    fig = fig
        .merge(
            Env::prefixed("MUSTER_")
                .filter(move |k| {
                    let top = k.as_str().split("__").next().unwrap_or_default();
                    known.iter().any(|s| s.eq_ignore_ascii_case(top))
                })
                .split("__"),
        )
        .merge(Serialized::defaults(args));
    let mut cfg: NodeConfig = fig.extract().context("invalid configuration")?;
    if args.retain_finished_jobs.is_some() {
        cfg.retention
            .finished_jobs
            .clone_from(&args.retain_finished_jobs);
    }
    if args.retain_jobs.is_some() {
        cfg.retention.jobs.clone_from(&args.retain_jobs);
    }
    cfg.check().context("invalid configuration")?;
    if !args.mqtt_urls.is_empty() {
        cfg.dispatch.brokers = args.mqtt_urls.clone();
    }
    let d = &mut cfg.dispatch;
    for (flag, setting) in [
        (&args.mqtt_ca, &mut d.ca_file),
        (&args.mqtt_client_cert, &mut d.client_cert_file),
        (&args.mqtt_client_key, &mut d.client_key_file),
    ] {
        if flag.is_some() {
            setting.clone_from(flag);
        }
    }
    if args.mqtt_username.is_some() {
        d.username.clone_from(&args.mqtt_username);
    }
    if args.mqtt_password_file.is_some() {
        d.password = None;
        d.password_file.clone_from(&args.mqtt_password_file);
    }
    if let (Some(listen), Some(file)) = (
        &args.device_gateway_addr,
        &args.device_gateway_password_file,
    ) {
        let mut g = cfg
            .device_gateway
            .take()
            .unwrap_or_else(|| muster_node::gateway::GatewayConfig::new(listen, file));
        g.listen.clone_from(listen);
        g.password_file.clone_from(file);
        if let Some(user) = &args.device_gateway_user {
            g.username.clone_from(user);
        }
        cfg.device_gateway = Some(g);
    }
    if args.dev {
        let mut dev = cfg.dev.take().unwrap_or_default();
        if let Some(n) = args.dev_devices {
            dev.devices = n;
        }
        if let Some(f) = args.dev_fail_rate {
            if !(0.0..=1.0).contains(&f) {
                anyhow::bail!("--dev-fail-rate must be between 0.0 and 1.0, not {f}");
            }
            dev.fail_rate = f;
        }
        if let Some(l) = args.dev_latency_ms {
            dev.latency_ms = l;
        }
        if let Some(a) = &args.mqtt_addr {
            dev.mqtt_addr = a.clone();
        }
        cfg.dev = Some(dev);
    }
    Ok(cfg)
}

/// `MUSTER_*` variables read by other commands (the client's endpoint, the tests), not settings.
const CLIENT_ENV: &[&str] = &[
    "endpoint",
    "ca_cert",
    "client_cert",
    "client_key",
    "log",
    "bin",
    "test_mqtt_url",
];

/// The top-level setting names of [`NodeConfig`], as the environment spells them (lowercase).
fn known_settings() -> Vec<String> {
    match serde_json::to_value(NodeConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn init_tracing(filter: &str) {
    init_tracing_with(filter, None);
}

/// The log on stderr, and with `otlp` the trace exporter's layer beside it.
fn init_tracing_with(filter: &str, otlp: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::prelude::*;
    let _ = tracing_subscriber::registry()
        .with(log_layer(filter))
        .with(otlp.map(crate::otlp::layer))
        .try_init();
}

/// The log lines on stderr. Spans meant for the trace exporter (`muster_trace`) never show
/// there, so without an exporter nothing enables them and they cost nothing.
fn log_layer<S>(filter: &str) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let filter = match "muster_trace=off".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    // The level filter outermost: a layer's level hint is its outer filter's, and the hint sets
    // the `log` crate's maximum level (`try_init` bridges `log` records), so with
    // `QuietUnreachable` (no hint) outside, every `trace!` of sled reached tracing only to be
    // dropped: ~12% of a restart's CPU at a million devices.
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(QuietUnreachable)
        .with_filter(filter)
}

/// Drops openraft's lines about a peer it cannot reach: two warnings and an error every half
/// second for as long as the peer is down. The cluster's network logs instead when a peer stops
/// answering and when it answers again (`muster_cluster`'s `Reachability`).
pub(crate) struct QuietUnreachable;

impl<S> tracing_subscriber::layer::Filter<S> for QuietUnreachable {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if !event.metadata().target().starts_with("openraft") {
            return true;
        }
        let mut about = AboutUnreachable(false);
        event.record(&mut about);
        !about.0
    }
}

/// Whether an event's fields speak of an unreachable peer (openraft's `Unreachable` error, or
/// the back-off it starts because of one).
struct AboutUnreachable(bool);

impl tracing::field::Visit for AboutUnreachable {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            let text = format!("{value:?}");
            self.0 = text.contains("Unreachable node") || text.contains("backoff mode");
        }
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    arm_crash_point()?;
    // Which subscriber to install depends on the settings (--otlp-endpoint): read them with the
    // log alone, then install both.
    let loaded = {
        use tracing_subscriber::prelude::*;
        let log = tracing_subscriber::registry().with(log_layer(&args.log));
        tracing::subscriber::with_default(log, || load(&args))
    };
    let otlp = match loaded
        .as_ref()
        .ok()
        .and_then(|c| c.otlp_endpoint.as_deref())
    {
        Some(endpoint) => Some(crate::otlp::provider(
            endpoint,
            loaded.as_ref().map_or(0, |c| c.node_id),
        )?),
        None => None,
    };
    init_tracing_with(&args.log, otlp.as_ref());
    if let Some(endpoint) = loaded
        .as_ref()
        .ok()
        .and_then(|c| c.otlp_endpoint.as_deref())
    {
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
    }
    let mut cfg = loaded?;
    // Dev mode keeps its data in a temporary directory, removed when the node stops.
    let mut _temp = None;
    let mut mqtt = None;
    if let Some(dev) = cfg.dev.as_mut() {
        if cfg.data_dir.is_none() {
            let t = tempfile::Builder::new().prefix("muster-dev-").tempdir()?;
            cfg.data_dir = Some(t.path().to_path_buf());
            _temp = Some(t);
        }
        // The embedded broker refuses anonymous clients: the dispatcher and the simulated
        // fleet get logins made up for this run.
        let dev_broker = muster_node::dev::start_broker(dev)?;
        let url = dev_broker.broker.url();
        let d = &mut cfg.dispatch;
        d.brokers = vec![url.clone()];
        d.ca_file = None;
        d.client_cert_file = None;
        d.client_key_file = None;
        d.username = Some(dev_broker.dispatcher.0.clone());
        d.password = Some(dev_broker.dispatcher.1.clone());
        d.password_file = None;
        dev.fleet_login = muster_devsim::FleetLogin::Shared {
            username: dev_broker.fleet.0.clone(),
            password: dev_broker.fleet.1.clone(),
        };
        mqtt = Some(url);
    }
    if !cfg.dispatch.brokers.is_empty() {
        cfg.dispatch.check().context("invalid MQTT settings")?;
    }
    if cfg.data_dir.is_none() {
        anyhow::bail!("--data-dir is required (or use --dev to try muster with a temporary one)");
    }
    let listeners = Listeners::bind(&cfg).await?;
    // Before the addresses are printed: a script waiting for them must not take a node that
    // refuses to start for one that runs.
    muster_node::check_exposure(&cfg, &listeners)?;
    let grpc = listeners.grpc_addr()?;
    let http = listeners.http_addr()?;
    let peer = listeners
        .peer_addr()?
        .map(|p| format!(" peer={p}"))
        .unwrap_or_default();
    let gateway = listeners
        .gateway_addr()?
        .map(|g| format!(" devices={g}"))
        .unwrap_or_default();
    let peer = format!("{peer}{gateway}");
    let scheme = if listeners.tls.api.is_some() {
        "https"
    } else {
        "http"
    };
    // Tests and scripts read this line to learn the ports when they asked for port 0.
    match &mqtt {
        Some(m) => {
            println!(
                "muster listening: rest={scheme}://{http} grpc={scheme}://{grpc} mqtt={m}{peer}"
            )
        }
        None => println!("muster listening: rest={scheme}://{http} grpc={scheme}://{grpc}{peer}"),
    }
    if let Some(dev) = &cfg.dev {
        // The banner needs the administrator's credential, which the node writes once it has
        // created the cluster's credentials: print it from the file, as a user would read it.
        let (dev, cfg2) = (dev.clone(), cfg.clone());
        tokio::spawn(async move {
            let token = dev_token(&cfg2).await;
            print_dev_banner(&dev, &cfg2, scheme, http, grpc, token.as_deref());
        });
    }
    let ran = muster_node::run(cfg, listeners, shutdown_signal()).await;
    if let Some(provider) = otlp {
        // Sends what is still batched; off the runtime, as the exporter blocks.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    ran?;
    Ok(())
}

/// Fault injection for the nemesis harness (`tests/nemesis`): `MUSTER_TEST_CRASH_AT=<point>[:<nth
/// pass>]` makes this process abort at one of the store's crash points
/// ([`muster_store::crashpoint`]), as a power cut there would. Read once, before anything is
/// opened; a point that does not exist stops the node at start (a typo must not pass for a
/// run in which the point was never reached). Never set it in production.
fn arm_crash_point() -> anyhow::Result<()> {
    use muster_store::crashpoint::{Armed, ENV};
    let Some(spec) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let armed = Armed::parse(&spec.to_string_lossy())?;
    armed.install();
    eprintln!(
        "{ENV}: this node aborts on pass {} of crash point {} (a test-only fault)",
        armed.nth, armed.point
    );
    Ok(())
}

/// The model id of the simulated devices (devsim's default).
const DEV_MODEL: &str = "dtmi:muster:simulated;1";

/// A token valid for 30 days, signed with the administrator's connection string, once the node
/// has written it (`None` with --insecure or if it does not appear within a minute).
async fn dev_token(cfg: &NodeConfig) -> Option<String> {
    if cfg.insecure {
        return None;
    }
    let path = cfg.data_dir.as_ref()?.join(muster_node::ADMIN_CREDENTIAL);
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return crate::client::credential::header_value(text.trim(), 30 * 86_400).ok();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

fn print_dev_banner(
    dev: &muster_node::DevConfig,
    cfg: &NodeConfig,
    scheme: &str,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    token: Option<&str>,
) {
    let dir = cfg
        .data_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    println!(
        "dev mode: {n} simulated devices (sim-000001 ... sim-{n:06}), data in {dir}",
        n = dev.devices
    );
    if let (Some(url), muster_devsim::FleetLogin::Shared { username, password }) =
        (cfg.dispatch.brokers.first(), &dev.fleet_login)
    {
        println!(
            "the embedded MQTT broker at {url} refuses anonymous clients; simulated devices log in as user {username}, password {}",
            password.expose()
        );
    }
    let auth = match token {
        Some(t) => {
            println!(
                "administrator's connection string: {}/{} (a 30-day token from it below)",
                dir,
                muster_node::ADMIN_CREDENTIAL
            );
            println!("try:");
            println!("  export MUSTER_TOKEN='{t}'");
            "    -H \"Authorization: $MUSTER_TOKEN\" \\\n"
        }
        None => {
            println!("try:");
            ""
        }
    };
    println!("  curl -X PUT '{scheme}://{http}/api/deviceGroups/all?api-version=2022-07-31' \\");
    print!("{auth}");
    println!("    -H 'content-type: application/json' \\");
    println!(
        "    -d '{{\"displayName\": \"All devices\", \"filter\": \"SELECT * FROM devices\"}}'"
    );
    println!("  curl -X PUT '{scheme}://{http}/api/jobs/reboot-all?api-version=2022-07-31' \\");
    print!("{auth}");
    println!("    -H 'content-type: application/json' \\");
    println!("    -d '{{\"displayName\": \"Reboot\", \"group\": \"all\", \"batch\": {{\"type\": \"percentage\", \"value\": 25}}, \"cancellationThreshold\": {{\"type\": \"percentage\", \"value\": 10, \"batch\": false}}, \"data\": [{{\"type\": \"CommandJobData\", \"target\": \"{DEV_MODEL}\", \"path\": \"reboot\", \"value\": {{}}}}]}}'");
    println!("  muster job watch reboot-all --endpoint {scheme}://{grpc}");
    match token {
        Some(_) => println!(
            "or open the console at {scheme}://{http}/ui and sign in with the MUSTER_TOKEN above"
        ),
        None => println!("or open the console at {scheme}://{http}/ui"),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use tracing_subscriber::prelude::*;

    use super::QuietUnreachable;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_layer_hints_its_most_verbose_level() {
        use tracing::Subscriber as _;
        if std::env::var_os("RUST_LOG").is_some() {
            return; // `log_layer` takes its filter from there then
        }
        let subscriber =
            tracing_subscriber::registry().with(super::log_layer("warn,muster_store=info"));
        assert_eq!(
            subscriber.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
    }

    #[test]
    fn openraft_lines_about_unreachable_peers_are_muted_and_nothing_else() {
        let out = Buffer::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(QuietUnreachable);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let e = "Unreachable node: node 3 (127.0.0.1:1): tcp connect error";
            tracing::warn!(target: "openraft::replication", error = e, "error replication");
            tracing::error!(target: "openraft::replication", "RPCError err={e}");
            tracing::warn!(target: "openraft::replication", "backoff mode: drain events");
            tracing::warn!(target: "openraft::engine", "vote is rejected");
            tracing::warn!(target: "muster_cluster::network", "peer unreachable: {e}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("vote is rejected"), "{text}");
        assert!(lines[1].contains("peer unreachable"), "{text}");
    }
}
