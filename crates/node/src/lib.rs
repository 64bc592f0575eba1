//! Wiring: one muster node from its configuration.
//!
//! [`run`] takes listeners that are already bound and a shutdown future, in the manner of
//! mini-redis: the binary binds the configured addresses (tests bind port 0 and read the real
//! ones back), and whoever owns the future decides when the node stops. Nothing here parses flags
//! or reads files; that is the binary's job.

mod credentials;
pub mod dev;
pub mod gateway;
pub mod guard;
mod leader;
mod retention;
mod sessions;
mod ticker;
pub mod tls;

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use muster_cluster::{Cluster, ClusterConfig, ClusterError, MusterNode};
use muster_dispatch::DispatchConfig;

pub use credentials::ADMIN_CREDENTIAL;
pub use dev::DevConfig;
pub use retention::{parse_duration_ms, RetentionConfig};
use serde::{Deserialize, Serialize};
pub use tls::{NodeTls, TlsSettings};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// A node's settings, as the binary's layered configuration produces them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft id; unique in the cluster, never reused.
    pub node_id: u64,
    /// Where the Raft log, the event log and snapshots live. Required outside dev mode.
    pub data_dir: Option<PathBuf>,
    /// Client gRPC API.
    pub grpc_addr: String,
    /// REST gateway.
    pub http_addr: String,
    /// Raft between nodes.
    pub peer_addr: String,
    /// The peer addresses of all initial members, this node included, as
    /// `ID=HOST:PORT,ID=HOST:PORT,...` (the same on every node). Empty: a cluster of one.
    pub peers: String,
    /// A new data directory waits to be added to a running cluster instead of starting a
    /// cluster of one.
    pub join: bool,
    /// The client addresses recorded in the membership (and named in "not leader" answers and
    /// `muster cluster status`) when they differ from the bound ones: a node bound to
    /// `0.0.0.0` in a container is reached by its service name.
    pub advertise_grpc_addr: Option<String>,
    pub advertise_http_addr: Option<String>,
    /// Heartbeat interval and election timeout range, in milliseconds.
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_after: u64,
    /// Applied events between snapshots, whichever of the two bounds comes first (0: by
    /// entries only); see `muster_cluster::DEFAULT_SNAPSHOT_AFTER_EVENTS`.
    pub snapshot_after_events: u64,
    /// sled's page cache in MiB: how much of what was written (finished runs' device rows, the
    /// event log, the Raft log) stays in memory. See `muster_cluster::DEFAULT_SLED_CACHE_MIB`.
    pub sled_cache_mib: u64,
    /// The MQTT worker pool (`[dispatch]`; `brokers` are the `--mqtt-url`s). With no broker the
    /// leader still advances jobs but reaches no device.
    pub dispatch: DispatchConfig,
    /// Dev mode: an embedded broker and a simulated fleet (`--dev`).
    pub dev: Option<DevConfig>,
    /// TLS on REST and client gRPC, mutual TLS on the peer port (`[tls]`, see [`TlsSettings`]).
    pub tls: TlsSettings,
    /// The host name clients address this service by (`HOST` or `HOST:PORT`, as in the
    /// `HostName=` of a connection string); SAS tokens signed for it, or for any member's REST or
    /// gRPC address, are accepted. Default: the advertised REST address.
    pub hostname: Option<String>,
    /// No protection (`--insecure`), loudly logged: no authentication (every caller may do
    /// everything, as `anonymous`), and a node may serve REST/gRPC on a non-loopback address
    /// without TLS and run with peers beyond loopback without peer TLS.
    pub insecure: bool,
    /// A file holding the primary key (base64) that a *new* cluster gives its `iothubowner`
    /// policy, instead of a random one: for deployments that keep the administrator's secret in
    /// their own secret store. Ignored once the cluster's credentials exist.
    pub admin_key_file: Option<PathBuf>,
    /// Where to export traces (OTLP/HTTP, `--otlp-endpoint`). Read by the binary, which
    /// installs the exporter; the node only creates spans (see `muster_cluster::trace`).
    pub otlp_endpoint: Option<String>,
    /// Connections the REST listener, and separately the client gRPC listener, hold at once;
    /// more wait in the kernel's backlog until one closes. Keep the sum well below the
    /// process's file descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// How long a REST connection may take to send a complete request, from when it opened or
    /// its previous answer was written; a gRPC connection must send its first bytes within it.
    /// A connection past it is closed.
    pub header_timeout_ms: u64,
    /// Writes are refused (507 / `RESOURCE_EXHAUSTED`) while the data directory's file system
    /// has less than this many MiB free, so a full disk never fails a write half-way; reads go
    /// on, and writes resume once space is freed. 0 turns the check off.
    pub min_free_disk_mib: u64,
    /// How long finished jobs keep their device detail and themselves (`[retention]`, see
    /// [`RetentionConfig`]); default: keep forever.
    pub retention: RetentionConfig,
    /// Where devices log in with their IoT Hub SAS tokens when the broker is Mosquitto
    /// (`[device_gateway]`, see [`gateway`]); none by default.
    pub device_gateway: Option<gateway::GatewayConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: None,
            grpc_addr: "127.0.0.1:9090".into(),
            http_addr: "127.0.0.1:8080".into(),
            peer_addr: "127.0.0.1:9091".into(),
            peers: String::new(),
            join: false,
            advertise_grpc_addr: None,
            advertise_http_addr: None,
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_after: 20_000,
            snapshot_after_events: muster_cluster::DEFAULT_SNAPSHOT_AFTER_EVENTS,
            sled_cache_mib: muster_cluster::DEFAULT_SLED_CACHE_MIB,
            dispatch: DispatchConfig {
                brokers: Vec::new(),
                ..DispatchConfig::default()
            },
            dev: None,
            tls: TlsSettings::default(),
            hostname: None,
            insecure: false,
            admin_key_file: None,
            otlp_endpoint: None,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            min_free_disk_mib: muster_cluster::DEFAULT_MIN_FREE_DISK / (1024 * 1024),
            retention: RetentionConfig::default(),
            device_gateway: None,
        }
    }
}

