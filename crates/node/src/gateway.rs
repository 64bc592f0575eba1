//! The device gateway: where devices log in with their IoT Hub SAS tokens when the broker is
//! Mosquitto, which cannot check them (no HMAC in its password file, and the dynamic-security
//! plugin stores fixed passwords too).
//!
//! It reads a device's MQTT 3.1.1 CONNECT, checks it with
//! [`muster_domain::auth::authenticate_device`] against the registry as this node last applied it,
//! and refuses it with CONNACK 5 (not authorized) or 1 (not 3.1.1). An accepted CONNECT keeps
//! its client id (the device id) and goes to the device's broker (the dispatcher's FNV rule)
//! under the gateway's own broker login, so a device created a moment ago gets in without a new
//! line in Mosquitto's password file. Mosquitto lets that one login use the device side of every
//! device's topics; the gateway keeps each device to its own: it reads every packet the device
//! sends and closes the connection at the first PUBLISH, SUBSCRIBE or will outside
//! [`muster_domain::auth::device_may_publish`] / [`device_may_subscribe`], as IoT Hub closes a
//! connection that uses a topic it does not serve. What the broker sends is copied unread.
//!
//! Open sessions follow the registry: the gateway watches the applied events, and when a device
//! with a session is disabled, deleted or given new keys ([`device_session_holds`] no longer
//! holds) its connections are closed (the broker then publishes its will).
//! Over TLS with the REST listener's certificate when `[tls]` has one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_cluster::{now, Cluster};
use muster_domain::auth::{
    authenticate_device, device_may_publish, device_may_subscribe, device_session_holds,
    DeviceAuthFailure,
};
use muster_mqtt::{Endpoint, Secret};
use muster_types::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::sessions::{follow, Sessions};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `[device_gateway]`: where devices connect with SAS tokens (flags `--device-gateway-addr`,
/// `--device-gateway-password-file`, `--device-gateway-user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on (`HOST:PORT`).
    pub listen: String,
    /// The gateway's broker user name (`muster device credentials --gateway-user`).
    #[serde(default = "default_username")]
    pub username: String,
    /// A file holding the gateway's broker password (`muster device credentials
    /// --gateway-password-file` writes its login).
    pub password_file: PathBuf,
    /// Device connections held at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl GatewayConfig {
    /// A gateway on `listen` logging in to the broker as `muster-gateway` with the password in
    /// `password_file`.
    pub fn new(listen: &str, password_file: &Path) -> GatewayConfig {
        GatewayConfig {
            listen: listen.to_string(),
            username: default_username(),
            password_file: password_file.to_path_buf(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_username() -> String {
    muster_mqtt::credentials::DEFAULT_GATEWAY_USER.to_string()
}

fn default_max_connections() -> usize {
    10_000
}

/// A CONNECT larger than this is refused (a SAS token is a few hundred bytes; a will message
/// is the only large part).
const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// The largest packet a device may send after its CONNECT: IoT Hub's 256 KB message limit
/// with room for the topic (muster's method answers are limited to 128 KB).
const MAX_PACKET_BYTES: usize = 512 * 1024;
/// How long a device may take to complete TLS and send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// CONNACK return codes of MQTT 3.1.1.
const UNACCEPTABLE_PROTOCOL: u8 = 1;
const NOT_AUTHORIZED: u8 = 5;

pub(crate) struct Gateway {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub cluster: Cluster,
    /// The gateway's own broker login (user, password).
    pub login: (String, Secret),
    pub brokers: Vec<Endpoint>,
    pub max_connections: usize,
}

impl Gateway {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let sessions = Arc::new(Sessions::default());
        tokio::spawn(follow(
            self.cluster.clone(),
            sessions.clone(),
            stop.clone(),
            |_, cut: oneshot::Sender<()>| {
                let _ = cut.send(());
            },
        ));
        let shared = Arc::new(Shared {
            cluster: self.cluster,
            login: self.login,
            brokers: self.brokers,
            sessions,
        });
        let slots = Arc::new(Semaphore::new(self.max_connections.max(1)));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("device gateway: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let shared = shared.clone();
            let tls = self.tls.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let served = async {
                    match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await
                            {
                                Ok(Ok(s)) => shared.serve(s).await,
                                Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                                Err(_) => Err("TLS handshake timed out".into()),
                            }
                        }
                        None => shared.serve(tcp).await,
                    }
                };
                tokio::select! {
                    r = served => if let Err(e) = r {
                        tracing::debug!(%addr, "device gateway: {e}");
                    },
                    _ = stop.changed() => {}
                }
            });
        }
    }
}

