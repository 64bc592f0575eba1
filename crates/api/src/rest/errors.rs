//! How every failure leaves the gateway: `{"error": {"code", "message"}}` with its HTTP status.
//!
//! Three sources of failure meet here: the JSON shapes' own [`ApiError`]s (bad input), rejected
//! commands and unavailable leaders from the cluster ([`ClusterError`]), and responses axum makes
//! by itself (an unknown route, a wrong method, a body over the limit). The last are caught by
//! [`json_errors`], so no error ever leaves as plain text or an empty body.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_cluster::{ClusterError, ErrorKind};

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
        resp
    }
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
        ClusterError::Store(err) => internal(&err),
        ClusterError::Fatal(detail) => internal(&detail),
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

/// Middleware: turns any error response that is not JSON (axum's own rejections, a layer's
/// refusal) into the JSON error shape, keeping its status and headers (such as `Allow`).
pub(crate) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
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
        s if s.is_server_error() => (
            "InternalError",
            "the server failed to handle the request; retry later",
        ),
        _ => (
            "BadRequest",
            "the request could not be read; check it and retry",
        ),
    };
    let (mut parts, _) = resp.into_parts();
    let body = ApiError::new(status.as_u16(), code, message)
        .body()
        .to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

pub(crate) const TOKEN: Codes = Codes {
    not_found: "NotFound",
    exists: "Conflict",
};
