//! TLS material shared by the node (REST, client gRPC), the cluster's peer network and the CLI:
//! certificates and keys read from PEM files and checked when they are loaded (so a bad file
//! stops a node at start, not at its first handshake), the rustls server configuration of the
//! REST gateway, and [`ClientIdentity`], what a verified client certificate says about its
//! holder.
//!
//! Every rustls configuration here uses the `ring` provider explicitly (the workspace builds
//! rustls without aws-lc-rs).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use rustls;

/// Who a verified client certificate says the caller is: the subject's common name (CN).
///
/// Handlers find it as a request extension: in axum `Option<Extension<ClientIdentity>>`, in
/// tonic `request.extensions().get::<ClientIdentity>()`. It is present only when the node was
/// given a client CA (`--tls-client-ca`) and the caller presented a certificate that CA signed
/// (rustls verified the chain during the handshake); a certificate without a CN gives none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The certificate subject's common name, e.g. `ops-alice` for `muster certs init --client
    /// ops-alice`.
    pub subject: String,
}

impl ClientIdentity {
    /// The identity in the leaf (first) certificate of a verified chain, if it has a CN.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let leaf = chain.first()?;
        subject_common_name(leaf).map(|subject| ClientIdentity { subject })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate chain (leaf first) and its private key, as PEM text.
#[derive(Clone)]
pub struct KeyPair {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1) and checks
    /// that they parse and belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<KeyPair, TlsError> {
        KeyPair::from_pem(read(cert)?, read(key)?)
            .map_err(|e| TlsError::Invalid(format!("{} / {}: {e}", cert.display(), key.display())))
    }

    /// Checks PEM text already in memory (see [`load`](Self::load)).
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<KeyPair, TlsError> {
        let pair = KeyPair { cert_pem, key_pem };
        // Building a server configuration checks that the key parses and matches the leaf.
        let chain = pair.chain()?;
        let key = pair.key()?;
        builder()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Invalid(format!("the key does not fit the certificate: {e}")))?;
        Ok(pair)
    }

    /// The certificates, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        certs(&self.cert_pem)
    }

    pub fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError::Invalid(format!("no PEM private key found: {e}")))
    }
}

/// One or more CA certificates (PEM) that a peer's certificate must chain to.
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub pem: Vec<u8>,
}

impl CaBundle {
    pub fn load(path: &Path) -> Result<CaBundle, TlsError> {
        CaBundle::from_pem(read(path)?)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn from_pem(pem: Vec<u8>) -> Result<CaBundle, TlsError> {
        let bundle = CaBundle { pem };
        bundle.roots()?;
        Ok(bundle)
    }

    /// The certificates as a rustls trust store; an error if none of them is usable.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs(&self.pem)?);
        if added == 0 {
            return Err(TlsError::Invalid(
                "no usable CA certificate in it".to_string(),
            ));
        }
        Ok(roots)
    }
}

/// Mutual TLS between the members of a cluster (the peer port): every member serves with
/// `identity` and presents it when it dials another, and accepts only peers whose certificate
/// chains to `ca`, in either direction.
#[derive(Clone, Debug)]
pub struct PeerTls {
    pub ca: CaBundle,
    pub identity: KeyPair,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no PEM certificate found".to_string()));
    }
    Ok(certs)
}

/// rustls' `ring` provider. rustls 0.23.48 deprecates it only to point at aws-lc-rs's
/// post-quantum key exchange, which this workspace does not build (see the root Cargo.toml).
#[allow(deprecated)]
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))
}

/// The rustls configuration of an HTTPS server (the REST gateway): `identity` as its
/// certificate, ALPN `h2` and `http/1.1`. With `client_ca`, a client may present a
/// certificate, which must then chain to that CA (or the handshake fails); a client without one
/// is still served (it authenticates with a token instead).
pub fn https_server_config(
    identity: &KeyPair,
    client_ca: Option<&CaBundle>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = builder()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), ring_provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain()?, identity.key()?)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject common name (OID 2.5.4.3) of a DER certificate: the last one if the subject has
/// several. `None` if the certificate has none or is not DER as X.509 lays it out. Only reads
/// certificates that rustls already verified; it checks nothing itself.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = tlv(cert_der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, subject, ...
    let mut rest = tbs;
    if let Some((0xa0, _, after)) = tlv(rest) {
        rest = after;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = tlv(rest)? else {
        return None;
    };
    let mut cn = None;
    while !rdns.is_empty() {
        let (SET, mut attrs, after) = tlv(rdns)? else {
            return None;
        };
        rdns = after;
        while !attrs.is_empty() {
            let (SEQUENCE, attr, after) = tlv(attrs)? else {
                return None;
            };
            attrs = after;
            let (OID, oid, value) = tlv(attr)? else {
                return None;
            };
            if oid == CN {
                let (tag, text, _) = tlv(value)?;
                cn = Some(der_string(tag, text)?);
            }
        }
    }
    cn
}

/// One DER tag-length-value: the tag, the value, and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The text of a DER string of the kinds a name attribute uses.
fn der_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString: read as Latin-1, as most software does
        0x14 => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1e if bytes.len().is_multiple_of(2) => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair as RcKey};

    fn cert_with(dn: &[(DnType, DnValue)]) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = RcKey::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        certs(pem.as_bytes()).unwrap()[0].to_vec()
    }

    #[test]
    fn the_common_name_is_read_in_each_string_kind() {
        for value in [
            DnValue::Utf8String("ops-alice".into()),
            DnValue::PrintableString("ops-alice".try_into().unwrap()),
            DnValue::BmpString("ops-alice".try_into().unwrap()),
        ] {
            let (pem, _) = cert_with(&[
                (
                    DnType::OrganizationName,
                    DnValue::Utf8String("muster".into()),
                ),
                (DnType::CommonName, value),
            ]);
            assert_eq!(
                subject_common_name(&der(&pem)).as_deref(),
                Some("ops-alice")
            );
        }
        let (pem, _) = cert_with(&[(
            DnType::OrganizationName,
            DnValue::Utf8String("muster".into()),
        )]);
        assert_eq!(subject_common_name(&der(&pem)), None);
    }

    #[test]
    fn garbage_gives_no_name_and_no_panic() {
        let (pem, _) = cert_with(&[(DnType::CommonName, DnValue::Utf8String("n1".into()))]);
        let good = der(&pem);
        for cut in 0..good.len() {
            let _ = subject_common_name(&good[..cut]);
        }
        for bad in [
            &[][..],
            &[0x30][..],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert_eq!(subject_common_name(bad), None);
        }
    }

    #[test]
    fn keys_that_do_not_fit_or_are_missing_are_refused_with_a_reason() {
        let (cert, key) = cert_with(&[(DnType::CommonName, DnValue::Utf8String("a".into()))]);
        let (_, other_key) = cert_with(&[(DnType::CommonName, DnValue::Utf8String("b".into()))]);
        assert!(KeyPair::from_pem(cert.clone().into(), key.clone().into()).is_ok());
        let e = KeyPair::from_pem(cert.clone().into(), other_key.into()).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = KeyPair::from_pem(cert.clone().into(), b"nothing".to_vec()).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let e = KeyPair::from_pem(key.into(), cert.clone().into()).unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        assert!(CaBundle::from_pem(cert.into()).is_ok());
        assert!(CaBundle::from_pem(b"".to_vec()).is_err());
    }
}
