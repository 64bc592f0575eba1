//! Gathering device answers into `RecordDeviceResults` commands.
//!
//! One Raft entry per answer would cap throughput at the commit rate; one entry per thousand
//! answers makes it the network's. A batch is cut when it is full or when its first answer has
//! waited `interval`, so a lone answer is not held back for long.

use std::collections::VecDeque;
use std::time::Duration;

use muster_domain::DeviceResult;
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
}
