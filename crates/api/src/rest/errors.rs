//! How every failure leaves the gateway: in the error shape of the API the route belongs to,
//! with its HTTP status.
//!
//! Three sources of failure meet here: the JSON shapes' own [`ApiError`]s (bad input), rejected
//! commands and unavailable leaders from the cluster ([`ClusterError`]), and responses axum makes
//! by itself (an unknown route, a wrong method, a body over the limit). Every [`ApiError`]
//! response carries the error in its extensions; [`shape_errors`] renders it (or, for axum's own
//! responses, an error made from the status) in the route's shape, so a handler never picks a
//! shape and a new route gets the right one by its path:
//!
//! * IoT Hub (`/devices...`, `/twins...`, `/jobs/v2...`): `{"Message": "ErrorCode:CODE;message",
//!   "ExceptionMessage": "Tracking ID:ID-TimeStamp:MM/DD/YYYY HH:MM:SS"}` and the
//!   `iothub-errorcode: CODE` header, with IoT Hub's codes (`DeviceNotFound`,
//!   `DeviceAlreadyExists`, `PreconditionFailed`, `ArgumentInvalid`, ...; [`hub_code`]).
//! * IoT Central (`/api/...`): `{"error": {"code", "message", "requestId", "time"}}`, `time` in
//!   RFC 1123 form as IoT Central writes it, and the `x-ms-error-code: CODE` header.
//! * muster's own routes: `{"error": {"code", "message"}}`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use muster_cluster::{ClusterError, ErrorKind};
use serde_json::json;

use crate::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Leader elections take well under a second; tell clients when to come back.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Which API's error shape a path answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Hub,
    Central,
    Muster,
}

impl Shape {
    pub(crate) fn of(path: &str) -> Shape {
        let under = |prefix: &str| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if under("/devices") || under("/twins") || under("/jobs/v2") {
            Shape::Hub
        } else if under("/api") {
            Shape::Central
        } else {
            Shape::Muster
        }
    }
}

/// IoT Central's header naming the error code (its reference lists it on every error answer).
pub(crate) const CENTRAL_ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-error-code");

/// IoT Hub's header naming the error code (its SDKs map it to their exception types).
pub(crate) const HUB_ERROR_CODE: HeaderName = HeaderName::from_static("iothub-errorcode");

