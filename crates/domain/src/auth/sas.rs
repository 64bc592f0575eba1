//! Shared access signatures, verified as IoT Hub verifies them, and IoT Central API tokens,
//! which travel in the same header form.
//!
//! A SAS token is `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64>&se=<unix
//! seconds>&skn=<policy>`; `sig` is base64(HMAC-SHA256(key, sr-as-sent + "\n" + se)). Microsoft's
//! Python SDK sends `sr` encoded with `quote_plus` (a port's `:` becomes `%3A`) and `sig` with
//! `quote` (`/` stays as it is), so the signature is checked over `sr` exactly as it arrived and
//! `sig` is percent-decoded first. An API token names the token in `skn`, and its `sig` is the
//! secret itself; only the secret's SHA-256 is stored.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::credentials::Auth;
use super::grants::Grants;
use super::principal::Principal;

/// The longest `Authorization` value read; a longer one is malformed without being parsed.
pub const MAX_TOKEN_BYTES: usize = 4096;
const PREFIX: &str = "SharedAccessSignature ";

/// Why a credential was refused. The edges answer every one the same way (401, no hint), so a
/// caller cannot probe which names exist; the variant is for the server's own debug log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credential")]
    Missing,
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    #[error("expired")]
    Expired,
    #[error("signed for another resource")]
    WrongAudience,
    #[error("unknown policy or token")]
    UnknownName,
    #[error("signature does not match")]
    BadSignature,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    pub grants: Grants,
    /// Unix milliseconds after which the credential is no longer valid.
    pub expires_at_ms: i64,
}

/// The fields of a token, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fields<'a> {
    pub(super) sr: &'a str,
    pub(super) sig: &'a str,
    pub(super) se: &'a str,
    pub(super) skn: Option<&'a str>,
}

pub(super) fn fields(header: &str) -> Result<Fields<'_>, AuthFailure> {
    if header.len() > MAX_TOKEN_BYTES {
        return Err(AuthFailure::Malformed("too long"));
    }
    let rest = header
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(AuthFailure::Malformed("not a SharedAccessSignature"))?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for (n, part) in rest.split('&').enumerate() {
        if n >= 8 {
            return Err(AuthFailure::Malformed("too many fields"));
        }
        let (k, v) = part
            .split_once('=')
            .ok_or(AuthFailure::Malformed("a field is not key=value"))?;
        let slot = match k {
            "sr" => &mut sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(AuthFailure::Malformed("a field appears twice"));
        }
    }
    Ok(Fields {
        sr: sr.ok_or(AuthFailure::Malformed("no sr"))?,
        sig: sig.ok_or(AuthFailure::Malformed("no sig"))?,
        se: se.ok_or(AuthFailure::Malformed("no se"))?,
        skn: skn.filter(|s| !s.is_empty()),
    })
}

