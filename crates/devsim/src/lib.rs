//! A simulated device fleet speaking muster's MQTT device protocol (design.md, "MQTT device
//! protocol"): for tests, benchmarks and `muster serve --dev`.
//!
//! Many devices share few MQTT connections (by default one per 1000 devices), so 100,000 devices
//! are feasible. Each connection subscribes per device (`devices/{id}/methods/POST/#` and
//! `devices/{id}/twin/PATCH/properties/desired/#`, many filters per SUBSCRIBE packet) rather than
//! to wildcards: a connection then receives only its own devices' traffic, fleets sharing a broker
//! (parallel tests) do not see each other's, and the broker's per-client queue (Mosquitto: 1000
//! QoS 1 messages) is never shared by more devices than a connection holds.
//!
//! A device:
//! - answers a method request after `latency_ms` (+ up to `jitter_ms`) with 200 and
//!   `{"device", "method", "ok": true, "payload"}`; or, with probability `fail_rate` (decided by a
//!   seeded RNG from the device and rid, so a rerun of the same test fails the same devices), with
//!   `fail_status` and `{"error": ...}`;
//! - recognises a duplicate request (same method and rid: the dispatcher resends after a leader
//!   change or a reconnect) and answers it again from its cache without running it again;
//! - applies desired-property patches newer than its `$version` and reports them back as
//!   reported properties (an echo of the patch);
//! - publishes retained presence: `online` at start, `offline` for the `offline_share` and on
//!   [`Fleet::shutdown`], which then clears the retained messages (an empty retained
//!   payload) so a broker does not keep gone fleets' presence forever. An MQTT will belongs to a connection, not a device: each connection's
//!   will marks only its first device `offline`, so after a crash (no clean shutdown) the other
//!   devices' retained `online` goes stale. With per-device logins ([`FleetLogin::PerDevice`])
//!   each device has its own connection, and so its own will.
//! - Offline devices ignore requests (they are not there to receive them); silent devices
//!   receive and never answer (for timeout tests).

pub mod broker;
mod fleet;
mod rng;

use muster_mqtt::{Secret, TlsFiles};
use serde::{Deserialize, Serialize};

pub use fleet::{Fleet, FleetStats};

/// How the fleet logs in to its brokers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FleetLogin {
    /// Anonymously.
    #[default]
    Anonymous,
    /// Every connection with one login (dev mode's embedded broker, or a broker without
    /// per-device ACLs); devices share connections as without a login.
    Shared { username: String, password: Secret },
    /// Each device as itself: user name = device id, password =
    /// `base64(HMAC-SHA256(secret, device id))` (`muster device credentials` provisions the same
    /// for Mosquitto). One connection per device, since a broker checks topics per login.
    PerDevice { secret: Secret },
}

/// The fleet's settings (`muster devsim` flags map onto these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Broker URLs (`mqtt://host:port` or `mqtts://host:port`). With several, each device connects to the one muster's
    /// dispatcher expects it on: FNV-1a of the id modulo the number of brokers.
    pub brokers: Vec<String>,
    pub devices: usize,
    /// Device ids are `{prefix}-{n:06}`, n from 1.
    pub prefix: String,
    /// The model id (IoT Plug and Play / IoT Central template) to register the devices with.
    pub model_id: String,
    /// Probability that a method call fails, in [0, 1].
    pub fail_rate: f64,
    /// Status of a failed call.
    pub fail_status: i32,
    pub latency_ms: u64,
    /// Extra latency, uniform in [0, jitter_ms].
    pub jitter_ms: u64,
    /// Share of devices that start offline (exactly `round(devices * share)`, seeded).
    pub offline_share: f64,
    /// Share of devices that never answer (exactly `round(devices * share)`, seeded).
    pub silent_share: f64,
    /// Devices that never answer, by id, in addition to the share.
    pub silent: Vec<String>,
    /// Devices whose every call fails, by id, in addition to `fail_rate`.
    pub failing: Vec<String>,
    /// MQTT connections per broker; 0 picks one per 1000 devices.
    pub connections: usize,
    pub seed: u64,
    pub client_id_prefix: String,
    /// How long [`Fleet::start`] waits for every connection to be subscribed.
    pub ready_timeout_ms: u64,
    /// TLS files for `mqtts://` brokers.
    pub tls: TlsFiles,
    pub login: FleetLogin,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            brokers: vec!["mqtt://127.0.0.1:1883".to_string()],
            devices: 10,
            prefix: "sim".to_string(),
            model_id: "dtmi:muster:simulated;1".to_string(),
            fail_rate: 0.0,
            fail_status: 500,
            latency_ms: 0,
            jitter_ms: 0,
            offline_share: 0.0,
            silent_share: 0.0,
            silent: Vec::new(),
            failing: Vec::new(),
            connections: 0,
            seed: 1,
            client_id_prefix: "muster-devsim".to_string(),
            ready_timeout_ms: 30_000,
            tls: TlsFiles::default(),
            login: FleetLogin::Anonymous,
        }
    }
}

/// Devices per connection when `connections` is 0.
pub const DEVICES_PER_CONNECTION: usize = 1000;

impl FleetConfig {
    /// The ids the fleet will simulate, in order.
    pub fn device_ids(&self) -> Vec<String> {
        (1..=self.devices)
            .map(|n| device_id(&self.prefix, n))
            .collect()
    }
}

/// `{prefix}-{n:06}`.
pub fn device_id(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:06}")
}

/// Which of `n` brokers a device uses: FNV-1a of its id modulo `n`, the same rule as
/// `muster_dispatch::protocol::broker_index` (a test there checks they agree).
pub fn broker_index(device: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (rng::fnv1a(device.as_bytes()) % n as u64) as usize
}

#[derive(Debug, thiserror::Error)]
pub enum DevsimError {
    #[error("invalid fleet configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Mqtt(#[from] muster_mqtt::MqttError),
    #[error("the fleet's connections were not ready within {0} ms (is the broker running? are the logins right?)")]
    NotReady(u64),
    #[error("no simulated device {0:?}")]
    UnknownDevice(String),
    #[error("the fleet has stopped")]
    Stopped,
    #[error("embedded broker: {0}")]
    Broker(String),
}