struct Shared {
    cluster: Cluster,
    login: (String, Secret),
    brokers: Vec<Endpoint>,
    /// Each open session's way to close it.
    sessions: Arc<Sessions<oneshot::Sender<()>>>,
}

impl Shared {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut device: S) -> Result<(), String> {
        let body = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut device))
            .await
            .map_err(|_| "no CONNECT in time".to_string())??;
        let connect = match Connect::parse(&body) {
            Ok(c) => c,
            Err(Refusal::Protocol(why)) => {
                refuse(&mut device, UNACCEPTABLE_PROTOCOL).await;
                return Err(why.into());
            }
            Err(Refusal::Malformed(why)) => return Err(format!("malformed CONNECT: {why}")),
        };
        let (user, password) = match (&connect.user, &connect.password) {
            (Some(u), Some(p)) => (
                String::from_utf8_lossy(u).into_owned(),
                String::from_utf8_lossy(p).into_owned(),
            ),
            _ => {
                refuse(&mut device, NOT_AUTHORIZED).await;
                return Err("a CONNECT without user name or password".into());
            }
        };
        let client_id = String::from_utf8_lossy(&connect.client_id).into_owned();
        let now_ms = now().millis();
        let verdict = self.cluster.reader().read(|s| {
            authenticate_device(&s.registry, &client_id, &user, &password, now_ms).and_then(|id| {
                let keys = s.registry.devices.get(&id).and_then(|d| d.keys.clone());
                keys.map(|k| (id, k)).ok_or(DeviceAuthFailure::NoKeys)
            })
        });
        let (id, keys) = match verdict {
            Ok(v) => v,
            Err(why) => {
                refuse(&mut device, NOT_AUTHORIZED).await;
                return Err(format!("refused {client_id:?}: {why}"));
            }
        };
        if let Some((topic, _)) = &connect.will {
            if !std::str::from_utf8(topic).is_ok_and(|t| device_may_publish(id.as_str(), t)) {
                refuse(&mut device, NOT_AUTHORIZED).await;
                return Err(format!("refused {id}: a will on another device's topic"));
            }
        }
        let (cut_tx, cut) = oneshot::channel();
        let _registered = self.sessions.register(&id, (*keys).clone(), cut_tx);
        // A change applied between the check and the registration is not missed.
        if !self
            .cluster
            .reader()
            .read(|s| device_session_holds(&s.registry, &id, &keys))
        {
            refuse(&mut device, NOT_AUTHORIZED).await;
            return Err(format!(
                "refused {id}: its identity changed while it logged in"
            ));
        }
        let n = self.brokers.len();
        let broker = self
            .brokers
            .get(muster_dispatch::protocol::broker_index(id.as_str(), n))
            .ok_or("no broker configured")?;
        let login = connect.with_login(&self.login.0, self.login.1.expose());
        let tcp = TcpStream::connect((broker.host.as_str(), broker.port))
            .await
            .map_err(|e| format!("broker {}: {e}", broker.url))?;
        let _ = tcp.set_nodelay(true);
        tracing::debug!(device = %id, broker = %broker.url, "device gateway: device logged in");
        match broker.tls_config() {
            Some(config) => {
                let name = ServerName::try_from(broker.host.clone())
                    .map_err(|e| format!("broker host {:?}: {e}", broker.host))?;
                let up = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("broker {} TLS: {e}", broker.url))?;
                pipe(device, up, &login, &id, cut).await
            }
            None => pipe(device, tcp, &login, &id, cut).await,
        }
    }
}

