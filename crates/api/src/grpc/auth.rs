//! `muster.v1.AuthService`: API tokens and shared access policies. The gate in front of it lets
//! only callers holding `auth.manage` through.

use muster_cluster::{now, Cluster};
use muster_domain::auth::{check_credential_name, Right, Role};
use muster_domain::Command;
use muster_proto::pb;
use tonic::{Request, Response, Status};

use super::{caller, cluster_status};
use crate::access::Gate;
use crate::credentials::{connection_string, new_policy, new_token, DEFAULT_TOKEN_LIFETIME_MS};

/// The credentials service over a cluster handle; `gate` knows the host name tokens are made for.
#[derive(Debug, Clone)]
pub struct AuthApi {
    cluster: Cluster,
    gate: Gate,
}

impl AuthApi {
    pub fn new(cluster: Cluster, gate: Gate) -> Self {
        AuthApi { cluster, gate }
    }
}

fn name(field: &str, value: &str) -> Result<(), Status> {
    check_credential_name(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn token_info(t: &muster_domain::auth::ApiToken) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        roles: t.roles.iter().map(|r| r.name().to_string()).collect(),
        expiry_ms: t.expiry.millis(),
    }
}

fn policy_info(p: &muster_domain::auth::AccessPolicy) -> pb::PolicyInfo {
    pb::PolicyInfo {
        name: p.name.clone(),
        rights: p.rights.iter().map(|r| r.name().to_string()).collect(),
    }
}

fn internal(e: crate::error::ApiError) -> Status {
    Status::internal(e.message)
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        name("id", &r.id)?;
        let roles = r
            .roles
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Role::parse(s).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "roles[{i}]: unknown role; use administrator, builder, operator, viewer or auditor"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let at = now();
        let expiry = match r.expiry_ms {
            0 => at.plus_millis(DEFAULT_TOKEN_LIFETIME_MS),
            ms => muster_types::Timestamp::from_millis(ms),
        };
        let (token, text) = new_token(&r.id, roles, expiry, self.gate.host()).map_err(internal)?;
        let info = token_info(&token);
        self.cluster
            .write_as(who, Command::CreateApiToken { token, at })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::CreatedToken {
            info: Some(info),
            token: text,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.cluster.linearizable().await.map_err(cluster_status)?;
        let tokens = self
            .cluster
            .reader()
            .read(|s| s.auth.tokens.values().map(token_info).collect());
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let who = caller(&request);
        let id = request.into_inner().id;
        name("id", &id)?;
        self.cluster
            .write_as(who, Command::DeleteApiToken { id, at: now() })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }

    async fn save_policy(
        &self,
        request: Request<pb::SavePolicyRequest>,
    ) -> Result<Response<pb::SavedPolicy>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        name("name", &r.name)?;
        let rights = r
            .rights
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Right::parse(s).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "rights[{i}]: unknown right; use RegistryRead, RegistryWrite, ServiceConnect or DeviceConnect"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policy = new_policy(&r.name, rights).map_err(internal)?;
        let answer = pb::SavedPolicy {
            info: Some(policy_info(&policy)),
            primary_key: policy.primary_key.clone(),
            secondary_key: policy.secondary_key.clone(),
            connection_string: connection_string(&policy, self.gate.host()),
        };
        self.cluster
            .write_as(who, Command::SavePolicy { policy, at: now() })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(answer))
    }

    async fn list_policies(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.cluster.linearizable().await.map_err(cluster_status)?;
        let policies = self
            .cluster
            .reader()
            .read(|s| s.auth.policies.values().map(policy_info).collect());
        Ok(Response::new(pb::ListPoliciesResponse { policies }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let who = caller(&request);
        let name_ = request.into_inner().name;
        name("name", &name_)?;
        self.cluster
            .write_as(
                who,
                Command::DeletePolicy {
                    name: name_,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }
}
