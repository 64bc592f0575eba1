//! The leader's MQTT worker pool.
//!
//! The pure core says what must happen ([`muster_domain::actions`]); this crate makes it happen
//! over MQTT and proposes what came of it. [`Dispatcher::run`] loops over:
//!
//! - `Advance` → propose `Command::Advance` stamped with the wall clock ([`now`]); `WakeAt`
//!   → recompute then.
//! - `Dispatch` → propose `MarkDispatched`, then publish each recorded attempt's request.
//! - `Send` → publish a request not yet on the wire of the current connection (this is how a
//!   new leader, or a reconnected one, resends: at least once, with the attempt's stable rid).
//!   Sends are asked for only at start, after missed updates, a reconnect or a failed results
//!   proposal, and once a second (to forget attempts that ended without an answer here); in
//!   between, the dispatcher forgets an attempt when its answer is committed
//!   ([`muster_domain::actions_with`], `sends: false`). Recomputations are spaced at least four
//!   times as long as the last one took, so a 100,000-device batch cannot starve the answers.
//! - Replies (`devices/{id}/methods/res/{status}/?$rid=`) are batched into
//!   `RecordDeviceResults` commands, many answers per command. Timeouts are not decided here:
//!   the core fails silent devices when `Advance` passes their deadline.
//! - Presence (`devices/+/presence`) is coalesced per device and batched into `SetConnections`
//!   (changes that differ from the registry); reported properties are batched into
//!   `ReportPropertiesBatch`; desired-property patches applied to the
//!   registry are pushed to the devices with their twin `$version`.
//!
//! **Several methods in one job** run one after another on a device, each published with the
//! attempt's rid once the previous one answered 2xx. The first non-2xx answer ends the attempt
//! and is what is recorded; if all succeed, the last answer is recorded. (Replies do not name
//! the method, so a device must answer them in order; it should recognise a duplicate by
//! method *and* rid.)
//!
//! **Several brokers**: devices are assigned by [`protocol::broker_index`] (FNV-1a of the
//! device id modulo the number of brokers); each broker gets one connection.
//!
//! The crate does not know Raft or storage: the node provides a [`Host`].

mod batch;
mod config;
mod dispatcher;
mod host;
mod link;
pub mod protocol;

pub use config::DispatchConfig;
pub use dispatcher::Dispatcher;
pub use host::{wall_clock, Host, HostError, Update};

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Mqtt(#[from] muster_mqtt::MqttError),
    #[error("no MQTT broker configured: set dispatch.brokers")]
    NoBrokers,
}
