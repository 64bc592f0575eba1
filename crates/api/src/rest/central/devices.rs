//! IoT Central's `/api/devices` routes: the device and its properties.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_domain::Command;
use muster_types::DeviceId;

use super::{device_id, device_not_found, if_match, named_list, version, ListRequest};
use crate::access::Access::Need;
use crate::central::{
    central_device_json, central_properties_json, device_patch_from_central,
    device_registration_from_central, properties_from_central,
};
use crate::central_filter::{self, DeviceFields};
use crate::error::ApiError;
use crate::rest::errors::DEVICE;
use crate::rest::extract::{Caller, JsonText, Params, PathParams};
use crate::rest::guard::Routes;
use crate::rest::{ok_json, App};

/// The device `id` as IoT Central shows it, or its 404 for the device.
fn device_view(s: &muster_domain::State, id: &DeviceId) -> Result<Response, ApiError> {
    s.registry
        .devices
        .get(id)
        .map(|d| ok_json(central_device_json(d)))
        .ok_or_else(|| device_not_found(id))
}

/// The properties of the device `id` as IoT Central shows them, or its 404 for the device.
fn properties_view(s: &muster_domain::State, id: &DeviceId) -> Result<Response, ApiError> {
    s.registry
        .devices
        .get(id)
        .map(|d| ok_json(central_properties_json(d)))
        .ok_or_else(|| device_not_found(id))
}

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/api/devices", Need(DevicesRead), list_devices)
        .get("/api/devices/{id}", Need(DevicesRead), get_device)
        .put("/api/devices/{id}", Need(DevicesWrite), put_device)
        .patch("/api/devices/{id}", Need(DevicesWrite), patch_device)
        .delete("/api/devices/{id}", Need(DevicesWrite), delete_device)
        .get(
            "/api/devices/{id}/properties",
            Need(DevicesRead),
            get_properties,
        )
        .put(
            "/api/devices/{id}/properties",
            Need(TwinsWrite),
            put_properties,
        )
        .patch(
            "/api/devices/{id}/properties",
            Need(TwinsWrite),
            patch_properties,
        )
}

fn device_fields(d: &muster_domain::Device) -> DeviceFields<'_> {
    DeviceFields {
        id: d.id.as_str(),
        display_name: &d.display_name,
        template: d.model_id.as_deref(),
        enabled: d.enabled,
        provisioned: d.connection != muster_domain::ConnectionState::Unknown,
        simulated: false,
    }
}

/// `GET /api/devices`, with IoT Central's `filter`, `orderby`, `top` and `maxpagesize`; the
/// `nextLink` carries them all, so every page of a filtered, sorted list holds the next devices.
async fn list_devices(State(app): State<App>, list: ListRequest) -> Result<Response, ApiError> {
    version(&list.q)?;
    let filter = central_filter::parse_filter(list.q.get("filter").unwrap_or_default())?;
    named_list(
        &app,
        &list,
        "GET /api/devices",
        |s| &s.registry.devices,
        |d| &d.display_name,
        |d| filter.as_ref().is_none_or(|f| f.keeps(&device_fields(d))),
        central_device_json,
    )
    .await
}

async fn get_device(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| device_view(s, &id)).await?
}

/// `PUT /api/devices/{id}`: registers the device, or updates its display name, template and
/// enabled flag if it exists (IoT Central's create-or-update); its twin is kept.
async fn put_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    device_id(&id)?;
    let reg = device_registration_from_central(&body, &id)?;
    let did = reg.id.clone();
    app.write(
        &caller,
        Command::RegisterDevices {
            devices: vec![reg],
            upsert: true,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| device_view(s, &did))
}

/// `PATCH /api/devices/{id}`: changes only the fields given (`displayName`, `template`,
/// `enabled`); 404 for a device that does not exist.
async fn patch_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let did = device_id(&id)?;
    let if_version = if_match(&headers)?;
    let p = device_patch_from_central(&body, &id)?;
    app.write(
        &caller,
        Command::UpdateDevice {
            device: did.clone(),
            display_name: p.display_name,
            model_id: p.template,
            enabled: p.enabled,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| device_view(s, &did))
}

/// `DELETE /api/devices/{id}`: 204; jobs that still list the device fail it as not registered.
async fn delete_device(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    version(&q)?;
    let did = device_id(&id)?;
    let if_version = if_match(&headers)?;
    app.write(
        &caller,
        Command::DeleteDevice {
            device: did,
            if_version,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_properties(
    State(app): State<App>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    app.read(|s| properties_view(s, &id)).await?
}

/// `PUT /api/devices/{id}/properties`: the values given become the device's whole set of
/// properties set from the service (desired properties), replacing the previous set.
async fn put_properties(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let desired = properties_from_central(&body, true)?;
    app.write(
        &caller,
        Command::ReplaceTwin {
            device: id.clone(),
            tags: None,
            desired,
            if_version: None,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| properties_view(s, &id))
}

/// `PATCH /api/devices/{id}/properties`: sets the values given (JSON merge patch of the
/// desired properties; `null` removes one).
async fn patch_properties(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = device_id(&id)?;
    let desired = properties_from_central(&body, false)?;
    app.write(
        &caller,
        Command::UpdateTwin {
            device: id.clone(),
            tags: None,
            desired: Some(desired),
            if_version: None,
            at: now(),
        },
        DEVICE,
    )
    .await?;
    app.read_applied(|s| properties_view(s, &id))
}
