//! The openraft type configuration and what travels through Raft: a [`Request`] in, a
//! [`Response`] out, and the [`MusterNode`] record of each member.

use std::fmt;

use muster_domain::{Command, DomainError, Principal};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// muster's openraft type configuration.
    ///
    /// It lives here rather than in `muster-cluster` because the storage traits are generic over
    /// it and the design's dependency order puts `store` below `cluster`; `cluster` re-exports it
    /// so the rest of the node names it from there.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = MusterNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry as openraft sees it.
pub type Entry = openraft::Entry<TypeConfig>;
/// A Raft log id with muster's node ids.
pub type LogId = openraft::LogId<u64>;
/// The membership the state machine has applied last.
pub type StoredMembership = openraft::StoredMembership<u64, MusterNode>;
/// What openraft's storage traits return on failure.
pub type StorageError = openraft::StorageError<u64>;

/// One cluster member's addresses, recorded in the Raft membership so every node can reach every
/// other one, and forward clients to the leader, without any other discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MusterNode {
    /// Raft RPCs between nodes (`host:port`).
    pub peer_addr: String,
    /// The client gRPC API (`host:port`).
    pub grpc_addr: String,
    /// The REST gateway (`host:port`).
    pub http_addr: String,
}

impl fmt::Display for MusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer={} grpc={} http={}",
            self.peer_addr, self.grpc_addr, self.http_addr
        )
    }
}

/// What a client proposes: one domain command, stamped with the time by the leader, and the
/// principal it is written on behalf of (recorded with every event the command produces).
///
/// In the Raft log it is stored as protobuf (`muster.v1.Command`) in the store's entry envelope,
/// which also holds the principal (see `codec::encode_entry`); the serde derives exist because
/// openraft requires them of its application data (and a follower forwards a client's write to
/// the leader as this JSON), not because JSON is a storage format. A request without a
/// `principal` (from an older node) reads as [`Principal::System`].
///
/// The command is shared: openraft clones entries to apply them and to send them to each
/// follower, and a device-results command carries a thousand results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub command: std::sync::Arc<Command>,
    #[serde(default)]
    pub principal: Principal,
}

/// The longest principal text the log records (a certificate subject is the long one).
pub const MAX_PRINCIPAL_BYTES: usize = 1024;

impl Request {
    /// `command` written on behalf of `principal`.
    pub fn new(command: Command, principal: Principal) -> Self {
        Request {
            command: std::sync::Arc::new(command),
            principal,
        }
    }

    /// Refuses a principal the log could not read back: one whose text form does not parse to
    /// itself (`Policy("")` prints as `policy:`), or longer than [`MAX_PRINCIPAL_BYTES`]. An
    /// entry holding one would be unreadable on every replica, so it is never proposed.
    pub fn check_principal(&self) -> Result<(), CommandError> {
        let text = self.principal.to_string();
        let problem = if text.len() > MAX_PRINCIPAL_BYTES {
            format!("longer than {MAX_PRINCIPAL_BYTES} bytes")
        } else if text.parse::<Principal>().as_ref() != Ok(&self.principal) {
            "its text form does not read back as the same principal".to_string()
        } else {
            return Ok(());
        };
        Err(CommandError {
            kind: ErrorKind::Invalid,
            field: Some("principal".into()),
            message: format!("the caller `{text}` cannot be recorded: {problem}"),
        })
    }
}

/// A command of the system itself ([`Principal::System`]).
impl From<Command> for Request {
    fn from(command: Command) -> Self {
        Request::new(command, Principal::System)
    }
}

/// The answer to one applied log entry.
///
/// Every replica computes the same answer; the leader hands it back to the client that proposed
/// the entry. Blank and membership entries answer `Ok` with an empty range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub result: Result<AppliedRange, CommandError>,
}

impl Response {
    pub fn into_result(self) -> Result<AppliedRange, CommandError> {
        self.result
    }
}

/// The global sequence numbers of the events one accepted command appended.
///
/// Sequence numbers start at 1. The range is inclusive; an accepted command that produced no
/// events (a late, ignored device result) gets the empty range `first_seq == last_seq + 1`. In
/// every case `last_seq` is the newest event the state includes once this entry is applied,
/// which is what a client needs for read-your-writes ("wait until seq N is applied").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRange {
    pub first_seq: u64,
    pub last_seq: u64,
}

impl AppliedRange {
    /// The empty range just after `last_seq`.
    pub fn empty_after(last_seq: u64) -> Self {
        AppliedRange {
            first_seq: last_seq + 1,
            last_seq,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first_seq > self.last_seq
    }

    pub fn len(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }

    pub fn seqs(&self) -> std::ops::RangeInclusive<u64> {
        self.first_seq..=self.last_seq
    }
}

/// A rejected command, in a form that can cross Raft and the network.
///
/// `DomainError` is not serializable (it holds `&'static str`s), and the client on the other end
/// only needs what to show and how to classify it, so this is its serializable mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    /// The JSON path of the offending input, for `Invalid` and `TooLarge`.
    pub field: Option<String>,
    /// `DomainError`'s message: says what to change.
    pub message: String,
}

/// How the API layer classifies a rejected command.
///
/// | kind | HTTP | gRPC |
/// | --- | --- | --- |
/// | `Invalid` | 400 | `INVALID_ARGUMENT` |
/// | `TooLarge` | 413 | `INVALID_ARGUMENT` |
/// | `NotFound` | 404 | `NOT_FOUND` |
/// | `AlreadyExists` | 409 | `ALREADY_EXISTS` |
/// | `Conflict` | 409 | `FAILED_PRECONDITION` |
/// | `VersionMismatch` | 412 | `FAILED_PRECONDITION` (or `ABORTED`) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    Invalid,
    TooLarge,
    NotFound,
    /// An id that is taken (job, device, rerun); a kind of its own because gRPC has a status
    /// for it.
    AlreadyExists,
    /// A lifecycle transition the job's status does not allow.
    Conflict,
    /// A conditional twin update whose ETag no longer matches.
    VersionMismatch,
}

impl From<&DomainError> for CommandError {
    fn from(e: &DomainError) -> Self {
        let (kind, field) = match e {
            DomainError::Invalid { field, .. } => (ErrorKind::Invalid, Some(field.clone())),
            DomainError::TooLarge { field, .. } => (ErrorKind::TooLarge, Some(field.clone())),
            DomainError::JobNotFound(_)
            | DomainError::DeviceNotFound(_)
            | DomainError::GroupNotFound(_)
            | DomainError::ScheduledJobNotFound(_)
            | DomainError::CredentialNotFound { .. } => (ErrorKind::NotFound, None),
            DomainError::JobExists(_)
            | DomainError::DeviceExists(_)
            | DomainError::RerunExists { .. }
            | DomainError::ScheduledJobExists(_) => (ErrorKind::AlreadyExists, None),
            DomainError::Conflict { .. } | DomainError::CredentialConflict(_) => {
                (ErrorKind::Conflict, None)
            }
            DomainError::VersionMismatch { .. }
            | DomainError::GroupVersionMismatch { .. }
            | DomainError::ScheduledJobVersionMismatch { .. } => (ErrorKind::VersionMismatch, None),
            // Only readers meet it (`decide` never reads cold rows); the nearest kind.
            DomainError::ColdRows(_) => (ErrorKind::Conflict, None),
        };
        CommandError {
            kind,
            field,
            message: e.to_string(),
        }
    }
}

impl From<DomainError> for CommandError {
    fn from(e: DomainError) -> Self {
        CommandError::from(&e)
    }
}