impl NodeConfig {
    /// Checks the settings that would otherwise fail late or oddly, with a message naming the
    /// setting.
    pub fn check(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if self.node_id == 0 {
            return bad("node_id must be a positive integer".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if self.header_timeout_ms == 0 {
            return bad("header_timeout_ms must be at least 1".into());
        }
        if self.heartbeat_ms == 0 {
            return bad("heartbeat_ms must be at least 1".into());
        }
        if self.election_min_ms <= self.heartbeat_ms {
            return bad(format!(
                "election_min_ms ({}) must be larger than heartbeat_ms ({}), or followers start elections while the leader is healthy",
                self.election_min_ms, self.heartbeat_ms
            ));
        }
        if self.election_max_ms <= self.election_min_ms {
            return bad(format!(
                "election_max_ms ({}) must be larger than election_min_ms ({})",
                self.election_max_ms, self.election_min_ms
            ));
        }
        if self.snapshot_after == 0 {
            return bad("snapshot_after must be at least 1".into());
        }
        if !(MIN_SLED_CACHE_MIB..=MAX_SLED_CACHE_MIB).contains(&self.sled_cache_mib) {
            return bad(format!(
                "sled_cache_mib must be between {MIN_SLED_CACHE_MIB} and {MAX_SLED_CACHE_MIB} (MiB), not {}: \
                 it is the storage engine's page cache; the default is {}",
                self.sled_cache_mib,
                muster_cluster::DEFAULT_SLED_CACHE_MIB
            ));
        }
        if self.join && !self.peers.trim().is_empty() {
            return bad(
                "join and peers do not go together: peers forms a new cluster, join waits to be added to a running one"
                    .into(),
            );
        }
        for (name, addr) in [
            ("advertise_grpc_addr", &self.advertise_grpc_addr),
            ("advertise_http_addr", &self.advertise_http_addr),
        ] {
            if let Some(a) = addr {
                if !a.contains(':') || a.contains('/') {
                    return bad(format!("{name}: `{a}` is not HOST:PORT"));
                }
            }
        }
        self.retention.limits()?;
        parse_peers(&self.peers).map(|_| ())
    }
}

/// The smallest `sled_cache_mib`: below a few MiB sled evicts the pages it is writing.
pub const MIN_SLED_CACHE_MIB: u64 = 8;
/// The largest `sled_cache_mib` (1 TiB): larger is a typo (bytes given as MiB), not a cache.
pub const MAX_SLED_CACHE_MIB: u64 = 1024 * 1024;

/// The sockets a node serves on, bound before [`run`] so callers know the real ports.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// Raft between nodes. A cluster of one does not need it, so when no `peers` are configured
    /// and the peer address is taken (two single nodes on one host with the default address),
    /// the node runs without it instead of failing.
    pub peer: Option<TcpListener>,
    /// The device gateway (`[device_gateway]`), where devices log in with SAS tokens.
    pub gateway: Option<TcpListener>,
    /// How connections on them are secured (default: plain TCP everywhere).
    pub tls: NodeTls,
}

impl Listeners {
    /// Reads the TLS files the configuration names, then binds the configured addresses (`:0`
    /// picks a free port).
    pub async fn bind(cfg: &NodeConfig) -> Result<Listeners, NodeError> {
        let tls = NodeTls::load(&cfg.tls)?;
        let grpc = bind(&cfg.grpc_addr, "grpc_addr").await?;
        let http = bind(&cfg.http_addr, "http_addr").await?;
        let peer = match bind(&cfg.peer_addr, "peer_addr").await {
            Ok(l) => Some(l),
            Err(e) if cfg.peers.trim().is_empty() && !cfg.join => {
                tracing::warn!("{e}; running as a cluster of one without a peer listener");
                None
            }
            Err(e) => return Err(e),
        };
        let gateway = match &cfg.device_gateway {
            Some(g) => Some(bind(&g.listen, "device_gateway.listen").await?),
            None => None,
        };
        Ok(Listeners {
            grpc,
            http,
            peer,
            gateway,
            tls,
        })
    }

