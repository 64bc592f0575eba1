//! The leader's dispatch loop: the core's [`Action`]s in, MQTT traffic out, outcomes proposed
//! back.
//!
//! One task owns all of the dispatcher's memory (no locks): it reacts to device messages, state
//! updates, finished proposals and timers. Proposals run as separate tasks so a slow Raft commit
//! never holds up reading answers; broker connections run as separate tasks (see `link`).
//!
//! What this process remembers is only an optimisation. Everything that matters (which attempts
//! are in flight, their deadlines, what was answered) is in the replicated state, so a new leader,
//! or this one after a reconnect, re-derives it: the core lists every attempt in flight as
//! `Action::Send`, and the dispatcher (re)sends those it has not sent on its current connection.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use muster_domain::job::Run;
use muster_domain::push::{DesiredPush, DesiredSent};
use muster_domain::{
    actions_with, send_requests, Action, ActionOptions, Command, ConnectionState, DeviceResult,
    FailureReason, InvokeRequest, MethodInvocation, MethodOutcome, Outcome, PropertyReport,
    SendRequest,
};
use muster_types::{DeviceId, InvocationId, JobId, RunId};
use rumqttc::QoS;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::batch::{RegistryBatch, RegistryBatcher, ResultBatcher};
use crate::host::{Host, HostError, Update};
use crate::link::{Link, LinkEvent};
use crate::protocol::{self, Inbound};
use crate::{DispatchConfig, DispatchError};

/// The target of spans for the trace exporter (the node's `muster_cluster::trace::TARGET`;
/// `dispatch` sits below `cluster`): disabled, and free, unless traces are exported.
const TRACE: &str = "muster_trace";

/// How long to wait before retrying after a failed proposal.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Device messages handled per turn of the loop before other work gets a chance.
const INBOUND_PER_TURN: usize = 4096;
/// How often the attempts in flight are listed again (`Action::Send`) even when nothing asks
/// for it, so attempts that ended without an answer here (timed out, cancelled) free their slots.
const FULL_RECOMPUTE_EVERY: Duration = Duration::from_secs(1);
/// A recomputation may take at most 1/(1 + this) of the loop's time: the pause before the next
/// one is at least this many times as long as the last one took. Computing actions is linear in
/// the ready devices of the running jobs (100,000 in a big batch), so a fixed 5 ms pause would
/// let it starve the answers.
const RECOMPUTE_PAUSE_FACTOR: u32 = 4;

/// The leader's worker pool. See [`Dispatcher::run`].
#[derive(Debug)]
pub struct Dispatcher;

