//! Direct methods on one device, in both shapes: IoT Hub's `POST /twins/{id}/methods` and IoT
//! Central's `POST /api/devices/{id}/commands/{commandName}`. Each proposes one
//! `InvokeMethod` and answers when its final event is applied on this node (see
//! [`crate::methods::invoke`]); a bad body is refused before anything is recorded.
//! `GET /api/devices/{id}/commands/{commandName}` is IoT Central's command history: the last
//! run of that command on that device, read back from the event log (the state keeps no ended
//! invocation).

use axum::extract::State;
use axum::response::Response;
use muster_cluster::{now, EventLog};
use muster_domain::auth::Permission;
use muster_domain::Event;
use muster_types::DeviceId;
use serde_json::{json, Value};

use super::errors::{cluster_error, internal, DEVICE};
use super::extract::{Caller, JsonText, Params, PathParams};
use super::guard::Routes;
use super::{ok_json, path_id, App};
use crate::access::Access::Need;
use crate::central::{check_api_version, CENTRAL_API_VERSIONS};
use crate::error::ApiError;
use crate::hub::HUB_API_VERSIONS;
use crate::methods::{
    central_command_json, command_from_central, hub_method_result_json, invoke, method_from_hub,
    MethodRequest,
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
        .get(
            "/api/devices/{device_id}/commands/{command}",
            Need(Permission::EventsRead),
            central_command_history,
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

/// `GET /api/devices/{deviceId}/commands/{commandName}`: `{"value": [...]}` with the last run of
/// the command on the device (IoT Central keeps only the latest), or an empty list if it never
/// ran (or ran before the oldest event this node still holds). A run that is still waiting has
/// no `response`/`responseCode`; one that ended without an answer (offline, timed out) neither.
async fn central_command_history(
    State(app): State<App>,
    PathParams((id, command)): PathParams<(String, String)>,
    q: Params,
) -> Result<Response, ApiError> {
    check_api_version(q.get("api-version"), CENTRAL_API_VERSIONS)?;
    let device = device_id(&id)?;
    if !app
        .read(|s| s.registry.devices.contains_key(&device))
        .await?
    {
        return Err(ApiError::new(
            404,
            "DeviceNotFound",
            format!("device {device} is not registered; check the id in the URL (PUT /api/devices/{{id}} registers one)"),
        ));
    }
    let reader = app.cluster.reader().clone();
    let last = tokio::task::spawn_blocking(move || last_run(&reader, &device, &command))
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| internal(&e))?;
    Ok(ok_json(
        json!({ "value": last.into_iter().collect::<Vec<_>>() }),
    ))
}

/// Events read from the log per step of a scan.
const SCAN_CHUNK: u64 = 1024;

/// The last invocation of `method` on `device` the log holds, in IoT Central's command shape:
/// scans back from the newest event for its `MethodInvoked`, then forward for its end.
fn last_run(
    log: &impl EventLog,
    device: &DeviceId,
    method: &str,
) -> Result<Option<Value>, muster_cluster::StoreError> {
    let first = log.first_seq_available().max(1);
    let mut end = log.last_seq();
    let mut found = None;
    while end >= first && found.is_none() {
        let from = end.saturating_sub(SCAN_CHUNK - 1).max(first);
        let chunk = log.read_records(from, (end - from + 1) as usize)?;
        found = chunk.iter().rev().find_map(|r| match &r.event {
            Event::MethodInvoked { invocation, .. }
                if invocation.device == *device && invocation.method == method =>
            {
                Some((r.seq, invocation.clone()))
            }
            _ => None,
        });
        if from == first {
            break;
        }
        end = from - 1;
    }
    let Some((seq, call)) = found else {
        return Ok(None);
    };
    let mut answer = None;
    let mut from = seq + 1;
    'scan: loop {
        let chunk = log.read_records(from, SCAN_CHUNK as usize)?;
        let Some(last) = chunk.last().map(|r| r.seq) else {
            break;
        };
        from = last + 1;
        for r in &chunk {
            match &r.event {
                Event::MethodResponded {
                    id,
                    status,
                    payload,
                    ..
                } if *id == call.id => {
                    answer = Some((*status, payload.clone()));
                    break 'scan;
                }
                Event::MethodFailed { id, .. } if *id == call.id => break 'scan,
                _ => {}
            }
        }
    }
    let req = MethodRequest {
        method: call.method.clone(),
        payload: call.payload.clone(),
        response_timeout_secs: call.response_timeout_secs,
        connect_timeout_secs: call.connect_timeout_secs,
    };
    Ok(Some(match answer {
        Some((status, payload)) => central_command_json(&call.id, &req, status, &payload),
        None => {
            let mut v = central_command_json(&call.id, &req, 0, &Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.remove("response");
                m.remove("responseCode");
            }
            v
        }
    }))
}
