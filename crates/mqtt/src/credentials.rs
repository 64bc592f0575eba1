//! Per-device broker credentials: the derived device password, Mosquitto's password-file hash
//! (`$7$`, PBKDF2-SHA512, what `mosquitto_passwd` writes) and the ACL file that keeps each device
//! to its own topics.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::{MqttError, Secret};

/// The shortest fleet secret accepted (in bytes, after trimming).
pub const MIN_SECRET_LEN: usize = 16;

/// The user name of muster's dispatcher on a secured broker, unless told otherwise.
pub const DEFAULT_DISPATCHER_USER: &str = "muster-dispatcher";

/// The user name of muster's device gateway on Mosquitto, unless told otherwise.
pub const DEFAULT_GATEWAY_USER: &str = "muster-gateway";

/// Mosquitto's `$7$` iteration count (mosquitto_passwd 2.0's default).
pub const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// A fleet secret: the key device passwords are derived from.
#[derive(Debug, Clone)]
pub struct FleetSecret(Secret);

impl FleetSecret {
    /// Checks the length (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: Secret) -> Result<FleetSecret, MqttError> {
        if secret.expose().len() < MIN_SECRET_LEN {
            return Err(MqttError::Credentials(format!(
                "the fleet secret must be at least {MIN_SECRET_LEN} characters (for example `openssl rand -base64 32`)"
            )));
        }
        Ok(FleetSecret(secret))
    }

    /// Reads it from a file (content without surrounding whitespace).
    pub fn from_file(path: &std::path::Path) -> Result<FleetSecret, MqttError> {
        FleetSecret::new(crate::read_secret_file(path)?)
    }

    /// A device's broker password: `base64(HMAC-SHA256(key = secret, message = device id))`,
    /// standard alphabet with padding (44 characters). The secret is the UTF-8 bytes of the
    /// secret file's trimmed content.
    pub fn device_password(&self, device_id: &str) -> Secret {
        Secret::new(STANDARD.encode(self.mac(device_id)))
    }

    /// Whether `password` is `device_id`'s derived password (constant-time comparison).
    pub fn verify(&self, device_id: &str, password: &str) -> bool {
        let Ok(raw) = STANDARD.decode(password) else {
            return false;
        };
        let mut mac = hmac_sha256(self.0.expose().as_bytes());
        mac.update(device_id.as_bytes());
        mac.verify_slice(&raw).is_ok()
    }

    fn mac(&self, device_id: &str) -> Vec<u8> {
        let mut mac = hmac_sha256(self.0.expose().as_bytes());
        mac.update(device_id.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], MqttError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| MqttError::Credentials(format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// A random password (24 random bytes, base64), for generated logins (dev mode).
pub fn random_password() -> Result<Secret, MqttError> {
    Ok(Secret::new(STANDARD.encode(random_bytes::<24>()?)))
}

/// Mosquitto's password hash of `password` with a fresh random salt:
/// `$7$101$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, 101, 64 bytes)>`.
pub fn mosquitto_hash(password: &str) -> Result<String, MqttError> {
    Ok(mosquitto_hash_with_salt(
        password,
        &random_bytes::<SALT_LEN>()?,
        PBKDF2_ITERATIONS,
    ))
}

pub fn mosquitto_hash_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// Whether `hash` (the part after `user:` in a Mosquitto password file, `$7$` form) is the hash
/// of `password`.
pub fn mosquitto_verify(password: &str, hash: &str) -> bool {
    let mut parts = hash.split('$');
    let (Some(""), Some("7"), Some(iter), Some(salt), Some(digest), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iter), Ok(salt)) = (iter.parse::<u32>(), STANDARD.decode(salt)) else {
        return false;
    };
    let expected = mosquitto_hash_with_salt(password, &salt, iter);
    expected.rsplit('$').next() == Some(digest)
}

/// Whether a name can be a Mosquitto user in these files: no `:` (the password file's
/// separator), no MQTT wildcards or `/` (ACL patterns substitute it into topics), no whitespace.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| matches!(c, ':' | '+' | '#' | '/' | '\0') || c.is_whitespace())
}

