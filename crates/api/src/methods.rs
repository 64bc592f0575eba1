//! Direct methods in the two Azure shapes, as pure JSON mapping, and the wait for an
//! invocation's end that REST and gRPC share ([`invoke`]).
//!
//! * IoT Hub `POST /twins/{id}/methods` takes a `CloudToDeviceMethod` (`methodName`,
//!   `payload`, `responseTimeoutInSeconds` 5..=300 default 30, `connectTimeoutInSeconds`
//!   0..=300 default 0) and answers a `CloudToDeviceMethodResult` (`status`, `payload`).
//! * IoT Central `POST /api/devices/{id}/commands/{commandName}` takes a `DeviceCommand`
//!   (`request`, `responseTimeout`, `connectionTimeout`, same ranges and defaults) and answers it
//!   with `id`, `response` and `responseCode` filled in.

use std::sync::Arc;
use std::time::Duration;

use muster_cluster::{Cluster, ClusterError, EventLog, StateUpdate};
use muster_domain::invocation::{
    DEFAULT_RESPONSE_TIMEOUT_SECS, MAX_CONNECT_TIMEOUT_SECS, RESPONSE_TIMEOUT_SECS,
};
use muster_domain::{Command, FailureReason, Invocation, MethodOutcome, Principal};
use muster_types::{DeviceId, InvocationId};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::json::{domain_error, parse_body, Fields};

/// What the caller asked for, whichever shape it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRequest {
    pub method: String,
    pub payload: Value,
    pub response_timeout_secs: u32,
    pub connect_timeout_secs: u32,
}

impl MethodRequest {
    /// The command's invocation, with a fresh random id.
    pub fn invocation(self, device: DeviceId) -> Result<Invocation, ApiError> {
        Ok(Invocation {
            id: new_invocation_id()?,
            device,
            method: self.method,
            payload: self.payload,
            response_timeout_secs: self.response_timeout_secs,
            connect_timeout_secs: self.connect_timeout_secs,
        })
    }
}

/// 16 random bytes as 32 hex digits (the edge draws ids; the core never does).
pub fn new_invocation_id() -> Result<InvocationId, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!("no randomness for an invocation id: {e}");
        ApiError::new(
            500,
            "InternalError",
            "the server could not draw a random id; retry",
        )
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    InvocationId::new(hex).map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

fn timeouts(f: &Fields<'_>, response: &str, connect: &str) -> Result<(u32, u32), ApiError> {
    let (min, max) = RESPONSE_TIMEOUT_SECS;
    Ok((
        f.u32_opt(response, min, max)?
            .unwrap_or(DEFAULT_RESPONSE_TIMEOUT_SECS),
        f.u32_opt(connect, 0, MAX_CONNECT_TIMEOUT_SECS)?
            .unwrap_or(0),
    ))
}

/// Reads IoT Hub's `CloudToDeviceMethod`.
pub fn method_from_hub(body: &str) -> Result<MethodRequest, ApiError> {
    let value = parse_body(body)?;
    let f = Fields::of(&value, "")?;
    f.only(&[
        "methodName",
        "payload",
        "responseTimeoutInSeconds",
        "connectTimeoutInSeconds",
    ])?;
    let method = f.str_req("methodName")?.to_string();
    let (response_timeout_secs, connect_timeout_secs) =
        timeouts(&f, "responseTimeoutInSeconds", "connectTimeoutInSeconds")?;
    let req = MethodRequest {
        method,
        payload: f.get("payload").cloned().unwrap_or(Value::Null),
        response_timeout_secs,
        connect_timeout_secs,
    };
    check(&req, |f| f.to_string())?;
    Ok(req)
}

/// Reads IoT Central's `DeviceCommand` (an empty body takes every default).
pub fn command_from_central(body: &str, command: &str) -> Result<MethodRequest, ApiError> {
    let value = if body.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        parse_body(body)?
    };
    let f = Fields::of(&value, "")?;
    f.only(&["request", "responseTimeout", "connectionTimeout"])?;
    let (response_timeout_secs, connect_timeout_secs) =
        timeouts(&f, "responseTimeout", "connectionTimeout")?;
    let req = MethodRequest {
        method: command.to_string(),
        payload: f.get("request").cloned().unwrap_or(Value::Null),
        response_timeout_secs,
        connect_timeout_secs,
    };
    check(&req, central_field)?;
    Ok(req)
}

/// The domain's field names (IoT Hub's) as IoT Central calls them.
pub fn central_field(field: &str) -> String {
    match field {
        "methodName" => "commandName",
        "payload" => "request",
        "responseTimeoutInSeconds" => "responseTimeout",
        "connectTimeoutInSeconds" => "connectionTimeout",
        other => other,
    }
    .to_string()
}

