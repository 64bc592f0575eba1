//! A node's Prometheus metrics: one [`Metrics`] handle per node, created by the node's wiring and
//! handed down to the layers that record into it (store, cluster, dispatch, API), so three nodes
//! in one process (the benches, some tests) keep separate numbers. Nothing here is a process
//! global.
//!
//! Names and units follow Prometheus' conventions: `muster_<layer>_<what>_<unit>`, counters end
//! in `_total` (added by the encoder), durations are seconds, sizes bytes. Labels are bounded:
//! a status class, an outcome kind, a route template, a gRPC method of the known set, a follower
//! or broker index; never a job or device id, so a fleet-wide job does not make a million
//! series.
//!
//! Counters and histograms are recorded as things happen; gauges that describe the state (Raft
//! indexes, jobs by status, the data directory's size) are set by whoever serves `/metrics`
//! right before [`Metrics::encode`], from the state it reads then.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One label, its name and a value from a bounded set.
type Label = (&'static str, String);
type Labels1 = [Label; 1];
type Labels2 = [Label; 2];
type Labels3 = [Label; 3];

/// The status classes of device answers.
const ANSWER_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

/// The kinds of device outcome (see `JobMetrics::outcome`).
pub const OUTCOMES: [&str; 8] = [
    "succeeded",
    "failed",
    "timed_out",
    "not_connected",
    "device_not_found",
    "device_disabled",
    "dispatch_failed",
    "retried",
];

/// Creates the series of `family` for each of `values` of label `name` up front (so they are
/// exposed at 0 from the start) and returns their counters, to count without a lookup.
fn series<const N: usize>(
    family: &Family<Labels1, Counter>,
    name: &'static str,
    values: [&'static str; N],
) -> [(&'static str, Counter); N] {
    values.map(|v| (v, family.get_or_create_owned(&[(name, v.to_string())])))
}

/// Latencies from 100 µs to about 13 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Snapshot builds: 1 ms to about 65 s.
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// A node's metrics. Cheap to clone (one `Arc`); every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    raft: RaftMetrics,
    store: StoreMetrics,
    dispatch: DispatchMetrics,
    jobs: JobMetrics,
    api: ApiMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered (each exposed with HELP and TYPE even
    /// before its first sample).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let raft = RaftMetrics::register(&mut registry);
        let store = StoreMetrics::register(&mut registry);
        let dispatch = DispatchMetrics::register(&mut registry);
        let jobs = JobMetrics::register(&mut registry);
        let api = ApiMetrics::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                raft,
                store,
                dispatch,
                jobs,
                api,
            }),
        }
    }

    pub fn raft(&self) -> &RaftMetrics {
        &self.inner.raft
    }

    pub fn store(&self) -> &StoreMetrics {
        &self.inner.store
    }

    pub fn dispatch(&self) -> &DispatchMetrics {
        &self.inner.dispatch
    }

    pub fn jobs(&self) -> &JobMetrics {
        &self.inner.jobs
    }

    pub fn api(&self) -> &ApiMetrics {
        &self.inner.api
    }

    /// The exposition in Prometheus' text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would leave a truncated text,
        // which is still better than no answer.
        let _ = prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Raft: openraft's view (set at scrape) and what this node's writes and log did.
#[derive(Debug)]
pub struct RaftMetrics {
    pub term: Gauge,
    pub is_leader: Gauge,
    pub leader_changes: Counter,
    pub last_log_index: Gauge,
    pub committed_index: Gauge,
    pub applied_index: Gauge,
    follower_lag: Family<Labels1, Gauge>,
    pub proposals_committed: Counter,
    pub proposals_failed: Counter,
    pub writes_refused_disk_full: Counter,
    pub log_append: Histogram,
    pub snapshot_builds: Counter,
    pub snapshot_size: Gauge,
    pub snapshot_build: Histogram,
}

