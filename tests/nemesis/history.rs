//! The history checker: pure, over what the workload recorded and what every node holds at the
//! end. It knows nothing of processes or sockets, so hand-made histories test it (below).
//!
//! What it verifies, and why each rule is sound with concurrent clients:
//! - an acknowledged write (job created, twin key written) is on every node at the end;
//! - nothing appears that no client asked for, and a write refused with a definite error
//!   (the request was judged and rejected) is absent; an indeterminate one (timeout,
//!   UNAVAILABLE) may be either;
//! - no twin write is applied twice: every applied write bumps the twin's version once, so the
//!   version grew by exactly the number of distinct keys present;
//! - reads are linearizable: a read invoked after a write was acknowledged sees it, a read never
//!   sees a write invoked after the read completed, and a read invoked after another read
//!   completed sees at least what that one saw (keys are never removed);
//! - each device has one final outcome in every run (earlier runs of a rerun job too), and the
//!   job's statistics equal a recount;
//! - nothing was dispatched while its job was stopped or after it ended, for a run other than
//!   the job's latest, or to a device outside the batches started so far (from each node's
//!   event log: `DeviceDispatched` against `JobStopped`/`JobResumed`/`BatchStarted`; the log is
//!   the order every node applied, so the rule needs no clocks);
//! - the nodes agree on every job and twin, and on their audit chains, each of which verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Microseconds since the workload started.
pub type Micros = u64;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    CreateJob {
        job: String,
    },
    StopJob {
        job: String,
    },
    ResumeJob {
        job: String,
    },
    CancelJob {
        job: String,
    },
    RerunJob {
        job: String,
        rerun: String,
    },
    /// Merge `{key: true}` into the device's tags (each key written by one op only).
    TwinWrite {
        device: String,
        key: String,
    },
    /// A linearizable read of the device's tags.
    ReadTwin {
        device: String,
    },
    /// A linearizable read of a job.
    ReadJob {
        job: String,
    },
}

/// What a read answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A write's answer carries nothing the checker needs.
    Nothing,
    /// The tag keys of the twin.
    Keys(BTreeSet<String>),
    /// Whether the job exists.
    Job(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Seen),
    /// Refused after being judged (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...): it
    /// did not take effect.
    Refused(String),
    /// Timed out or UNAVAILABLE: it may or may not have taken effect.
    Unknown(String),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    /// The node (1-based) the client sent it to.
    pub node: usize,
    pub kind: OpKind,
    pub invoked: Micros,
    pub completed: Micros,
    pub outcome: Outcome,
}

impl Op {
    fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "op {} (client {}, node {}) {:?} invoked {:.3}s completed {:.3}s -> {:?}",
            self.id,
            self.client,
            self.node,
            self.kind,
            self.invoked as f64 / 1e6,
            self.completed as f64 / 1e6,
            self.outcome
        )
    }
}

/// A job as one node holds it at the end (current run).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobView {
    pub status: String,
    pub run: u32,
    /// `total, pending, running, succeeded, failed, timed_out, cancelled` as the job reports.
    pub stats: [u64; 7],
    /// Each row of the current run's device list: (device, status), in the order listed.
    pub devices: Vec<(String, String)>,
    /// The same for each earlier run (a rerun job's), by run.
    pub earlier: BTreeMap<u32, Vec<(String, String)>>,
}

/// An event of a node's log, reduced to what the dispatch rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A run began (the job's creation is run 0, each rerun the next) with its devices cut
    /// into batches: `batches[i]` is batch `i`.
    RunStarted {
        job: String,
        run: u32,
        batches: Vec<Vec<String>>,
    },
    BatchStarted {
        job: String,
        run: u32,
        batch: u32,
    },
    Dispatched {
        job: String,
        run: u32,
        device: String,
    },
    Stopped {
        job: String,
    },
    Resumed {
        job: String,
    },
    /// Completed, failed, cancelled or expired.
    Ended {
        job: String,
    },
}

/// A twin as one node holds it at the end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinView {
    pub keys: BTreeSet<String>,
    pub version: u64,
}

/// `muster audit verify` on a node's data directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditView {
    pub ok: bool,
    /// Its output (the failure, or `ok: seqs A..=B (N records), chain head H`).
    pub output: String,
    pub last_seq: u64,
    pub head: String,
}

/// Everything read from one node once the faults healed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    pub node: usize,
    pub jobs: BTreeMap<String, JobView>,
    pub twins: BTreeMap<String, TwinView>,
    pub audit: Option<AuditView>,
    /// The job events of its log with their seqs, in log order.
    pub log: Vec<(u64, LogEvent)>,
}