/// IoT Hub's name for one of muster's error codes (the names its SDKs know); codes IoT Hub has
/// no counterpart for keep muster's name.
pub(crate) fn hub_code(code: &'static str) -> &'static str {
    match code {
        "DeviceExists" => "DeviceAlreadyExists",
        "InvalidInput" | "BadRequest" => "ArgumentInvalid",
        "MissingApiVersionParameter" | "UnsupportedApiVersion" => "InvalidProtocolVersion",
        "Unauthorized" => "IotHubUnauthorizedAccess",
        "Forbidden" => "IotHubUnauthorized",
        "PayloadTooLarge" => "MessageTooLarge",
        "InternalError" => "ServerError",
        "NotLeader" => "ServiceUnavailable",
        "UnsupportedMediaType" => "ArgumentInvalid",
        other => other,
    }
}

/// Middleware: renders every error response in the shape of the route's API (see the module
/// docs). Errors the handlers made keep their code and message; axum's own (unknown route,
/// wrong method, body too large, ...) get one from their status. Headers (such as `Allow`,
/// `WWW-Authenticate`, `Retry-After`) are kept.
pub(crate) async fn shape_errors(req: Request, next: Next) -> Response {
    let shape = Shape::of(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let err = match resp.extensions().get::<ApiError>() {
        Some(e) => e.clone(),
        None => from_status(status),
    };
    let (mut parts, _) = resp.into_parts();
    let body = render(shape, &err, &mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The JSON error body of `shape` for `err`; sets the content type and the shape's error-code
/// header in `headers`.
fn render(shape: Shape, err: &ApiError, headers: &mut axum::http::HeaderMap) -> String {
    let body = match shape {
        Shape::Hub => {
            let code = hub_code(err.code);
            if let Ok(v) = HeaderValue::from_str(code) {
                headers.insert(HUB_ERROR_CODE, v);
            }
            json!({
                "Message": format!("ErrorCode:{code};{}", err.message),
                "ExceptionMessage": format!(
                    "Tracking ID:{}-TimeStamp:{}",
                    request_id().replace('-', ""),
                    hub_time(muster_cluster::now())
                ),
            })
        }
        Shape::Central => {
            if let Ok(v) = HeaderValue::from_str(err.code) {
                headers.insert(CENTRAL_ERROR_CODE, v);
            }
            json!({"error": {
            "code": err.code,
            "message": err.message,
            "requestId": request_id(),
            "time": http_date(muster_cluster::now()),
            }})
        }
        Shape::Muster => err.body(),
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    body.to_string()
}

/// A complete HTTP/1.1 error response (head and JSON body, `Connection: close`) for a request
/// the HTTP server refused before any route saw it, such as a URI (414) or headers (431) over
/// hyper's limits: hyper answers those with an empty body by itself, and the node's socket
/// wrapper puts this in its place. `path` is the start of the refused request's path, as far as
/// it was read, to pick the shape; the status' reason phrase is hyper's.
pub fn refused_request(status: u16, path: &str) -> Vec<u8> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut headers = axum::http::HeaderMap::new();
    let body = render(Shape::of(path), &from_status(status), &mut headers);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// A random request id in UUID form (IoT Central's `requestId`, IoT Hub's tracking id), so a
/// caller can quote it when reporting a problem; the error is logged under the same id.
fn request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        return "00000000-0000-0000-0000-000000000000".into();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Civil date and time of a timestamp: (year, month, day, hour, minute, second, weekday with
/// Sunday = 0).
fn civil(t: muster_types::Timestamp) -> (i64, u32, u32, u32, u32, u32, usize) {
    let secs = t.millis().div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 4).rem_euclid(7) as usize;
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        weekday,
    )
}

/// `MM/DD/YYYY HH:MM:SS` (UTC), as IoT Hub's tracking ids show the time.
fn hub_time(t: muster_types::Timestamp) -> String {
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!("{mo:02}/{d:02}/{y:04} {h:02}:{mi:02}:{s:02}")
}

/// RFC 1123 (`Sat, 05 Dec 2026 21:40:00 GMT`), as IoT Central writes an error's `time`.
fn http_date(t: muster_types::Timestamp) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, wd) = civil(t);
    let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
    format!(
        "{}, {d:02} {month} {y:04} {h:02}:{mi:02}:{s:02} GMT",
        DAYS[wd % 7]
    )
}

/// The error codes a route uses for the resource its command names. A rejected command carries
/// only an [`ErrorKind`]; the route knows which id a `NotFound` or `AlreadyExists` is about
/// (each command refers to one kind of resource), so it picks the specific code
/// (`JobNotFound`, `DeviceExists`, ...) the read paths use as well.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codes {
    pub not_found: &'static str,
    pub exists: &'static str,
}

pub(crate) const JOB: Codes = Codes {
    not_found: "JobNotFound",
    exists: "JobExists",
};
pub(crate) const RERUN: Codes = Codes {
    not_found: "JobNotFound",
    exists: "RerunExists",
};
pub(crate) const DEVICE: Codes = Codes {
    not_found: "DeviceNotFound",
    exists: "DeviceExists",
};
pub(crate) const GROUP: Codes = Codes {
    not_found: "DeviceGroupNotFound",
    exists: "DeviceGroupExists",
};

/// A cluster failure as the caller sees it. Rejections keep the core's message (written for
/// callers: it names the field or id and says what to change). Storage and Raft failures are
/// logged in full and answered with a generic message: their text names files and internals.
pub(crate) fn cluster_error(e: ClusterError, codes: Codes) -> ApiError {
    match e {
        ClusterError::Rejected(c) => {
            let (status, code) = match c.kind {
                ErrorKind::Invalid => (400, "InvalidInput"),
                ErrorKind::TooLarge => (413, "PayloadTooLarge"),
                ErrorKind::NotFound => (404, codes.not_found),
                ErrorKind::AlreadyExists => (409, codes.exists),
                ErrorKind::Conflict => (409, "InvalidJobState"),
                ErrorKind::VersionMismatch => (412, "PreconditionFailed"),
            };
            ApiError::new(status, code, c.message)
        }
        ClusterError::NotLeader { leader } => {
            let hint = match leader {
                Some((id, node)) if !node.http_addr.is_empty() => format!(
                    "; the leader is node {id}, send the request to http://{}",
                    node.http_addr
                ),
                Some((id, _)) => format!("; the leader is node {id}"),
                None => "; no leader is known yet, retry shortly".to_string(),
            };
            ApiError::new(
                503,
                "NotLeader",
                format!("this node is not the leader{hint}"),
            )
        }
        ClusterError::Unavailable(detail) => {
            tracing::warn!("request not served: cluster unavailable: {detail}");
            ApiError::new(
                503,
                "ServiceUnavailable",
                format!("the cluster cannot serve this request right now: {detail}"),
            )
        }
        ClusterError::Membership(message) => ApiError::new(409, "InvalidMembershipChange", message),
        e @ ClusterError::DiskFull { .. } => {
            tracing::warn!("write refused: {e}");
            ApiError::new(507, "InsufficientStorage", e.to_string())
        }
        ClusterError::Store(err) => internal(&err),
        ClusterError::Fatal(detail) => {
            tracing::error!("request not served: the Raft core has stopped: {detail}");
            ApiError::new(503, "ServiceUnavailable", crate::NODE_STOPPED)
        }
    }
}

/// A 500 that says nothing about the cause; the cause goes to the log.
pub(crate) fn internal(detail: &dyn std::fmt::Display) -> ApiError {
    tracing::error!("internal error answering a REST request: {detail}");
    ApiError::new(
        500,
        "InternalError",
        "the server failed to handle the request; it has been logged, retry later",
    )
}

/// The error of a response axum or a layer made by itself (no [`ApiError`] attached).
fn from_status(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (
            "NotFound",
            "no such route; see the REST routes in the README",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            "this route does not take that method; the Allow header lists the ones it takes",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "PayloadTooLarge",
            "the request body is too large; send less data",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "UnsupportedMediaType",
            "send the body as JSON with Content-Type: application/json",
        ),
        StatusCode::REQUEST_TIMEOUT => ("RequestTimeout", "the request took too long; retry"),
        StatusCode::URI_TOO_LONG => (
            "UriTooLong",
            "the request's URI (path and query) is too long; send a shorter one",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "RequestHeaderFieldsTooLarge",
            "the request's headers are too large; send fewer or shorter ones",
        ),
        s if s.is_server_error() => (
            "InternalError",
            "the server failed to handle the request; retry later",
        ),
        _ => (
            "BadRequest",
            "the request could not be read; check it and retry",
        ),
    };
    ApiError::new(status.as_u16(), code, message)
}