/// The core's own check, run here too so a bad request is a 400 naming the caller's field
/// before anything is proposed.
fn check(req: &MethodRequest, rename: impl Fn(&str) -> String) -> Result<(), ApiError> {
    let probe = Invocation {
        id: InvocationId::new("check")
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
        device: DeviceId::new("check")
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
        method: req.method.clone(),
        payload: req.payload.clone(),
        response_timeout_secs: req.response_timeout_secs,
        connect_timeout_secs: req.connect_timeout_secs,
    };
    muster_domain::invocation::check(&probe).map_err(|e| domain_error(e, rename))
}

/// IoT Hub's `CloudToDeviceMethodResult`.
pub fn hub_method_result_json(status: i32, payload: &Value) -> Value {
    json!({"status": status, "payload": payload})
}

/// IoT Central's `DeviceCommand` as answered after the device responded.
pub fn central_command_json(
    id: &InvocationId,
    req: &MethodRequest,
    status: i32,
    response: &Value,
) -> Value {
    json!({
        "id": id.as_str(),
        "connectionTimeout": req.connect_timeout_secs,
        "responseTimeout": req.response_timeout_secs,
        "request": req.payload,
        "response": response,
        "responseCode": status,
    })
}

/// Why an invocation gave no answer, or could not be made.
#[derive(Debug)]
pub enum InvokeError {
    /// The command was refused or the cluster could not take it.
    Cluster(ClusterError),
    /// The device was not connected, or did not connect within the connect timeout.
    NotOnline { connect_timeout_secs: u32 },
    /// The device did not answer within the response timeout.
    Timeout { response_timeout_secs: u32 },
    /// The leader could not send the request.
    NotSent(String),
    /// The end was not seen (the node lost track of the log); the event log has it.
    Unknown(String),
}

impl InvokeError {
    /// IoT Hub's answers: 404 `DeviceNotOnline` and 504 `GatewayTimeout`.
    pub fn into_api(
        self,
        device: &DeviceId,
        cluster_error: impl FnOnce(ClusterError) -> ApiError,
    ) -> ApiError {
        match self {
            InvokeError::Cluster(e) => cluster_error(e),
            InvokeError::NotOnline { connect_timeout_secs } => ApiError::new(
                404,
                "DeviceNotOnline",
                format!(
                    "device {device} is not connected (waited {connect_timeout_secs} s for it to connect); retry when it is online, or give a longer connect timeout"
                ),
            ),
            InvokeError::Timeout { response_timeout_secs } => ApiError::new(
                504,
                "GatewayTimeout",
                format!(
                    "device {device} did not answer within {response_timeout_secs} s; give a longer response timeout or check the device"
                ),
            ),
            InvokeError::NotSent(why) => ApiError::new(
                502,
                "MethodNotSent",
                format!("the method could not be sent to device {device}: {why}"),
            ),
            InvokeError::Unknown(why) => {
                tracing::warn!("direct method end not seen: {why}");
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    "the node lost track of the invocation before it ended; its outcome is in the event log (MethodResponded / MethodFailed)",
                )
            }
        }
    }
}

/// How long past its own timeouts an invocation may take to end before the edge stops
/// waiting: the leader's `Advance` ends it at its deadline, this only guards against a node
/// that lost its leader for good.
const GRACE: Duration = Duration::from_secs(30);

/// Proposes the invocation on behalf of `principal` and waits for its final event on this
/// node's applied log (a follower forwards the write and sees the end when it applies it).
/// Answers the device's status and payload.
pub async fn invoke(
    cluster: &Cluster,
    principal: Principal,
    call: Invocation,
    at: muster_types::Timestamp,
) -> Result<(i32, Arc<Value>), InvokeError> {
    let id = call.id.clone();
    let (connect, response) = (call.connect_timeout_secs, call.response_timeout_secs);
    let limit = Duration::from_secs(u64::from(connect) + u64::from(response)) + GRACE;
    // Subscribe first: the end may be applied with the command itself.
    let mut updates = cluster.reader().subscribe();
    let range = cluster
        .write_as(
            principal,
            Command::InvokeMethod {
                invocation: call,
                at,
            },
        )
        .await
        .map_err(InvokeError::Cluster)?;
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match updates.recv().await {
                Ok(StateUpdate::Events(applied)) => {
                    if let Some(o) = applied.events.iter().find_map(|e| e.method_outcome(&id)) {
                        return Ok(o);
                    }
                }
                Ok(StateUpdate::SnapshotInstalled { .. }) | Err(RecvError::Lagged(_)) => {
                    // Missed updates: the state says whether it ended, the log how.
                    let pending = cluster
                        .reader()
                        .read(|s| s.invocations.pending.contains_key(&id));
                    if !pending {
                        return find_end(cluster, range.first_seq, &id);
                    }
                }
                Err(RecvError::Closed) => {
                    return Err(InvokeError::Unknown("the node is shutting down".into()))
                }
            }
        }
    })
    .await
    .map_err(|_| InvokeError::Unknown(format!("invocation {id} did not end in time")))??;
    match outcome {
        MethodOutcome::Responded { status, payload } => Ok((status, payload)),
        MethodOutcome::Failed(FailureReason::NotConnected) => Err(InvokeError::NotOnline {
            connect_timeout_secs: connect,
        }),
        MethodOutcome::Failed(FailureReason::Timeout) => Err(InvokeError::Timeout {
            response_timeout_secs: response,
        }),
        MethodOutcome::Failed(other) => Err(InvokeError::NotSent(other.describe())),
    }
}