/// A Mosquitto password file: muster's own logins (the dispatcher's, the device gateway's),
/// then, with a fleet secret, one line per device with its derived password, each hashed with
/// its own salt. Devices whose id cannot be a Mosquitto user name (a `:`, which muster's ids
/// allow, would split the line) are left out and returned.
pub fn password_file(
    secret: Option<&FleetSecret>,
    devices: &[String],
    services: &[(&str, &Secret)],
) -> Result<(String, Vec<String>), MqttError> {
    let mut out = String::new();
    for (i, (user, password)) in services.iter().enumerate() {
        check_user(user)?;
        if services[..i].iter().any(|(u, _)| u == user) {
            return Err(MqttError::Credentials(format!(
                "the dispatcher and the device gateway cannot share the user name {user:?}"
            )));
        }
        if secret.is_some() && devices.iter().any(|d| d == user) {
            return Err(MqttError::Credentials(format!(
                "a registered device is named {user:?}, like one of muster's own broker users; choose another --dispatcher-user or --gateway-user"
            )));
        }
        out.push_str(&format!("{user}:{}\n", mosquitto_hash(password.expose())?));
    }
    let mut left_out = Vec::new();
    let Some(secret) = secret else {
        return Ok((out, left_out));
    };
    for d in devices {
        if !valid_user_name(d) {
            left_out.push(d.clone());
            continue;
        }
        let pw = secret.device_password(d);
        out.push_str(&format!("{d}:{}\n", mosquitto_hash(pw.expose())?));
    }
    Ok((out, left_out))
}

fn check_user(name: &str) -> Result<(), MqttError> {
    if valid_user_name(name) {
        Ok(())
    } else {
        Err(MqttError::Credentials(format!(
            "{name:?} cannot be a broker user name (no ':', '+', '#', '/' or spaces)"
        )))
    }
}

