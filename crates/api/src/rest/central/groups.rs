//! IoT Central's `/api/deviceGroups` routes.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_domain::Command;
use muster_types::{DeviceId, GroupId};

use super::{group_id, group_not_found, if_match, named_list, version, ListRequest};
use crate::access::Access::Need;
use crate::central::{
    central_device_group_json, central_device_json, device_group_from_central,
    device_group_patch_from_central,
};
use crate::central_filter::{self, DeviceFields};
use crate::error::ApiError;
use crate::rest::errors::GROUP;
use crate::rest::extract::{Caller, JsonText, Params, PathParams};
use crate::rest::guard::Routes;
use crate::rest::{ok_json, page, App};

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/api/deviceGroups", Need(DevicesRead), list_groups)
        .get("/api/deviceGroups/{id}", Need(DevicesRead), get_group)
        .put("/api/deviceGroups/{id}", Need(GroupsWrite), put_group)
        .patch("/api/deviceGroups/{id}", Need(GroupsWrite), patch_group)
        .get(
            "/api/deviceGroups/{id}/devices",
            Need(DevicesRead),
            group_devices,
        )
        .delete("/api/deviceGroups/{id}", Need(GroupsWrite), delete_group)
}

/// `GET /api/deviceGroups`, paged like the device list (`maxpagesize`, `top`). IoT Central's
/// 2022-07-31 reference ("Device Groups - List") takes no other option; its 2022-10-31-preview
/// adds `filter` (here on `id` and `displayName`) and `orderby` (`displayName`), which muster
/// takes under every other api-version it serves and refuses under 2022-07-31 rather than
/// answering a list the caller's own API version would not filter.
async fn list_groups(State(app): State<App>, list: ListRequest) -> Result<Response, ApiError> {
    if version(&list.q)? == "2022-07-31" {
        for option in ["filter", "orderby"] {
            if list.q.get(option).is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_request(
                    option,
                    format!("IoT Central's 2022-07-31 reference defines no {option} for GET /api/deviceGroups; its 2022-10-31-preview does: send api-version=2022-10-31-preview, or leave {option} out and page with maxpagesize"),
                ));
            }
        }
    }
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
/// created on the group keep the filter they were created with. The body's `etag` (or an
/// `If-Match` header) makes it replace only the group at that etag (412 otherwise, 404 if none).
async fn put_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    group_id(&id)?;
    let g = device_group_from_central(&body, &id)?;
    let if_version = if_match(&headers)?.or(g.etag);
    save(
        &app,
        &caller,
        g.id,
        g.display_name,
        g.description,
        g.filter,
        if_version,
    )
    .await
}

/// `PATCH /api/deviceGroups/{id}`: changes only the fields given (`displayName`, `filter`,
/// `description`); 404 for a group that does not exist. The change is made on the version read
/// (or the `etag` given), so a concurrent save is never overwritten: it is a 412, and a retry
/// re-reads.
async fn patch_group(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let gid = group_id(&id)?;
    let p = device_group_patch_from_central(&body, &id)?;
    let wanted = if_match(&headers)?.or(p.etag);
    let current = app
        .read(|s| s.registry.groups.get(&gid).cloned())
        .await?
        .ok_or_else(|| group_not_found(&gid))?;
    save(
        &app,
        &caller,
        gid,
        p.display_name.unwrap_or(current.display_name),
        p.description.unwrap_or(current.description),
        p.filter.unwrap_or_else(|| current.query.text().to_string()),
        Some(wanted.unwrap_or(current.version)),
    )
    .await
}

/// Proposes the save and answers the group as it then is.
async fn save(
    app: &App,
    caller: &Caller,
    id: GroupId,
    display_name: String,
    description: String,
    query: String,
    if_version: Option<u64>,
) -> Result<Response, ApiError> {
    app.write(
        caller,
        Command::SaveGroup {
            id: id.clone(),
            display_name,
            description,
            query,
            if_version,
            at: now(),
        },
        GROUP,
    )
    .await?;
    app.read_applied(|s| s.registry.groups.get(&id).map(central_device_group_json))
        .map(ok_json)
        .ok_or_else(|| group_not_found(&id))
}

/// `GET /api/deviceGroups/{id}/devices`: the devices the group's filter matches now, in id
/// order, paged with `maxpagesize` like the other lists.
async fn group_devices(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    list: ListRequest,
) -> Result<Response, ApiError> {
    let p = list.page("GET /api/deviceGroups/{id}/devices", &[], |s: &str| {
        DeviceId::new(s)
    })?;
    let gid = group_id(&id)?;
    let found = app
        .read(|s| {
            s.registry.groups.get(&gid).map(|g| {
                page(&s.registry.devices, p.after.as_ref(), p.size, |_, d| {
                    g.query
                        .matches(&d.query_document(g.query.names_metadata()))
                        .then(|| central_device_json(d))
                })
            })
        })
        .await?;
    let (items, next) = found.ok_or_else(|| group_not_found(&gid))?;
    Ok(list.answer(&p, items, next))
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
