//! `muster auth ...`: API tokens and shared access policies over `muster.v1.AuthService`, and
//! `muster auth sign`, which turns a connection string into a token for curl.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use muster_proto::pb;
use muster_proto::pb::auth_service_client::AuthServiceClient;
use serde_json::json;

use crate::client::credential::{header_value, token_text};
use crate::client::{connect, rpc, ClientOpts, Output};

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Create an API token; its text is printed once and never again.
    CreateToken {
        id: String,
        /// A role: administrator, builder, operator, viewer, auditor (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, e.g. `30d`, `12h`, `90m` (default one year).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// API tokens: ids, roles, expiry (never the secret).
    ListTokens,
    /// Revoke an API token (on every node within a moment).
    DeleteToken {
        id: String,
    },
    /// Create a shared access policy, or replace one with new keys; prints its keys and
    /// connection string once.
    SavePolicy {
        name: String,
        /// RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect (repeatable or
        /// comma-separated).
        #[arg(long = "rights", required = true, value_delimiter = ',')]
        rights: Vec<String>,
    },
    /// Shared access policies: names and rights (never the keys).
    ListPolicies,
    DeletePolicy {
        name: String,
    },
    /// Print a token signed from `--token`'s connection string, for `curl -H "Authorization: ..."`.
    Sign {
        /// Lifetime, e.g. `1h` (default), `30d`.
        #[arg(long)]
        expires_in: Option<String>,
    },
}

/// `30d`, `12h`, `90m`, `45s` as seconds.
fn duration_secs(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| anyhow!("`{s}` is not a duration such as 30d, 12h, 90m or 45s"))?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => bail!("`{s}`: the unit must be d, h, m or s"),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| anyhow!("`{s}` is not a positive duration"))
}

pub async fn auth(opts: &ClientOpts, cmd: AuthCmd) -> anyhow::Result<()> {
    if opts.output == Output::Csv {
        bail!("--output csv is offered by `muster job devices` only");
    }
    if let AuthCmd::Sign { expires_in } = &cmd {
        let ttl = expires_in.as_deref().map_or(Ok(3600), duration_secs)?;
        let text = opts
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("give the connection string with --token or MUSTER_TOKEN (or @FILE, e.g. @DATA_DIR/admin.credential)"))?;
        println!("{}", header_value(token_text(text)?.trim(), ttl)?);
        return Ok(());
    }
    let mut client = AuthServiceClient::new(connect(opts).await?);
    let json_out = opts.output == Output::Json;
    match cmd {
        AuthCmd::CreateToken {
            id,
            roles,
            expires_in,
        } => {
            let expiry_ms = match expires_in {
                Some(d) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_millis();
                    i64::try_from(now)? + duration_secs(&d)? * 1000
                }
                None => 0,
            };
            let t = client
                .create_token(pb::CreateTokenRequest {
                    id,
                    roles,
                    expiry_ms,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let info = t.info.unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"id": info.id, "roles": info.roles, "expiryMs": info.expiry_ms, "token": t.token})
                );
            } else {
                println!(
                    "token {} ({}); shown once, keep it secret:",
                    info.id,
                    info.roles.join(", ")
                );
                println!("{}", t.token);
            }
        }
        AuthCmd::ListTokens => {
            let r = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            for t in r.tokens {
                if json_out {
                    println!(
                        "{}",
                        json!({"id": t.id, "roles": t.roles, "expiryMs": t.expiry_ms})
                    );
                } else {
                    println!(
                        "{:<32} {:<30} expires {}",
                        t.id,
                        t.roles.join(","),
                        rfc3339(t.expiry_ms)
                    );
                }
            }
        }
        AuthCmd::DeleteToken { id } => {
            client
                .delete_token(pb::DeleteTokenRequest { id: id.clone() })
                .await
                .map_err(rpc)?;
            if !json_out {
                println!("token {id} revoked");
            }
        }
        AuthCmd::SavePolicy { name, rights } => {
            let p = client
                .save_policy(pb::SavePolicyRequest { name, rights })
                .await
                .map_err(rpc)?
                .into_inner();
            let info = p.info.unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"name": info.name, "rights": info.rights, "primaryKey": p.primary_key,
                           "secondaryKey": p.secondary_key, "connectionString": p.connection_string})
                );
            } else {
                println!(
                    "policy {} ({}); keys shown once, keep them secret:",
                    info.name,
                    info.rights.join(", ")
                );
                println!("{}", p.connection_string);
            }
        }
        AuthCmd::ListPolicies => {
            let r = client
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            for p in r.policies {
                if json_out {
                    println!("{}", json!({"name": p.name, "rights": p.rights}));
                } else {
                    println!("{:<32} {}", p.name, p.rights.join(", "));
                }
            }
        }
        AuthCmd::DeletePolicy { name } => {
            client
                .delete_policy(pb::DeletePolicyRequest { name: name.clone() })
                .await
                .map_err(rpc)?;
            if !json_out {
                println!("policy {name} deleted");
            }
        }
        AuthCmd::Sign { .. } => {}
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    muster_types::Timestamp::from_millis(ms).to_rfc3339()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_read_their_unit() {
        assert_eq!(duration_secs("30d").unwrap(), 30 * 86_400);
        assert_eq!(duration_secs("90m").unwrap(), 5_400);
        assert_eq!(duration_secs("45").unwrap(), 45);
        for bad in ["", "d", "-1h", "3w", "0s"] {
            assert!(duration_secs(bad).is_err(), "{bad}");
        }
    }
}