impl Dispatcher {
    /// Carries out the core's actions until `shutdown` resolves or the host's update stream ends.
    ///
    /// Start it when this node becomes the leader and resolve `shutdown` when it stops being the
    /// leader. It returns an error only for a configuration it cannot use (a bad broker URL);
    /// broker outages are retried for ever with backoff.
    pub async fn run<H: Host>(
        host: H,
        config: DispatchConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DispatchError> {
        Self::run_with_metrics(host, config, muster_metrics::Metrics::new(), shutdown).await
    }

    /// [`run`](Self::run), recording what it does into the node's `metrics`.
    pub async fn run_with_metrics<H: Host>(
        host: H,
        config: DispatchConfig,
        metrics: muster_metrics::Metrics,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DispatchError> {
        if config.brokers.is_empty() {
            return Err(DispatchError::NoBrokers);
        }
        // Subscribe before reading the baseline, so no update falls in between.
        let mut updates = host.updates();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let endpoints = config.endpoints()?;
        let login = config.login()?;
        let mut links = Vec::with_capacity(endpoints.len());
        for (i, endpoint) in endpoints.iter().enumerate() {
            metrics.dispatch().broker_up(i, false);
            match Link::start(
                i,
                endpoint,
                login.as_ref(),
                &config,
                tx.clone(),
                metrics.clone(),
            ) {
                Ok(l) => links.push(l),
                Err(e) => {
                    for l in links {
                        l.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        drop(tx);
        let mut engine = Engine::new(host, config, links, metrics);
        info!(
            brokers = engine.links.len(),
            max_in_flight = engine.cfg.max_in_flight,
            "dispatcher started"
        );

        tokio::pin!(shutdown);
        loop {
            let tick = engine.next_tick();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = engine.tasks.join_next(), if !engine.tasks.is_empty() => {
                    match done {
                        Ok(done) => engine.on_done(done),
                        Err(e) => error!(error = %e, "a proposal task failed"),
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    engine.on_link(ev);
                    let mut n = 1;
                    while n < INBOUND_PER_TURN {
                        let Ok(ev) = rx.try_recv() else { break };
                        engine.on_link(ev);
                        n += 1;
                    }
                }
                u = updates.next() => {
                    let Some(u) = u else {
                        info!("host update stream ended; dispatcher stops");
                        break;
                    };
                    engine.on_update(u);
                }
                _ = sleep_until(tick.unwrap_or_else(Instant::now)), if tick.is_some() => {}
            }
            engine.turn();
            engine
                .metrics
                .dispatch()
                .in_flight
                .set(i64::try_from(engine.flights.len()).unwrap_or(i64::MAX));
        }
        engine.finish().await;
        info!("dispatcher stopped");
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlightState {
    /// Known to be in flight, not (or no longer) on the wire of the current connection.
    Unsent,
    /// Published; waiting for the answer to `step`.
    Sent,
    /// Answered (or failed here); the outcome is batched or being proposed.
    Answered,
}

/// An attempt in flight, as this process knows it.
#[derive(Debug)]
struct Flight {
    job: JobId,
    run: RunId,
    device: DeviceId,
    attempt: u32,
    broker: usize,
    methods: Arc<[MethodInvocation]>,
    /// The method being called: methods run one after another.
    step: usize,
    state: FlightState,
    /// The action computation that last listed it; unlisted attempts are forgotten.
    seen: u64,
}

/// A direct method sent to its device, as this process knows it. Every recomputation lists the
/// pending ones (`Action::Invoke`); one no longer listed has ended and is forgotten.
#[derive(Debug)]
struct Call {
    id: InvocationId,
    broker: usize,
    method: String,
    payload: Value,
    state: FlightState,
    /// The recomputation that last listed it.
    seen: u64,
}

/// What a proposal task reports back.
#[derive(Debug)]
enum Done {
    /// A direct method's answer (or failure to send) was proposed.
    Call {
        key: Key,
        result: Result<(), HostError>,
    },
    Advance(Result<(), HostError>),
    /// Desired pushes were published and their `MarkDesiredSent` proposed.
    PushedDesired {
        devices: Vec<DeviceId>,
        result: Result<(), HostError>,
    },
    Dispatched {
        job: JobId,
        run: RunId,
        devices: Vec<DeviceId>,
        result: Result<(), HostError>,
    },
    Results {
        /// The attempts the command answered.
        keys: Vec<Key>,
        result: Result<(), HostError>,
    },
    Registry {
        /// What was proposed, to queue again if it was not committed.
        batch: RegistryBatch,
        /// Every device of the batch as cut (before pruning), to release.
        devices: Vec<DeviceId>,
        result: Result<(), HostError>,
    },
}

/// (device id, rid): an attempt on the wire. A device may be in several jobs at once; the rid
/// names the job, run and attempt.
type Key = (String, String);

struct Engine<H: Host> {
    host: H,
    cfg: DispatchConfig,
    links: Vec<Link>,
    ready: Vec<bool>,
    flights: HashMap<Key, Flight>,
    generation: u64,
    /// Direct methods on the wire, by (device, rid = invocation id); the rid has no `:`, so it
    /// never equals a job attempt's.
    calls: HashMap<Key, Call>,
    /// Counts recomputations (each lists every pending call).
    call_generation: u64,
    /// Devices in `MarkDispatched` proposals under way (they will need slots).
    reserved: usize,
    dispatching: HashSet<JobId>,
    advancing: bool,
    batcher: ResultBatcher,
    result_proposals: usize,
    /// Presence and reported properties waiting to be proposed as batches.
    registry: RegistryBatcher,
    registry_proposals: usize,
    /// Devices whose desired push was published and whose `MarkDesiredSent` is under way.
    pushing: HashSet<DeviceId>,
    dirty: bool,
    last_recompute: Option<Instant>,
    /// The pause after the last recomputation before the next (see `RECOMPUTE_PAUSE_FACTOR`).
    recompute_pause: Duration,
    /// The next recomputation must list the attempts in flight (`Action::Send`): at start, after
    /// missed updates, a reconnect or a failed results proposal.
    full_due: bool,
    last_full: Option<Instant>,
    /// Attempts whose request could not be queued (the connection's queue was full), to send
    /// again on the next recomputation.
    resend: Vec<Key>,
    wake_at: Option<Instant>,
    tasks: JoinSet<Done>,
    metrics: muster_metrics::Metrics,
}

impl<H: Host> Engine<H> {
    fn new(
        host: H,
        cfg: DispatchConfig,
        links: Vec<Link>,
        metrics: muster_metrics::Metrics,
    ) -> Self {
        let batcher = ResultBatcher::new(cfg.result_batch_size, cfg.batch_interval());
        let registry = RegistryBatcher::new(cfg.registry_batch_size, cfg.batch_interval());
        let n = links.len();
        Engine {
            host,
            cfg,
            links,
            ready: vec![false; n],
            flights: HashMap::new(),
            generation: 0,
            calls: HashMap::new(),
            call_generation: 0,
            reserved: 0,
            dispatching: HashSet::new(),
            advancing: false,
            batcher,
            result_proposals: 0,
            registry,
            registry_proposals: 0,
            pushing: HashSet::new(),
            dirty: true,
            last_recompute: None,
            recompute_pause: Duration::ZERO,
            full_due: true,
            last_full: None,
            resend: Vec::new(),
            wake_at: None,
            tasks: JoinSet::new(),
            metrics,
        }
    }

    /// When the loop must wake up by itself: the next recompute, timer or batch cut.
    fn next_tick(&self) -> Option<Instant> {
        let recompute = self.dirty.then(|| {
            self.last_recompute
                .map_or_else(Instant::now, |t| t + self.recompute_gap())
        });
        [
            recompute,
            self.wake_at,
            self.batcher.deadline(),
            self.registry.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Work done after every event: cut due batches, start proposals, recompute if due.
    fn turn(&mut self) {
        let now = Instant::now();
        self.batcher.tick(now, false);
        self.pump();
        if self.wake_at.is_some_and(|t| t <= now) {
            self.wake_at = None;
            self.dirty = true;
        }
        let due = self
            .last_recompute
            .is_none_or(|t| t + self.recompute_gap() <= now);
        if self.dirty && due {
            self.recompute();
            self.pump();
        }
    }

    /// The shortest pause between two recomputations: the configured interval, stretched when
    /// recomputing is expensive.
    fn recompute_gap(&self) -> Duration {
        self.cfg
            .recompute_interval()
            .max(self.recompute_pause * RECOMPUTE_PAUSE_FACTOR)
    }

    /// Computes the core's actions and carries them out. Most recomputations leave out the
    /// attempts in flight (this process sent them and forgets them when their answers are
    /// committed); a full one lists them, sends what is not on the wire, and forgets what the
    /// state no longer lists.
    fn recompute(&mut self) {
        let started = Instant::now();
        self.dirty = false;
        let full = self.full_due
            || self
                .last_full
                .is_none_or(|t| t + FULL_RECOMPUTE_EVERY <= started);
        if full {
            self.full_due = false;
            self.last_full = Some(started);
        }
        let at = self.host.now();
        let free = self
            .cfg
            .max_in_flight
            .saturating_sub(self.flights.len() + self.reserved);
        let opts = ActionOptions {
            max_dispatch: free,
            sends: full,
        };
        let list = self.host.read(|s, _| actions_with(s, at, opts));
        if full {
            self.generation += 1;
        }
        let generation = self.generation;
        self.call_generation += 1;
        let call_generation = self.call_generation;
        let mut remaining = free;
        let mut wake = None;
        for a in list {
            match a {
                Action::Advance => {
                    if !self.advancing {
                        self.advancing = true;
                        let host = self.host.clone();
                        self.tasks.spawn(async move {
                            Done::Advance(host.propose(Command::Advance { at: host.now() }).await)
                        });
                    }
                }
                Action::WakeAt(t) => wake = Some(t),
                Action::Dispatch { job, run, devices } => {
                    if remaining == 0 || self.dispatching.contains(&job) {
                        continue;
                    }
                    let n = self.links.len();
                    let mut devices: Vec<DeviceId> = devices
                        .into_iter()
                        .filter(|d| self.ready[protocol::broker_index(d.as_str(), n)])
                        .collect();
                    devices.truncate(remaining);
                    if devices.is_empty() {
                        continue;
                    }
                    remaining -= devices.len();
                    self.reserved += devices.len();
                    self.dispatching.insert(job.clone());
                    let host = self.host.clone();
                    let span = self.host.adopt_span(
                        &job,
                        info_span!(target: TRACE, "dispatch.mark_dispatched", job = %job, devices = devices.len()),
                    );
                    self.tasks.spawn(
                        async move {
                            let cmd = Command::MarkDispatched {
                                job: job.clone(),
                                run,
                                devices: devices.clone(),
                                at: host.now(),
                            };
                            let result = host.propose(cmd).await;
                            Done::Dispatched {
                                job,
                                run,
                                devices,
                                result,
                            }
                        }
                        .instrument(span),
                    );
                }
                Action::Send(req) => self.track(req, generation),
                Action::Invoke(req) => self.track_call(req, call_generation),
                Action::PushDesired(pushes) => self.push_all(pushes),
            }
        }
        // Calls no longer listed have ended (answered, timed out).
        self.calls.retain(|_, c| c.seen == call_generation);
        if full {
            // Attempts the state no longer lists have ended (answered, timed out, cancelled).
            let mut unanswered: u64 = 0;
            self.flights.retain(|_, f| {
                let keep = f.seen == generation;
                if !keep && f.state == FlightState::Sent {
                    unanswered += 1;
                }
                keep
            });
            self.metrics.dispatch().timeouts.inc_by(unanswered);
        }
        for key in std::mem::take(&mut self.resend) {
            if self
                .flights
                .get(&key)
                .is_some_and(|f| f.state == FlightState::Unsent)
            {
                self.send(&key);
            }
        }
        self.wake_at = wake.map(|t| {
            let ms = t.millis().saturating_sub(at.millis()).max(0) as u64;
            Instant::now() + Duration::from_millis(ms)
        });
        self.last_recompute = Some(Instant::now());
        self.recompute_pause = started.elapsed();
    }

    /// Takes note of an attempt in flight and sends it unless it is already on the wire.
    fn track(&mut self, req: SendRequest, generation: u64) {
        let key: Key = (req.device.as_str().to_owned(), req.rid.clone());
        if let Some(f) = self.flights.get_mut(&key) {
            f.seen = generation;
            if f.state == FlightState::Unsent {
                self.send(&key);
            }
            return;
        }
        let broker = protocol::broker_index(req.device.as_str(), self.links.len());
        let unsendable = if req.methods.is_empty() {
            Some("the job has no method to call".to_string())
        } else if !protocol::topic_safe(&req.rid) {
            Some(format!(
                "request id {:?} holds an MQTT wildcard ('+' or '#'); rename the job",
                req.rid
            ))
        } else {
            req.methods
                .iter()
                .find(|m| !protocol::topic_safe(&m.name))
                .map(|m| format!("method name {:?} cannot appear in an MQTT topic", m.name))
        };
        if req.attempt > 1 {
            self.metrics.dispatch().retries.inc();
        }
        let mut flight = Flight {
            job: req.job,
            run: req.run,
            device: req.device,
            attempt: req.attempt,
            broker,
            methods: req.methods,
            step: 0,
            state: FlightState::Unsent,
            seen: generation,
        };
        if let Some(message) = unsendable {
            flight.state = FlightState::Answered;
            self.batcher.push(
                DeviceResult {
                    job: flight.job.clone(),
                    run: flight.run,
                    device: flight.device.clone(),
                    attempt: flight.attempt,
                    outcome: Outcome::Failed(FailureReason::DispatchFailed { message }),
                },
                Instant::now(),
            );
            self.flights.insert(key, flight);
            return;
        }
        self.flights.insert(key.clone(), flight);
        self.send(&key);
    }

    /// Takes note of a direct method sent to its device and publishes it unless it is already
    /// on the wire of the current connection.
    fn track_call(&mut self, req: InvokeRequest, generation: u64) {
        let key: Key = (req.device.as_str().to_owned(), req.id.as_str().to_owned());
        if let Some(c) = self.calls.get_mut(&key) {
            c.seen = generation;
            if c.state == FlightState::Unsent {
                self.send_call(&key);
            }
            return;
        }
        let call = Call {
            id: req.id,
            broker: protocol::broker_index(req.device.as_str(), self.links.len()),
            method: req.method,
            payload: req.payload,
            state: FlightState::Unsent,
            seen: generation,
        };
        self.calls.insert(key.clone(), call);
        if !protocol::topic_safe(&key.1) || !protocol::topic_safe(&self.calls[&key].method) {
            // The core refuses such names; a log from elsewhere could still hold one.
            self.answer_call(
                &key,
                MethodOutcome::Failed(FailureReason::DispatchFailed {
                    message: "the method name cannot appear in an MQTT topic".into(),
                }),
            );
            return;
        }
        self.send_call(&key);
    }

    /// Publishes a direct method, if its broker is connected; otherwise (or if the connection's
    /// queue is full) it stays unsent and a later recomputation sends it.
    fn send_call(&mut self, key: &Key) {
        let Some(c) = self.calls.get_mut(key) else {
            return;
        };
        if !self.ready[c.broker] {
            c.state = FlightState::Unsent;
            return;
        }
        let topic = protocol::method_request_topic(&key.0, &c.method, &key.1);
        let payload = match serde_json::to_vec(&c.payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "method payload did not serialise");
                return;
            }
        };
        match self.links[c.broker]
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => c.state = FlightState::Sent,
            Err(e) => {
                debug!(error = %e, "direct method not queued; will resend");
                c.state = FlightState::Unsent;
                self.dirty = true;
            }
        }
    }

    /// Proposes a direct method's outcome at once: a caller is waiting for it, so it is not
    /// held back to fill a batch.
    fn answer_call(&mut self, key: &Key, outcome: MethodOutcome) {
        let Some(c) = self.calls.get_mut(key) else {
            return;
        };
        c.state = FlightState::Answered;
        let cmd = Command::RecordMethodResponse {
            id: c.id.clone(),
            outcome,
            at: self.host.now(),
        };
        let host = self.host.clone();
        let key = key.clone();
        self.tasks.spawn(async move {
            let result = host.propose(cmd).await;
            Done::Call { key, result }
        });
    }

    /// Publishes the current method of an attempt, if its broker is connected. Never waits: if
    /// the connection's queue is full the attempt stays unsent and a later pass retries, so a
    /// stalled broker cannot stall answers arriving over the others.
    fn send(&mut self, key: &Key) {
        let Some(f) = self.flights.get_mut(key) else {
            return;
        };
        if !self.ready[f.broker] {
            // Sent when the connection is back (`LinkEvent::Ready` asks for a full recompute).
            f.state = FlightState::Unsent;
            return;
        }
        let Some(m) = f.methods.get(f.step) else {
            return;
        };
        let span = self.host.adopt_span(
            &f.job,
            info_span!(target: TRACE, "mqtt.publish", otel.kind = "producer", device = %key.0, method = %m.name, rid = %key.1),
        );
        let _publishing = span.enter();
        let topic = protocol::method_request_topic(&key.0, &m.name, &key.1);
        let payload = match serde_json::to_vec(&m.payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "method payload did not serialise");
                return;
            }
        };
        match self.links[f.broker]
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                f.state = FlightState::Sent;
                self.metrics.dispatch().requests_sent.inc();
            }
            Err(e) => {
                debug!(error = %e, "request not queued; will resend");
                f.state = FlightState::Unsent;
                self.resend.push(key.clone());
                self.dirty = true;
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Ready(i) => {
                if let Some(r) = self.ready.get_mut(i) {
                    *r = true;
                }
                self.metrics.dispatch().broker_up(i, true);
                // The old session, and whatever it carried, is gone: send again.
                for f in self.flights.values_mut() {
                    if f.broker == i && f.state == FlightState::Sent {
                        f.state = FlightState::Unsent;
                    }
                }
                for c in self.calls.values_mut() {
                    if c.broker == i && c.state == FlightState::Sent {
                        c.state = FlightState::Unsent;
                    }
                }
                self.full_due = true;
                self.dirty = true;
            }
            LinkEvent::Down(i) => {
                if let Some(r) = self.ready.get_mut(i) {
                    *r = false;
                }
                self.metrics.dispatch().broker_up(i, false);
            }
            LinkEvent::Message(m) => self.on_message(m),
        }
    }

    fn on_message(&mut self, m: Inbound) {
        match m {
            Inbound::Reply {
                device,
                status,
                rid,
                payload,
            } => {
                let key: Key = (device, rid);
                if let Some(c) = self.calls.get(&key) {
                    if c.state != FlightState::Answered {
                        let outcome = MethodOutcome::Responded {
                            status,
                            payload: payload.into(),
                        };
                        self.answer_call(&key, outcome);
                    }
                    return;
                }
                let Some(f) = self.flights.get_mut(&key) else {
                    // Not ours: another leader's, late, or for a device of another deployment
                    // sharing the broker.
                    return;
                };
                if f.state == FlightState::Answered {
                    return; // a duplicate
                }
                self.metrics.dispatch().answer(status);
                // A point in the job's trace: the answer arrived (it is recorded in a batch).
                drop(
                    self.host
                        .adopt_span(
                            &f.job,
                            info_span!(target: TRACE, "mqtt.answer", otel.kind = "consumer", device = %f.device, status),
                        )
                        .entered(),
                );
                let ok = (200..300).contains(&status);
                if ok && f.step + 1 < f.methods.len() {
                    f.step += 1;
                    f.state = FlightState::Unsent;
                    self.send(&key);
                    return;
                }
                f.state = FlightState::Answered;
                let r = DeviceResult {
                    job: f.job.clone(),
                    run: f.run,
                    device: f.device.clone(),
                    attempt: f.attempt,
                    outcome: Outcome::Responded {
                        status,
                        payload: payload.into(),
                    },
                };
                self.batcher.push(r, Instant::now());
            }
            Inbound::Presence { device, online } => {
                if let Ok(d) = DeviceId::new(device) {
                    self.registry.push_presence(d, online, Instant::now());
                }
            }
            Inbound::Reported { device, patch } => {
                let (Ok(device), Some(patch)) = (DeviceId::new(device), patch) else {
                    return;
                };
                self.registry
                    .push_report(PropertyReport { device, patch }, Instant::now());
            }
        }
    }

    fn on_update(&mut self, u: Update) {
        self.dirty = true;
        match u {
            Update::Resync => {
                self.full_due = true;
            }
            // Desired patches are pushed from state (`Action::PushDesired`), not from the feed.
            Update::Applied => {}
        }
    }

    /// Publishes a desired patch; false if it could not be queued (broker down, queue full), so
    /// it is not recorded as sent and the next recomputation lists it again.
    fn push_desired(&mut self, device: &DeviceId, version: u64, patch: &Value) -> bool {
        let broker = protocol::broker_index(device.as_str(), self.links.len());
        if !self.ready[broker] {
            debug!(%device, version, "broker down; desired patch not pushed");
            return false;
        }
        let payload = match serde_json::to_vec(patch) {
            Ok(p) => p,
            Err(_) => return false,
        };
        let topic = protocol::desired_patch_topic(device.as_str(), version);
        if let Err(e) =
            self.links[broker]
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            warn!(%device, version, error = %e, "desired patch not queued (connection queue full)");
            return false;
        }
        true
    }

    /// Publishes the pushes `actions` listed that are not already being recorded, then proposes
    /// `MarkDesiredSent` for those published.
    fn push_all(&mut self, pushes: Vec<DesiredPush>) {
        let mut sent = Vec::new();
        for p in pushes {
            if self.pushing.contains(&p.device) {
                continue;
            }
            if self.push_desired(&p.device, p.version, &p.patch) {
                self.pushing.insert(p.device.clone());
                sent.push(DesiredSent {
                    device: p.device,
                    version: p.version,
                });
            }
        }
        if sent.is_empty() {
            return;
        }
        let host = self.host.clone();
        self.tasks.spawn(async move {
            let devices = sent.iter().map(|p| p.device.clone()).collect();
            let result = host
                .propose(Command::MarkDesiredSent {
                    pushes: sent,
                    at: host.now(),
                })
                .await;
            Done::PushedDesired { devices, result }
        });
    }

    /// Drops what would change nothing (unregistered devices, presence the registry already
    /// shows), so a dispatcher restarting under a fleet's retained presence proposes nothing.
    /// The devices of the batch have no other batch of its kind under way, so the state read
    /// here already holds this dispatcher's earlier changes to them.
    fn prune(&self, batch: RegistryBatch) -> RegistryBatch {
        self.host.read(|s, _| match batch {
            RegistryBatch::Presence(changes) => RegistryBatch::Presence(
                changes
                    .into_iter()
                    .filter(|c| {
                        s.registry.devices.get(&c.device).is_some_and(|d| {
                            d.connection != ConnectionState::from_connected(c.connected)
                        })
                    })
                    .collect(),
            ),
            RegistryBatch::Reports(reports) => RegistryBatch::Reports(
                reports
                    .into_iter()
                    .filter(|r| s.registry.devices.contains_key(&r.device))
                    .collect(),
            ),
        })
    }

    /// Starts the proposals there are slots for.
    fn pump(&mut self) {
        while self.result_proposals < self.cfg.max_result_proposals.max(1) {
            let Some(batch) = self.batcher.next_ready() else {
                break;
            };
            self.result_proposals += 1;
            let host = self.host.clone();
            // In the trace of the first result's job (a batch may hold answers of several).
            let span = match batch.first() {
                Some(r) => self.host.adopt_span(
                    &r.job,
                    info_span!(target: TRACE, "dispatch.record_results", results = batch.len()),
                ),
                None => tracing::Span::none(),
            };
            // The keys, not a copy of the results (their response bodies), come back.
            let keys: Vec<Key> = batch
                .iter()
                .map(|r| {
                    (
                        r.device.as_str().to_owned(),
                        Run::rid(&r.job, r.run, r.attempt),
                    )
                })
                .collect();
            self.tasks.spawn(
                async move {
                    let cmd = Command::RecordDeviceResults {
                        results: batch,
                        at: host.now(),
                    };
                    let result = host.propose(cmd).await;
                    Done::Results { keys, result }
                }
                .instrument(span),
            );
        }
        // Presence and reported properties: a few batches under way at once; a device waits for
        // its previous batch of the same kind (`RegistryBatcher`), which keeps its order.
        let now_i = Instant::now();
        if !self.registry.due(now_i) {
            return;
        }
        while self.registry_proposals < self.cfg.max_registry_proposals.max(1) {
            let Some(batch) = self.registry.cut() else {
                break;
            };
            let presence = batch.is_presence();
            let devices = batch.devices();
            let batch = self.prune(batch);
            let cmd = match &batch {
                RegistryBatch::Presence(changes) if !changes.is_empty() => {
                    Command::SetConnections {
                        changes: changes.clone(),
                        at: self.host.now(),
                    }
                }
                RegistryBatch::Reports(reports) if !reports.is_empty() => {
                    Command::ReportPropertiesBatch {
                        reports: reports.clone(),
                        at: self.host.now(),
                    }
                }
                _ => {
                    self.registry.done(presence, &devices);
                    continue;
                }
            };
            self.registry_proposals += 1;
            let host = self.host.clone();
            self.tasks.spawn(async move {
                let result = host.propose(cmd).await;
                Done::Registry {
                    batch,
                    devices,
                    result,
                }
            });
        }
        self.registry.rearm(now_i);
    }

    fn on_done(&mut self, done: Done) {
        self.dirty = true;
        match done {
            Done::Call { key, result } => match result {
                Ok(()) => {
                    self.calls.remove(&key);
                }
                Err(HostError::Rejected(why)) => {
                    // Cannot happen with today's core (answers are never refused); the
                    // invocation's deadline ends it if it ever does.
                    error!(rid = %key.1, %why, "direct method answer rejected");
                }
                Err(e) => {
                    // Send again: the device answers a repeated rid from its cache.
                    warn!(rid = %key.1, error = %e, "direct method answer not committed; resending");
                    if let Some(c) = self.calls.get_mut(&key) {
                        c.state = FlightState::Unsent;
                    }
                    self.retry_soon();
                }
            },
            Done::Advance(result) => {
                self.advancing = false;
                if let Err(e) = result {
                    warn!(error = %e, "Advance not committed; retrying");
                    self.retry_soon();
                }
            }
            Done::PushedDesired { devices, result } => {
                for d in &devices {
                    self.pushing.remove(d);
                }
                if let Err(e) = result {
                    warn!(error = %e, "MarkDesiredSent not committed; pushing again");
                    self.retry_soon();
                }
            }
            Done::Dispatched {
                job,
                run,
                devices,
                result,
            } => {
                self.reserved = self.reserved.saturating_sub(devices.len());
                self.dispatching.remove(&job);
                match result {
                    Ok(()) => {
                        let reqs: Vec<SendRequest> =
                            self.host.read(|s, _| send_requests(s, &job, run, &devices));
                        let generation = self.generation;
                        for req in reqs {
                            self.track(req, generation);
                        }
                    }
                    Err(e) => {
                        warn!(%job, error = %e, "MarkDispatched not committed; retrying");
                        self.retry_soon();
                    }
                }
            }
            Done::Results { keys, result } => {
                self.result_proposals = self.result_proposals.saturating_sub(1);
                match result {
                    Ok(()) => {
                        // Recorded: those attempts have ended (a retry is a new attempt, which
                        // comes back as a Dispatch).
                        for key in &keys {
                            self.flights.remove(key);
                        }
                    }
                    Err(HostError::Rejected(why)) => {
                        // Cannot happen with today's core (results are never refused); the
                        // devices' deadlines decide their fate if it ever does.
                        error!(results = keys.len(), %why, "device results rejected");
                    }
                    Err(e) => {
                        // Send again: the device answers a repeated rid from its cache, and the
                        // answer comes back through the normal path.
                        warn!(results = keys.len(), error = %e, "device results not committed; resending");
                        for key in &keys {
                            if let Some(f) = self.flights.get_mut(key) {
                                f.state = FlightState::Unsent;
                            }
                        }
                        self.full_due = true;
                        self.retry_soon();
                    }
                }
            }
            Done::Registry {
                batch,
                devices,
                result,
            } => {
                self.registry_proposals = self.registry_proposals.saturating_sub(1);
                let presence = batch.is_presence();
                match result {
                    Ok(()) => {}
                    Err(HostError::Rejected(why)) => {
                        // Cannot happen with today's core (batches skip what they cannot use).
                        error!(devices = devices.len(), %why, "registry batch rejected");
                    }
                    Err(e) => {
                        warn!(devices = devices.len(), error = %e, "registry batch not committed; retrying");
                        // Back at the front, before anything that arrived since for these
                        // devices (which waited for this batch), so the order holds.
                        self.registry.requeue(batch, Instant::now());
                        self.retry_soon();
                    }
                }
                self.registry.done(presence, &devices);
            }
        }
    }

    fn retry_soon(&mut self) {
        let t = Instant::now() + RETRY_AFTER;
        self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
    }

    /// Proposes the answers still held (best effort, briefly) and closes the connections.
    async fn finish(mut self) {
        self.batcher.tick(Instant::now(), true);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.batcher.is_empty() || self.result_proposals > 0 {
            self.pump();
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(Done::Results { .. }))) => {
                    self.result_proposals = self.result_proposals.saturating_sub(1);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
        let dispatch = self.metrics.dispatch();
        dispatch.in_flight.set(0);
        for (i, l) in self.links.into_iter().enumerate() {
            dispatch.broker_up(i, false);
            l.stop().await;
        }
    }
}
