//! The one error type of the pure core. Each variant maps to one HTTP/gRPC status at the edge, and
//! its message tells the caller what to change.

use muster_types::{DeviceId, GroupId, IdError, JobId, RerunId, ScheduledJobId};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// Bad input: `field` names the JSON path of the offending value.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field} is {size} bytes; at most {max} are allowed")]
    TooLarge {
        field: String,
        size: usize,
        max: usize,
    },
    #[error("job {0} does not exist")]
    JobNotFound(JobId),
    #[error("device {0} is not registered")]
    DeviceNotFound(DeviceId),
    #[error("device group {0} does not exist")]
    GroupNotFound(GroupId),
    #[error("a job with id {0} already exists; choose another id")]
    JobExists(JobId),
    #[error("device {0} is already registered; update it instead of creating it")]
    DeviceExists(DeviceId),
    #[error("job {job} already has a rerun named {rerun}; choose another rerun id")]
    RerunExists { job: JobId, rerun: RerunId },
    /// A lifecycle transition that the job's current status does not allow.
    #[error("cannot {action} job {job}: it is {status}; {hint}")]
    Conflict {
        job: JobId,
        action: &'static str,
        status: &'static str,
        hint: &'static str,
    },
    /// A policy or token name that is not there.
    #[error("{kind} {name} does not exist")]
    CredentialNotFound { kind: &'static str, name: String },
    /// A policy or token name that is taken, or a change that would lock every caller out.
    #[error("{0}")]
    CredentialConflict(String),
    /// The cold tier (finished runs' rows in storage) could not be read; only readers see it.
    #[error("could not read finished runs' device rows from storage: {0}")]
    ColdRows(String),
    #[error("device {device} has changed: it is at version (etag) {actual}, not {expected}; read it again and retry with the new etag")]
    VersionMismatch {
        device: DeviceId,
        expected: u64,
        actual: u64,
    },
    #[error("scheduled job {0} does not exist")]
    ScheduledJobNotFound(ScheduledJobId),
    #[error("scheduled job {0} already exists; update it or pick another id")]
    ScheduledJobExists(ScheduledJobId),
    #[error("scheduled job {id} has changed: it is at version (etag) {actual}, not {expected}; read it again and retry with the new etag")]
    ScheduledJobVersionMismatch {
        id: ScheduledJobId,
        expected: u64,
        actual: u64,
    },
    #[error("device group {group} has changed: it is at version (etag) {actual}, not {expected}; read it again and retry with the new etag")]
    GroupVersionMismatch {
        group: GroupId,
        expected: u64,
        actual: u64,
    },
}

impl DomainError {
    /// Wraps an id error with the field it came from.
    pub fn bad_id(field: &str, err: IdError) -> Self {
        DomainError::Invalid {
            field: field.to_string(),
            message: err.to_string(),
        }
    }
}
