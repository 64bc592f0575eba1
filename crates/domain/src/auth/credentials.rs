//! The credentials muster knows, as replicated state: IoT Hub shared access policies (their keys
//! sign SAS tokens) and IoT Central API tokens (only a hash of their secret is kept).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use muster_types::Timestamp;
use serde::{Deserialize, Serialize};

use super::grants::{rights_grants, Grants, Right, Role};
use crate::error::DomainError;

/// A value that must never be shown: its `Debug` and its JSON in events (which reach audit
/// exports and event streams) are `"<redacted>"`. The replicated state keeps the real value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

pub const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// An IoT Hub shared access policy: a name, two keys (either signs tokens, so one can be rotated
/// while the other is in use) and its rights.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    pub name: String,
    /// Base64 of the key bytes, as IoT Hub shows keys.
    pub primary_key: String,
    pub secondary_key: String,
    pub rights: Vec<Right>,
}

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

impl AccessPolicy {
    pub fn grants(&self) -> Grants {
        rights_grants(&self.rights)
    }

    /// The decoded key bytes, primary first; a key that does not decode signs nothing.
    pub fn key_bytes(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        [&self.primary_key, &self.secondary_key]
            .into_iter()
            .filter_map(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
    }

    /// Checks name, keys and rights, naming the field to fix.
    pub fn check(&self) -> Result<(), DomainError> {
        check_credential_name("policy name", &self.name)?;
        for (field, key) in [
            ("primaryKey", &self.primary_key),
            ("secondaryKey", &self.secondary_key),
        ] {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| invalid(field, "is not base64 (standard alphabet, with padding)"))?;
            if !(16..=64).contains(&bytes.len()) {
                return Err(invalid(
                    field,
                    "must decode to between 16 and 64 bytes (IoT Hub's keys are 32)",
                ));
            }
        }
        if self.rights.is_empty() {
            return Err(invalid(
                "rights",
                "give at least one of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect",
            ));
        }
        Ok(())
    }
}

/// IoT Hub's default policies on a new hub, with the rights IoT Hub gives them; `keys` supplies
/// the random keys (two per policy), which the shell draws so the core stays deterministic.
pub fn default_policies(mut keys: impl FnMut() -> String) -> Vec<AccessPolicy> {
    use Right::*;
    let defs: [(&str, &[Right]); 4] = [
        (
            "iothubowner",
            &[RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect],
        ),
        ("service", &[ServiceConnect]),
        ("registryRead", &[RegistryRead]),
        ("registryReadWrite", &[RegistryRead, RegistryWrite]),
    ];
    defs.iter()
        .map(|(name, rights)| AccessPolicy {
            name: (*name).to_string(),
            primary_key: keys(),
            secondary_key: keys(),
            rights: rights.to_vec(),
        })
        .collect()
}

/// An IoT Central API token. The secret is handed out once, when the token is created; muster
/// keeps only its SHA-256.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub roles: Vec<Role>,
    pub expiry: Timestamp,
    /// Hex SHA-256 of the secret (the token's `sig` value, percent-decoded).
    pub secret_hash: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("roles", &self.roles)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    pub fn grants(&self) -> Grants {
        self.roles
            .iter()
            .fold(Grants::NONE, |g, r| g.union(r.grants()))
    }

    pub fn check(&self) -> Result<(), DomainError> {
        check_credential_name("token id", &self.id)?;
        if self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "give at least one role (administrator, builder, operator, viewer, auditor or an IoT Central role id)",
            ));
        }
        if self.secret_hash.len() != 64 || !self.secret_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid("secretHash", "must be 64 hex digits (a SHA-256)"));
        }
        Ok(())
    }
}

/// Everything muster knows about credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Auth {
    /// The default policies were created; a leader creates them once, on a new cluster.
    pub initialized: bool,
    pub policies: BTreeMap<String, AccessPolicy>,
    pub tokens: BTreeMap<String, ApiToken>,
    /// Bumped by every change, so a cache of verified tokens knows when to forget.
    pub version: u64,
}

impl Auth {
    /// Whether a credential that may manage credentials would remain without `name` (a policy or
    /// token about to go): refusing the last one keeps a cluster from locking itself out.
    pub fn admin_remains_without(&self, name: &str) -> bool {
        use super::grants::Permission::AuthManage;
        self.policies
            .values()
            .any(|p| p.name != name && p.grants().allows(AuthManage))
            || self
                .tokens
                .values()
                .any(|t| t.id != name && t.grants().allows(AuthManage))
    }
}

/// Policy names and token ids: IoT Hub's rule for policy names (letters, digits, `.`, `-`, `_`),
/// at most 64 characters.
pub fn check_credential_name(what: &str, name: &str) -> Result<(), DomainError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(what, "must be 1 to 64 characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(
            what,
            &format!("contains {c:?}; allowed are letters, digits, '.', '-' and '_'"),
        ));
    }
    Ok(())
}

fn invalid(field: &str, message: &str) -> DomainError {
    DomainError::Invalid {
        field: field.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let p = AccessPolicy {
            name: "iothubowner".into(),
            primary_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into(),
            secondary_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into(),
            rights: vec![Right::ServiceConnect],
        };
        assert!(!format!("{p:?}").contains("c2Vj"));
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap_or_default(),
            "\"<redacted>\""
        );
    }

    #[test]
    fn names_and_keys_are_checked() {
        assert!(check_credential_name("x", "registryReadWrite").is_ok());
        assert!(check_credential_name("x", "a b").is_err());
        assert!(check_credential_name("x", "").is_err());
        let mut p =
            default_policies(|| "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()).remove(0);
        assert!(p.check().is_ok());
        p.primary_key = "not base64!".into();
        assert!(p.check().is_err());
    }
}
