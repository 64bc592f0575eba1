//! `decide` and `evolve` for credentials: the part of the core that changes [`Auth`].

use muster_types::Timestamp;

use super::credentials::{check_credential_name, AccessPolicy, ApiToken, Auth, Secret};
use crate::command::Command;
use crate::error::DomainError;
use crate::event::Event;

/// The events of a credentials command; `None` when `cmd` is not one.
pub(crate) fn decide(auth: &Auth, cmd: &Command) -> Option<Result<Vec<Event>, DomainError>> {
    Some(match cmd {
        Command::InitAuth { policies, at } => init(auth, policies, *at),
        Command::SavePolicy { policy, at } => save_policy(auth, policy, *at),
        Command::DeletePolicy { name, at } => delete_policy(auth, name, *at),
        Command::CreateApiToken { token, at } => create_token(auth, token, *at),
        Command::DeleteApiToken { id, at } => delete_token(auth, id, *at),
        _ => return None,
    })
}

fn init(auth: &Auth, policies: &[AccessPolicy], at: Timestamp) -> Result<Vec<Event>, DomainError> {
    if auth.initialized {
        return Err(DomainError::CredentialConflict(
            "the cluster's credentials already exist".into(),
        ));
    }
    let mut events = Vec::with_capacity(policies.len());
    for p in policies {
        p.check()?;
        events.push(policy_saved(p, at));
    }
    Ok(events)
}

fn save_policy(auth: &Auth, p: &AccessPolicy, at: Timestamp) -> Result<Vec<Event>, DomainError> {
    p.check()?;
    if auth.tokens.contains_key(&p.name) {
        return Err(DomainError::CredentialConflict(format!(
            "{} is the id of an API token; policies and tokens share one namespace, choose another name",
            p.name
        )));
    }
    let manages = p.grants().allows(super::Permission::AuthManage);
    if auth.policies.contains_key(&p.name) && !manages && !auth.admin_remains_without(&p.name) {
        return Err(last_admin(&p.name));
    }
    Ok(vec![policy_saved(p, at)])
}

fn delete_policy(auth: &Auth, name: &str, at: Timestamp) -> Result<Vec<Event>, DomainError> {
    if !auth.policies.contains_key(name) {
        return Err(not_found("shared access policy", name));
    }
    if !auth.admin_remains_without(name) {
        return Err(last_admin(name));
    }
    Ok(vec![Event::PolicyDeleted {
        name: name.to_string(),
        at,
    }])
}

fn create_token(auth: &Auth, t: &ApiToken, at: Timestamp) -> Result<Vec<Event>, DomainError> {
    t.check()?;
    if auth.tokens.contains_key(&t.id) || auth.policies.contains_key(&t.id) {
        return Err(DomainError::CredentialConflict(format!(
            "a token or policy named {} exists; delete it first or choose another id",
            t.id
        )));
    }
    if t.expiry <= at {
        return Err(DomainError::Invalid {
            field: "expiry".into(),
            message: "is in the past; give a time after now".into(),
        });
    }
    Ok(vec![Event::ApiTokenCreated {
        id: t.id.clone(),
        roles: t.roles.clone(),
        expiry: t.expiry,
        secret_hash: Secret(t.secret_hash.clone()),
        at,
    }])
}

fn delete_token(auth: &Auth, id: &str, at: Timestamp) -> Result<Vec<Event>, DomainError> {
    check_credential_name("token id", id)?;
    if !auth.tokens.contains_key(id) {
        return Err(not_found("API token", id));
    }
    if !auth.admin_remains_without(id) {
        return Err(last_admin(id));
    }
    Ok(vec![Event::ApiTokenDeleted {
        id: id.to_string(),
        at,
    }])
}

fn policy_saved(p: &AccessPolicy, at: Timestamp) -> Event {
    Event::PolicySaved {
        name: p.name.clone(),
        rights: p.rights.clone(),
        primary_key: Secret(p.primary_key.clone()),
        secondary_key: Secret(p.secondary_key.clone()),
        at,
    }
}

fn not_found(kind: &'static str, name: &str) -> DomainError {
    DomainError::CredentialNotFound {
        kind,
        name: name.to_string(),
    }
}

fn last_admin(name: &str) -> DomainError {
    DomainError::CredentialConflict(format!(
        "{name} is the last credential that may manage credentials; create another administrator token or full-rights policy first"
    ))
}

