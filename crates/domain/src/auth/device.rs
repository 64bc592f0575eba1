//! A device's MQTT login, as an Azure IoT device makes it: user name
//! `{host}/{deviceId}/?api-version=...`, client id the device id, password a SAS token
//! `SharedAccessSignature sr={host}/devices/{deviceId}&sig=...&se=...` signed with the device's
//! primary or secondary key (no `skn`). The brokers' edges (dev mode's rumqttd hook, the device
//! gateway in front of Mosquitto) call [`authenticate_device`] on every CONNECT, so a regenerated
//! key or a disabled device takes effect for the next connection.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::sas::{fields, pct_decode, pct_encode};
use crate::registry::Registry;
use muster_types::DeviceId;

/// Why a device's login was refused. Brokers answer every one alike ("not authorized"); the
/// variant is for the server's debug log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceAuthFailure {
    #[error("malformed login: {0}")]
    Malformed(&'static str),
    #[error("the client id, user name and token name different devices")]
    WrongDevice,
    #[error("no such device")]
    UnknownDevice,
    #[error("the device is disabled")]
    Disabled,
    #[error("the device has no SAS keys (register it with IoT Hub's PUT /devices/{{id}})")]
    NoKeys,
    #[error("signature does not match")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// The host and device id of an Azure device user name, `{host}/{deviceId}/?api-version=...`
/// (the `/?...` part optional). Module identities (`{host}/{device}/{module}/...`) are refused.
pub fn parse_device_user(user: &str) -> Result<(&str, &str), DeviceAuthFailure> {
    let bad = DeviceAuthFailure::Malformed;
    let path = user.split_once('?').map_or(user, |(p, _)| p);
    let path = path.strip_suffix('/').unwrap_or(path);
    let (host, device) = path.split_once('/').ok_or(bad(
        "the user name is not {host}/{deviceId}/?api-version=...",
    ))?;
    if host.is_empty() || device.is_empty() {
        return Err(bad(
            "the user name is not {host}/{deviceId}/?api-version=...",
        ));
    }
    if device.contains('/') {
        return Err(bad("module identities are not supported"));
    }
    Ok((host, device))
}

/// Verifies a device's CONNECT against the registry and returns the device it is.
///
/// The token must name the same host as the user name and the device of the user name, which
/// must be the client id (IoT Hub's rule); `sig` is HMAC-SHA256 with either base64 key over `sr`
/// as sent + "\n" + `se`, as for service tokens. `now_ms` is the verifying node's clock.
pub fn authenticate_device(
    registry: &Registry,
    client_id: &str,
    user: &str,
    password: &str,
    now_ms: i64,
) -> Result<DeviceId, DeviceAuthFailure> {
    let bad = DeviceAuthFailure::Malformed;
    let (host, device) = parse_device_user(user)?;
    if device != client_id {
        return Err(DeviceAuthFailure::WrongDevice);
    }
    let f = fields(password).map_err(|_| bad("the password is not a SharedAccessSignature"))?;
    if f.skn.is_some() {
        return Err(bad("a device token has no skn"));
    }
    let sr = pct_decode(&f.sr.replace('+', " ")).ok_or(bad("sr is not url-encoded"))?;
    let sr = sr
        .strip_prefix("https://")
        .or_else(|| sr.strip_prefix("http://"))
        .unwrap_or(&sr);
    let (sr_host, sr_device) = sr
        .split_once("/devices/")
        .ok_or(bad("sr is not {host}/devices/{deviceId}"))?;
    let sr_device = sr_device.strip_suffix('/').unwrap_or(sr_device);
    if !sr_host.eq_ignore_ascii_case(host) || sr_device != device {
        return Err(DeviceAuthFailure::WrongDevice);
    }
    let se: i64 = f.se.parse().map_err(|_| bad("se is not unix seconds"))?;
    let sig = pct_decode(f.sig).ok_or(bad("sig is not url-encoded"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| bad("sig is not base64"))?;
    let id = DeviceId::new(device).map_err(|_| bad("the device id is not valid"))?;
    let d = registry
        .devices
        .get(&id)
        .ok_or(DeviceAuthFailure::UnknownDevice)?;
    let keys = d.keys.as_ref().ok_or(DeviceAuthFailure::NoKeys)?;
    let message = format!("{}\n{}", f.sr, f.se);
    let signed = [&keys.primary, &keys.secondary].into_iter().any(|k| {
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(k) else {
            return false;
        };
        Hmac::<Sha256>::new_from_slice(&key).is_ok_and(|mut mac| {
            mac.update(message.as_bytes());
            mac.verify_slice(&sig).is_ok()
        })
    });
    if !signed {
        return Err(DeviceAuthFailure::BadSignature);
    }
    if se.saturating_mul(1000) <= now_ms {
        return Err(DeviceAuthFailure::Expired);
    }
    // Checked last, after the signature: only the key's holder learns the device is disabled.
    if !d.enabled {
        return Err(DeviceAuthFailure::Disabled);
    }
    Ok(id)
}

/// The user name an Azure device sends: `{host}/{deviceId}/?api-version=2021-04-12`.
pub fn device_user(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version=2021-04-12")
}

/// A device SAS token for `{host}/devices/{deviceId}`, signed with a base64 key, valid until
/// `expiry_secs`, encoded as Azure's device SDKs encode it. `None` if the key is not base64.
pub fn sign_device(host: &str, device_id: &str, key_b64: &str, expiry_secs: i64) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .ok()?;
    let sr = pct_encode(&format!("{host}/devices/{device_id}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{sr}\n{expiry_secs}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Some(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_secs}",
        pct_encode(&sig)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::registry::{Device, DeviceKeys, DeviceRegistration};
    use muster_types::Timestamp;
    use proptest::prelude::*;
    use serde_json::json;

    const HOST: &str = "hub.example.net";
    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const NOW_MS: i64 = 1_700_000_000_000;
    const LATER: i64 = 1_700_000_600;

    fn registry(enabled: bool, keys: bool) -> Registry {
        let mut r = Registry::default();
        let id = DeviceId::new("dev-1").unwrap();
        let mut d = Device::new(
            &DeviceRegistration {
                id: id.clone(),
                display_name: "dev-1".into(),
                model_id: None,
                enabled,
                tags: json!({}).into(),
            },
            Timestamp::from_millis(0),
        );
        d.keys = keys.then(|| {
            Box::new(DeviceKeys {
                primary: K1.into(),
                secondary: K2.into(),
            })
        });
        r.devices.insert(id, d);
        r
    }

    fn login(r: &Registry, client: &str, token: &str) -> Result<DeviceId, DeviceAuthFailure> {
        authenticate_device(r, client, &device_user(HOST, "dev-1"), token, NOW_MS)
    }

    #[test]
    fn either_key_signs_and_everything_else_is_refused() {
        let r = registry(true, true);
        for key in [K1, K2] {
            let t = sign_device(HOST, "dev-1", key, LATER).unwrap();
            assert_eq!(login(&r, "dev-1", &t).unwrap().as_str(), "dev-1");
        }
        // The host is compared case-insensitively; no `?api-version` is fine too.
        let t = sign_device("HUB.example.net", "dev-1", K1, LATER).unwrap();
        assert!(authenticate_device(&r, "dev-1", "hub.example.net/dev-1", &t, NOW_MS).is_ok());
        let other = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let cases = [
            (
                sign_device(HOST, "dev-1", other, LATER).unwrap(),
                "dev-1",
                DeviceAuthFailure::BadSignature,
            ),
            (
                sign_device(HOST, "dev-1", K1, NOW_MS / 1000).unwrap(),
                "dev-1",
                DeviceAuthFailure::Expired,
            ),
            (
                sign_device(HOST, "dev-2", K1, LATER).unwrap(),
                "dev-1",
                DeviceAuthFailure::WrongDevice,
            ),
            (
                sign_device("other.host", "dev-1", K1, LATER).unwrap(),
                "dev-1",
                DeviceAuthFailure::WrongDevice,
            ),
            (
                sign_device(HOST, "dev-1", K1, LATER).unwrap(),
                "dev-2",
                DeviceAuthFailure::WrongDevice,
            ),
        ];
        for (token, client, want) in cases {
            assert_eq!(login(&r, client, &token), Err(want), "{token}");
        }
        let t = sign_device(HOST, "dev-1", K1, LATER).unwrap();
        assert_eq!(
            login(&registry(false, true), "dev-1", &t),
            Err(DeviceAuthFailure::Disabled)
        );
        assert_eq!(
            login(&registry(true, false), "dev-1", &t),
            Err(DeviceAuthFailure::NoKeys)
        );
        assert_eq!(
            login(&Registry::default(), "dev-1", &t),
            Err(DeviceAuthFailure::UnknownDevice)
        );
        assert!(matches!(
            login(&r, "dev-1", &format!("{t}&skn=iothubowner")),
            Err(DeviceAuthFailure::Malformed(_))
        ));
        assert!(matches!(
            authenticate_device(&r, "dev-1", "hub/dev-1/mod/?api-version=1", &t, NOW_MS),
            Err(DeviceAuthFailure::Malformed(_))
        ));
    }

    proptest! {
        /// No login that is not the signed token gets in, and nothing panics.
        #[test]
        fn arbitrary_logins_are_refused(client in ".{0,20}", user in ".{0,60}", pw in ".{0,200}") {
            let r = registry(true, true);
            prop_assert!(authenticate_device(&r, &client, &user, &pw, NOW_MS).is_err());
        }

        /// Changing any character of a valid token's signature refuses it.
        #[test]
        fn a_changed_signature_is_refused(i in 0usize..44, c in "[A-Za-z0-9]") {
            let r = registry(true, true);
            let t = sign_device(HOST, "dev-1", K1, LATER).unwrap();
            let (head, tail) = t.split_once("sig=").unwrap();
            let (sig, rest) = tail.split_once('&').unwrap();
            let mut sig: Vec<char> = pct_decode(sig).unwrap().chars().collect();
            let i = i % sig.len();
            prop_assume!(sig[i].to_string() != c);
            sig[i] = c.chars().next().unwrap();
            let sig: String = sig.into_iter().collect();
            let forged = format!("{head}sig={}&{rest}", pct_encode(&sig));
            prop_assert!(login(&r, "dev-1", &forged).is_err());
        }
    }
}