/// Sends the rewritten CONNECT, then copies the broker's bytes to the device unread and the
/// device's packets to the broker one by one, each checked against the device's topics; ends
/// when either side closes, a packet is refused, or `cut` fires.
async fn pipe<D, U>(
    device: D,
    up: U,
    connect: &[u8],
    id: &DeviceId,
    cut: oneshot::Receiver<()>,
) -> Result<(), String>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (device_read, mut device_write) = tokio::io::split(device);
    let (mut up_read, mut up_write) = tokio::io::split(up);
    up_write
        .write_all(connect)
        .await
        .map_err(|e| format!("broker: {e}"))?;
    let upward = async {
        let mut from_device = BufReader::with_capacity(16 * 1024, device_read);
        let mut packet = Vec::new();
        loop {
            if !read_packet(&mut from_device, &mut packet).await? {
                return Ok(());
            }
            check_packet(id.as_str(), &packet)?;
            up_write
                .write_all(&packet)
                .await
                .map_err(|e| format!("broker: {e}"))?;
        }
    };
    // Either side closing ends the session; errors here are the usual disconnects.
    let downward = tokio::io::copy(&mut up_read, &mut device_write);
    tokio::select! {
        r = upward => r,
        _ = downward => Ok(()),
        _ = cut => Err(format!("{id}: session closed, the device was disabled, deleted or given new keys")),
    }
}

/// Reads one MQTT packet (fixed header and body) into `packet`; `false` at a clean end of
/// stream before a packet starts.
async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    packet: &mut Vec<u8>,
) -> Result<bool, String> {
    let io = |e: std::io::Error| e.to_string();
    packet.clear();
    let first = match s.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    packet.push(first);
    let mut len = 0usize;
    for i in 0..4 {
        let b = s.read_u8().await.map_err(io)?;
        packet.push(b);
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_PACKET_BYTES {
                return Err(format!("a packet of {len} bytes"));
            }
            let start = packet.len();
            packet.resize(start + len, 0);
            s.read_exact(&mut packet[start..]).await.map_err(io)?;
            return Ok(true);
        }
    }
    Err("bad remaining length".into())
}

/// Where the body of a whole packet starts (after the fixed header).
fn body(packet: &[u8]) -> &[u8] {
    let n = packet
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(packet.len(), |i| i + 2);
    packet.get(n..).unwrap_or_default()
}