/// Reads the log from `from` for the invocation's final event.
fn find_end(
    cluster: &Cluster,
    mut from: u64,
    id: &InvocationId,
) -> Result<MethodOutcome, InvokeError> {
    let reader = cluster.reader();
    from = from.max(reader.first_seq_available());
    loop {
        let records = reader
            .read_records(from, 1024)
            .map_err(|e| InvokeError::Unknown(e.to_string()))?;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Err(InvokeError::Unknown(format!(
                "invocation {id} ended but its end is not in this node's log"
            )));
        };
        if let Some(o) = records.iter().find_map(|r| r.event.method_outcome(id)) {
            return Ok(o);
        }
        from = last + 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn hub_bodies_take_the_reference_defaults_and_limits() {
        let r = method_from_hub(r#"{"methodName":"reboot"}"#).unwrap();
        assert_eq!(
            r,
            MethodRequest {
                method: "reboot".into(),
                payload: Value::Null,
                response_timeout_secs: 30,
                connect_timeout_secs: 0,
            }
        );
        let r = method_from_hub(
            r#"{"methodName":"m","payload":{"a":1},"responseTimeoutInSeconds":5,"connectTimeoutInSeconds":300}"#,
        )
        .unwrap();
        assert_eq!((r.response_timeout_secs, r.connect_timeout_secs), (5, 300));
        assert_eq!(r.payload, json!({"a": 1}));
        for (body, field) in [
            (r#"{}"#, "methodName"),
            (r#"{"methodName":5}"#, "methodName"),
            (r#"{"methodName":"a b"}"#, "methodName"),
            (
                r#"{"methodName":"m","responseTimeoutInSeconds":4}"#,
                "responseTimeoutInSeconds",
            ),
            (
                r#"{"methodName":"m","responseTimeoutInSeconds":301}"#,
                "responseTimeoutInSeconds",
            ),
            (
                r#"{"methodName":"m","connectTimeoutInSeconds":-1}"#,
                "connectTimeoutInSeconds",
            ),
            (r#"{"methodName":"m","timeout":3}"#, "timeout"),
        ] {
            let e = method_from_hub(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(
                e.message.starts_with(&format!("{field}:")),
                "{body}: {}",
                e.message
            );
        }
        let big = format!(
            r#"{{"methodName":"m","payload":"{}"}}"#,
            "x".repeat(130 * 1024)
        );
        assert_eq!(method_from_hub(&big).unwrap_err().status, 413);
    }

    #[test]
    fn central_bodies_name_central_fields() {
        let r = command_from_central("", "reboot").unwrap();
        assert_eq!((r.response_timeout_secs, r.connect_timeout_secs), (30, 0));
        let r = command_from_central(
            r#"{"request":{"x":1},"responseTimeout":10,"connectionTimeout":5}"#,
            "m",
        )
        .unwrap();
        assert_eq!(r.payload, json!({"x": 1}));
        for (body, name, field) in [
            (r#"{"responseTimeout":1}"#, "m", "responseTimeout"),
            (r#"{"connectionTimeout":999}"#, "m", "connectionTimeout"),
            (r#"{"payload":1}"#, "m", "payload"),
            (r#"{}"#, "a+b", "commandName"),
        ] {
            let e = command_from_central(body, name).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(
                e.message.starts_with(&format!("{field}:")),
                "{body}: {}",
                e.message
            );
        }
        let id = InvocationId::new("abc").unwrap();
        let v = central_command_json(&id, &r, 200, &json!("ok"));
        assert_eq!(v["id"], "abc");
        assert_eq!(v["responseCode"], 200);
        assert_eq!(v["response"], "ok");
        assert_eq!(v["request"], json!({"x": 1}));
    }

    #[test]
    fn invocation_ids_are_fresh_hex() {
        let a = new_invocation_id().unwrap();
        let b = new_invocation_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
    }
}
