//! TLS on the node's listeners, and the refusal to expose a node without it.
//!
//! * REST and client gRPC: the node's certificate (`tls.cert`, `tls.key`); with `tls.client_ca`
//!   a client may present a certificate signed by that CA, and its subject CN reaches handlers
//!   as a [`ClientIdentity`] request extension (REST: [`Identified`] below; gRPC:
//!   `muster_api::grpc::identify`).
//! * Peer port: mutual TLS with the cluster CA (`tls.peer_ca`), both ways: the peer server
//!   requires a client certificate from that CA, and this node presents its own when it dials
//!   (see `muster_cluster::PeerService::tls_config` and the cluster's `Dialer`).
//! * [`check_exposure`]: a node that would serve REST/gRPC beyond loopback without TLS, or run
//!   Raft with peers beyond loopback without peer TLS, refuses to start unless `insecure`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use muster_tls::{CaBundle, ClientIdentity, KeyPair, PeerTls};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::NodeError;

/// The `[tls]` settings: paths of PEM files (flags `--tls-cert`, `--tls-key`,
/// `--tls-client-ca`, `--peer-ca`, `--peer-cert`, `--peer-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain of the REST and client gRPC listeners; with `key`, turns TLS on there.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA whose client certificates REST and gRPC accept (optional for clients: a caller
    /// without a certificate is still served).
    pub client_ca: Option<PathBuf>,
    /// The role (administrator, builder, operator, viewer, auditor) of a caller that presents a
    /// client certificate from `client_ca` and no `Authorization` header; unset, a certificate
    /// alone authenticates nothing.
    pub client_role: Option<String>,
    /// The cluster CA: turns mutual TLS on for the peer port.
    pub peer_ca: Option<PathBuf>,
    /// This node's certificate on the peer port (server and client); default `cert`/`key`.
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
}

/// TLS material loaded from [`TlsSettings`].
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// REST and client gRPC.
    pub api: Option<ApiTls>,
    /// The peer port.
    pub peer: Option<PeerTls>,
}

#[derive(Debug, Clone)]
pub struct ApiTls {
    pub identity: KeyPair,
    pub client_ca: Option<CaBundle>,
}

impl NodeTls {
    /// Reads and checks the files the settings name; errors name the flag to fix.
    pub fn load(s: &TlsSettings) -> Result<NodeTls, NodeError> {
        let bad = |m: String| NodeError::Config(m);
        let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>, flags: &str| match (cert, key) {
            (Some(c), Some(k)) => KeyPair::load(c, k)
                .map(Some)
                .map_err(|e| bad(format!("{flags}: {e}"))),
            (None, None) => Ok(None),
            _ => Err(bad(format!("{flags} go together: give both or neither"))),
        };
        let api_pair = pair(&s.cert, &s.key, "--tls-cert and --tls-key")?;
        let client_ca = match &s.client_ca {
            Some(p) => Some(CaBundle::load(p).map_err(|e| bad(format!("--tls-client-ca: {e}")))?),
            None => None,
        };
        if client_ca.is_some() && api_pair.is_none() {
            return Err(bad(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked only over TLS".into(),
            ));
        }
        let peer_pair = pair(&s.peer_cert, &s.peer_key, "--peer-cert and --peer-key")?;
        let peer = match (&s.peer_ca, peer_pair) {
            (Some(ca), pair) => {
                let ca = CaBundle::load(ca).map_err(|e| bad(format!("--peer-ca: {e}")))?;
                let identity = pair.or_else(|| api_pair.clone()).ok_or_else(|| {
                    bad("--peer-ca needs this node's certificate from that CA: --peer-cert and --peer-key (or --tls-cert and --tls-key, then used on the peer port too)".into())
                })?;
                Some(PeerTls { ca, identity })
            }
            (None, Some(_)) => {
                return Err(bad(
                    "--peer-cert needs --peer-ca: the cluster CA that the other members' certificates are checked against".into(),
                ))
            }
            (None, None) => None,
        };
        if let (Some(peer), Some(client)) = (&peer, &client_ca) {
            if peer.ca.pem == client.pem {
                tracing::warn!(
                    "--tls-client-ca is the cluster CA (--peer-ca): every client certificate it signs also opens the peer port (votes, log appends, membership). Sign client certificates with another CA (`muster certs init --client` does)"
                );
            }
        }
        Ok(NodeTls {
            api: api_pair.map(|identity| ApiTls {
                identity,
                client_ca,
            }),
            peer,
        })
    }
}