    /// The bound peer address, if the peer listener is up.
    pub fn peer_addr(&self) -> Result<Option<SocketAddr>, NodeError> {
        self.peer.as_ref().map(local).transpose()
    }

    /// The bound device gateway address, if one is configured.
    pub fn gateway_addr(&self) -> Result<Option<SocketAddr>, NodeError> {
        self.gateway.as_ref().map(local).transpose()
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr, NodeError> {
        local(&self.grpc)
    }

    pub fn http_addr(&self) -> Result<SocketAddr, NodeError> {
        local(&self.http)
    }
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|e| NodeError::Bind {
        what,
        addr: addr.to_string(),
        source: e,
    })
}

fn local(l: &TcpListener) -> Result<SocketAddr, NodeError> {
    l.local_addr().map_err(|e| NodeError::Io(e.to_string()))
}

/// Reads `ID=HOST:PORT,ID=HOST:PORT,...` (spaces allowed around the commas).
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, NodeError> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            NodeError::Config(format!(
                "peers: `{item}` is not ID=HOST:PORT (for example 1=10.0.0.1:9091)"
            ))
        };
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            return Err(bad());
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(NodeError::Config(format!(
                "peers: node {id} is listed twice"
            )));
        }
    }
    Ok(peers)
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(String),
}

/// Refuses a node that would serve REST or gRPC beyond loopback without TLS, or run Raft with
/// peers beyond loopback without peer TLS, unless `insecure` is set; then returns what it
/// accepted (for a warning). [`run`] checks this itself; the binary also checks it before it
/// prints the addresses it listens on.
pub fn check_exposure(cfg: &NodeConfig, listeners: &Listeners) -> Result<Vec<String>, NodeError> {
    let mut peers: Vec<String> = parse_peers(&cfg.peers)?.into_values().collect();
    if let Some(bound) = listeners.peer_addr()? {
        peers.push(bound.to_string());
    }
    let mut api = vec![
        ("REST", listeners.http_addr()?),
        ("gRPC", listeners.grpc_addr()?),
    ];
    if let Some(g) = listeners.gateway_addr()? {
        api.push(("the device gateway", g));
    }
    tls::check_exposure(&listeners.tls, &api, &peers, cfg.insecure)
}

