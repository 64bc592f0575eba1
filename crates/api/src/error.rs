//! The one error type of the REST shapes: an HTTP status, a stable code and a message that tells
//! the caller what to fix. Both Azure services answer errors as `{"error": {"code", "message"}}`,
//! and so does muster.

use muster_domain::DomainError;
use serde_json::{json, Value};

/// An error as the REST gateway answers it.
///
/// `code` is stable and machine-readable; `message` is for people: it names the offending field
/// (for 400) and says what to change. Messages are built from the caller's own input and from
/// [`DomainError`]'s messages, which are written for callers; nothing internal (paths, panics,
/// storage errors) is ever put in one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: bad input. `field` is the JSON path of the offending value as the caller wrote it
    /// (`data[0].type`, `batch.value`, `cloudToDeviceMethod.methodName`, or `body` for the whole
    /// document); the message reads `field: what is wrong and what to do`.
    pub fn bad_request(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(400, "InvalidInput", format!("{field}: {message}"))
    }

    /// 404 for a resource that does not exist; `what` reads like "job job-004".
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{what} does not exist; check the id in the URL"),
        )
    }

    /// 409: a duplicate id or a transition the current state does not allow.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(409, "Conflict", message)
    }

    /// 412: an `If-Match` ETag that no longer matches.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        ApiError::new(412, "PreconditionFailed", message)
    }

    /// 413: a body (or a part of it) larger than muster accepts.
    pub fn too_large(field: &str, size: usize, max: usize) -> Self {
        ApiError::new(
            413,
            "PayloadTooLarge",
            format!("{field} is {size} bytes; at most {max} are allowed, send less data"),
        )
    }

    /// The JSON body both Azure shapes use for errors.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<&DomainError> for ApiError {
    fn from(e: &DomainError) -> Self {
        // DomainError's Display messages are written for callers (they name the field or the id
        // and say what to change), so they are passed on as they are.
        let message = e.to_string();
        let (status, code) = match e {
            DomainError::Invalid { .. } => (400, "InvalidInput"),
            DomainError::TooLarge { .. } => (413, "PayloadTooLarge"),
            DomainError::JobNotFound(_) => (404, "JobNotFound"),
            DomainError::DeviceNotFound(_) => (404, "DeviceNotFound"),
            DomainError::GroupNotFound(_) => (404, "DeviceGroupNotFound"),
            DomainError::ScheduledJobNotFound(_) => (404, "ScheduledJobNotFound"),
            DomainError::JobExists(_) => (409, "JobExists"),
            DomainError::DeviceExists(_) => (409, "DeviceExists"),
            DomainError::RerunExists { .. } => (409, "RerunExists"),
            DomainError::ScheduledJobExists(_) => (409, "ScheduledJobExists"),
            DomainError::Conflict { .. } => (409, "InvalidJobState"),
            DomainError::CredentialNotFound { .. } => (404, "NotFound"),
            DomainError::CredentialConflict(_) => (409, "Conflict"),
            DomainError::VersionMismatch { .. }
            | DomainError::GroupVersionMismatch { .. }
            | DomainError::ScheduledJobVersionMismatch { .. } => (412, "PreconditionFailed"),
            // A storage failure while reading: the detail goes to the log, not to the caller.
            DomainError::ColdRows(_) => {
                tracing::error!("internal error answering a request: {e}");
                return ApiError::new(
                    500,
                    "InternalError",
                    "the server failed to handle the request; it has been logged, retry later",
                );
            }
        };
        ApiError::new(status, code, message)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_types::{DeviceId, GroupId, JobId, RerunId};

    #[test]
    fn domain_errors_map_to_their_status() {
        let job = JobId::new("j1").unwrap();
        let dev = DeviceId::new("d1").unwrap();
        let cases: Vec<(DomainError, u16, &str)> = vec![
            (
                DomainError::Invalid {
                    field: "batch.value".into(),
                    message: "between 1 and 100".into(),
                },
                400,
                "InvalidInput",
            ),
            (
                DomainError::TooLarge {
                    field: "data[0].value".into(),
                    size: 10,
                    max: 5,
                },
                413,
                "PayloadTooLarge",
            ),
            (DomainError::JobNotFound(job.clone()), 404, "JobNotFound"),
            (
                DomainError::DeviceNotFound(dev.clone()),
                404,
                "DeviceNotFound",
            ),
            (
                DomainError::GroupNotFound(GroupId::new("g").unwrap()),
                404,
                "DeviceGroupNotFound",
            ),
            (DomainError::JobExists(job.clone()), 409, "JobExists"),
            (DomainError::DeviceExists(dev.clone()), 409, "DeviceExists"),
            (
                DomainError::RerunExists {
                    job: job.clone(),
                    rerun: RerunId::new("r1").unwrap(),
                },
                409,
                "RerunExists",
            ),
            (
                DomainError::Conflict {
                    job: job.clone(),
                    action: "resume",
                    status: "running",
                    hint: "only a stopped job can be resumed",
                },
                409,
                "InvalidJobState",
            ),
            (
                DomainError::VersionMismatch {
                    device: dev,
                    expected: 1,
                    actual: 2,
                },
                412,
                "PreconditionFailed",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(&e);
            assert_eq!((api.status, api.code), (status, code), "{e:?}");
            assert_eq!(api.message, e.to_string());
            assert_eq!(api.body()["error"]["code"], code);
            assert_eq!(api.body()["error"]["message"], e.to_string());
        }
    }

    #[test]
    fn constructors_have_their_status() {
        assert_eq!(ApiError::bad_request("group", "required").status, 400);
        assert_eq!(
            ApiError::bad_request("group", "required").message,
            "group: required"
        );
        assert_eq!(ApiError::not_found("job j").status, 404);
        assert_eq!(ApiError::conflict("x").status, 409);
        assert_eq!(ApiError::precondition_failed("x").status, 412);
        assert_eq!(ApiError::too_large("body", 10, 5).status, 413);
        let body = ApiError::not_found("job j").body();
        assert_eq!(
            body,
            json!({"error": {"code": "NotFound", "message": "job j does not exist; check the id in the URL"}})
        );
    }
}
