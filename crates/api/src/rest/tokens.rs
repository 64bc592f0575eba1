//! IoT Central's API tokens: `PUT/GET/DELETE /api/apiTokens/{tokenId}` and `GET /api/apiTokens`
//! (2022-07-31). The token text is in the answer to the `PUT` only; reads show id, roles and
//! expiry. Every route needs `auth.manage`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::{check_credential_name, ApiToken, Permission, Role};
use muster_domain::Command;
use muster_types::Timestamp;
use serde_json::{json, Value};

use super::central::version;
use super::errors::TOKEN;
use super::extract::{Caller, JsonText, Params, PathParams};
use super::guard::Routes;
use super::{ok_json, App};
use crate::access::Access::Need;
use crate::credentials::{new_token, DEFAULT_TOKEN_LIFETIME_MS};
use crate::error::ApiError;

pub(super) fn routes() -> Routes {
    use Permission::AuthManage;
    Routes::new()
        .get("/api/apiTokens", Need(AuthManage), list_tokens)
        .get("/api/apiTokens/{id}", Need(AuthManage), get_token)
        .put("/api/apiTokens/{id}", Need(AuthManage), put_token)
        .delete("/api/apiTokens/{id}", Need(AuthManage), delete_token)
}

fn token_id(id: &str) -> Result<String, ApiError> {
    check_credential_name("tokenId", id)
        .map_err(|e| ApiError::bad_request("tokenId", format!("{e} (the token id in the URL)")))?;
    Ok(id.to_string())
}

/// `{id, roles: [{role}], expiry}`: a token as every read shows it.
fn token_json(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "roles": t.roles.iter().map(|r| json!({"role": r.id()})).collect::<Vec<_>>(),
        "expiry": t.expiry.to_rfc3339(),
    })
}

/// The request body: `roles` (required, role ids or names) and `expiry` (RFC 3339, optional).
fn parse_request(body: &Value, at: Timestamp) -> Result<(Vec<Role>, Timestamp), ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("body", "must be a JSON object with `roles`"))?;
    let roles = obj
        .get("roles")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("roles", "give at least one role assignment, e.g. [{\"role\": \"ae2c9854-393b-4f97-8c42-479d70ce626e\"}]")
        })?;
    let mut out = Vec::with_capacity(roles.len());
    for (i, r) in roles.iter().enumerate() {
        let field = format!("roles[{i}]");
        if r.get("organization").is_some_and(|o| !o.is_null()) {
            return Err(ApiError::bad_request(
                &format!("{field}.organization"),
                "muster has no organizations; leave it out",
            ));
        }
        let id = r.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request(&format!("{field}.role"), "must be a role id string")
        })?;
        let role = Role::parse(id).ok_or_else(|| {
            ApiError::bad_request(
                &format!("{field}.role"),
                "unknown role; use an IoT Central role id (Administrator ca310b8d-2f4a-44e0-a36e-957c202cd8d4, Builder 344138e9-8de4-4497-8c54-5237e96d6aaf, Operator ae2c9854-393b-4f97-8c42-479d70ce626e) or muster-viewer, muster-auditor",
            )
        })?;
        out.push(role);
    }
    let expiry = match obj.get("expiry") {
        None | Some(Value::Null) => at.plus_millis(DEFAULT_TOKEN_LIFETIME_MS),
        Some(Value::String(s)) => Timestamp::parse_rfc3339(s)
            .map_err(|e| ApiError::bad_request("expiry", format!("{e}")))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "expiry",
                "must be an RFC 3339 date-time string such as 2027-01-01T00:00:00Z",
            ))
        }
    };
    Ok((out, expiry))
}

async fn put_token(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = token_id(&id)?;
    let at = now();
    let (roles, expiry) = parse_request(&crate::json::parse_body(&body)?, at)?;
    let (token, text) = new_token(&id, roles, expiry, &app.host)?;
    let mut answer = token_json(&token);
    answer["token"] = json!(text);
    app.write(&caller, Command::CreateApiToken { token, at }, TOKEN)
        .await?;
    Ok(ok_json(answer))
}

async fn get_token(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = token_id(&id)?;
    app.read(|s| s.auth.tokens.get(&id).map(token_json))
        .await?
        .map(ok_json)
        .ok_or_else(|| ApiError::not_found(format!("API token {id}")))
}

async fn list_tokens(State(app): State<App>, q: Params) -> Result<Response, ApiError> {
    version(&q)?;
    let value: Vec<Value> = app
        .read(|s| s.auth.tokens.values().map(token_json).collect())
        .await?;
    Ok(ok_json(json!({ "value": value })))
}

async fn delete_token(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = token_id(&id)?;
    app.write(&caller, Command::DeleteApiToken { id, at: now() }, TOKEN)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