/// Refuses a device's PUBLISH to, or SUBSCRIBE on, a topic that is not its own, and a second
/// CONNECT; every other packet passes.
fn check_packet(device: &str, packet: &[u8]) -> Result<(), String> {
    let kind = packet.first().map_or(0, |b| b >> 4);
    let mut r = Reader(body(packet));
    let bad = |what: &str, topic: &[u8]| {
        Err(format!(
            "{device}: {what} {:?} is not its own topic; connection closed",
            String::from_utf8_lossy(topic)
        ))
    };
    match kind {
        1 => Err(format!("{device}: a second CONNECT")),
        3 => {
            let topic = r
                .field()
                .map_err(|_| format!("{device}: malformed PUBLISH"))?;
            match std::str::from_utf8(topic) {
                Ok(t) if device_may_publish(device, t) => Ok(()),
                _ => bad("PUBLISH to", topic),
            }
        }
        8 => {
            let malformed = |_| format!("{device}: malformed SUBSCRIBE");
            r.byte().map_err(malformed)?;
            r.byte().map_err(malformed)?;
            if r.0.is_empty() {
                return Err(format!("{device}: a SUBSCRIBE without topics"));
            }
            while !r.0.is_empty() {
                let filter = r.field().map_err(malformed)?;
                r.byte().map_err(malformed)?;
                match std::str::from_utf8(filter) {
                    Ok(f) if device_may_subscribe(device, f) => {}
                    _ => return bad("SUBSCRIBE on", filter),
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn refuse<S: AsyncWrite + Unpin>(device: &mut S, code: u8) {
    let _ = device.write_all(&[0x20, 0x02, 0x00, code]).await;
    let _ = device.flush().await;
    let _ = device.shutdown().await;
}

/// A clean-session MQTT 3.1.1 CONNECT of `client_id` with a login and no will (dev mode ends a
/// device's session on its broker with one).
pub(crate) fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    Connect {
        flags: 0x02,
        keep_alive: [0, 10],
        client_id: client_id.as_bytes().to_vec(),
        will: None,
        user: None,
        password: None,
    }
    .with_login(user, password)
}

/// Reads the first packet, which must be a CONNECT, and returns its body (after the fixed
/// header).
async fn read_connect<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| e.to_string();
    let first = s.read_u8().await.map_err(io)?;
    if first != 0x10 {
        return Err(format!("the first packet is not a CONNECT (0x{first:02x})"));
    }
    let mut len = 0usize;
    for i in 0..4 {
        let b = s.read_u8().await.map_err(io)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_CONNECT_BYTES {
                return Err(format!("a CONNECT of {len} bytes"));
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.map_err(io)?;
            return Ok(body);
        }
    }
    Err("bad remaining length".into())
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Protocol(&'static str),
    Malformed(&'static str),
}

/// A CONNECT's fields (MQTT 3.1.1 section 3.1), kept as bytes so a rewrite changes only the
/// login.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Connect {
    flags: u8,
    keep_alive: [u8; 2],
    client_id: Vec<u8>,
    will: Option<(Vec<u8>, Vec<u8>)>,
    user: Option<Vec<u8>>,
    password: Option<Vec<u8>>,
}

const USER: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL: u8 = 0x04;

impl Connect {
    fn parse(body: &[u8]) -> Result<Connect, Refusal> {
        let mut r = Reader(body);
        let name = r.field()?;
        let level = r.byte()?;
        if name != b"MQTT" || level != 4 {
            return Err(Refusal::Protocol(
                "only MQTT 3.1.1 is served (as by IoT Hub)",
            ));
        }
        let flags = r.byte()?;
        if flags & 1 != 0 {
            return Err(Refusal::Malformed("reserved flag set"));
        }
        let keep_alive = [r.byte()?, r.byte()?];
        let client_id = r.field()?.to_vec();
        let will = if flags & WILL != 0 {
            Some((r.field()?.to_vec(), r.field()?.to_vec()))
        } else {
            None
        };
        let user = (flags & USER != 0).then(|| r.field()).transpose()?;
        let password = (flags & PASSWORD != 0).then(|| r.field()).transpose()?;
        if !r.0.is_empty() {
            return Err(Refusal::Malformed("bytes after the payload"));
        }
        Ok(Connect {
            flags,
            keep_alive,
            client_id,
            will,
            user: user.map(<[u8]>::to_vec),
            password: password.map(<[u8]>::to_vec),
        })
    }

    /// The whole packet, with this user name and password instead of the device's.
    fn with_login(&self, user: &str, password: &str) -> Vec<u8> {
        // Every field came from a length-prefixed field or is a short login: under u16::MAX.
        fn put(b: &mut Vec<u8>, f: &[u8]) {
            let n = u16::try_from(f.len()).unwrap_or(u16::MAX);
            b.extend_from_slice(&n.to_be_bytes());
            b.extend_from_slice(&f[..usize::from(n)]);
        }
        let mut body = Vec::new();
        put(&mut body, b"MQTT");
        body.push(4);
        body.push(self.flags | USER | PASSWORD);
        body.extend_from_slice(&self.keep_alive);
        put(&mut body, &self.client_id);
        if let Some((topic, message)) = &self.will {
            put(&mut body, topic);
            put(&mut body, message);
        }
        put(&mut body, user.as_bytes());
        put(&mut body, password.as_bytes());
        let mut out = vec![0x10];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Refusal> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(Refusal::Malformed("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn field(&mut self) -> Result<&'a [u8], Refusal> {
        let n = usize::from(u16::from_be_bytes([self.byte()?, self.byte()?]));
        if self.0.len() < n {
            return Err(Refusal::Malformed("truncated"));
        }
        let (f, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connect_is_rewritten_with_only_the_login_changed() {
        let c = Connect {
            flags: 0x02 | WILL | 0x08 | USER | PASSWORD,
            keep_alive: [0, 60],
            client_id: b"dev-1".to_vec(),
            will: Some((b"devices/dev-1/presence".to_vec(), b"offline".to_vec())),
            user: Some(b"hub/dev-1/?api-version=2021-04-12".to_vec()),
            password: Some(vec![b'x'; 300]),
        };
        let packet = c.with_login("hub/dev-1/?api-version=2021-04-12", &"x".repeat(300));
        assert_eq!(packet[0], 0x10);
        // A body over 127 bytes takes a two-byte length.
        assert!(packet[1] & 0x80 != 0);
        let len = usize::from(packet[1] & 0x7f) + 128 * usize::from(packet[2]);
        assert_eq!(len, packet.len() - 3);
        assert_eq!(Connect::parse(&packet[3..]).unwrap(), c);
        let rewritten = c.with_login("dev-1", "pw");
        let parsed = Connect::parse(&rewritten[2..]).unwrap();
        assert_eq!(parsed.user.as_deref(), Some(&b"dev-1"[..]));
        assert_eq!(parsed.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!((parsed.will, parsed.flags), (c.will, c.flags));
    }

    #[test]
    fn other_protocols_and_broken_packets_are_refused() {
        let mut v5 = c_bytes();
        v5[6] = 5;
        assert!(matches!(Connect::parse(&v5), Err(Refusal::Protocol(_))));
        let ok = c_bytes();
        assert!(Connect::parse(&ok).is_ok());
        for cut in 0..ok.len() {
            assert!(Connect::parse(&ok[..cut]).is_err(), "{cut}");
        }
        let mut reserved = c_bytes();
        reserved[7] |= 1;
        assert!(Connect::parse(&reserved).is_err());
    }

    fn publish(topic: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(b"payload");
        let mut p = vec![0x30, u8::try_from(body.len()).unwrap()];
        p.extend_from_slice(&body);
        p
    }

    fn subscribe(filters: &[&str]) -> Vec<u8> {
        let mut body = vec![0, 7];
        for f in filters {
            body.extend_from_slice(&u16::try_from(f.len()).unwrap().to_be_bytes());
            body.extend_from_slice(f.as_bytes());
            body.push(1);
        }
        let mut p = vec![0x82, u8::try_from(body.len()).unwrap()];
        p.extend_from_slice(&body);
        p
    }

    #[tokio::test]
    async fn packets_are_read_whole_and_checked_against_the_devices_topics() {
        let own = publish("devices/d1/methods/res/200/?$rid=1");
        let mut stream = own.clone();
        stream.extend_from_slice(&[0xc0, 0x00]); // PINGREQ
        let mut reader = &stream[..];
        let mut packet = Vec::new();
        assert!(read_packet(&mut reader, &mut packet).await.unwrap());
        assert_eq!(packet, own);
        assert!(check_packet("d1", &packet).is_ok());
        assert!(read_packet(&mut reader, &mut packet).await.unwrap());
        assert!(check_packet("d1", &packet).is_ok());
        assert!(!read_packet(&mut reader, &mut packet).await.unwrap());

        assert!(check_packet("d1", &publish("devices/d2/presence")).is_err());
        assert!(check_packet("d1", &publish("devices/d1/methods/POST/x")).is_err());
        assert!(check_packet("d1", &subscribe(&["devices/d1/methods/POST/#"])).is_ok());
        assert!(check_packet(
            "d1",
            &subscribe(&["devices/d1/methods/POST/#", "devices/+/methods/POST/#"])
        )
        .is_err());
        assert!(check_packet("d1", &subscribe(&["#"])).is_err());
        assert!(check_packet("d1", &subscribe(&[])).is_err());
        assert!(check_packet("d1", &c_bytes_packet()).is_err());
        // Truncated packets are refused, not read past.
        let p = publish("devices/d1/presence");
        for cut in 2..p.len() - 7 {
            let mut short = p[..cut].to_vec();
            short[1] = u8::try_from(cut - 2).unwrap();
            assert!(check_packet("d1", &short).is_err(), "{cut}");
        }
        let huge = [0x30, 0xff, 0xff, 0xff, 0x7f];
        assert!(read_packet(&mut &huge[..], &mut packet).await.is_err());
    }

    fn c_bytes_packet() -> Vec<u8> {
        let mut p = vec![0x10, u8::try_from(c_bytes().len()).unwrap()];
        p.extend_from_slice(&c_bytes());
        p
    }

    fn c_bytes() -> Vec<u8> {
        let c = Connect {
            flags: 0x02,
            keep_alive: [0, 30],
            client_id: b"d".to_vec(),
            will: None,
            user: None,
            password: None,
        };
        let mut p = c.with_login("u", "p");
        p.drain(..2);
        p
    }
}
