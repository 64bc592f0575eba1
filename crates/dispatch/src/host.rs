//! What the dispatcher needs from the node it runs in.
//!
//! `dispatch` sits below `cluster` in the dependency order, so it cannot call openraft or the
//! store itself. The node implements [`Host`] over `Raft::client_write` and the store's
//! `StateReader`; tests implement it over a `Mutex<State>`.

use std::future::Future;

use futures::stream::BoxStream;
use muster_domain::{Command, State};
use muster_types::{JobId, Timestamp};

/// The leader's services, as the dispatcher sees them.
pub trait Host: Clone + Send + Sync + 'static {
    /// Proposes a command through Raft. Resolves once the entry is committed **and applied on
    /// this node**, so a [`read`](Host::read) right after sees its effect (the dispatcher reads
    /// the attempts `MarkDispatched` recorded). `Err` if it was rejected or this node is not the
    /// leader any more.
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Runs `f` on the applied state and the sequence number of the newest event it includes
    /// (`StateReader::read_with_seq`). Keep `f` short: applying waits for it.
    fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T;

    /// Changes from now on, in apply order. The stream ends when the host shuts down.
    ///
    /// Over the store's `StateReader::subscribe()`: `StateUpdate::Events(_)` becomes
    /// `Update::Applied`; `SnapshotInstalled` and a lagging receiver become `Update::Resync`.
    fn updates(&self) -> BoxStream<'static, Update>;

    /// The clock that stamps the commands the dispatcher proposes: the node's, so its API and
    /// its dispatcher stamp with one clock (and a test's skewed clock moves both).
    fn now(&self) -> Timestamp;

    /// Makes `span`, about work on `job`, part of the trace the job was created in, when the
    /// host keeps one (the node does while traces are exported); by default it stays as it is.
    /// Only span parentage: nothing the dispatcher decides depends on it.
    fn adopt_span(&self, job: &JobId, span: tracing::Span) -> tracing::Span {
        let _ = job;
        span
    }
}

/// The system's wall clock, unskewed: for hosts outside a node (tests, examples), whose commands
/// need a stamp. A node's host answers [`Host::now`] with the node's own command clock.
pub fn wall_clock() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// Why a proposal did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// This node is no longer the leader; the dispatcher should be stopped by its owner.
    #[error("not the leader")]
    NotLeader,
    /// The state machine refused the command (the message says why).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Anything else (network, storage, shutting down); the dispatcher retries where it can.
    #[error("{0}")]
    Other(String),
}

/// One change notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Entries were applied. The dispatcher re-derives its work from state (desired pushes
    /// included, as `Action::PushDesired`), so what changed is not carried.
    Applied,
    /// Changes were missed (the receiver lagged, or a snapshot replaced the state): the
    /// dispatcher re-reads everything it tracks.
    Resync,
}