/// Applies a credentials event; `false` when `e` is not one.
pub(crate) fn evolve(auth: &mut Auth, e: &Event) -> bool {
    match e {
        Event::PolicySaved {
            name,
            rights,
            primary_key,
            secondary_key,
            ..
        } => {
            auth.policies.insert(
                name.clone(),
                AccessPolicy {
                    name: name.clone(),
                    primary_key: primary_key.0.clone(),
                    secondary_key: secondary_key.0.clone(),
                    rights: rights.clone(),
                },
            );
            auth.initialized = true;
        }
        Event::PolicyDeleted { name, .. } => {
            auth.policies.remove(name);
        }
        Event::ApiTokenCreated {
            id,
            roles,
            expiry,
            secret_hash,
            ..
        } => {
            auth.tokens.insert(
                id.clone(),
                ApiToken {
                    id: id.clone(),
                    roles: roles.clone(),
                    expiry: *expiry,
                    secret_hash: secret_hash.0.clone(),
                },
            );
            auth.initialized = true;
        }
        Event::ApiTokenDeleted { id, .. } => {
            auth.tokens.remove(id);
        }
        _ => return false,
    }
    auth.version += 1;
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::credentials::default_policies;
    use crate::auth::grants::Role;
    use crate::State;

    const KEY: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn initialized() -> State {
        let mut s = State::default();
        s.execute(&Command::InitAuth {
            policies: default_policies(|| KEY.into()),
            at: at(1),
        })
        .unwrap();
        s
    }

    #[test]
    fn init_happens_once_and_replays() {
        let mut s = initialized();
        assert_eq!(s.auth.policies.len(), 4);
        assert!(s
            .execute(&Command::InitAuth {
                policies: vec![],
                at: at(2)
            })
            .is_err());
        let token = ApiToken {
            id: "ops".into(),
            roles: vec![Role::Operator],
            expiry: at(10_000),
            secret_hash: "ab".repeat(32),
        };
        let mut events = Vec::new();
        let s0 = State::default();
        let mut live = s0.clone();
        for c in [
            Command::InitAuth {
                policies: default_policies(|| KEY.into()),
                at: at(1),
            },
            Command::CreateApiToken {
                token: token.clone(),
                at: at(2),
            },
            Command::DeletePolicy {
                name: "service".into(),
                at: at(3),
            },
        ] {
            events.extend(live.execute(&c).unwrap());
        }
        assert_eq!(State::replay(&events), live);
        assert_eq!(live.auth.tokens["ops"], token);
        // Expired at creation, taken ids, unknown names.
        assert!(s
            .execute(&Command::CreateApiToken {
                token: ApiToken {
                    expiry: at(1),
                    ..token.clone()
                },
                at: at(5)
            })
            .is_err());
        assert!(s
            .execute(&Command::CreateApiToken {
                token: ApiToken {
                    id: "service".into(),
                    ..token
                },
                at: at(5)
            })
            .is_err());
        assert!(s
            .execute(&Command::DeleteApiToken {
                id: "nope".into(),
                at: at(5)
            })
            .is_err());
    }

    #[test]
    fn the_last_credential_manager_cannot_be_removed() {
        let mut s = initialized();
        let e = s
            .execute(&Command::DeletePolicy {
                name: "iothubowner".into(),
                at: at(2),
            })
            .unwrap_err();
        assert!(e.to_string().contains("last credential"), "{e}");
        s.execute(&Command::CreateApiToken {
            token: ApiToken {
                id: "admin".into(),
                roles: vec![Role::Administrator],
                expiry: at(10_000),
                secret_hash: "cd".repeat(32),
            },
            at: at(3),
        })
        .unwrap();
        s.execute(&Command::DeletePolicy {
            name: "iothubowner".into(),
            at: at(4),
        })
        .unwrap();
        assert!(s
            .execute(&Command::DeleteApiToken {
                id: "admin".into(),
                at: at(5)
            })
            .is_err());
    }

    #[test]
    fn policy_events_print_no_keys() {
        let s = State::default();
        let events = crate::decide(
            &s,
            &Command::InitAuth {
                policies: default_policies(|| KEY.into()),
                at: at(1),
            },
        )
        .unwrap();
        let json = serde_json::to_string(&events).unwrap();
        assert!(!json.contains(KEY), "{json}");
        assert!(!format!("{events:?}").contains(KEY));
    }
}
