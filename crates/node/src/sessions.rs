//! Devices' open broker sessions, so a change in the registry can end them: a device disabled,
//! deleted or given new keys loses the sessions its old token opened
//! ([`muster_domain::auth::device_session_holds`] is the rule). Used by the device gateway
//! (each session a proxied connection it closes) and by dev mode's embedded broker (a session
//! taken over by the node under the device's client id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use muster_cluster::{Cluster, StateUpdate};
use muster_domain::auth::device_session_holds;
use muster_domain::{DeviceKeys, State};
use muster_types::DeviceId;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// Open sessions by device, each with the keys its token was checked against and what ends it
/// (`T`).
pub(crate) struct Sessions<T> {
    next: AtomicU64,
    open: Mutex<HashMap<DeviceId, Vec<Session<T>>>>,
}

struct Session<T> {
    id: u64,
    keys: DeviceKeys,
    end: T,
}

impl<T> Default for Sessions<T> {
    fn default() -> Self {
        Sessions {
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes its session from [`Sessions`] when dropped (the connection ended, however it ended).
pub(crate) struct Registered<'a, T> {
    sessions: &'a Sessions<T>,
    device: DeviceId,
    id: u64,
}

impl<T> Drop for Registered<'_, T> {
    fn drop(&mut self) {
        let mut open = self.sessions.lock();
        if let Some(list) = open.get_mut(&self.device) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                open.remove(&self.device);
            }
        }
    }
}

impl<T> Sessions<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, Vec<Session<T>>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session that lasts as long as the returned guard.
    pub(crate) fn register(
        &self,
        device: &DeviceId,
        keys: DeviceKeys,
        end: T,
    ) -> Registered<'_, T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(device.clone())
            .or_default()
            .push(Session { id, keys, end });
        Registered {
            sessions: self,
            device: device.clone(),
            id,
        }
    }

    /// Records the device's one session (a broker that keeps one session per client id, and
    /// tells nobody when it ends): it replaces any earlier one, and stays until the device
    /// changes.
    pub(crate) fn replace(&self, device: &DeviceId, keys: DeviceKeys, end: T) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(device.clone(), vec![Session { id, keys, end }]);
    }

    /// Removes and returns the sessions (of `only` these devices, or all) that no longer stand
    /// in `state`.
    fn take_ended(&self, state: &State, only: Option<&[DeviceId]>) -> Vec<(DeviceId, T)> {
        let mut open = self.lock();
        let ids: Vec<DeviceId> = match only {
            Some(ids) => ids.to_vec(),
            None => open.keys().cloned().collect(),
        };
        let mut ended = Vec::new();
        for id in ids {
            let Some(list) = open.get_mut(&id) else {
                continue;
            };
            let (keep, gone): (Vec<Session<T>>, Vec<Session<T>>) = list
                .drain(..)
                .partition(|s| device_session_holds(&state.registry, &id, &s.keys));
            *list = keep;
            if list.is_empty() {
                open.remove(&id);
            }
            ended.extend(gone.into_iter().map(|s| (id.clone(), s.end)));
        }
        ended
    }
}

/// Follows the node's applied events until `stop`, and hands every session that no longer
/// stands to `end` (outside every lock).
pub(crate) async fn follow<T>(
    cluster: Cluster,
    sessions: Arc<Sessions<T>>,
    mut stop: watch::Receiver<bool>,
    end: impl Fn(DeviceId, T),
) {
    let reader = cluster.reader();
    let mut updates = reader.subscribe();
    loop {
        let update = tokio::select! {
            u = updates.recv() => u,
            _ = stop.changed() => return,
        };
        let ended = match update {
            Ok(StateUpdate::Events(applied)) => {
                let touched: Vec<DeviceId> = {
                    let open = sessions.lock();
                    if open.is_empty() {
                        continue;
                    }
                    applied
                        .events
                        .iter()
                        .filter_map(|e| e.device())
                        .filter(|d| open.contains_key(*d))
                        .cloned()
                        .collect()
                };
                if touched.is_empty() {
                    continue;
                }
                reader.read(|s| sessions.take_ended(s, Some(&touched)))
            }
            // Events this follower did not see: every session is checked against the state.
            Ok(StateUpdate::SnapshotInstalled { .. }) | Err(RecvError::Lagged(_)) => {
                reader.read(|s| sessions.take_ended(s, None))
            }
            Err(RecvError::Closed) => return,
        };
        for (device, e) in ended {
            tracing::info!(%device, "ending a session of a device disabled, deleted or given new keys");
            end(device, e);
        }
    }
}
