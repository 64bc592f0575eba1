//! Making credentials: the random part the pure core must not draw itself. Keys and secrets are
//! drawn here and put into commands (policy keys) or hashed first (token secrets).

use base64::Engine;
use muster_domain::auth::{
    api_token_string, hash_secret, AccessPolicy, ApiToken, ConnectionString, Right, Role,
};
use muster_types::Timestamp;

use crate::error::ApiError;

/// 32 random bytes as base64: IoT Hub's key size.
pub fn random_key() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!("no randomness for a key: {e}");
        ApiError::new(
            500,
            "InternalError",
            "the server could not draw a random key; retry",
        )
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A policy with fresh keys.
pub fn new_policy(name: &str, rights: Vec<Right>) -> Result<AccessPolicy, ApiError> {
    Ok(AccessPolicy {
        name: name.to_string(),
        primary_key: random_key()?,
        secondary_key: random_key()?,
        rights,
    })
}

/// A new API token and its text (the only place the secret exists).
pub fn new_token(
    id: &str,
    roles: Vec<Role>,
    expiry: Timestamp,
    host: &str,
) -> Result<(ApiToken, String), ApiError> {
    let secret = random_key()?;
    let token = ApiToken {
        id: id.to_string(),
        roles,
        expiry,
        secret_hash: hash_secret(&secret),
    };
    let text = api_token_string(host, &secret, id, expiry.millis());
    Ok((token, text))
}

/// The connection string of a policy (with its primary key) on `host`.
pub fn connection_string(policy: &AccessPolicy, host: &str) -> String {
    ConnectionString {
        host_name: host.to_string(),
        key_name: policy.name.clone(),
        key: policy.primary_key.clone(),
    }
    .to_string()
}

/// One year: the default lifetime of an API token, as IoT Central's.
pub const DEFAULT_TOKEN_LIFETIME_MS: i64 = 365 * 24 * 3600 * 1000;
