//! An embedded MQTT broker (rumqttd) for `muster serve --dev`, so a first run needs nothing
//! installed.
//!
//! It refuses anonymous clients: every connection must log in with one of the user names and
//! passwords it was started with (rumqttd's static logins, compared in constant time). rumqttd
//! 0.20 has no per-topic ACLs (only a tenant prefix tied to client certificates, which does not
//! fit the device protocol's topics), so a client that has a login may still use any topic: the
//! per-device isolation of a secured deployment needs Mosquitto with the ACL file `muster device
//! credentials` writes (deploy/mosquitto/).
//!
//! rumqttd binds inside its own threads and does not report the bound address, so port 0 is
//! resolved here first (bind, read the port, release it, hand it to rumqttd; a tiny race with
//! another process taking the port in between is accepted for a dev convenience). The broker
//! runs until the process exits: rumqttd offers no way to stop it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::error;

use muster_mqtt::Secret;

use crate::DevsimError;

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://ip:port`, what the dispatcher's and the fleet's configuration take.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Checks a device's login (client id, user name, password), e.g. its IoT Hub SAS token.
pub type DeviceAuthFn = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Where the check of device logins goes once the node that can verify them is up: the broker
/// starts before the node's state exists, so the check is handed in later; until then only the
/// static logins get in.
#[derive(Clone, Default)]
pub struct DeviceAuthSlot(Arc<OnceLock<DeviceAuthFn>>);

impl DeviceAuthSlot {
    /// Installs the check (once; later calls are ignored).
    pub fn set(&self, check: DeviceAuthFn) {
        let _ = self.0.set(check);
    }

    fn check(&self, client_id: &str, user: &str, password: &str) -> bool {
        self.0.get().is_some_and(|f| f(client_id, user, password))
    }
}

impl std::fmt::Debug for DeviceAuthSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceAuthSlot(set: {})", self.0.get().is_some())
    }
}

impl PartialEq for DeviceAuthSlot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest publish the embedded broker accepts: a 128 KiB method payload plus topic and margin.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Starts rumqttd on `listen` (port 0 picks a free port), accepting only clients that log in
/// with one of `logins` (user name, password), and returns once it accepts connections.
pub fn start_embedded(
    listen: SocketAddr,
    logins: &[(String, Secret)],
) -> Result<EmbeddedBroker, DevsimError> {
    start_embedded_with(listen, logins, None)
}

/// As [`start_embedded`], and clients that are none of `logins` are let in when `devices`
/// accepts their login (rumqttd's auth hook, called on every CONNECT).
pub fn start_embedded_with(
    listen: SocketAddr,
    logins: &[(String, Secret)],
    devices: Option<DeviceAuthSlot>,
) -> Result<EmbeddedBroker, DevsimError> {
    if logins.is_empty() {
        return Err(DevsimError::Broker(
            "the embedded broker needs at least one login: it refuses anonymous clients".into(),
        ));
    }
    let auth: HashMap<String, String> = logins
        .iter()
        .map(|(u, p)| (u.clone(), p.expose().to_string()))
        .collect();
    let addr = if listen.port() == 0 {
        let l = TcpListener::bind(listen).map_err(|e| DevsimError::Broker(e.to_string()))?;
        let a = l
            .local_addr()
            .map_err(|e| DevsimError::Broker(e.to_string()))?;
        drop(l);
        a
    } else {
        listen
    };
    let server = ServerSettings {
        name: "muster-dev".to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD_BYTES,
            max_inflight_count: 1000,
            auth: devices.is_none().then(|| auth.clone()),
            external_auth: devices.map(|slot| -> rumqttd::AuthHandler {
                let auth = Arc::new(auth);
                Arc::new(move |client_id: String, user: String, password: String| {
                    let ok = match auth.get(&user) {
                        Some(p) => ct_eq(p.as_bytes(), password.as_bytes()),
                        None => slot.check(&client_id, &user, &password),
                    };
                    Box::pin(async move { ok })
                })
            }),
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            // A fleet of 100,000 simulated devices uses ~100 connections, but real devices
            // connect one each.
            max_connections: 200_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("muster-mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| DevsimError::Broker(e.to_string()))?;
    let connect_to = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&connect_to, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker { addr: connect_to });
        }
        if Instant::now() > deadline {
            return Err(DevsimError::Broker(format!(
                "embedded broker did not start listening on {addr}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
