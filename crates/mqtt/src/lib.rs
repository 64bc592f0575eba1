//! How muster's MQTT clients (the dispatcher and devsim) reach a broker: broker URLs
//! (`mqtt://` or `mqtts://`), TLS with rustls on the `ring` provider (a CA file, an optional
//! client certificate), logins, and the per-device credentials muster provisions for Mosquitto
//! ([`credentials`]).
//!
//! A device's broker password is derived from a fleet secret, so the provisioning side
//! (`muster device credentials`) and the devices (`muster devsim --credentials-secret-file`)
//! agree without a list being shipped: `base64(HMAC-SHA256(secret, device_id))`
//! ([`credentials::device_password`]).

pub mod credentials;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker URL {url:?}: {reason}")]
    BrokerUrl { url: String, reason: String },
    #[error("MQTT TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Credentials(String),
}

/// A secret string (a password) that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A broker address: `mqtt://host:port` (also `tcp://`, or a bare `host:port`; port 1883 by
/// default) or `mqtts://host:port` (also `ssl://`; port 8883 by default) for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, MqttError> {
        let bad = |why: &str| MqttError::BrokerUrl {
            url: url.to_string(),
            reason: why.to_string(),
        };
        let (rest, tls) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, false),
            Some(("mqtts" | "ssl", rest)) => (rest, true),
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "unsupported scheme {scheme:?}; use mqtt://host:port or mqtts://host:port"
                )))
            }
            None => (url, false),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(bad("expected mqtt://host:port or mqtts://host:port"));
        }
        // `[::1]:1883` and `host:1883`; a bare IPv6 address needs brackets.
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("expected ':' after ']'")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(&format!("bad port {p:?}")))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerUrl { host, port, tls })
    }
}

/// TLS files for `mqtts://` brokers (PEM). Without a CA file the system's trust store is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain to present (brokers with `require_certificate true`).
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// A rustls client configuration on the `ring` provider (chosen explicitly, so it does not
    /// depend on which provider other crates in the binary enable).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, MqttError> {
        let tls = |m: String| MqttError::Tls(m);
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(ca) => {
                let certs = read_certs(ca)?;
                if certs.is_empty() {
                    return Err(tls(format!(
                        "no PEM certificate in CA file {}",
                        ca.display()
                    )));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| tls(format!("CA file {}: {e}", ca.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(tls(
                        "no CA file given and no system CA certificates found; give the broker's CA"
                            .into(),
                    ));
                }
            }
        }
        // rustls 0.23.48 marks the ring provider deprecated because it lacks the post-quantum
        // key exchange; aws-lc-rs has it but costs minutes of build (ARCHITECTURE.md). Classic
        // ECDHE is what Mosquitto offers anyway.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                if chain.is_empty() {
                    return Err(tls(format!("no PEM certificate in {}", cert.display())));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls(format!("client key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(format!("client certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(tls(
                    "a client certificate needs its key and the key its certificate".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))
}

/// A broker to connect to, with its TLS configuration (built once, shared by every connection).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// MQTT options for one connection to this broker (transport set; keep-alive, login and the
    /// rest are the caller's).
    pub fn options(&self, client_id: impl Into<String>) -> MqttOptions {
        let mut opts = MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        opts
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS client configuration of an `mqtts://` broker (for connections muster makes
    /// without rumqttc: the device gateway's).
    pub fn tls_config(&self) -> Option<Arc<ClientConfig>> {
        self.tls.clone()
    }
}

/// Parses every URL and builds the TLS configuration once if any of them is `mqtts://`. TLS
/// files given for plain `mqtt://` brokers are refused (a secured deployment that forgot the
/// `s` would otherwise send passwords in clear text).
pub fn endpoints(urls: &[String], tls: &TlsFiles) -> Result<Vec<Endpoint>, MqttError> {
    let parsed = urls
        .iter()
        .map(|u| BrokerUrl::parse(u).map(|b| (u.clone(), b)))
        .collect::<Result<Vec<_>, _>>()?;
    let config = if parsed.iter().any(|(_, b)| b.tls) {
        Some(tls.client_config()?)
    } else {
        if !tls.is_empty() {
            return Err(MqttError::Tls(
                "TLS files are set but no broker URL is mqtts://".into(),
            ));
        }
        None
    };
    Ok(parsed
        .into_iter()
        .map(|(url, b)| Endpoint {
            url,
            host: b.host,
            port: b.port,
            tls: if b.tls { config.clone() } else { None },
        })
        .collect())
}

/// Reads a secret (a password or a fleet secret) from a file: its content without surrounding
/// whitespace (a trailing newline), refused when empty.
pub fn read_secret_file(path: &Path) -> Result<Secret, MqttError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        MqttError::Credentials(format!("cannot read secret file {}: {e}", path.display()))
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(MqttError::Credentials(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(Secret(t.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn broker_urls() {
        let p = |u: &str| BrokerUrl::parse(u).unwrap();
        assert_eq!(
            p("mqtt://127.0.0.1:1883"),
            BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(p("tcp://broker/").port, 1883);
        assert_eq!(p("h").host, "h");
        assert_eq!(p("[::1]:2883").host, "::1");
        assert_eq!(
            p("mqtts://broker"),
            BrokerUrl {
                host: "broker".into(),
                port: 8883,
                tls: true
            }
        );
        assert!(p("ssl://b:1").tls);
        for bad in ["ws://x:1", "mqtt://x:port", "mqtt://:1883", "mqtt://x:1/y"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_files_without_a_tls_broker_are_refused() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent".into()),
            ..TlsFiles::default()
        };
        assert!(endpoints(&["mqtt://h:1".into()], &files).is_err());
        let e = endpoints(&["mqtt://h:1".into()], &TlsFiles::default()).unwrap();
        assert!(!e[0].is_tls());
        // A missing CA file is named.
        let err = endpoints(&["mqtts://h:1".into()], &files).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
