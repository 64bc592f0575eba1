//! Gathering device answers into `RecordDeviceResults` commands, and presence and reported
//! properties into `SetConnections` and `ReportPropertiesBatch`.
//!
//! One Raft entry per answer would cap throughput at the commit rate; one entry per thousand
//! answers makes it the network's. A batch is cut when it is full or when its first answer has
//! waited `interval`, so a lone answer is not held back for long.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use muster_domain::{ConnectionChange, DeviceResult, PropertyReport};
use muster_types::DeviceId;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct ResultBatcher {
    max: usize,
    interval: Duration,
    open: Vec<DeviceResult>,
    opened_at: Option<Instant>,
    /// Cut batches waiting for a proposal slot.
    ready: VecDeque<Vec<DeviceResult>>,
}

impl ResultBatcher {
    pub(crate) fn new(max: usize, interval: Duration) -> Self {
        ResultBatcher {
            max: max.max(1),
            interval,
            open: Vec::new(),
            opened_at: None,
            ready: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, r: DeviceResult, now: Instant) {
        if self.open.is_empty() {
            self.opened_at = Some(now);
        }
        self.open.push(r);
        if self.open.len() >= self.max {
            self.cut();
        }
    }

    /// When the open batch must be cut, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.interval)
    }

    /// Cuts the open batch if its time has come (or `force`).
    pub(crate) fn tick(&mut self, now: Instant, force: bool) {
        if force || self.deadline().is_some_and(|d| d <= now) {
            self.cut();
        }
    }

    fn cut(&mut self) {
        self.opened_at = None;
        if !self.open.is_empty() {
            self.ready.push_back(std::mem::take(&mut self.open));
        }
    }

    /// The next cut batch to propose.
    pub(crate) fn next_ready(&mut self) -> Option<Vec<DeviceResult>> {
        self.ready.pop_front()
    }

    #[cfg(test)]
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty() && self.ready.is_empty()
    }
}

/// A cut batch of registry changes, one command's worth.
#[derive(Debug, Clone)]
pub(crate) enum RegistryBatch {
    Presence(Vec<ConnectionChange>),
    Reports(Vec<PropertyReport>),
}

impl RegistryBatch {
    /// The devices it holds, to hand back to [`RegistryBatcher::done`] once proposed.
    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        match self {
            RegistryBatch::Presence(c) => c.iter().map(|c| c.device.clone()).collect(),
            RegistryBatch::Reports(r) => r.iter().map(|r| r.device.clone()).collect(),
        }
    }

    pub(crate) fn is_presence(&self) -> bool {
        matches!(self, RegistryBatch::Presence(_))
    }
}

/// Presence and reported properties waiting for a proposal.
///
/// A fleet coming online sends one retained `online` per device; one Raft entry each was over a
/// minute of a node's CPU for 100,000 devices. Presence is coalesced per device (only the last
/// message counts; the device keeps the place of its first one), reported patches are kept in
/// arrival order (they compose, so none may be dropped). A device with a batch under way is held
/// back from the next batch of the same kind until that one is done, so its changes are applied
/// in the order they arrived even with several proposals in flight.
#[derive(Debug)]
pub(crate) struct RegistryBatcher {
    max: usize,
    interval: Duration,
    presence_order: VecDeque<DeviceId>,
    presence: HashMap<DeviceId, bool>,
    reports: VecDeque<PropertyReport>,
    opened_at: Option<Instant>,
    presence_busy: HashSet<DeviceId>,
    reports_busy: HashSet<DeviceId>,
}

impl RegistryBatcher {
    pub(crate) fn new(max: usize, interval: Duration) -> Self {
        RegistryBatcher {
            max: max.max(1),
            interval,
            presence_order: VecDeque::new(),
            presence: HashMap::new(),
            reports: VecDeque::new(),
            opened_at: None,
            presence_busy: HashSet::new(),
            reports_busy: HashSet::new(),
        }
    }

    fn open(&mut self, now: Instant) {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
    }

    pub(crate) fn push_presence(&mut self, device: DeviceId, online: bool, now: Instant) {
        self.open(now);
        if self.presence.insert(device.clone(), online).is_none() {
            self.presence_order.push_back(device);
        }
    }