/// Verifies an `Authorization` value against the credentials in `auth`.
///
/// `hosts` are this service's host names as clients address it (the `HostName=` of the
/// connection strings muster prints, and each member's address); a SAS token must be signed for
/// one of them or for a path under it. `now_ms` is the verifying node's clock.
pub fn authenticate<H: AsRef<str>>(
    auth: &Auth,
    header: &str,
    hosts: &[H],
    now_ms: i64,
) -> Result<Authenticated, AuthFailure> {
    let f = fields(header)?;
    let name = f.skn.ok_or(AuthFailure::Malformed("no skn"))?;
    if let Some(token) = auth.tokens.get(name) {
        let secret = pct_decode(f.sig).ok_or(AuthFailure::Malformed("sig is not url-encoded"))?;
        if !ct_eq(
            hash_secret(&secret).as_bytes(),
            token.secret_hash.as_bytes(),
        ) {
            return Err(AuthFailure::BadSignature);
        }
        let expires_at_ms = token.expiry.millis();
        if expires_at_ms <= now_ms {
            return Err(AuthFailure::Expired);
        }
        return Ok(Authenticated {
            principal: Principal::Token(token.id.clone()),
            grants: token.grants(),
            expires_at_ms,
        });
    }
    let policy = auth.policies.get(name).ok_or(AuthFailure::UnknownName)?;
    let se: i64 =
        f.se.parse()
            .map_err(|_| AuthFailure::Malformed("se is not unix seconds"))?;
    let sig = pct_decode(f.sig).ok_or(AuthFailure::Malformed("sig is not url-encoded"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| AuthFailure::Malformed("sig is not base64"))?;
    let message = format!("{}\n{}", f.sr, f.se);
    let signed = policy.key_bytes().any(|key| {
        Hmac::<Sha256>::new_from_slice(&key).is_ok_and(|mut mac| {
            mac.update(message.as_bytes());
            // Constant time.
            mac.verify_slice(&sig).is_ok()
        })
    });
    if !signed {
        return Err(AuthFailure::BadSignature);
    }
    let expires_at_ms = se.saturating_mul(1000);
    if expires_at_ms <= now_ms {
        return Err(AuthFailure::Expired);
    }
    if !hosts.iter().any(|h| audience_matches(f.sr, h.as_ref())) {
        return Err(AuthFailure::WrongAudience);
    }
    Ok(Authenticated {
        principal: Principal::Policy(policy.name.clone()),
        grants: policy.grants(),
        expires_at_ms,
    })
}

/// `sr`, decoded, is the host or a path under it (case-insensitive, an `https://` prefix
/// allowed, as some clients sign the URL).
fn audience_matches(sr: &str, host: &str) -> bool {
    let Some(sr) = pct_decode(&sr.replace('+', " ")) else {
        return false;
    };
    let sr = sr.to_ascii_lowercase();
    let sr = sr
        .strip_prefix("https://")
        .or_else(|| sr.strip_prefix("http://"))
        .unwrap_or(&sr);
    let host = host.to_ascii_lowercase();
    sr == host
        || sr
            .strip_prefix(&host)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A SAS token for `resource` signed with a policy's base64 key, valid until `expiry_secs`
/// (unix seconds), encoded as Microsoft's SDKs encode it. `None` if the key is not base64.
pub fn sign(resource: &str, key_b64: &str, policy: &str, expiry_secs: i64) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .ok()?;
    let sr = pct_encode(resource);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{sr}\n{expiry_secs}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Some(format!(
        "{PREFIX}sr={sr}&sig={}&se={expiry_secs}&skn={}",
        pct_encode(&sig),
        pct_encode(policy)
    ))
}

/// The `Authorization` value of an API token, in IoT Central's form (`se` in milliseconds).
pub fn api_token_string(resource: &str, secret: &str, token_id: &str, expiry_ms: i64) -> String {
    format!(
        "{PREFIX}sr={}&sig={}&skn={}&se={expiry_ms}",
        pct_encode(resource),
        pct_encode(secret),
        pct_encode(token_id)
    )
}

/// Hex SHA-256 of an API token's secret: what the state keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`, as IoT Hub prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub key_name: String,
    pub key: String,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name, self.key_name, self.key
        )
    }
}