/// One violated rule, with the operations that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub rule: &'static str,
    pub detail: String,
    pub ops: Vec<Op>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}", self.rule, self.detail)?;
        for op in &self.ops {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub ops: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub indeterminate: usize,
    pub reads_checked: usize,
    /// `DeviceDispatched` events checked, summed over the nodes' logs.
    pub dispatches_checked: usize,
    /// Refused and indeterminate operations by gRPC code, e.g. `Unavailable`.
    pub errors: BTreeMap<String, usize>,
    /// The first message seen of each code, to tell what the errors were.
    pub error_samples: BTreeMap<String, String>,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} operations: {} acknowledged, {} refused, {} indeterminate; {} reads checked; {} \
             dispatches checked; {} anomalies",
            self.ops,
            self.acknowledged,
            self.refused,
            self.indeterminate,
            self.reads_checked,
            self.dispatches_checked,
            self.anomalies.len()
        )?;
        writeln!(f, "errors by code: {:?}", self.errors)?;
        for e in self.error_samples.values() {
            writeln!(f, "  e.g. {e}")?;
        }
        for a in self.anomalies.iter().take(20) {
            write!(f, "{a}")?;
        }
        if self.anomalies.len() > 20 {
            writeln!(f, "... and {} more", self.anomalies.len() - 20)?;
        }
        Ok(())
    }
}

const FINAL: [&str; 3] = ["completed", "failed", "cancelled"];
const DEVICE_FINAL: [&str; 4] = ["succeeded", "failed", "timed_out", "cancelled"];

/// Checks `history` against the nodes' final `views`; `initial_versions` is each workload
/// device's twin version before the workload began.
pub fn check(
    history: &[Op],
    views: &[NodeView],
    initial_versions: &BTreeMap<String, u64>,
) -> Report {
    let mut r = Report {
        ops: history.len(),
        ..Report::default()
    };
    for op in history {
        match op.outcome {
            Outcome::Ok(_) => r.acknowledged += 1,
            Outcome::Refused(_) => r.refused += 1,
            Outcome::Unknown(_) => r.indeterminate += 1,
        }
        if let Outcome::Refused(e) | Outcome::Unknown(e) = &op.outcome {
            let code = e.split(':').next().unwrap_or_default().to_string();
            *r.errors.entry(code.clone()).or_default() += 1;
            r.error_samples.entry(code).or_insert_with(|| e.clone());
        }
    }
    check_writes(history, views, &mut r);
    check_twice(history, views, initial_versions, &mut r);
    check_reads(history, &mut r);
    check_jobs(views, &mut r);
    check_dispatch(history, views, &mut r);
    check_agreement(views, &mut r);
    r
}

fn anomaly(r: &mut Report, rule: &'static str, detail: String, ops: Vec<Op>) {
    r.anomalies.push(Anomaly { rule, detail, ops });
}

/// Acknowledged writes everywhere; refused ones nowhere; nothing from nowhere.
fn check_writes(history: &[Op], views: &[NodeView], r: &mut Report) {
    let mut asked_jobs: BTreeMap<&str, &Op> = BTreeMap::new();
    let mut asked_keys: BTreeMap<(&str, &str), &Op> = BTreeMap::new();
    for op in history {
        match &op.kind {
            OpKind::CreateJob { job } => {
                asked_jobs.insert(job, op);
            }
            OpKind::TwinWrite { device, key } => {
                asked_keys.insert((device, key), op);
            }
            _ => {}
        }
    }
    for v in views {
        for (job, op) in &asked_jobs {
            let present = v.jobs.contains_key(*job);
            if op.ok() && !present {
                let d = format!("acknowledged job {job} is missing on node {}", v.node);
                anomaly(r, "lost-write", d, vec![(*op).clone()]);
            }
            if matches!(op.outcome, Outcome::Refused(_)) && present {
                let d = format!("refused job {job} exists on node {}", v.node);
                anomaly(r, "refused-applied", d, vec![(*op).clone()]);
            }
        }
        for job in v.jobs.keys() {
            if !asked_jobs.contains_key(job.as_str()) {
                let d = format!("node {} holds job {job}, which no client created", v.node);
                anomaly(r, "phantom", d, vec![]);
            }
        }
        for ((device, key), op) in &asked_keys {
            let present = v.twins.get(*device).is_some_and(|t| t.keys.contains(*key));
            if op.ok() && !present {
                let d = format!(
                    "acknowledged tag {key} of {device} is missing on node {}",
                    v.node
                );
                anomaly(r, "lost-write", d, vec![(*op).clone()]);
            }
            if matches!(op.outcome, Outcome::Refused(_)) && present {
                let d = format!("refused tag {key} of {device} is on node {}", v.node);
                anomaly(r, "refused-applied", d, vec![(*op).clone()]);
            }
        }
        for (device, twin) in &v.twins {
            for key in &twin.keys {
                if !asked_keys.contains_key(&(device.as_str(), key.as_str())) {
                    let d = format!(
                        "node {} has tag {key} on {device}, which no client wrote",
                        v.node
                    );
                    anomaly(r, "phantom", d, vec![]);
                }
            }
        }
    }
}

