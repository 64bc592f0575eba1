//! The crate's one error type, and its conversion to the error openraft's traits return.

use openraft::{StorageError, StorageIOError};

/// Anything that can go wrong below the openraft traits.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Bytes on disk (or in a received snapshot) that do not decode: a bug, a format change
    /// without a migration, or a damaged disk. Never retried.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// Another process (normally a running `muster serve`) holds the data directory: sled locks
    /// it, and it has no read-only mode, so offline tools refuse to open it while a server runs.
    #[error("data directory {0} is in use (stop the server that holds it first)")]
    InUse(String),
    /// The directory holds no muster store.
    #[error("{0} is not a muster data directory")]
    NotADataDir(String),
    /// Reading an export or writing one (the audit tools' files and pipes).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task (sled write or flush) panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// Whether the file system ran out of space (or quota) under this error.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Io(e) => e,
            StoreError::Sled(sled::Error::Io(e)) => e,
            _ => return false,
        };
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) || io.raw_os_error() == Some(28)
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// Which openraft operation failed; picks the `StorageIOError` constructor so openraft's logs
/// say what it was doing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    ReadLogs,
    WriteLogs,
    ReadVote,
    WriteVote,
    WriteStateMachine,
    ReadSnapshot,
    WriteSnapshot,
}

impl StoreError {
    /// Wraps the error in the `StorageError` openraft expects; openraft treats any of them as
    /// fatal and stops the node, which is the right answer to a failing disk.
    pub(crate) fn into_raft(self, op: Op) -> StorageError<u64> {
        let io = match op {
            Op::ReadLogs => StorageIOError::read_logs(&self),
            Op::WriteLogs => StorageIOError::write_logs(&self),
            Op::ReadVote => StorageIOError::read_vote(&self),
            Op::WriteVote => StorageIOError::write_vote(&self),
            Op::WriteStateMachine => StorageIOError::write_state_machine(&self),
            Op::ReadSnapshot => StorageIOError::read_snapshot(None, &self),
            Op::WriteSnapshot => StorageIOError::write_snapshot(None, &self),
        };
        io.into()
    }
}

/// `result.raft(Op::WriteLogs)?` in trait implementations.
// openraft's traits return the (large) `StorageError` by value; this only adapts to them.
#[allow(clippy::result_large_err)]
pub(crate) trait RaftResult<T> {
    fn raft(self, op: Op) -> Result<T, StorageError<u64>>;
}

impl<T, E: Into<StoreError>> RaftResult<T> for Result<T, E> {
    fn raft(self, op: Op) -> Result<T, StorageError<u64>> {
        self.map_err(|e| e.into().into_raft(op))
    }
}
