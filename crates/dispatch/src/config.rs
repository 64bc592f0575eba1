//! The dispatcher's settings; the node embeds them in its figment configuration (section
//! `[dispatch]`), so every field has a default and unknown fields are refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Broker URLs (`mqtt://host:port`). Devices are spread over them by
    /// [`broker_index`](crate::protocol::broker_index); each gets its own connection.
    pub brokers: Vec<String>,
    /// Prefix of the MQTT client ids; the broker index, process id and a start-time suffix are
    /// appended so that two leaders (an old one not yet stopped and a new one) never take each
    /// other's session.
    pub client_id_prefix: String,
    /// Attempts on the wire at once (sent and not yet answered and recorded). This is the
    /// `max_dispatch` handed to the core, so a batch of 100,000 is fed in as slots free up.
    pub max_in_flight: usize,
    /// Answers per `RecordDeviceResults` command at most.
    pub result_batch_size: usize,
    /// How long the first answer of a batch may wait for others before the batch is proposed.
    pub result_batch_interval_ms: u64,
    /// `RecordDeviceResults` proposals under way at once (pipelining through Raft).
    pub max_result_proposals: usize,
    /// Presence changes (or reported-property patches) per `SetConnections`
    /// (`ReportPropertiesBatch`) command at most; they wait `result_batch_interval_ms` at most.
    pub registry_batch_size: usize,
    /// `SetConnections` / `ReportPropertiesBatch` proposals under way at once.
    pub max_registry_proposals: usize,
    /// Shortest pause between two computations of the leader's actions, so a stream of applied
    /// entries does not recompute them for every entry.
    pub recompute_interval_ms: u64,
    /// MQTT keep-alive.
    pub keep_alive_secs: u64,
    /// Unacknowledged QoS 1 publishes per connection (rumqttc's `inflight`).
    pub mqtt_inflight: u16,
    /// Requests queued to each connection's event loop.
    pub mqtt_channel_capacity: usize,
    /// Largest MQTT packet sent or accepted; method payloads may be 128 KiB of JSON.
    pub max_packet_bytes: usize,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            brokers: vec!["mqtt://127.0.0.1:1883".to_string()],
            client_id_prefix: "muster-dispatch".to_string(),
            max_in_flight: 10_000,
            result_batch_size: 1000,
            result_batch_interval_ms: 5,
            max_result_proposals: 4,
            registry_batch_size: 1000,
            max_registry_proposals: 4,
            recompute_interval_ms: 5,
            keep_alive_secs: 30,
            mqtt_inflight: 1000,
            mqtt_channel_capacity: 10_000,
            max_packet_bytes: 256 * 1024,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

impl DispatchConfig {
    pub(crate) fn batch_interval(&self) -> Duration {
        Duration::from_millis(self.result_batch_interval_ms.max(1))
    }

    pub(crate) fn recompute_interval(&self) -> Duration {
        Duration::from_millis(self.recompute_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_config_keeps_defaults() {
        let c: DispatchConfig =
            serde_json::from_str(r#"{"brokers":["mqtt://a:1","mqtt://b:2"],"max_in_flight":5}"#)
                .unwrap();
        assert_eq!(c.brokers.len(), 2);
        assert_eq!(c.max_in_flight, 5);
        assert_eq!(
            c.result_batch_size,
            DispatchConfig::default().result_batch_size
        );
        assert!(serde_json::from_str::<DispatchConfig>(r#"{"nope":1}"#).is_err());
    }
}
