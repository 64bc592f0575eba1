//! Dev mode (`muster serve --dev`): an embedded MQTT broker and a registered, simulated fleet, so
//! a new user can create a job and watch it finish with nothing else installed.

use std::net::SocketAddr;

use muster_cluster::{now, Cluster};
use muster_devsim::broker::{start_embedded, EmbeddedBroker};
use muster_devsim::{Fleet, FleetConfig};
use muster_domain::{Command, DeviceRegistration};
use muster_types::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::json;

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
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            devices: 100,
            fail_rate: 0.0,
            latency_ms: 20,
            mqtt_addr: "127.0.0.1:1884".into(),
        }
    }
}

/// Starts the embedded broker; the caller points the dispatcher at its URL.
pub fn start_broker(cfg: &DevConfig) -> Result<EmbeddedBroker, NodeError> {
    let addr: SocketAddr = cfg
        .mqtt_addr
        .parse()
        .map_err(|e| NodeError::Config(format!("dev.mqtt_addr {:?}: {e}", cfg.mqtt_addr)))?;
    start_embedded(addr).map_err(|e| NodeError::Io(e.to_string()))
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
                    tags: json!({"simulated": true}),
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
