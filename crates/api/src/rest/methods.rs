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

/// The device's events read per step.
const READ_CHUNK: usize = 1024;

/// A call and its answer (status, payload) once it came.
type LastCall = (
    muster_domain::Invocation,
    Option<(i32, std::sync::Arc<Value>)>,
);

/// The last invocation of `method` on `device` the log holds, in IoT Central's command shape:
/// one forward pass over the device's own events (the store's per-device index, so the cost is
/// what the device wrote, not the whole log), keeping the latest `MethodInvoked` and how it
/// ended.
fn last_run(
    log: &impl EventLog,
    device: &DeviceId,
    method: &str,
) -> Result<Option<Value>, muster_cluster::StoreError> {
    let mut found: Option<LastCall> = None;
    let mut from = log.first_seq_available().max(1);
    loop {
        let chunk = log.read_device_records(device, from, READ_CHUNK)?;
        let Some(last) = chunk.last().map(|r| r.seq) else {
            break;
        };
        from = last + 1;
        for r in chunk {
            match r.event {
                Event::MethodInvoked { invocation, .. }
                    if invocation.device == *device && invocation.method == method =>
                {
                    found = Some((invocation, None));
                }
                Event::MethodResponded {
                    id,
                    status,
                    payload,
                    ..
                } => {
                    if let Some((call, answer)) = &mut found {
                        if call.id == id {
                            *answer = Some((status, payload));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let Some((call, answer)) = found else {
        return Ok(None);
    };
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use muster_types::{InvocationId, Timestamp};

    /// An in-memory log: seq i+1 holds events[i]; devices' events are found by the trait's
    /// default scan.
    struct Log(Vec<Event>);

    impl EventLog for Log {
        fn last_seq(&self) -> u64 {
            self.0.len() as u64
        }
        fn first_seq_available(&self) -> u64 {
            1
        }
        fn read_records(
            &self,
            from_seq: u64,
            limit: usize,
        ) -> Result<Vec<muster_store::StoredEvent>, muster_cluster::StoreError> {
            Ok((1..)
                .zip(self.0.iter().cloned())
                .filter(|(s, _)| *s >= from_seq)
                .take(limit)
                .map(|(seq, event)| muster_store::StoredEvent {
                    seq,
                    event,
                    hash: [0; 32],
                    principal: muster_domain::Principal::System,
                })
                .collect())
        }
    }

    fn invoked(id: &str, device: &str, method: &str) -> Event {
        Event::MethodInvoked {
            invocation: muster_domain::Invocation {
                id: InvocationId::new(id).unwrap(),
                device: DeviceId::new(device).unwrap(),
                method: method.into(),
                payload: json!({"call": id}),
                response_timeout_secs: 30,
                connect_timeout_secs: 0,
            },
            at: Timestamp::from_millis(1),
        }
    }

    fn responded(id: &str, device: &str) -> Event {
        Event::MethodResponded {
            id: InvocationId::new(id).unwrap(),
            device: DeviceId::new(device).unwrap(),
            status: 200,
            payload: std::sync::Arc::new(json!({"answer": id})),
            at: Timestamp::from_millis(2),
        }
    }

    #[test]
    fn the_last_run_of_a_command_is_the_latest_call_with_its_own_answer() {
        let d1 = DeviceId::new("d1").unwrap();
        // Thousands of other devices' events around them: read through the device's records.
        let mut events: Vec<Event> = (0..3000)
            .map(|i| responded("aa", &format!("other{i}")))
            .collect();
        events.push(invoked("a1", "d1", "reboot"));
        events.push(responded("a1", "d1"));
        events.push(invoked("b1", "d2", "reboot"));
        events.push(responded("b1", "d2"));
        let log = Log(events.clone());
        let run = last_run(&log, &d1, "reboot").unwrap().unwrap();
        assert_eq!(run["id"], "a1");
        assert_eq!(run["request"], json!({"call": "a1"}));
        assert_eq!(run["response"], json!({"answer": "a1"}));
        assert_eq!(run["responseCode"], 200);
        assert!(last_run(&log, &d1, "other").unwrap().is_none());

        // A later call still waiting: shown without response, never with the earlier answer.
        events.push(invoked("a2", "d1", "reboot"));
        events.push(invoked("a3", "d1", "ping"));
        let run = last_run(&Log(events), &d1, "reboot").unwrap().unwrap();
        assert_eq!(run["id"], "a2");
        assert!(run.get("response").is_none());
        assert!(run.get("responseCode").is_none());
    }
}
