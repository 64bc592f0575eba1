//! What the dispatcher needs from the node it runs in.
//!
//! `dispatch` sits below `cluster` in the dependency order, so it cannot call openraft or the
//! store itself. The node implements [`Host`] over `Raft::client_write` and the store's
//! `StateReader`; tests implement it over a `Mutex<State>`.

use std::future::Future;

use futures::stream::BoxStream;
use muster_domain::{Command, Event, State, TwinSection};
use muster_types::{DeviceId, JobId};
use serde_json::Value;

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
    /// Over the store's `StateReader::subscribe()`: `StateUpdate::Events(a)` becomes
    /// `Update::Applied { last_seq: a.last_seq(), desired: desired_patches(a.first_seq,
    /// &a.events) }`; `SnapshotInstalled` and a lagging receiver become `Update::Resync`.
    fn updates(&self) -> BoxStream<'static, Update>;

    /// Makes `span`, about work on `job`, part of the trace the job was created in, when the
    /// host keeps one (the node does while traces are exported); by default it stays as it is.
    /// Only span parentage: nothing the dispatcher decides depends on it.
    fn adopt_span(&self, job: &JobId, span: tracing::Span) -> tracing::Span {
        let _ = job;
        span
    }
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
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Entries were applied; the state now includes every event up to `last_seq`. `desired`
    /// lists the desired-property patches among the new events, which the dispatcher forwards to
    /// the devices (everything else it re-derives from state).
    Applied {
        last_seq: u64,
        desired: Vec<DesiredPatch>,
    },
    /// Changes were missed (the receiver lagged, or a snapshot replaced the state): the
    /// dispatcher re-reads everything it tracks.
    Resync,
}

/// A desired-property patch applied to a device's twin, with the event's global sequence number
/// (the dispatcher uses it to give each patch the exact twin `$version` it produced).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPatch {
    pub seq: u64,
    pub device: DeviceId,
    pub patch: Value,
}

/// The desired-property patches among events numbered from `first_seq`: the helper a host's
/// [`Host::updates`] uses, so only those few events are cloned.
pub fn desired_patches<'a>(
    first_seq: u64,
    events: impl IntoIterator<Item = &'a Event>,
) -> Vec<DesiredPatch> {
    (first_seq..)
        .zip(events)
        .filter_map(|(seq, e)| match e {
            Event::TwinPatched {
                device,
                section: TwinSection::Desired,
                patch,
                ..
            } => Some(DesiredPatch {
                seq,
                device: device.clone(),
                patch: patch.clone(),
            }),
            _ => None,
        })
        .collect()
}
