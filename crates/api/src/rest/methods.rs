//! Direct methods on one device, in both shapes: IoT Hub's `POST /twins/{id}/methods` and IoT
//! Central's `POST /api/devices/{id}/commands/{commandName}`. Each proposes one
//! `InvokeMethod` and answers when its final event is applied on this node (see
//! [`crate::methods::invoke`]); a bad body is refused before anything is recorded.

use axum::extract::State;
use axum::response::Response;
use muster_cluster::now;
use muster_domain::auth::Permission;
use muster_types::DeviceId;

use super::errors::{cluster_error, DEVICE};
use super::extract::{Caller, JsonText, Params, PathParams};
use super::guard::Routes;
use super::{ok_json, path_id, App};
use crate::access::Access::Need;
use crate::central::{check_api_version, CENTRAL_API_VERSIONS};
use crate::error::ApiError;
use crate::hub::HUB_API_VERSIONS;
use crate::methods::{
    central_command_json, command_from_central, hub_method_result_json, invoke, method_from_hub,
};

pub(super) fn routes() -> Routes {
    Routes::new()
        .post(
            "/twins/{device_id}/methods",
            Need(Permission::MethodsInvoke),
            hub_invoke,
        )
        .post(
            "/api/devices/{device_id}/commands/{command}",
            Need(Permission::MethodsInvoke),
            central_command,
        )
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    path_id(s, |s: &str| DeviceId::new(s), "deviceId", "device id")
}

/// `POST /twins/{deviceId}/methods`: 200 `{status, payload}` with the device's answer; 404
/// `DeviceNotOnline` when it was not connected within the connect timeout, 504
/// `GatewayTimeout` when it did not answer within the response timeout.
async fn hub_invoke(
    State(app): State<App>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    check_api_version(q.get("api-version"), HUB_API_VERSIONS)?;
    let device = device_id(&id)?;
    let req = method_from_hub(&body)?;
    let call = req.invocation(device.clone())?;
    let (status, payload) = invoke(&app.cluster, caller.0, call, now())
        .await
        .map_err(|e| e.into_api(&device, |c| cluster_error(c, DEVICE)))?;
    Ok(ok_json(hub_method_result_json(status, &payload)))
}

/// `POST /api/devices/{deviceId}/commands/{commandName}`: 200 with the command, its `id`,
/// `response` and `responseCode`; errors as the hub route.
async fn central_command(
    State(app): State<App>,
    caller: Caller,
    PathParams((id, command)): PathParams<(String, String)>,
    q: Params,
    JsonText(body): JsonText,
) -> Result<Response, ApiError> {
    check_api_version(q.get("api-version"), CENTRAL_API_VERSIONS)?;
    let device = device_id(&id)?;
    let req = command_from_central(&body, &command)?;
    let call = req.clone().invocation(device.clone())?;
    let invocation = call.id.clone();
    let (status, payload) = invoke(&app.cluster, caller.0, call, now())
        .await
        .map_err(|e| e.into_api(&device, |c| cluster_error(c, DEVICE)))?;
    Ok(ok_json(central_command_json(
        &invocation,
        &req,
        status,
        &payload,
    )))
}
