//! One MQTT connection per broker, each driven by its own task.
//!
//! The task only moves packets: it parses what devices publish and hands it to the dispatcher
//! over an unbounded channel, so it never waits on the dispatcher (which may itself be waiting
//! for room in this connection's request queue; a bounded channel here could deadlock the two).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_mqtt::{Endpoint, Secret};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::protocol::{self, Inbound};
use crate::{DispatchConfig, DispatchError};

/// The largest remaining length an MQTT 3.1.1 fixed header can encode (256 MiB - 1).
pub(crate) const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// What a connection tells the dispatcher.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Subscribed on a fresh session: requests may be sent, and whatever was sent before (lost
    /// with the old session, the session being clean) must be sent again.
    Ready(usize),
    /// The connection failed; it reconnects by itself.
    Down(usize),
    Message(Inbound),
}

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) client: AsyncClient,
    task: JoinHandle<()>,
}

impl Link {
    pub(crate) fn start(
        index: usize,
        endpoint: &Endpoint,
        login: Option<&(String, Secret)>,
        cfg: &DispatchConfig,
        tx: UnboundedSender<LinkEvent>,
        metrics: muster_metrics::Metrics,
    ) -> Result<Link, DispatchError> {
        let url = endpoint.url.as_str();
        let mut opts = endpoint.options(client_id(&cfg.client_id_prefix, index));
        if let Some((user, password)) = login {
            opts.set_credentials(user.clone(), password.expose());
        }
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)))
            // A clean session: state (what is in flight) is rebuilt from the replicated state
            // on reconnect, not from the broker's memory of an old session.
            .set_clean_session(true)
            // Incoming: anything MQTT 3.1.1 can carry. The protocol has no way to tell the broker
            // a limit, and rumqttc answers a larger packet by dropping the connection; a retained
            // message over the limit would then arrive again on every resubscribe and stop
            // dispatch for good. Messages over `max_packet_bytes` are skipped in `drive` instead.
            .set_max_packet_size(MQTT_MAX_PACKET_BYTES, cfg.max_packet_bytes)
            .set_inflight(cfg.mqtt_inflight.max(1));
        let (client, eventloop) = AsyncClient::new(opts, cfg.mqtt_channel_capacity.max(16));
        let backoff = (
            Duration::from_millis(cfg.reconnect_min_ms.max(1)),
            Duration::from_millis(cfg.reconnect_max_ms.max(cfg.reconnect_min_ms).max(1)),
        );
        let task = tokio::spawn(drive(
            (index, url.to_string()),
            client.clone(),
            eventloop,
            tx,
            (backoff, cfg.max_packet_bytes),
            metrics,
        ));
        Ok(Link { client, task })
    }

    /// Says goodbye to the broker (best effort) and stops the task.
    pub(crate) async fn stop(mut self) {
        let queued = tokio::time::timeout(Duration::from_millis(500), self.client.disconnect())
            .await
            .is_ok_and(|r| r.is_ok());
        if queued
            && tokio::time::timeout(Duration::from_secs(3), &mut self.task)
                .await
                .is_ok()
        {
            return;
        }
        self.task.abort();
    }
}

fn client_id(prefix: &str, index: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{index}-{}-{nanos:08x}", std::process::id())
}

/// Replies, presence and reported properties are subscribed at QoS 0. The session is clean, so
/// QoS 1 towards the dispatcher would add nothing across a reconnect, while brokers cap QoS 1
/// deliveries per client (Mosquitto: 20 in flight, 1000 queued, then it drops) and a burst of
/// answers or retained presence messages would exceed that. A lost answer is recovered like any
/// other: the device's deadline passes, or the request is resent after a reconnect.
fn subscriptions() -> Vec<SubscribeFilter> {
    [
        protocol::REPLY_FILTER,
        protocol::PRESENCE_FILTER,
        protocol::REPORTED_FILTER,
    ]
    .into_iter()
    .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtMostOnce))
    .collect()
}

/// The first argument names the broker (index, URL); the fifth holds the reconnect backoff (min,
/// max) and the largest incoming message handled.
async fn drive(
    (index, url): (usize, String),
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    tx: UnboundedSender<LinkEvent>,
    ((min_backoff, max_backoff), max_message_bytes): ((Duration, Duration), usize),
    metrics: muster_metrics::Metrics,
) {
    // When each QoS 1 publish in flight left, by packet id, for the publish latency.
    let mut sent_at: Vec<Option<std::time::Instant>> = vec![None; usize::from(u16::MAX) + 1];
    let mut backoff = min_backoff;
    let mut failures = 0u64;
    let mut oversized = 0u64;
    loop {
        if tx.is_closed() {
            return;
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %url, "connected");
                backoff = min_backoff;
                failures = 0;
                // Subscribing through the request queue from a separate task: this task must
                // keep polling, or the queue could never drain.
                let c = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.subscribe_many(subscriptions()).await {
                        debug!(error = %e, "subscribe not queued (connection closing)");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = tx.send(LinkEvent::Ready(index));
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) if pkid != 0 => {
                sent_at[usize::from(pkid)] = Some(std::time::Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = sent_at[usize::from(ack.pkid)].take() {
                    metrics
                        .dispatch()
                        .publish
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() > max_message_bytes => {
                oversized += 1;
                // The first and then every hundredth: a device repeating one can't fill the log.
                if oversized == 1 || oversized.is_multiple_of(100) {
                    warn!(broker = %url, topic = %p.topic, bytes = p.payload.len(),
                        limit = max_message_bytes, retained = p.retain, skipped = oversized,
                        "MQTT message larger than max_packet_bytes skipped");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(m) = protocol::parse_inbound(&p.topic, &p.payload) {
                    let _ = tx.send(LinkEvent::Message(m));
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Read until the broker closes: dropping a socket with unread data makes the
                // kernel reset it, and the broker may discard what it had not read yet.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                failures += 1;
                // The first failure and then every tenth: a broker that is down for an hour
                // should not fill the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(broker = %url, error = %e, failures, "MQTT connection failed; reconnecting");
                }
                sent_at.iter_mut().for_each(|t| *t = None);
                let _ = tx.send(LinkEvent::Down(index));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}