impl RaftMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = RaftMetrics {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            follower_lag: Family::default(),
            proposals_committed: Counter::default(),
            proposals_failed: Counter::default(),
            writes_refused_disk_full: Counter::default(),
            log_append: latency(),
            snapshot_builds: Counter::default(),
            snapshot_size: Gauge::default(),
            snapshot_build: slow(),
        };
        r.register("muster_raft_term", "Current Raft term", m.term.clone());
        r.register(
            "muster_raft_is_leader",
            "1 if this node is the Raft leader, else 0",
            m.is_leader.clone(),
        );
        r.register(
            "muster_raft_leader_changes",
            "Times this node saw a different leader (or none) than before",
            m.leader_changes.clone(),
        );
        r.register(
            "muster_raft_last_log_index",
            "Index of the last entry in this node's Raft log",
            m.last_log_index.clone(),
        );
        r.register(
            "muster_raft_committed_index",
            "Highest log index this node knows to be committed",
            m.committed_index.clone(),
        );
        r.register(
            "muster_raft_applied_index",
            "Highest log index applied to this node's state machine",
            m.applied_index.clone(),
        );
        r.register(
            "muster_raft_follower_lag_entries",
            "On the leader: entries of its log a follower has not yet acknowledged (label follower: node id)",
            m.follower_lag.clone(),
        );
        r.register(
            "muster_raft_proposals_committed",
            "Commands this node proposed as leader that were committed and applied",
            m.proposals_committed.clone(),
        );
        r.register(
            "muster_raft_proposals_failed",
            "Commands this node proposed as leader that were not committed (not leader, no quorum, timeout)",
            m.proposals_failed.clone(),
        );
        r.register(
            "muster_raft_writes_refused_disk_full",
            "Writes this node refused because its data directory had less free space than its reserve (client writes, and batches of entries or snapshot chunks from the leader)",
            m.writes_refused_disk_full.clone(),
        );
        r.register_with_unit(
            "muster_raft_log_append_duration",
            "Time to write and flush a batch of entries to the Raft log",
            Unit::Seconds,
            m.log_append.clone(),
        );
        r.register(
            "muster_raft_snapshot_builds",
            "Snapshots this node built",
            m.snapshot_builds.clone(),
        );
        r.register_with_unit(
            "muster_raft_snapshot_size",
            "Size of the last snapshot this node built",
            Unit::Bytes,
            m.snapshot_size.clone(),
        );
        r.register_with_unit(
            "muster_raft_snapshot_build_duration",
            "Time to build a snapshot",
            Unit::Seconds,
            m.snapshot_build.clone(),
        );
        m
    }

    /// Replaces the per-follower lag with `lags` (follower id, entries behind), so a removed
    /// member, or every follower once this node stops leading, disappears.
    pub fn set_follower_lags(&self, lags: impl IntoIterator<Item = (u64, u64)>) {
        self.follower_lag.clear();
        for (id, lag) in lags {
            self.follower_lag
                .get_or_create(&[("follower", id.to_string())])
                .set(to_i64(lag));
        }
    }
}

/// The store: the event log and the data directory.
#[derive(Debug)]
pub struct StoreMetrics {
    pub event_seq: Gauge,
    pub data_dir_bytes: Gauge,
}

impl StoreMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = StoreMetrics {
            event_seq: Gauge::default(),
            data_dir_bytes: Gauge::default(),
        };
        r.register(
            "muster_store_event_seq",
            "Sequence number of the last event applied to this node's event log",
            m.event_seq.clone(),
        );
        r.register_with_unit(
            "muster_store_data_dir",
            "Bytes the files under the data directory take",
            Unit::Bytes,
            m.data_dir_bytes.clone(),
        );
        m
    }
}

