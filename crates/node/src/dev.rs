//! Dev mode (`muster serve --dev`): an embedded MQTT broker and a registered, simulated fleet, so
//! a new user can create a job and watch it finish with nothing else installed.

use std::net::SocketAddr;
use std::sync::Arc;

use muster_cluster::{now, Cluster};
use muster_devsim::broker::{start_embedded_with, DeviceAuthSlot, EmbeddedBroker};
use muster_devsim::{Fleet, FleetConfig, FleetLogin};
use muster_domain::{Command, DeviceRegistration};
use muster_mqtt::credentials::random_password;
use muster_mqtt::Secret;
use muster_types::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::sessions::{follow, Sessions};
use crate::NodeError;

/// The simulated fleet of dev mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Simulated devices, registered as `sim-000001`, `sim-000002`, ...
    pub devices: usize,
    /// Share of method calls that answer with an error status (0.0 - 1.0).
    pub fail_rate: f64,
    /// How long a simulated device takes to answer.
    pub latency_ms: u64,
    /// Where the embedded broker listens (port 0 picks one).
    pub mqtt_addr: String,
    /// How the simulated fleet logs in to the embedded broker (set by [`start_broker`]).
    #[serde(skip)]
    pub fleet_login: FleetLogin,
    /// Devices other than the simulated fleet log in to the embedded broker with their IoT Hub
    /// SAS tokens, checked against the registry once the node runs (see [`device_auth`]).
    #[serde(skip)]
    pub device_auth: DeviceAuthSlot,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            devices: 100,
            fail_rate: 0.0,
            latency_ms: 20,
            mqtt_addr: "127.0.0.1:1884".into(),
            fleet_login: FleetLogin::Anonymous,
            device_auth: DeviceAuthSlot::default(),
        }
    }
}

/// The dispatcher's user name on the embedded broker.
pub const DEV_DISPATCHER_USER: &str = muster_mqtt::credentials::DEFAULT_DISPATCHER_USER;
/// The simulated fleet's user name on the embedded broker.
pub const DEV_FLEET_USER: &str = "muster-devsim";

/// The embedded broker of dev mode and the logins it accepts (fresh random passwords each
/// start): one for the dispatcher, one shared by the simulated fleet.
#[derive(Debug, Clone)]
pub struct DevBroker {
    pub broker: EmbeddedBroker,
    pub dispatcher: (String, Secret),
    pub fleet: (String, Secret),
}

/// Starts the embedded broker, which refuses anonymous clients; the caller points the
/// dispatcher at its URL with [`DevBroker::dispatcher`]'s login and hands the fleet's login to
/// [`DevConfig::fleet_login`].
pub fn start_broker(cfg: &DevConfig) -> Result<DevBroker, NodeError> {
    let addr: SocketAddr = cfg
        .mqtt_addr
        .parse()
        .map_err(|e| NodeError::Config(format!("dev.mqtt_addr {:?}: {e}", cfg.mqtt_addr)))?;
    let random = || random_password().map_err(|e| NodeError::Io(e.to_string()));
    let dispatcher = (DEV_DISPATCHER_USER.to_string(), random()?);
    let fleet = (DEV_FLEET_USER.to_string(), random()?);
    let broker = start_embedded_with(
        addr,
        &[dispatcher.clone(), fleet.clone()],
        Some(cfg.device_auth.clone()),
    )
    .map_err(|e| NodeError::Io(e.to_string()))?;
    Ok(DevBroker {
        broker,
        dispatcher,
        fleet,
    })
}

/// Registers the simulated devices (idempotently: a restarted dev node upserts them) and
/// connects them to the broker.
pub(crate) async fn start_fleet(
    cluster: &Cluster,
    cfg: &DevConfig,
    broker_url: String,
) -> Result<Fleet, NodeError> {
    let fleet_cfg = FleetConfig {
        brokers: vec![broker_url],
        devices: cfg.devices,
        fail_rate: cfg.fail_rate,
        latency_ms: cfg.latency_ms,
        login: cfg.fleet_login.clone(),
        ..FleetConfig::default()
    };
    let ids = fleet_cfg.device_ids();
    for chunk in ids.chunks(5_000) {
        let devices = chunk
            .iter()
            .map(|id| {
                Ok(DeviceRegistration {
                    id: DeviceId::new(id.as_str())
                        .map_err(|e| NodeError::Config(format!("simulated device id: {e}")))?,
                    display_name: id.clone(),
                    model_id: Some(fleet_cfg.model_id.clone()),
                    enabled: true,
                    tags: json!({"simulated": true}).into(),
                })
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        cluster
            .write(Command::RegisterDevices {
                devices,
                upsert: true,
                at: now(),
            })
            .await?;
    }
    Fleet::start(fleet_cfg)
        .await
        .map_err(|e| NodeError::Io(format!("simulated fleet: {e}")))
}

/// The embedded broker's check of a device's login: its SAS token against the registry as this
/// node last applied it, at this node's clock (the rule is `authenticate_device`'s). A device let
/// in is remembered with its keys; when it is disabled, deleted or given new keys, the node
/// ends its session on the broker at `broker_url` by connecting under its client id with the
/// fleet's login (MQTT: a new connection with a client id replaces the old one) and leaving.
pub(crate) fn device_auth(
    cluster: &Cluster,
    cfg: &DevConfig,
    broker_url: Option<&str>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> muster_devsim::broker::DeviceAuthFn {
    let sessions = Arc::new(Sessions::<()>::default());
    let takeover = match (&cfg.fleet_login, broker_url) {
        (FleetLogin::Shared { username, password }, Some(url)) => Some((
            url.trim_start_matches("mqtt://").to_string(),
            username.clone(),
            password.clone(),
        )),
        _ => None,
    };
    if let Some((addr, user, password)) = takeover {
        tokio::spawn(follow(
            cluster.clone(),
            sessions.clone(),
            stop,
            move |device, ()| {
                let (addr, user, password) = (addr.clone(), user.clone(), password.clone());
                tokio::spawn(async move {
                    if let Err(e) = take_over(&addr, &device, &user, &password).await {
                        tracing::warn!(%device, "embedded broker: could not end the session: {e}");
                    }
                });
            },
        ));
    }
    let cluster = cluster.clone();
    Arc::new(move |client_id: &str, user: &str, password: &str| {
        let now_ms = now().millis();
        let verdict = cluster.reader().read(|s| {
            muster_domain::auth::authenticate_device(&s.registry, client_id, user, password, now_ms)
                .map(|id| {
                    let keys = s
                        .registry
                        .devices
                        .get(&id)
                        .and_then(|d| d.keys.as_deref().cloned());
                    (id, keys)
                })
        });
        match verdict {
            Ok((id, Some(keys))) => {
                sessions.replace(&id, keys, ());
                true
            }
            Ok((_, None)) => false,
            Err(why) => {
                tracing::debug!(client_id, "embedded broker: device login refused: {why}");
                false
            }
        }
    })
}

/// Connects to the broker at `addr` as `device`'s client id with a static login and leaves,
/// which ends the device's own session there.
async fn take_over(
    addr: &str,
    device: &DeviceId,
    user: &str,
    password: &Secret,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| e.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    s.write_all(&crate::gateway::connect_packet(
        device.as_str(),
        user,
        password.expose(),
    ))
    .await
    .map_err(io)?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut ack))
        .await
        .map_err(|_| "no CONNACK in time".to_string())?
        .map_err(io)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(format!("refused: {ack:?}"));
    }
    s.write_all(&[0xe0, 0x00]).await.map_err(io)?;
    Ok(())
}
