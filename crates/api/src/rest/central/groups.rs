//! IoT Central's `/api/deviceGroups` routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_domain::Command;

use super::{group_id, group_not_found, named_list, version, ListRequest};
use crate::access::Access::Need;
use crate::central::{central_device_group_json, device_group_from_central};
use crate::central_filter::{self, DeviceFields};
use crate::error::ApiError;
use crate::rest::errors::GROUP;
use crate::rest::extract::{Caller, JsonText, Params, PathParams};
use crate::rest::guard::Routes;
use crate::rest::{ok_json, App};

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/api/deviceGroups", Need(DevicesRead), list_groups)
        .get("/api/deviceGroups/{id}", Need(DevicesRead), get_group)
        .put("/api/deviceGroups/{id}", Need(GroupsWrite), put_group)
        .delete("/api/deviceGroups/{id}", Need(GroupsWrite), delete_group)
}

/// `GET /api/deviceGroups`, with `filter` (on `id` and `displayName`), `orderby=displayName`,
/// `top` and `maxpagesize`, paged like the device list.
async fn list_groups(State(app): State<App>, list: ListRequest) -> Result<Response, ApiError> {
    version(&list.q)?;
    let filter = central_filter::parse_filter(list.q.get("filter").unwrap_or_default())?;
    if let Some(field) = filter.as_ref().and_then(|f| f.device_only_field()) {
        return Err(ApiError::bad_request(
            "filter",
            format!("a device group has no {field}; the device group list filters on id and displayName, e.g. filter=contains(displayName, 'thermostats')"),
        ));
    }
    named_list(
        &app,
        &list,
        "GET /api/deviceGroups",
        |s| &s.registry.groups,
        |g| &g.display_name,
        |g| filter.as_ref().is_none_or(|f| f.keeps(&group_fields(g))),
        central_device_group_json,
    )
    .await
}

/// What a list filter sees of a group: its id and display name (the device-only fields were
/// refused before).
fn group_fields(g: &muster_domain::Group) -> DeviceFields<'_> {
    DeviceFields {
        id: g.id.as_str(),
        display_name: &g.display_name,
        template: None,
        enabled: false,
        provisioned: false,
        simulated: false,
    }
}

async fn get_group(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = group_id(&id)?;
    app.read(|s| s.registry.groups.get(&id).map(central_device_group_json))
        .await?
        .map(ok_json)
        .ok_or_else(|| group_not_found(&id))
}

/// `PUT /api/deviceGroups/{id}`: creates or replaces the group (IoT Central's PUT). Jobs already
/// created on the group keep the filter they were created with.
async fn put_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    group_id(&id)?;
    let g = device_group_from_central(&body, &id)?;
    let gid = g.id.clone();
    app.write(
        &caller,
        Command::SaveGroup {
            id: g.id,
            display_name: g.display_name,
            query: g.filter,
            at: now(),
        },
        GROUP,
    )
    .await?;
    app.read_applied(|s| s.registry.groups.get(&gid).map(central_device_group_json))
        .map(ok_json)
        .ok_or_else(|| group_not_found(&gid))
}

async fn delete_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let id = group_id(&id)?;
    app.write(&caller, Command::DeleteGroup { id, at: now() }, GROUP)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