/// The leader's MQTT worker pool.
#[derive(Debug)]
pub struct DispatchMetrics {
    pub in_flight: Gauge,
    pub requests_sent: Counter,
    answers: Family<Labels1, Counter>,
    answer_classes: [(&'static str, Counter); 4],
    pub timeouts: Counter,
    pub retries: Counter,
    broker_up: Family<Labels1, Gauge>,
    pub publish: Histogram,
}

impl DispatchMetrics {
    fn register(r: &mut Registry) -> Self {
        let answers = Family::default();
        let m = DispatchMetrics {
            in_flight: Gauge::default(),
            requests_sent: Counter::default(),
            answer_classes: series(&answers, "class", ANSWER_CLASSES),
            answers,
            timeouts: Counter::default(),
            retries: Counter::default(),
            broker_up: Family::default(),
            publish: latency(),
        };
        r.register(
            "muster_dispatch_in_flight",
            "Method attempts the leader's dispatcher has on the wire or waiting to be recorded",
            m.in_flight.clone(),
        );
        r.register(
            "muster_dispatch_requests_sent",
            "Method requests published to devices",
            m.requests_sent.clone(),
        );
        r.register(
            "muster_dispatch_answers",
            "Device answers to method requests, by status class (label class: 2xx, 4xx, 5xx, other)",
            m.answers.clone(),
        );
        r.register(
            "muster_dispatch_timeouts",
            "Attempts sent that ended without an answer reaching the dispatcher (timed out or cancelled by the core)",
            m.timeouts.clone(),
        );
        r.register(
            "muster_dispatch_retries",
            "Attempts after a device's first one (retries the job's policy asked for)",
            m.retries.clone(),
        );
        r.register(
            "muster_dispatch_broker_up",
            "1 while the dispatcher's connection to a broker is up and subscribed (label broker: index in --mqtt-url order)",
            m.broker_up.clone(),
        );
        r.register_with_unit(
            "muster_dispatch_publish_duration",
            "Time from a method request leaving the dispatcher to the broker's acknowledgement (PUBACK)",
            Unit::Seconds,
            m.publish.clone(),
        );
        m
    }

    /// Counts an answer with MQTT status `status` (HTTP-like codes).
    pub fn answer(&self, status: i32) {
        let i = match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        self.answer_classes[i].1.inc();
    }

    pub fn broker_up(&self, broker: usize, up: bool) {
        self.broker_up
            .get_or_create(&[("broker", broker.to_string())])
            .set(i64::from(up));
    }
}

/// Jobs and device outcomes. The outcome counters count events as this node applies them, so
/// every replica reports the same numbers.
#[derive(Debug)]
pub struct JobMetrics {
    by_status: Family<Labels1, Gauge>,
    outcomes: Family<Labels1, Counter>,
    outcome_kinds: [(&'static str, Counter); 8],
}

impl JobMetrics {
    fn register(r: &mut Registry) -> Self {
        let outcomes = Family::default();
        let m = JobMetrics {
            by_status: Family::default(),
            outcome_kinds: series(&outcomes, "outcome", OUTCOMES),
            outcomes,
        };
        r.register(
            "muster_jobs",
            "Jobs in the state, by status (label status)",
            m.by_status.clone(),
        );
        r.register(
            "muster_device_outcomes",
            "Device attempts ended, by outcome (label outcome: succeeded, failed, timed_out, not_connected, device_not_found, device_disabled, dispatch_failed, retried)",
            m.outcomes.clone(),
        );
        m
    }

    /// Sets the number of jobs in each status (every status given, zeros included).
    pub fn set_by_status(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        for (status, n) in counts {
            self.by_status
                .get_or_create(&[("status", status.into())])
                .set(to_i64(n));
        }
    }

    /// Counts one device outcome of `kind`, one of [`OUTCOMES`] (another is counted too, under
    /// its own label).
    pub fn outcome(&self, kind: &'static str) {
        match self.outcome_kinds.iter().find(|(k, _)| *k == kind) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.outcomes
                    .get_or_create(&[("outcome", kind.to_string())])
                    .inc();
            }
        }
    }
}

/// The REST and gRPC edges.
#[derive(Debug)]
pub struct ApiMetrics {
    http_requests: Family<Labels3, Counter>,
    http_duration: Family<Labels2, Histogram, fn() -> Histogram>,
    grpc_requests: Family<Labels2, Counter>,
    grpc_duration: Family<Labels1, Histogram, fn() -> Histogram>,
}

impl ApiMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = ApiMetrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency),
        };
        r.register(
            "muster_http_requests",
            "REST requests answered, by route template, method and status code",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "muster_http_request_duration",
            "Time to answer a REST request (to the response head), by route template and method",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "muster_grpc_requests",
            "gRPC calls answered, by method path and status code (0 = OK; an error sent in trailers after a streamed answer counts as 0)",
            m.grpc_requests.clone(),
        );
        r.register_with_unit(
            "muster_grpc_request_duration",
            "Time to answer a gRPC call (to the response head; for streams, its start), by method path",
            Unit::Seconds,
            m.grpc_duration.clone(),
        );
        m
    }

    /// Records a REST request. `route` must be a route template (or a fixed word for requests
    /// that matched none), never the raw path.
    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&[
                ("route", route.to_string()),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.http_duration
            .get_or_create(&[("route", route.to_string()), ("method", method.to_string())])
            .observe(took.as_secs_f64());
    }

    /// Records a gRPC call. `method` must come from the served set (or a fixed word).
    pub fn grpc(&self, method: &str, code: &str, took: Duration) {
        self.grpc_requests
            .get_or_create(&[("method", method.to_string()), ("code", code.to_string())])
            .inc();
        self.grpc_duration
            .get_or_create(&[("method", method.to_string())])
            .observe(took.as_secs_f64());
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let m = Metrics::new();
        m.dispatch().answer(200);
        m.jobs().outcome("succeeded");
        m.api()
            .http("/api/jobs/{id}", "PUT", 200, Duration::from_millis(3));
        m.raft().set_follower_lags([(2, 5)]);
        let text = m.encode();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                typed.push(name.to_string());
            }
        }
        // Families without samples yet (labelled ones nobody recorded into) are left out.
        assert!(typed.len() >= 20, "{typed:?}");
        assert!(text.contains("muster_dispatch_answers_total{class=\"2xx\"} 1"));
        assert!(text.contains("muster_raft_follower_lag_entries{follower=\"2\"} 5"));
        assert!(text.contains(
            "muster_http_requests_total{route=\"/api/jobs/{id}\",method=\"PUT\",status=\"200\"} 1"
        ));
        // Two handles keep separate numbers.
        let other = Metrics::new();
        assert!(!other
            .encode()
            .contains("muster_dispatch_answers_total{class=\"2xx\"} 1"));
    }

    #[test]
    fn follower_lags_are_replaced_not_accumulated() {
        let m = Metrics::new();
        m.raft().set_follower_lags([(2, 5), (3, 1)]);
        m.raft().set_follower_lags([(3, 0)]);
        let text = m.encode();
        assert!(!text.contains("follower=\"2\""), "{text}");
        assert!(text.contains("muster_raft_follower_lag_entries{follower=\"3\"} 0"));
    }
}