    pub(crate) fn push_report(&mut self, report: PropertyReport, now: Instant) {
        self.open(now);
        self.reports.push_back(report);
    }

    /// When the waiting changes must be proposed, if any wait.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.interval)
    }

    /// A batch is full, or the first waiting change has waited long enough.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.presence_order.len() >= self.max
            || self.reports.len() >= self.max
            || self.deadline().is_some_and(|d| d <= now)
    }

    /// Takes the next batch (presence first: jobs wait on it), up to the batch size, leaving out
    /// devices with a batch of that kind under way. `None` when nothing can go now.
    pub(crate) fn cut(&mut self) -> Option<RegistryBatch> {
        let mut changes = Vec::new();
        let mut held = Vec::new();
        while changes.len() < self.max {
            let Some(device) = self.presence_order.pop_front() else {
                break;
            };
            let Some(connected) = self.presence.remove(&device) else {
                continue;
            };
            if self.presence_busy.contains(&device) {
                held.push((device, connected));
            } else {
                changes.push(ConnectionChange { device, connected });
            }
        }
        for (device, connected) in held.into_iter().rev() {
            self.presence.insert(device.clone(), connected);
            self.presence_order.push_front(device);
        }
        if !changes.is_empty() {
            self.presence_busy
                .extend(changes.iter().map(|c| c.device.clone()));
            return Some(RegistryBatch::Presence(changes));
        }
        let mut reports = Vec::new();
        let mut held = Vec::new();
        while reports.len() < self.max {
            let Some(r) = self.reports.pop_front() else {
                break;
            };
            if self.reports_busy.contains(&r.device) {
                held.push(r);
            } else {
                reports.push(r);
            }
        }
        for r in held.into_iter().rev() {
            self.reports.push_front(r);
        }
        if reports.is_empty() {
            return None;
        }
        self.reports_busy
            .extend(reports.iter().map(|r| r.device.clone()));
        Some(RegistryBatch::Reports(reports))
    }

    /// Starts the wait for what is left after cutting (or clears it if nothing is).
    pub(crate) fn rearm(&mut self, now: Instant) {
        self.opened_at =
            (!self.presence_order.is_empty() || !self.reports.is_empty()).then_some(now);
    }

    /// Puts a batch that was not committed back in front of what waits. Presence that arrived
    /// since is newer and wins.
    pub(crate) fn requeue(&mut self, batch: RegistryBatch, now: Instant) {
        self.open(now);
        match batch {
            RegistryBatch::Presence(changes) => {
                for c in changes.into_iter().rev() {
                    if !self.presence.contains_key(&c.device) {
                        self.presence.insert(c.device.clone(), c.connected);
                        self.presence_order.push_front(c.device);
                    }
                }
            }
            RegistryBatch::Reports(reports) => {
                for r in reports.into_iter().rev() {
                    self.reports.push_front(r);
                }
            }
        }
    }

    /// A batch from [`cut`](Self::cut) was proposed (committed or not): its devices may go in
    /// the next one.
    pub(crate) fn done(&mut self, presence: bool, devices: &[DeviceId]) {
        let busy = if presence {
            &mut self.presence_busy
        } else {
            &mut self.reports_busy
        };
        for d in devices {
            busy.remove(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_domain::{FailureReason, Outcome};
    use muster_types::{DeviceId, JobId, RunId};

    fn result(i: usize) -> DeviceResult {
        DeviceResult {
            job: JobId::new("j").unwrap(),
            run: RunId(0),
            device: DeviceId::new(format!("d{i}")).unwrap(),
            attempt: 1,
            outcome: Outcome::Failed(FailureReason::Timeout),
        }
    }

    #[test]
    fn full_batches_are_cut_at_once_in_order() {
        let now = Instant::now();
        let mut b = ResultBatcher::new(3, Duration::from_millis(5));
        for i in 0..7 {
            b.push(result(i), now);
        }
        let first = b.next_ready().unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].device.as_str(), "d0");
        assert_eq!(b.next_ready().unwrap().len(), 3);
        assert!(b.next_ready().is_none());
        assert!(!b.is_empty());
        // The seventh waits for its interval.
        b.tick(now, false);
        assert!(!b.has_ready());
        assert_eq!(b.deadline(), Some(now + Duration::from_millis(5)));
        b.tick(now + Duration::from_millis(5), false);
        assert_eq!(b.next_ready().unwrap()[0].device.as_str(), "d6");
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn force_cuts_a_partial_batch() {
        let now = Instant::now();
        let mut b = ResultBatcher::new(1000, Duration::from_secs(60));
        b.push(result(1), now);
        b.tick(now, true);
        assert_eq!(b.next_ready().unwrap().len(), 1);
        b.tick(now, true);
        assert!(b.next_ready().is_none());
    }

    fn d(i: usize) -> DeviceId {
        DeviceId::new(format!("d{i}")).unwrap()
    }

    fn presence(b: Option<RegistryBatch>) -> Vec<(String, bool)> {
        match b {
            Some(RegistryBatch::Presence(c)) => c
                .into_iter()
                .map(|c| (c.device.as_str().to_owned(), c.connected))
                .collect(),
            other => panic!("expected presence, got {other:?}"),
        }
    }

    #[test]
    fn presence_is_coalesced_last_wins_in_arrival_order() {
        let now = Instant::now();
        let mut b = RegistryBatcher::new(10, Duration::from_millis(5));
        b.push_presence(d(2), true, now);
        b.push_presence(d(1), true, now);
        b.push_presence(d(2), false, now);
        b.push_presence(d(3), true, now);
        b.push_presence(d(2), true, now);
        b.push_presence(d(1), false, now);
        assert!(!b.due(now));
        assert!(b.due(now + Duration::from_millis(5)));
        assert_eq!(
            presence(b.cut()),
            vec![
                ("d2".to_string(), true),
                ("d1".to_string(), false),
                ("d3".to_string(), true)
            ]
        );
        assert!(b.cut().is_none());
        b.rearm(now);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn full_batches_are_due_at_once_and_busy_devices_wait() {
        let now = Instant::now();
        let mut b = RegistryBatcher::new(2, Duration::from_secs(60));
        b.push_presence(d(1), true, now);
        assert!(!b.due(now));
        b.push_presence(d(2), true, now);
        assert!(b.due(now));
        let first = b.cut().unwrap();
        assert_eq!(first.devices(), vec![d(1), d(2)]);
        // d1 changes again while its first batch is under way: it waits for that one.
        b.push_presence(d(1), false, now);
        b.push_presence(d(3), true, now);
        assert_eq!(presence(b.cut()), vec![("d3".to_string(), true)]);
        assert!(b.cut().is_none());
        b.done(true, &first.devices());
        assert_eq!(presence(b.cut()), vec![("d1".to_string(), false)]);
    }

    #[test]
    fn reports_keep_every_patch_in_order_after_presence() {
        let now = Instant::now();
        let mut b = RegistryBatcher::new(10, Duration::from_millis(1));
        let report = |i: usize, v: i64| PropertyReport {
            device: d(i),
            patch: serde_json::json!({ "v": v }),
        };
        b.push_report(report(1, 1), now);
        b.push_report(report(1, 2), now);
        b.push_presence(d(1), true, now);
        assert!(matches!(b.cut(), Some(RegistryBatch::Presence(_))));
        let Some(RegistryBatch::Reports(r)) = b.cut() else {
            panic!("expected reports");
        };
        assert_eq!(r, vec![report(1, 1), report(1, 2)]);
        // A later report of a device with reports under way waits, others go.
        b.push_report(report(1, 3), now);
        b.push_report(report(2, 1), now);
        let Some(RegistryBatch::Reports(r)) = b.cut() else {
            panic!("expected reports");
        };
        assert_eq!(r, vec![report(2, 1)]);
        b.done(false, &[d(1)]);
        let Some(RegistryBatch::Reports(r)) = b.cut() else {
            panic!("expected reports");
        };
        assert_eq!(r, vec![report(1, 3)]);
    }
}
