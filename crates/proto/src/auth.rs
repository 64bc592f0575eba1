//! Conversions of credentials: policies and API tokens, in commands and events.

use muster_domain::auth::{AccessPolicy, ApiToken, Right, Role};

use crate::error::ProtoError;
use crate::fields::time;
use crate::pb;

pub(crate) fn right_names(rights: &[Right]) -> Vec<String> {
    rights.iter().map(|r| r.name().to_string()).collect()
}

pub(crate) fn role_names(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|r| r.name().to_string()).collect()
}

pub(crate) fn rights(field: &str, names: Vec<String>) -> Result<Vec<Right>, ProtoError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Right::parse(n).ok_or_else(|| unknown(&format!("{field}[{i}]"), n)))
        .collect()
}

pub(crate) fn roles(field: &str, names: Vec<String>) -> Result<Vec<Role>, ProtoError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Role::parse(n).ok_or_else(|| unknown(&format!("{field}[{i}]"), n)))
        .collect()
}

fn unknown(field: &str, name: &str) -> ProtoError {
    ProtoError::UnknownName {
        field: field.to_string(),
        name: name.chars().take(64).collect(),
    }
}

impl From<&AccessPolicy> for pb::AccessPolicy {
    fn from(p: &AccessPolicy) -> Self {
        pb::AccessPolicy {
            name: p.name.clone(),
            primary_key: p.primary_key.clone(),
            secondary_key: p.secondary_key.clone(),
            rights: right_names(&p.rights),
        }
    }
}

pub(crate) fn policy(field: &str, p: pb::AccessPolicy) -> Result<AccessPolicy, ProtoError> {
    Ok(AccessPolicy {
        rights: rights(&format!("{field}.rights"), p.rights)?,
        name: p.name,
        primary_key: p.primary_key,
        secondary_key: p.secondary_key,
    })
}

impl From<&ApiToken> for pb::ApiToken {
    fn from(t: &ApiToken) -> Self {
        pb::ApiToken {
            id: t.id.clone(),
            roles: role_names(&t.roles),
            expiry_ms: t.expiry.millis(),
            secret_hash: t.secret_hash.clone(),
        }
    }
}

pub(crate) fn token(field: &str, t: pb::ApiToken) -> Result<ApiToken, ProtoError> {
    Ok(ApiToken {
        roles: roles(&format!("{field}.roles"), t.roles)?,
        id: t.id,
        expiry: time(t.expiry_ms),
        secret_hash: t.secret_hash,
    })
}