/// Each applied twin write bumps the version once: a write applied twice shows as a version
/// that grew more than the keys present.
fn check_twice(
    history: &[Op],
    views: &[NodeView],
    initial: &BTreeMap<String, u64>,
    r: &mut Report,
) {
    for v in views {
        for (device, twin) in &v.twins {
            let Some(start) = initial.get(device) else {
                continue;
            };
            let grew = twin.version.saturating_sub(*start);
            if grew != twin.keys.len() as u64 {
                let ops = history
                    .iter()
                    .filter(
                        |o| matches!(&o.kind, OpKind::TwinWrite { device: d, .. } if d == device),
                    )
                    .filter(|o| !o.ok())
                    .cloned()
                    .collect();
                let d = format!(
                    "twin {device} on node {}: version grew by {grew} but {} writes are present \
                     (a write applied twice, or lost after it bumped the version); its \
                     unacknowledged writes follow",
                    v.node,
                    twin.keys.len()
                );
                anomaly(r, "applied-twice", d, ops);
            }
        }
    }
}

/// Linearizable reads of twins and jobs. Indexed, so an hour's history checks in seconds.
fn check_reads(history: &[Op], r: &mut Report) {
    let mut key_writes: BTreeMap<(&str, &str), &Op> = BTreeMap::new();
    let mut creates: BTreeMap<&str, &Op> = BTreeMap::new();
    // Per device, its acknowledged writes by completion time.
    let mut acked: BTreeMap<&str, Vec<(Micros, &str, &Op)>> = BTreeMap::new();
    for w in history {
        match &w.kind {
            OpKind::TwinWrite { device, key } => {
                key_writes.insert((device, key), w);
                if w.ok() {
                    acked.entry(device).or_default().push((w.completed, key, w));
                }
            }
            OpKind::CreateJob { job } => {
                creates.insert(job, w);
            }
            _ => {}
        }
    }
    for list in acked.values_mut() {
        list.sort_by_key(|(t, _, _)| *t);
    }
    let mut twin_reads: BTreeMap<&str, Vec<(&Op, &BTreeSet<String>)>> = BTreeMap::new();
    for read in history {
        match (&read.kind, &read.outcome) {
            (OpKind::ReadTwin { device }, Outcome::Ok(Seen::Keys(keys))) => {
                r.reads_checked += 1;
                twin_reads.entry(device).or_default().push((read, keys));
                let before = acked.get(device.as_str()).map_or(&[][..], |l| {
                    &l[..l.partition_point(|(t, _, _)| *t < read.invoked)]
                });
                for (_, key, w) in before {
                    if !keys.contains(*key) {
                        let d = format!(
                            "read of {device} missed tag {key}, acknowledged before the read began"
                        );
                        anomaly(r, "stale-read", d, vec![(*w).clone(), read.clone()]);
                    }
                }
                for key in keys {
                    match key_writes.get(&(device.as_str(), key.as_str())) {
                        Some(w) if w.invoked > read.completed => {
                            let d = format!("read of {device} saw tag {key} before it was written");
                            anomaly(r, "future-read", d, vec![(*w).clone(), read.clone()]);
                        }
                        None => {
                            let d =
                                format!("read of {device} saw tag {key}, which no client wrote");
                            anomaly(r, "phantom", d, vec![read.clone()]);
                        }
                        _ => {}
                    }
                }
            }
            (OpKind::ReadJob { job }, Outcome::Ok(Seen::Job(found))) => {
                r.reads_checked += 1;
                match (creates.get(job.as_str()), found) {
                    (Some(w), false) if w.ok() && w.completed < read.invoked => {
                        let d = format!(
                            "job {job} not found by a read that began after its creation was acknowledged"
                        );
                        anomaly(r, "stale-read", d, vec![(*w).clone(), read.clone()]);
                    }
                    (Some(w), true) if w.invoked > read.completed => {
                        let d = format!("job {job} found before it was created");
                        anomaly(r, "future-read", d, vec![(*w).clone(), read.clone()]);
                    }
                    (None, true) => {
                        let d = format!("job {job} found, which no client created");
                        anomaly(r, "phantom", d, vec![read.clone()]);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // Real-time order between reads: keys only accumulate, so a read sees at least every key
    // that reads completed before it began saw. Sweep reads by invocation, keeping the union
    // of what completed reads saw (and which read saw each key first).
    for (device, mut reads) in twin_reads {
        let mut by_completion = reads.clone();
        by_completion.sort_by_key(|(op, _)| op.completed);
        reads.sort_by_key(|(op, _)| op.invoked);
        let mut seen: BTreeMap<&str, &Op> = BTreeMap::new();
        let mut next = 0;
        for (b, keys_b) in &reads {
            while next < by_completion.len() && by_completion[next].0.completed < b.invoked {
                let (a, keys_a) = by_completion[next];
                for k in keys_a {
                    seen.entry(k.as_str()).or_insert(a);
                }
                next += 1;
            }
            if let Some((key, a)) = seen.iter().find(|(k, _)| !keys_b.contains(**k)) {
                let d = format!(
                    "read of {device} lost tag {key} that an earlier read (completed before it began) saw"
                );
                anomaly(r, "non-monotonic-read", d, vec![(*a).clone(), (*b).clone()]);
            }
        }
    }
}

/// Final jobs: one final outcome per device of the current run, statistics equal a recount.
fn check_jobs(views: &[NodeView], r: &mut Report) {
    for v in views {
        for (id, job) in &v.jobs {
            let mut seen = BTreeSet::new();
            for (device, _) in &job.devices {
                if !seen.insert(device) {
                    let d = format!(
                        "node {}: job {id} run {} lists {device} twice",
                        v.node, job.run
                    );
                    anomaly(r, "duplicate-device", d, vec![]);
                }
            }
            if !FINAL.contains(&job.status.as_str()) {
                let d = format!(
                    "node {}: job {id} is {} at the end, not final",
                    v.node, job.status
                );
                anomaly(r, "not-final", d, vec![]);
                continue;
            }
            for (device, status) in &job.devices {
                if !DEVICE_FINAL.contains(&status.as_str()) {
                    let d = format!(
                        "node {}: job {id} is {} but device {device} is {status}",
                        v.node, job.status
                    );
                    anomaly(r, "no-final-outcome", d, vec![]);
                }
            }
            for (run, devices) in &job.earlier {
                let mut seen = BTreeSet::new();
                for (device, status) in devices {
                    if !seen.insert(device) {
                        let d = format!("node {}: job {id} run {run} lists {device} twice", v.node);
                        anomaly(r, "duplicate-device", d, vec![]);
                    }
                    if !DEVICE_FINAL.contains(&status.as_str()) {
                        let d = format!(
                            "node {}: job {id} is in run {} but device {device} of its earlier \
                             run {run} is {status}",
                            v.node, job.run
                        );
                        anomaly(r, "no-final-outcome", d, vec![]);
                    }
                }
            }
            let count = |s: &str| job.devices.iter().filter(|(_, st)| st == s).count() as u64;
            let recount = [
                job.devices.len() as u64,
                count("pending"),
                count("running"),
                count("succeeded"),
                count("failed"),
                count("timed_out"),
                count("cancelled"),
            ];
            if recount != job.stats {
                let d = format!(
                    "node {}: job {id} run {} reports statistics {:?} (total, pending, running, \
                     succeeded, failed, timed out, cancelled) but its devices recount to {:?}",
                    v.node, job.run, job.stats, recount
                );
                anomaly(r, "statistics", d, vec![]);
            }
        }
    }
}

/// What the dispatch rule tracks of one job while reading a log.
#[derive(Debug, Default)]
struct Tracked {
    run: u32,
    /// Device -> its batch, in the current run.
    batch_of: BTreeMap<String, u32>,
    /// The highest batch of the current run started so far.
    started: Option<u32>,
    /// The seq of the `JobStopped` not yet resumed.
    stopped: Option<u64>,
    /// The seq of the event that ended the job.
    ended: Option<u64>,
}

/// Nothing dispatched while its job was stopped or ended, for an older run, or outside the
/// batches started. Each node's log is read in seq order; the same violation on several nodes
/// (their logs are copies) is reported once, naming the first.
fn check_dispatch(history: &[Op], views: &[NodeView], r: &mut Report) {
    let mut reported: BTreeSet<(u64, String)> = BTreeSet::new();
    for v in views {
        let mut jobs: BTreeMap<&str, Tracked> = BTreeMap::new();
        for (seq, e) in &v.log {
            match e {
                LogEvent::RunStarted { job, run, batches } => {
                    let t = jobs.entry(job).or_default();
                    t.run = *run;
                    t.batch_of.clear();
                    for (i, devices) in batches.iter().enumerate() {
                        for d in devices {
                            // A device listed twice stays in its first batch.
                            t.batch_of.entry(d.clone()).or_insert(i as u32);
                        }
                    }
                    t.started = None;
                    t.stopped = None;
                    t.ended = None;
                }
                LogEvent::BatchStarted { job, run, batch } => {
                    let t = jobs.entry(job).or_default();
                    if *run == t.run {
                        t.started = Some(t.started.map_or(*batch, |b| b.max(*batch)));
                    }
                }
                LogEvent::Stopped { job } => {
                    jobs.entry(job).or_default().stopped = Some(*seq);
                }
                LogEvent::Resumed { job } => {
                    jobs.entry(job).or_default().stopped = None;
                }
                LogEvent::Ended { job } => {
                    jobs.entry(job).or_default().ended = Some(*seq);
                }
                LogEvent::Dispatched { job, run, device } => {
                    r.dispatches_checked += 1;
                    let what =
                        format!("seq {seq} DeviceDispatched job {job} run {run} device {device}");
                    let why = match jobs.get(job.as_str()) {
                        None => Some("but the log never created the job".to_string()),
                        Some(t) => {
                            if let Some(at) = t.ended {
                                Some(format!("after the job ended (seq {at})"))
                            } else if let Some(at) = t.stopped {
                                Some(format!(
                                    "while the job was stopped (JobStopped at seq {at}, no \
                                     JobResumed since)"
                                ))
                            } else if *run != t.run {
                                Some(format!("but the job's current run is {}", t.run))
                            } else {
                                match (t.batch_of.get(device), t.started) {
                                    (None, _) => Some("but the device is not in that run".into()),
                                    (Some(b), None) => Some(format!(
                                        "outside its batch: the device is in batch {b} and no \
                                         batch of the run has started"
                                    )),
                                    (Some(b), Some(s)) if b > &s => Some(format!(
                                        "outside its batch: the device is in batch {b}, batches \
                                         0..={s} have started"
                                    )),
                                    _ => None,
                                }
                            }
                        }
                    };
                    let Some(why) = why else {
                        continue;
                    };
                    if !reported.insert((*seq, why.clone())) {
                        continue;
                    }
                    let ops = history
                        .iter()
                        .filter(|o| match &o.kind {
                            OpKind::StopJob { job: j }
                            | OpKind::ResumeJob { job: j }
                            | OpKind::CancelJob { job: j }
                            | OpKind::RerunJob { job: j, .. } => j == job,
                            _ => false,
                        })
                        .cloned()
                        .collect();
                    let d = format!(
                        "node {}: {what} {why}; the clients' control operations on {job} follow",
                        v.node
                    );
                    anomaly(r, "dispatch-outside", d, ops);
                }
            }
        }
    }
}

/// Every node holds the same jobs, twins and audit chain, and each chain verifies.
fn check_agreement(views: &[NodeView], r: &mut Report) {
    let Some(first) = views.first() else {
        return;
    };
    for v in views {
        if let Some(a) = &v.audit {
            if !a.ok {
                let d = format!("node {}: muster audit verify failed: {}", v.node, a.output);
                anomaly(r, "audit", d, vec![]);
            }
        }
    }
    for v in &views[1..] {
        for (id, job) in &first.jobs {
            match v.jobs.get(id) {
                Some(other) if other != job => {
                    let d = format!(
                        "job {id}: node {} has {job:?}, node {} has {other:?}",
                        first.node, v.node
                    );
                    anomaly(r, "divergence", d, vec![]);
                }
                None => {
                    let d = format!(
                        "job {id} is on node {} but not on node {}",
                        first.node, v.node
                    );
                    anomaly(r, "divergence", d, vec![]);
                }
                _ => {}
            }
        }
        for id in v.jobs.keys().filter(|id| !first.jobs.contains_key(*id)) {
            let d = format!(
                "job {id} is on node {} but not on node {}",
                v.node, first.node
            );
            anomaly(r, "divergence", d, vec![]);
        }
        if v.twins != first.twins {
            let d = format!(
                "twins differ: node {} has {:?}, node {} has {:?}",
                first.node, first.twins, v.node, v.twins
            );
            anomaly(r, "divergence", d, vec![]);
        }
        if let (Some(a), Some(b)) = (&first.audit, &v.audit) {
            if (a.last_seq, &a.head) != (b.last_seq, &b.head) {
                let d = format!(
                    "audit chains differ: node {} ends at seq {} head {}, node {} at seq {} head {}",
                    first.node, a.last_seq, a.head, v.node, b.last_seq, b.head
                );
                anomaly(r, "divergence", d, vec![]);
            }
        }
    }
}

/// Parses `ok: seqs A..=B (N records), chain head H` from `muster audit verify`.
pub fn parse_audit(ok: bool, output: &str) -> AuditView {
    let mut view = AuditView {
        ok,
        output: output.trim().to_string(),
        ..AuditView::default()
    };
    if let Some(line) = output.lines().find(|l| l.starts_with("ok: seqs ")) {
        if let Some(range) = line["ok: seqs ".len()..].split_whitespace().next() {
            if let Some((_, last)) = range.split_once("..=") {
                view.last_seq = last.parse().unwrap_or(0);
            }
        }
        if let Some((_, head)) = line.split_once("chain head ") {
            view.head = head.trim().to_string();
        }
    }
    view
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn op(id: u64, kind: OpKind, invoked: Micros, completed: Micros, outcome: Outcome) -> Op {
        Op {
            id,
            client: 0,
            node: 1,
            kind,
            invoked,
            completed,
            outcome,
        }
    }

    fn write(id: u64, key: &str, t: (Micros, Micros), outcome: Outcome) -> Op {
        let kind = OpKind::TwinWrite {
            device: "d".into(),
            key: key.into(),
        };
        op(id, kind, t.0, t.1, outcome)
    }

    fn read(id: u64, keys: &[&str], t: (Micros, Micros)) -> Op {
        let seen = Seen::Keys(keys.iter().map(|k| k.to_string()).collect());
        let kind = OpKind::ReadTwin { device: "d".into() };
        op(id, kind, t.0, t.1, Outcome::Ok(seen))
    }

    fn ok() -> Outcome {
        Outcome::Ok(Seen::Nothing)
    }

    fn job(status: &str, devices: &[(&str, &str)], stats: [u64; 7]) -> JobView {
        JobView {
            status: status.into(),
            run: 0,
            stats,
            devices: devices
                .iter()
                .map(|(d, s)| (d.to_string(), s.to_string()))
                .collect(),
            earlier: BTreeMap::new(),
        }
    }

    fn view(node: usize, keys: &[&str], version: u64) -> NodeView {
        let mut v = NodeView {
            node,
            ..NodeView::default()
        };
        v.twins.insert(
            "d".into(),
            TwinView {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                version,
            },
        );
        v.jobs.insert(
            "j".into(),
            job(
                "completed",
                &[("a", "succeeded"), ("b", "failed")],
                [2, 0, 0, 1, 1, 0, 0],
            ),
        );
        v.audit = Some(parse_audit(
            true,
            "ok: seqs 1..=40 (40 records), chain head abcd\n",
        ));
        v
    }

    fn versions() -> BTreeMap<String, u64> {
        [("d".to_string(), 1)].into_iter().collect()
    }

    fn create(id: u64, t: (Micros, Micros), outcome: Outcome) -> Op {
        op(id, OpKind::CreateJob { job: "j".into() }, t.0, t.1, outcome)
    }

    fn rules(r: &Report) -> Vec<&'static str> {
        r.anomalies.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn a_consistent_history_passes() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 20), ok()),
            write(2, "k2", (15, 40), Outcome::Unknown("timeout".into())),
            write(3, "k3", (16, 18), Outcome::Refused("invalid".into())),
            read(4, &["k1"], (21, 30)),
            read(5, &["k1", "k2"], (25, 45)),
            read(6, &["k1", "k2"], (50, 60)),
        ];
        let views = vec![view(1, &["k1", "k2"], 3), view(2, &["k1", "k2"], 3)];
        let r = check(&h, &views, &versions());
        assert!(r.is_valid(), "{r}");
        assert_eq!((r.acknowledged, r.refused, r.indeterminate), (5, 1, 1));
        assert_eq!(r.reads_checked, 3);
    }

    #[test]
    fn an_acknowledged_write_missing_on_one_node_is_lost() {
        let h = vec![create(0, (0, 5), ok()), write(1, "k1", (10, 20), ok())];
        let views = vec![view(1, &["k1"], 2), view(2, &[], 1)];
        let r = check(&h, &views, &versions());
        assert!(rules(&r).contains(&"lost-write"), "{r}");
        assert!(
            r.to_string().contains("tag k1 of d is missing on node 2"),
            "{r}"
        );
    }

    #[test]
    fn a_refused_write_that_took_effect_is_reported() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 20), Outcome::Refused("no".into())),
        ];
        let r = check(&h, &[view(1, &["k1"], 2)], &versions());
        assert_eq!(rules(&r), vec!["refused-applied"], "{r}");
    }

    #[test]
    fn a_key_nobody_wrote_is_a_phantom() {
        let h = vec![create(0, (0, 5), ok())];
        let r = check(&h, &[view(1, &["ghost"], 2)], &versions());
        assert_eq!(rules(&r), vec!["phantom"], "{r}");
    }

    #[test]
    fn a_version_that_grew_twice_for_one_write_is_applied_twice() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 20), Outcome::Unknown("timeout".into())),
        ];
        let r = check(&h, &[view(1, &["k1"], 3)], &versions());
        assert_eq!(rules(&r), vec!["applied-twice"], "{r}");
        assert_eq!(r.anomalies[0].ops.len(), 1);
    }

    #[test]
    fn a_read_missing_an_acknowledged_write_is_stale() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 20), ok()),
            read(2, &[], (21, 30)),
        ];
        let r = check(&h, &[view(1, &["k1"], 2)], &versions());
        assert_eq!(rules(&r), vec!["stale-read"], "{r}");
        let text = r.to_string();
        assert!(text.contains("op 1") && text.contains("op 2"), "{text}");
    }

    #[test]
    fn a_read_overlapping_the_write_may_miss_it() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 20), ok()),
            read(2, &[], (19, 30)),
        ];
        let r = check(&h, &[view(1, &["k1"], 2)], &versions());
        assert!(r.is_valid(), "{r}");
    }

    #[test]
    fn a_read_of_a_write_not_yet_invoked_is_from_the_future() {
        let h = vec![
            create(0, (0, 5), ok()),
            read(1, &["k1"], (6, 9)),
            write(2, "k1", (10, 20), ok()),
        ];
        let r = check(&h, &[view(1, &["k1"], 2)], &versions());
        assert_eq!(rules(&r), vec!["future-read"], "{r}");
    }

    #[test]
    fn a_later_read_seeing_less_is_not_monotonic() {
        let h = vec![
            create(0, (0, 5), ok()),
            write(1, "k1", (10, 50), Outcome::Unknown("timeout".into())),
            read(2, &["k1"], (11, 20)),
            read(3, &[], (21, 30)),
        ];
        let r = check(&h, &[view(1, &["k1"], 2)], &versions());
        assert_eq!(rules(&r), vec!["non-monotonic-read"], "{r}");
    }

    #[test]
    fn a_job_read_that_misses_an_acknowledged_creation_is_stale() {
        let h = vec![
            create(0, (0, 5), ok()),
            op(
                1,
                OpKind::ReadJob { job: "j".into() },
                6,
                7,
                Outcome::Ok(Seen::Job(false)),
            ),
        ];
        let r = check(&h, &[view(1, &[], 1)], &versions());
        assert_eq!(rules(&r), vec!["stale-read"], "{r}");
    }

    #[test]
    fn statistics_that_do_not_recount_and_devices_without_an_outcome_are_reported() {
        let h = vec![create(0, (0, 5), ok())];
        let mut v = view(1, &[], 1);
        v.jobs.insert(
            "j".into(),
            job(
                "completed",
                &[("a", "succeeded"), ("a", "running")],
                [2, 0, 0, 2, 0, 0, 0],
            ),
        );
        let r = check(&h, &[v], &versions());
        assert_eq!(
            rules(&r),
            vec!["duplicate-device", "no-final-outcome", "statistics"],
            "{r}"
        );
    }

    #[test]
    fn nodes_that_disagree_or_fail_verification_are_reported() {
        let h = vec![create(0, (0, 5), ok())];
        let a = view(1, &[], 1);
        let mut b = view(2, &[], 1);
        b.audit = Some(parse_audit(
            true,
            "ok: seqs 1..=41 (41 records), chain head ef01",
        ));
        let mut c = view(3, &[], 1);
        c.audit = Some(parse_audit(false, "verification failed at seq 7: bad hash"));
        let r = check(&h, &[a, b, c], &versions());
        assert_eq!(rules(&r), vec!["audit", "divergence", "divergence"], "{r}");
    }

    fn log(events: Vec<LogEvent>) -> Vec<(u64, LogEvent)> {
        (1..).zip(events).collect()
    }

    fn dispatched(device: &str, run: u32) -> LogEvent {
        LogEvent::Dispatched {
            job: "j".into(),
            run,
            device: device.into(),
        }
    }

    fn run_started(run: u32) -> LogEvent {
        LogEvent::RunStarted {
            job: "j".into(),
            run,
            batches: vec![vec!["a".into(), "b".into()], vec!["c".into()]],
        }
    }

    fn batch(batch: u32) -> LogEvent {
        LogEvent::BatchStarted {
            job: "j".into(),
            run: 0,
            batch,
        }
    }

    #[test]
    fn dispatches_within_started_batches_of_a_running_job_pass() {
        let h = vec![create(0, (0, 5), ok())];
        let mut v = view(1, &[], 1);
        v.log = log(vec![
            run_started(0),
            batch(0),
            dispatched("a", 0),
            LogEvent::Stopped { job: "j".into() },
            LogEvent::Resumed { job: "j".into() },
            dispatched("b", 0),
            batch(1),
            dispatched("c", 0),
            LogEvent::Ended { job: "j".into() },
            run_started(1),
            LogEvent::BatchStarted {
                job: "j".into(),
                run: 1,
                batch: 0,
            },
            dispatched("a", 1),
        ]);
        let r = check(&h, &[v], &versions());
        assert!(r.is_valid(), "{r}");
    }

    #[test]
    fn a_dispatch_while_stopped_is_reported_with_the_log_and_the_stop() {
        let stop = op(1, OpKind::StopJob { job: "j".into() }, 6, 9, ok());
        let h = vec![create(0, (0, 5), ok()), stop];
        let mut v = view(1, &[], 1);
        v.log = log(vec![
            run_started(0),
            batch(0),
            LogEvent::Stopped { job: "j".into() },
            dispatched("a", 0),
        ]);
        let mut w = v.clone();
        w.node = 2;
        let r = check(&h, &[v, w], &versions());
        // The second node's copy of the same log is not reported again.
        assert_eq!(rules(&r), vec!["dispatch-outside"], "{r}");
        let text = r.to_string();
        assert!(
            text.contains("node 1: seq 4 DeviceDispatched job j run 0 device a while the job was stopped (JobStopped at seq 3, no JobResumed since)"),
            "{text}"
        );
        assert!(text.contains("StopJob"), "the stop op is shown: {text}");
    }

    #[test]
    fn dispatches_outside_the_started_batches_or_run_or_after_the_end_are_reported() {
        let h = vec![create(0, (0, 5), ok())];
        let mut v = view(1, &[], 1);
        v.log = log(vec![
            run_started(0),
            dispatched("a", 0),
            batch(0),
            dispatched("c", 0),
            dispatched("a", 1),
            LogEvent::Ended { job: "j".into() },
            dispatched("b", 0),
        ]);
        let r = check(&h, &[v], &versions());
        let text = r.to_string();
        assert_eq!(rules(&r), vec!["dispatch-outside"; 4], "{text}");
        for expected in [
            "seq 2 DeviceDispatched job j run 0 device a outside its batch: the device is in batch 0 and no batch of the run has started",
            "seq 4 DeviceDispatched job j run 0 device c outside its batch: the device is in batch 1, batches 0..=0 have started",
            "seq 5 DeviceDispatched job j run 1 device a but the job's current run is 0",
            "seq 7 DeviceDispatched job j run 0 device b after the job ended (seq 6)",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
    }

    #[test]
    fn an_earlier_run_with_a_device_not_final_is_reported() {
        let h = vec![create(0, (0, 5), ok())];
        let mut v = view(1, &[], 1);
        if let Some(j) = v.jobs.get_mut("j") {
            j.run = 1;
            j.earlier.insert(
                0,
                vec![
                    ("a".into(), "failed".into()),
                    ("b".into(), "running".into()),
                ],
            );
        }
        let r = check(&h, &[v], &versions());
        assert_eq!(rules(&r), vec!["no-final-outcome"], "{r}");
        assert!(
            r.to_string()
                .contains("device b of its earlier run 0 is running"),
            "{r}"
        );
    }

    #[test]
    fn the_audit_line_parses() {
        let a = parse_audit(
            true,
            "note: x\nok: seqs 1..=123 (123 records), chain head 00ff\n",
        );
        assert_eq!((a.last_seq, a.head.as_str()), (123, "00ff"));
    }
}