impl ConnectionString {
    /// Reads a service connection string; the message says which part is missing.
    pub fn parse(s: &str) -> Result<ConnectionString, String> {
        let (mut host, mut name, mut key) = (None, None, None);
        for part in s.trim().split(';').filter(|p| !p.is_empty()) {
            // Keys end in `=` padding: split at the first `=` only.
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "`{}` is not Key=Value",
                    part.chars().take(20).collect::<String>()
                ));
            };
            match k.trim() {
                "HostName" => host = Some(v.trim().to_string()),
                "SharedAccessKeyName" => name = Some(v.trim().to_string()),
                "SharedAccessKey" => key = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let need = |v: Option<String>, what: &str| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| format!("the connection string has no {what}="))
        };
        Ok(ConnectionString {
            host_name: need(host, "HostName")?,
            key_name: need(name, "SharedAccessKeyName")?,
            key: need(key, "SharedAccessKey")?,
        })
    }

    /// A token for this policy on its host, valid until `expiry_secs`.
    pub fn token(&self, expiry_secs: i64) -> Option<String> {
        sign(&self.host_name, &self.key, &self.key_name, expiry_secs)
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as `quote_plus` does for
/// the characters a host, a base64 value or a name can hold.
pub fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
pub fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Compares without stopping at the first difference.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::auth::credentials::{default_policies, ApiToken};
    use crate::auth::grants::{Permission, Role};
    use muster_types::Timestamp;

    const KEY: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";
    const HOST: &str = "127.0.0.1:8443";
    const NOW_MS: i64 = 1_800_000_000_000;

    fn auth() -> Auth {
        let mut a = Auth::default();
        for p in default_policies(|| KEY.to_string()) {
            a.policies.insert(p.name.clone(), p);
        }
        a
    }

    /// What Microsoft's Python SDK sends, spelled out: `quote_plus(host)`, then `quote(sig)`
    /// (which leaves `/` alone).
    fn sdk_token(host: &str, policy: &str, se: i64) -> String {
        let sr = pct_encode(host);
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{sr}\n{se}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig = pct_encode(&sig).replace("%2F", "/");
        format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={policy}")
    }

    #[test]
    fn a_token_as_the_sdk_signs_it_is_accepted() {
        let t = sdk_token(HOST, "iothubowner", NOW_MS / 1000 + 3600);
        assert!(t.contains("127.0.0.1%3A8443"));
        let ok = authenticate(&auth(), &t, &[HOST], NOW_MS).unwrap();
        assert_eq!(ok.principal, Principal::Policy("iothubowner".into()));
        assert!(ok.grants.allows(Permission::AuthManage));
        let svc = sdk_token(HOST, "service", NOW_MS / 1000 + 3600);
        let ok = authenticate(&auth(), &svc, &[HOST], NOW_MS).unwrap();
        assert!(ok.grants.allows(Permission::JobsWrite));
        assert!(!ok.grants.allows(Permission::DevicesWrite));
        // Our own signer agrees with the SDK's encoding.
        let own = sign(HOST, KEY, "service", NOW_MS / 1000 + 60).unwrap();
        assert!(authenticate(&auth(), &own, &[HOST], NOW_MS).is_ok());
    }

    #[test]
    fn expired_tampered_wrong_key_and_wrong_host_are_refused() {
        let a = auth();
        let expired = sdk_token(HOST, "service", NOW_MS / 1000 - 1);
        assert_eq!(
            authenticate(&a, &expired, &[HOST], NOW_MS),
            Err(AuthFailure::Expired)
        );
        let good = sdk_token(HOST, "service", NOW_MS / 1000 + 60);
        let tampered = good.replace("&se=", "&se=9");
        assert_eq!(
            authenticate(&a, &tampered, &[HOST], NOW_MS),
            Err(AuthFailure::BadSignature)
        );
        let mut other = a.clone();
        for p in other.policies.values_mut() {
            p.primary_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
            p.secondary_key = p.primary_key.clone();
        }
        assert_eq!(
            authenticate(&other, &good, &[HOST], NOW_MS),
            Err(AuthFailure::BadSignature)
        );
        let elsewhere = sdk_token("evil.example:8443", "service", NOW_MS / 1000 + 60);
        assert_eq!(
            authenticate(&a, &elsewhere, &[HOST], NOW_MS),
            Err(AuthFailure::WrongAudience)
        );
        let path = sdk_token("127.0.0.1:8443/devices/x", "service", NOW_MS / 1000 + 60);
        assert!(authenticate(&a, &path, &[HOST], NOW_MS).is_ok());
        let prefix = sdk_token("127.0.0.1:84430", "service", NOW_MS / 1000 + 60);
        assert!(authenticate(&a, &prefix, &[HOST], NOW_MS).is_err());
        let unknown = sdk_token(HOST, "nobody", NOW_MS / 1000 + 60);
        assert_eq!(
            authenticate(&a, &unknown, &[HOST], NOW_MS),
            Err(AuthFailure::UnknownName)
        );
    }

    #[test]
    fn junk_is_malformed_not_a_panic() {
        let a = auth();
        let many = format!("SharedAccessSignature {}", "&".repeat(10_000));
        let huge = format!("SharedAccessSignature sr={}", "x".repeat(1 << 20));
        for bad in [
            "",
            "Bearer x",
            "SharedAccessSignature ",
            "SharedAccessSignature sr=a&sr=b&sig=c&se=1&skn=service",
            "SharedAccessSignature sr=a&sig=%zz&se=1&skn=service",
            "SharedAccessSignature sr=a&sig=abc&se=soon&skn=service",
            many.as_str(),
            huge.as_str(),
        ] {
            assert!(authenticate(&a, bad, &[HOST], NOW_MS).is_err(), "{bad:.60}");
        }
    }

    #[test]
    fn api_tokens_check_the_hash_and_the_stored_expiry() {
        let mut a = auth();
        let secret = "s3cr3t/with+odd=chars";
        a.tokens.insert(
            "ops".into(),
            ApiToken {
                id: "ops".into(),
                roles: vec![Role::Operator],
                expiry: Timestamp::from_millis(NOW_MS + 1000),
                secret_hash: hash_secret(secret),
            },
        );
        let t = api_token_string(HOST, secret, "ops", NOW_MS + 1000);
        let ok = authenticate(&a, &t, &[HOST], NOW_MS).unwrap();
        assert_eq!(ok.principal, Principal::Token("ops".into()));
        assert!(
            ok.grants.allows(Permission::JobsWrite) && !ok.grants.allows(Permission::AuthManage)
        );
        assert_eq!(
            authenticate(&a, &t, &[HOST], NOW_MS + 1000),
            Err(AuthFailure::Expired)
        );
        let wrong = api_token_string(HOST, "guess", "ops", NOW_MS + 1000);
        assert_eq!(
            authenticate(&a, &wrong, &[HOST], NOW_MS),
            Err(AuthFailure::BadSignature)
        );
    }

    #[test]
    fn connection_strings_round_trip_and_sign() {
        let s = format!("HostName={HOST};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}");
        let c = ConnectionString::parse(&s).unwrap();
        assert_eq!(c.key, KEY);
        assert_eq!(c.to_string(), s);
        assert!(!format!("{c:?}").contains(KEY));
        let t = c.token(NOW_MS / 1000 + 60).unwrap();
        assert!(authenticate(&auth(), &t, &[HOST], NOW_MS).is_ok());
        assert!(ConnectionString::parse("HostName=x;SharedAccessKeyName=y").is_err());
    }
}