pub(crate) const TOKEN: Codes = Codes {
    not_found: "NotFound",
    exists: "Conflict",
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use muster_types::Timestamp;

    #[test]
    fn paths_pick_their_shape() {
        assert_eq!(Shape::of("/devices"), Shape::Hub);
        assert_eq!(Shape::of("/devices/d1"), Shape::Hub);
        assert_eq!(Shape::of("/devices/query"), Shape::Hub);
        assert_eq!(Shape::of("/twins/d1/methods"), Shape::Hub);
        assert_eq!(Shape::of("/jobs/v2/query"), Shape::Hub);
        assert_eq!(Shape::of("/api/devices/d1"), Shape::Central);
        assert_eq!(Shape::of("/devicesx"), Shape::Muster);
        assert_eq!(Shape::of("/healthz"), Shape::Muster);
        assert_eq!(Shape::of("/jobs/v3"), Shape::Muster);
    }

    #[test]
    fn times_are_written_as_each_service_writes_them() {
        // 2026-12-05T21:40:07Z was a Saturday.
        let t = Timestamp::parse_rfc3339("2026-12-05T21:40:07Z").unwrap();
        assert_eq!(hub_time(t), "12/05/2026 21:40:07");
        assert_eq!(http_date(t), "Sat, 05 Dec 2026 21:40:07 GMT");
        assert_eq!(http_date(Timestamp(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = Timestamp::parse_rfc3339("2024-02-29T00:00:00Z").unwrap();
        assert_eq!(http_date(leap), "Thu, 29 Feb 2024 00:00:00 GMT");
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }

    /// Issue 18: a stopped Raft core is "try another node" (503), and its cause stays in the log.
    #[test]
    fn a_stopped_core_is_503_without_its_cause() {
        let e = cluster_error(
            ClusterError::Fatal("storage error: sled: No space left on device".into()),
            TOKEN,
        );
        assert_eq!((e.status, e.code), (503, "ServiceUnavailable"));
        assert!(e.message.contains("another member"), "{}", e.message);
        assert!(!e.message.contains("sled"), "{}", e.message);
    }
}