/// Runs a node until `shutdown` resolves, then stops serving (finishing requests in flight) and
/// stops Raft. Everything acknowledged before is durable on disk.
pub async fn run(
    cfg: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let data_dir = cfg
        .data_dir
        .clone()
        .ok_or_else(|| NodeError::Config("data_dir is required (--data-dir)".into()))?;
    let peers = parse_peers(&cfg.peers)?;
    if !peers.is_empty() && !peers.contains_key(&cfg.node_id) {
        return Err(NodeError::Config(format!(
            "peers lists nodes {:?} but not this node ({}): give every node the same list of all initial members",
            peers.keys().collect::<Vec<_>>(),
            cfg.node_id
        )));
    }
    // What other nodes dial: the address in the members list if there is one (it is what they
    // were given), otherwise the bound address (so port 0 works).
    let peer_addr = match (peers.get(&cfg.node_id), listeners.peer_addr()?) {
        (Some(listed), _) => listed.clone(),
        (None, Some(bound)) => bound.to_string(),
        (None, None) => String::new(),
    };
    let me_http = match &cfg.advertise_http_addr {
        Some(a) => a.clone(),
        None => listeners.http_addr()?.to_string(),
    };
    let me = MusterNode {
        peer_addr,
        grpc_addr: match &cfg.advertise_grpc_addr {
            Some(a) => a.clone(),
            None => listeners.grpc_addr()?.to_string(),
        },
        http_addr: me_http.clone(),
    };
    cfg.check()?;
    // With --insecure this accepts what it would refuse; each is logged (authentication's own
    // warning follows below).
    for p in check_exposure(&cfg, &listeners)? {
        tracing::warn!(
            "INSECURE: serving {p}: anyone who can reach it can read and change everything"
        );
    }
    let mut ccfg = ClusterConfig::new(cfg.node_id, data_dir.clone(), me);
    ccfg.peers = peers;
    ccfg.join = cfg.join;
    ccfg.heartbeat = Duration::from_millis(cfg.heartbeat_ms);
    ccfg.election_min = Duration::from_millis(cfg.election_min_ms);
    ccfg.election_max = Duration::from_millis(cfg.election_max_ms);
    ccfg.snapshot_after = cfg.snapshot_after;
    ccfg.snapshot_after_events = cfg.snapshot_after_events;
    ccfg.sled_cache = cfg.sled_cache_mib.saturating_mul(1024 * 1024);
    ccfg.min_free_disk = cfg.min_free_disk_mib.saturating_mul(1024 * 1024);
    ccfg.peer_tls = listeners.tls.peer.clone();
    // One registry per node, handed down through the cluster handle (not a process global:
    // the benches run three nodes in one process).
    ccfg.metrics = muster_metrics::Metrics::new();
    let host = cfg.hostname.clone().unwrap_or_else(|| me_http.clone());
    let admin_key = cfg
        .admin_key_file
        .as_deref()
        .map(credentials::read_admin_key)
        .transpose()?;
    let cluster = Cluster::start(ccfg).await?;
    let gate = if cfg.insecure {
        tracing::warn!(
            "--insecure: AUTHENTICATION IS OFF; anyone who reaches this node's REST or gRPC port may do anything"
        );
        muster_api::access::Gate::insecure()
    } else {
        let gate = muster_api::access::Gate::new(cluster.clone(), host.clone());
        match cfg.tls.client_role.as_deref() {
            None => gate,
            Some(name) => gate.with_certificate_role(
                muster_domain::auth::Role::parse(name).ok_or_else(|| {
                    NodeError::Config(format!(
                        "tls.client_role: `{name}` is not a role (administrator, builder, operator, viewer, auditor)"
                    ))
                })?,
            ),
        }
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let limits = guard::Limits {
        max_connections: cfg.max_connections,
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
    };
    // Keep-alive pings find clients that vanished; the preface deadline and the connection
    // limit (`guard`) bound the ones that never ask for anything.
    let mut grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(api) = &listeners.tls.api {
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &api.identity.cert_pem,
                &api.identity.key_pem,
            ))
            .timeout(Duration::from_secs(10));
        if let Some(ca) = &api.client_ca {
            tls = tls
                .client_ca_root(tonic::transport::Certificate::from_pem(&ca.pem))
                .client_auth_optional(true);
        }
        grpc = grpc.tls_config(tls)?;
    }
    // Measured outermost, so refused calls count too; the identity before the gate, so the
    // gate sees the caller's client certificate.
    let grpc = grpc
        .layer(muster_api::grpc::MeasureLayer(cluster.telemetry().clone()))
        .layer(tower::util::MapResponseLayer::new(
            muster_api::grpc::decode_errors_are_invalid_argument,
        ))
        .layer(tower::util::MapRequestLayer::new(
            muster_api::grpc::identify,
        ))
        .layer(muster_api::access::GrpcGate(gate.clone()))
        .add_routes(muster_api::grpc::routes(
            cluster.clone(),
            gate.clone(),
            stop_rx.clone(),
        ))
        .serve_with_incoming_shutdown(
            guard::grpc_incoming(listeners.grpc, limits),
            stopped(stop_rx.clone()),
        );
    // The console's event streams end when the node stops, so shutdown does not wait for them.
    let router = muster_api::rest::router(cluster.clone(), gate.clone())
        .layer(axum::Extension(muster_api::rest::Stop(stop_rx.clone())));
    let http: futures::future::BoxFuture<'static, std::io::Result<()>> = match &listeners.tls.api {
        Some(api) => {
            let config = muster_tls::https_server_config(&api.identity, api.client_ca.as_ref())
                .map_err(|e| NodeError::Config(format!("--tls-cert: {e}")))?;
            Box::pin(
                axum::serve(
                    guard::Guarded::new(tls::TlsListener::new(listeners.http, config), limits),
                    guard::Tracked(tls::Identify(router)),
                )
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
            )
        }
        None => Box::pin(
            axum::serve(
                guard::Guarded::new(listeners.http, limits),
                guard::Tracked(router),
            )
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
        ),
    };
    // Raft between nodes, on its own listener only; with mutual TLS when configured.
    let peer = match listeners.peer {
        Some(l) => {
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = &listeners.tls.peer {
                server = server.tls_config(muster_cluster::PeerService::tls_config(tls))?;
            }
            Some(
                server
                    .add_service(muster_cluster::PeerService::server(cluster.clone()))
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(l),
                        stopped(stop_rx.clone()),
                    ),
            )
        }
        None => None,
    };

    if cfg.dispatch.brokers.is_empty() {
        tracing::warn!("no MQTT broker configured (--mqtt-url): jobs advance but reach no device");
    }
    let credentials = tokio::spawn(credentials::run(
        cluster.clone(),
        data_dir.clone(),
        host,
        admin_key,
        stop_rx.clone(),
    ));
    let leader = tokio::spawn(leader::run(
        cluster.clone(),
        cfg.dispatch.clone(),
        cfg.retention.limits()?,
        stop_rx.clone(),
    ));
    if let Some(dev) = &cfg.dev {
        dev.device_auth.set(dev::device_auth(
            &cluster,
            dev,
            cfg.dispatch.brokers.first().map(String::as_str),
            stop_rx.clone(),
        ));
    }
    let gateway = match (listeners.gateway, &cfg.device_gateway) {
        (Some(listener), Some(g)) => {
            if cfg.dispatch.brokers.is_empty() {
                return Err(NodeError::Config(
                    "device_gateway needs a broker to forward devices to (--mqtt-url)".into(),
                ));
            }
            if !muster_mqtt::credentials::valid_user_name(&g.username) {
                return Err(NodeError::Config(format!(
                    "device_gateway.username {:?} cannot be a broker user name (no ':', '+', '#', '/' or spaces)",
                    g.username
                )));
            }
            let password = muster_mqtt::read_secret_file(&g.password_file)
                .map_err(|e| NodeError::Config(format!("device_gateway.password_file: {e}")))?;
            let brokers = cfg
                .dispatch
                .endpoints()
                .map_err(|e| NodeError::Config(format!("dispatch: {e}")))?;
            let tls = match &listeners.tls.api {
                Some(api) => {
                    let mut config =
                        muster_tls::https_server_config(&api.identity, api.client_ca.as_ref())
                            .map_err(|e| NodeError::Config(format!("--tls-cert: {e}")))?;
                    // MQTT, not HTTP: no ALPN offered.
                    std::sync::Arc::make_mut(&mut config).alpn_protocols.clear();
                    Some(tokio_rustls::TlsAcceptor::from(config))
                }
                None => None,
            };
            tracing::info!(
                addr = %local(&listener)?,
                tls = tls.is_some(),
                "device gateway: devices log in with their SAS tokens here"
            );
            Some(tokio::spawn(
                gateway::Gateway {
                    listener,
                    tls,
                    cluster: cluster.clone(),
                    login: (g.username.clone(), password),
                    brokers,
                    max_connections: g.max_connections,
                }
                .run(stop_rx.clone()),
            ))
        }
        _ => None,
    };
    let fleet = match (&cfg.dev, cfg.dispatch.brokers.first()) {
        (Some(dev), Some(url)) => {
            cluster.wait_for_leader(Duration::from_secs(30)).await?;
            let fleet = dev::start_fleet(&cluster, dev, url.clone()).await?;
            tracing::info!(devices = dev.devices, "dev mode: simulated fleet connected");
            Some(fleet)
        }
        _ => None,
    };
    let mut grpc = tokio::spawn(grpc);
    let mut http = tokio::spawn(http);
    let peer = peer.map(tokio::spawn);
    // A Raft core that stopped by itself (a storage error, a panic) never comes back: every
    // call would fail, so the node stops and says so to its supervisor (exit non-zero).
    let core_stopped = tokio::select! {
        () = shutdown => None,
        why = cluster.wait_core_stopped() => {
            tracing::error!("the Raft core has stopped ({why}); shutting the node down");
            Some(why)
        }
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(10);
    match tokio::time::timeout(grace, async { ((&mut grpc).await, (&mut http).await) }).await {
        Ok((g, h)) => {
            if let Ok(Err(e)) = g {
                tracing::warn!("gRPC server: {e}");
            }
            if let Ok(Err(e)) = h {
                tracing::warn!("REST server: {e}");
            }
        }
        Err(_) => {
            tracing::warn!("requests still running after {grace:?}; stopping anyway");
            // Cancelled and awaited here, not left to the runtime's teardown: a server task
            // holds the cluster, and the store must close while the runtime still runs (a
            // store dropped during the teardown hung in sled's flush; BENCHMARKS.md, session 18).
            grpc.abort();
            http.abort();
            let _ = (grpc.await, http.await);
        }
    }
    if let Some(mut p) = peer {
        // Raft RPCs are short; the peer server stops with Raft below either way.
        match tokio::time::timeout(Duration::from_secs(2), &mut p).await {
            Ok(Ok(Err(e))) => tracing::warn!("peer server: {e}"),
            Ok(_) => {}
            Err(_) => {
                p.abort();
                let _ = p.await;
            }
        }
    }
    let _ = leader.await;
    let _ = credentials.await;
    if let Some(g) = gateway {
        let _ = g.await;
    }
    if let Some(f) = fleet {
        f.shutdown().await;
    }
    cluster.shutdown().await;
    match core_stopped {
        Some(why) => Err(NodeError::Cluster(ClusterError::Fatal(format!(
            "the Raft core stopped: {why}"
        )))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_lists_parse_and_bad_ones_say_what_to_fix() {
        let p = parse_peers(" 1=127.0.0.1:7001, 2=h2:7002,3=h3:7003 ").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "h2:7002");
        assert!(parse_peers("").unwrap().is_empty());
        for bad in ["1", "x=h:1", "1=h", "1=h:1,1=h:2"] {
            let e = parse_peers(bad).unwrap_err().to_string();
            assert!(e.contains("peers"), "{bad}: {e}");
        }
    }

    #[test]
    fn sled_cache_outside_its_range_is_refused_by_name() {
        assert!(NodeConfig::default().check().is_ok());
        for bad in [0, MIN_SLED_CACHE_MIB - 1, MAX_SLED_CACHE_MIB + 1] {
            let cfg = NodeConfig {
                sled_cache_mib: bad,
                ..NodeConfig::default()
            };
            let e = cfg.check().unwrap_err().to_string();
            assert!(e.contains("sled_cache_mib"), "{bad}: {e}");
        }
    }
}