/// Whether `HOST` of a `HOST:PORT` names this machine only: a loopback IP or `localhost`.
/// Other names count as reachable from elsewhere (they are not resolved here).
pub fn is_loopback_host(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses listeners and peers beyond loopback without TLS unless `insecure`; with it, returns
/// what would have been refused, for the caller to log. `api` are the bound REST and gRPC
/// addresses, `peers` the peer addresses this node dials or is dialled on (the `peers` list and
/// its bound peer address).
pub fn check_exposure(
    tls: &NodeTls,
    api: &[(&str, SocketAddr)],
    peers: &[String],
    insecure: bool,
) -> Result<Vec<String>, NodeError> {
    let mut problems = Vec::new();
    if tls.api.is_none() {
        for (what, addr) in api {
            if !addr.ip().is_loopback() {
                problems.push(format!(
                    "{what} on {addr} without TLS (give --tls-cert and --tls-key)"
                ));
            }
        }
    }
    if tls.peer.is_none() {
        let exposed: Vec<&str> = peers
            .iter()
            .filter(|p| !p.is_empty() && !is_loopback_host(p))
            .map(String::as_str)
            .collect();
        if !exposed.is_empty() {
            problems.push(format!(
                "Raft with peers {} without peer TLS (give --peer-ca and this node's certificate from it)",
                exposed.join(", ")
            ));
        }
    }
    if insecure || problems.is_empty() {
        return Ok(problems);
    }
    Err(NodeError::Config(format!(
        "refusing to start: {}. Anyone who can reach such a port could read and change everything (on the peer port: vote, append to the log, change the membership). `muster certs init` makes a CA and node certificates; bind to 127.0.0.1 for a local node; or pass --insecure to accept the risk",
        problems.join("; ")
    )))
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener that hands axum TLS connections. Handshakes run in their own tasks, so a
/// client that stalls in its handshake delays nobody else.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    done_tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    done_rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<muster_tls::rustls::ServerConfig>) -> TlsListener {
        let (done_tx, done_rx) = mpsc::channel(64);
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            done_tx,
            done_rx,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                // `done_tx` lives in `self`, so the channel never ends while we wait.
                Some(done) = self.done_rx.recv() => return done,
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        // The handshake's last flight otherwise waits for the client's delayed
                        // ACK: a new REST connection over TLS took 44 ms (the auth bench).
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(%addr, "TCP_NODELAY: {e}");
                        }
                        let acceptor = self.acceptor.clone();
                        let done = self.done_tx.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => {
                                    let _ = done.send((tls, addr)).await;
                                }
                                Ok(Err(e)) => tracing::debug!(%addr, "REST: TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!(%addr, "REST: TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: as axum's own listener does.
                        tracing::warn!("REST: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The make-service of the HTTPS gateway: each connection's requests carry the client's
/// [`ClientIdentity`] (when it presented a verified certificate) and an `https` URI scheme.
#[derive(Debug, Clone)]
pub struct Identify(pub Router);

impl crate::guard::PerConnection<TlsStream<TcpStream>> for Identify {
    type Service = Identified;

    fn service(&self, io: &TlsStream<TcpStream>) -> Identified {
        let identity = io
            .get_ref()
            .1
            .peer_certificates()
            .and_then(ClientIdentity::from_chain);
        Identified {
            router: self.0.clone(),
            identity,
        }
    }
}

/// The router for one TLS connection (see [`Identify`]).
#[derive(Debug, Clone)]
pub struct Identified {
    router: Router,
    identity: Option<ClientIdentity>,
}

impl tower::Service<Request> for Identified {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as tower::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        // HTTP/1.1 requests carry only a path; give them the scheme they arrived with (HTTP/2
        // ones have it), so links the gateway builds (`nextLink`) say https.
        if req.uri().scheme().is_none() {
            let host = req
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
            if let Some(host) = host {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(axum::http::uri::Scheme::HTTPS);
                parts.authority = Some(host);
                if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        self.router.call(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn requests_over_tls_carry_the_client_identity_and_the_https_scheme() {
        use axum::extract::Extension;
        use tower::ServiceExt;
        let router = Router::new().route(
            "/who",
            axum::routing::get(
                |id: Option<Extension<ClientIdentity>>, uri: axum::http::Uri| async move {
                    format!(
                        "{} {}",
                        id.map(|e| e.0.subject).unwrap_or_default(),
                        uri.scheme_str().unwrap_or("-")
                    )
                },
            ),
        );
        let call = |identity: Option<ClientIdentity>| {
            let svc = Identified {
                router: router.clone(),
                identity,
            };
            async move {
                let req = Request::builder()
                    .uri("/who")
                    .header("host", "node1:8080")
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = svc.oneshot(req).await.unwrap();
                let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
                String::from_utf8(body.to_vec()).unwrap()
            }
        };
        let alice = ClientIdentity {
            subject: "ops-alice".into(),
        };
        assert_eq!(call(Some(alice)).await, "ops-alice https");
        assert_eq!(call(None).await, " https");
    }

    #[test]
    fn loopback_hosts() {
        for a in [
            "127.0.0.1:1",
            "localhost:1",
            "LOCALHOST:9",
            "[::1]:1",
            "127.1.2.3:4",
        ] {
            assert!(is_loopback_host(a), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "10.0.0.1:1",
            "node1:9091",
            "[::]:1",
            "example.com:1",
        ] {
            assert!(!is_loopback_host(a), "{a}");
        }
    }

    #[test]
    fn exposure_is_refused_unless_insecure_and_loopback_is_fine() {
        let none = NodeTls::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(
            check_exposure(&none, &[("REST", local)], &["127.0.0.1:9091".into()], false).is_ok()
        );
        let e = check_exposure(&none, &[("REST", any)], &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("REST on 0.0.0.0:8080") && e.contains("--insecure"),
            "{e}"
        );
        let e = check_exposure(&none, &[], &["node2:9091".into()], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node2:9091") && e.contains("--peer-ca"), "{e}");
        let accepted =
            check_exposure(&none, &[("REST", any)], &["node2:9091".into()], true).unwrap();
        assert_eq!(accepted.len(), 2, "{accepted:?}");
    }
}