/// The Mosquitto ACL file: every client may use only its own device's topics (`%u`, its user
/// name, is its device id); the dispatcher the other side of every device's topics; the device
/// gateway, when given, the device side of every device's topics (it confines each device it
/// logs in to its own, `muster_domain::auth::device_may_publish`). The topics are those of
/// design.md's "MQTT device protocol", listed once in `muster_domain::auth`.
pub fn acl_file(dispatcher_user: &str, gateway_user: Option<&str>) -> Result<String, MqttError> {
    use muster_domain::auth::{DEVICE_RECEIVES, DEVICE_SENDS};
    check_user(dispatcher_user)?;
    let mut out = String::from(
        "# Generated by `muster device credentials`. A device logs in with its device id as user
# name, so %u below is its id: it may only receive its own method calls and desired patches and
# only publish its own answers, reported properties and presence (its will included).
",
    );
    let lines = |out: &mut String, kind: &str, device: &str| {
        for t in DEVICE_RECEIVES {
            out.push_str(&format!("{kind} read devices/{device}/{t}\n"));
        }
        for t in DEVICE_SENDS {
            out.push_str(&format!("{kind} write devices/{device}/{t}\n"));
        }
    };
    lines(&mut out, "pattern", "%u");
    out.push_str(&format!(
        "
# muster's dispatcher: calls methods and pushes desired patches to every device, reads every
# device's answers, presence and reported properties.
user {dispatcher_user}
"
    ));
    for t in DEVICE_RECEIVES {
        out.push_str(&format!("topic write devices/+/{t}\n"));
    }
    for t in DEVICE_SENDS {
        out.push_str(&format!("topic read devices/+/{t}\n"));
    }
    if let Some(gateway) = gateway_user {
        check_user(gateway)?;
        if gateway == dispatcher_user {
            return Err(MqttError::Credentials(format!(
                "the dispatcher and the device gateway cannot share the user name {gateway:?}"
            )));
        }
        out.push_str(&format!(
            "
# muster's device gateway: every device that logs in with its SAS token comes through it, as
# this one user; the gateway keeps each to its own topics.
user {gateway}
"
        ));
        lines(&mut out, "topic", "+");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret() -> FleetSecret {
        FleetSecret::new(Secret::new("0123456789abcdef-fleet")).unwrap()
    }

    #[test]
    fn device_passwords_are_hmac_sha256_in_base64() {
        let s = secret();
        let pw = s.device_password("dev-1");
        assert_eq!(pw.expose().len(), 44);
        assert_eq!(pw, s.device_password("dev-1"));
        assert_ne!(pw, s.device_password("dev-2"));
        assert!(s.verify("dev-1", pw.expose()));
        assert!(!s.verify("dev-2", pw.expose()));
        assert!(!s.verify("dev-1", "not base64!"));
        // Pinned: a change would lock every provisioned device out.
        assert_eq!(
            FleetSecret::new(Secret::new("key-key-key-key-"))
                .unwrap()
                .device_password("d")
                .expose(),
            STANDARD.encode({
                let mut m = hmac_sha256(b"key-key-key-key-");
                m.update(b"d");
                m.finalize().into_bytes()
            })
        );
        assert!(FleetSecret::new(Secret::new("short")).is_err());
    }

    #[test]
    fn hashes_match_mosquitto_passwd() {
        // Written by `mosquitto_passwd -b -c pw.txt alice secret` (Mosquitto 2.0.11).
        let real = "$7$101$5qsrJpQ+F+mWOsjG$9CmZx13NOlOiBJfKy/DFXsgZqWYJZ90Swj4ZBqCx51FPnBU+kY0z/wbrt4+vVUGmyNn7TroCL3z3zPIsJdgEZQ==";
        assert!(mosquitto_verify("secret", real));
        assert!(!mosquitto_verify("Secret", real));
        let salt = STANDARD.decode("5qsrJpQ+F+mWOsjG").unwrap();
        assert_eq!(mosquitto_hash_with_salt("secret", &salt, 101), real);
        let ours = mosquitto_hash("pw").unwrap();
        assert!(ours.starts_with("$7$101$"));
        assert!(mosquitto_verify("pw", &ours));
    }

    #[test]
    fn password_and_acl_files() {
        let s = secret();
        let disp = Secret::new("dispatcher-pw");
        let (file, left_out) = password_file(
            Some(&s),
            &["a".into(), "b".into(), "c:1".into()],
            &[(DEFAULT_DISPATCHER_USER, &disp)],
        )
        .unwrap();
        assert_eq!(left_out, vec!["c:1".to_string()]);
        let lines: Vec<(&str, &str)> = file.lines().map(|l| l.split_once(':').unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0, DEFAULT_DISPATCHER_USER);
        assert!(mosquitto_verify("dispatcher-pw", lines[0].1));
        assert!(mosquitto_verify(
            s.device_password("b").expose(),
            lines[2].1
        ));
        assert!(password_file(
            Some(&s),
            &["muster-dispatcher".into()],
            &[("muster-dispatcher", &disp)]
        )
        .is_err());
        assert!(password_file(Some(&s), &[], &[("a:b", &disp)]).is_err());
        assert!(password_file(None, &[], &[("a", &disp), ("a", &disp)]).is_err());
        // Without a fleet secret only muster's own logins are written (devices come through
        // the gateway).
        let gw = Secret::new("gateway-pw");
        let (only, _) =
            password_file(None, &["a".into()], &[("disp", &disp), ("gw", &gw)]).unwrap();
        let users: Vec<&str> = only.lines().filter_map(|l| l.split(':').next()).collect();
        assert_eq!(users, ["disp", "gw"]);
        let acl = acl_file("disp", None).unwrap();
        assert!(acl.contains("user disp\n"));
        assert!(acl.contains("pattern write devices/%u/presence\n"));
        assert!(acl.contains("pattern read devices/%u/methods/POST/#\n"));
        assert!(acl.contains("topic write devices/+/methods/POST/#\n"));
        assert!(acl.contains("topic read devices/+/methods/res/#\n"));
        assert!(!acl.contains("user gw"));
        let acl = acl_file("disp", Some("gw")).unwrap();
        let gateway = acl.split("user gw\n").nth(1).unwrap();
        assert!(gateway.contains("topic read devices/+/methods/POST/#\n"));
        assert!(gateway.contains("topic write devices/+/presence\n"));
        assert!(!gateway.contains("topic write devices/+/methods/POST"));
        assert!(acl_file("a/b", None).is_err());
        assert!(acl_file("disp", Some("disp")).is_err());
    }
}
