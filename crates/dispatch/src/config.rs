//! The dispatcher's settings; the node embeds them in its figment configuration (section
//! `[dispatch]`), so every field has a default and unknown fields are refused.

use std::path::PathBuf;
use std::time::Duration;

use muster_mqtt::{Endpoint, MqttError, Secret, TlsFiles};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Broker URLs (`mqtt://host:port`, or `mqtts://host:port` for TLS). Devices are spread over
    /// them by [`broker_index`](crate::protocol::broker_index); each gets its own connection.
    pub brokers: Vec<String>,
    /// For `mqtts://` brokers: the CA certificate(s) (PEM) the broker's certificate must chain
    /// to; without it the system's trust store is used.
    pub ca_file: Option<PathBuf>,
    /// For `mqtts://` brokers that want one: a client certificate chain (PEM) and its key.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// The dispatcher's broker login (`muster device credentials --dispatcher-user`).
    pub username: Option<String>,
    /// Its password, inline (`MUSTER_DISPATCH__PASSWORD`); prefer `password_file`.
    pub password: Option<Secret>,
    /// A file holding the password (surrounding whitespace ignored).
    pub password_file: Option<PathBuf>,
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
    /// Largest MQTT packet sent, and largest message handled: a larger one a device or the
    /// broker delivers is skipped with a warning (never a reconnect). Method payloads may be
    /// 128 KiB of JSON. Keep it at most the broker's own limit (Mosquitto `max_packet_size`),
    /// which is also what bounds the memory one oversized delivery can take.
    pub max_packet_bytes: usize,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            brokers: vec!["mqtt://127.0.0.1:1883".to_string()],
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username: None,
            password: None,
            password_file: None,
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
    /// The brokers with their TLS configuration (reads the CA and client certificate files).
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, MqttError> {
        muster_mqtt::endpoints(
            &self.brokers,
            &TlsFiles {
                ca_file: self.ca_file.clone(),
                client_cert_file: self.client_cert_file.clone(),
                client_key_file: self.client_key_file.clone(),
            },
        )
    }

    /// The login, if any (reads `password_file`).
    pub fn login(&self) -> Result<Option<(String, Secret)>, MqttError> {
        let bad = |m: &str| Err(MqttError::Credentials(m.to_string()));
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return bad("give dispatch.password or dispatch.password_file, not both")
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(muster_mqtt::read_secret_file(f)?),
            (None, None) => None,
        };
        match (&self.username, password) {
            (Some(u), p) => Ok(Some((u.clone(), p.unwrap_or_else(|| Secret::new(""))))),
            (None, Some(_)) => bad("a dispatch password needs dispatch.username (--mqtt-username)"),
            (None, None) => Ok(None),
        }
    }

    /// Checks what can be checked before connecting: the URLs, the TLS files, the login.
    pub fn check(&self) -> Result<(), MqttError> {
        self.endpoints()?;
        self.login()?;
        Ok(())
    }

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

    #[test]
    fn logins_and_tls_settings_are_checked() {
        let base = DispatchConfig::default();
        assert_eq!(base.login().unwrap(), None);
        let c: DispatchConfig =
            serde_json::from_str(r#"{"username":"disp","password":"pw"}"#).unwrap();
        let (u, p) = c.login().unwrap().unwrap();
        assert_eq!((u.as_str(), p.expose()), ("disp", "pw"));
        assert!(!format!("{c:?}").contains("\"pw\""), "{c:?}");
        let no_user = DispatchConfig {
            password: Some(Secret::new("pw")),
            ..DispatchConfig::default()
        };
        assert!(no_user.check().is_err());
        let both = DispatchConfig {
            password_file: Some("/nonexistent".into()),
            ..c.clone()
        };
        assert!(both.check().is_err());
        let missing_file = DispatchConfig {
            username: Some("disp".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..DispatchConfig::default()
        };
        assert!(missing_file
            .check()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/pw"));
        // A CA for a plain mqtt:// broker is a mistake (the `s` was forgotten).
        let plain_with_ca = DispatchConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..DispatchConfig::default()
        };
        assert!(plain_with_ca.check().is_err());
        let tls = DispatchConfig {
            brokers: vec!["mqtts://b".into()],
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..DispatchConfig::default()
        };
        assert!(tls.check().unwrap_err().to_string().contains("ca.pem"));
    }
}
