//! The node's fan-out: which local connection serves which session, and the one Redis subscriber connection
//! that feeds them.
//!
//! - [`Hub::attach`] registers a connection for a session. One live connection per session per node: a newer one
//!   replaces the older, which is told to close with 4009.
//! - A single subscription task owns the SUBSCRIBE/UNSUBSCRIBE state. Connections ask it to subscribe (and wait
//!   for the confirmation before their welcome frame) or to release; it reference-counts sessions, batches
//!   commands, and, because it is the only writer, can never unsubscribe a channel a newer connection still
//!   needs.
//! - A single dispatch task reads every Pub/Sub message, turns the envelope into the event frame, and
//!   `try_send`s it into the session's bounded queue. It never waits on a socket: a full queue means a slow
//!   consumer, which is closed with 4008 and resumes from the reconnection buffer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use ces_protocol::close::{CloseCode, NodeControl};
use fred::clients::SubscriberClient;
use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::Message as PubsubMessage;
use fred::types::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

use crate::metrics as m;
use crate::queue;

/// A live event, ready to write: its position, to detect duplicates and gaps against what the socket already
/// sent, and its frame, built once by the dispatch task.
#[derive(Debug, Clone)]
pub struct Live {
    /// Sequence number within `epoch`.
    pub seq: u64,
    /// The session buffer's epoch.
    pub epoch: Arc<str>,
    /// The event frame.
    pub frame: Utf8Bytes,
    /// Not an event: a request to compare the socket's position with the buffer and send what is missing (after
    /// the Pub/Sub connection was re-established, messages published while it was down were never received).
    pub resync: bool,
    /// When the dispatch task had it, for the `edge_to_socket` hop.
    pub received: std::time::Instant,
    /// The Kafka record timestamp (ms since the Unix epoch, 0 if none), for the end-to-end latency.
    pub produced_at_ms: i64,
    /// The delivery span (in the trace of ingest's span), ended when the frame is flushed.
    pub span: ces_runtime::otel::EventSpan,
}

impl Live {
    /// A resync request ([`Live::resync`]).
    pub fn resync() -> Self {
        Self {
            seq: 0,
            epoch: Arc::from(""),
            frame: Utf8Bytes::from_static(""),
            resync: true,
            received: std::time::Instant::now(),
            produced_at_ms: 0,
            span: Default::default(),
        }
    }
}

impl queue::ByteLen for Live {
    fn byte_len(&self) -> usize {
        self.frame.len()
    }
}

struct Slot {
    conn_id: u64,
    tx: queue::Sender<Live>,
    close: oneshot::Sender<CloseCode>,
}

/// A connection's queue of live events, bounded by count and by bytes.
#[derive(Debug)]
pub struct Frames {
    rx: queue::Receiver<Live>,
}

impl Frames {
    /// The next frame; `None` once the hub dropped the connection's slot.
    pub async fn recv(&mut self) -> Option<Live> {
        self.rx.recv().await
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Live> {
        self.rx.try_recv()
    }
}

/// What a connection gets from [`Hub::attach`].
#[derive(Debug)]
pub struct Attachment {
    /// Identifies this connection in [`Hub::detach`].
    pub conn_id: u64,
    /// Live events for the socket.
    pub frames: Frames,
    /// Fires when the hub wants the socket closed.
    pub close: oneshot::Receiver<CloseCode>,
}

enum SubRequest {
    Subscribe {
        session: String,
        ack: oneshot::Sender<Result<(), String>>,
    },
    Release {
        session: String,
    },
}

/// Local connections and the subscription state of one edge node.
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    next_conn_id: AtomicU64,
    queue_capacity: usize,
    queue_bytes: usize,
    subs: mpsc::UnboundedSender<SubRequest>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .finish_non_exhaustive()
    }
}

/// Most channels per SUBSCRIBE/UNSUBSCRIBE command: bounds one command's size during a reconnect storm.
const SUBSCRIBE_BATCH: usize = 512;

impl Hub {
    /// Creates the hub and starts its subscription and dispatch tasks on `subscriber`. The tasks end when the hub
    /// is dropped (subscription) or the subscriber's message stream closes (dispatch). Each connection's queue
    /// holds at most `queue_capacity` frames and `queue_bytes` bytes (a single larger frame still fits an empty
    /// queue).
    pub fn start(
        subscriber: SubscriberClient,
        queue_capacity: usize,
        queue_bytes: usize,
        node_id: &str,
    ) -> std::sync::Arc<Self> {
        // Unbounded is safe here: each connection sends at most two requests (subscribe, release), so the queue
        // is bounded by twice the number of connections being set up or torn down.
        let (subs_tx, subs_rx) = mpsc::unbounded_channel();
        let hub = std::sync::Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            queue_capacity,
            queue_bytes,
            subs: subs_tx,
        });
        let messages = subscriber.message_rx();
        tokio::spawn(subscription_task(subscriber, subs_rx));
        let control = ces_protocol::keys::node_channel(node_id);
        tokio::spawn(dispatch_task(
            std::sync::Arc::downgrade(&hub),
            messages,
            control,
        ));
        hub
    }

    /// Registers a connection for `session`, closing any older one on this node with 4009.
    pub fn attach(&self, session: &str) -> Attachment {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::bounded(self.queue_capacity, self.queue_bytes);
        let (close_tx, close) = oneshot::channel();
        let old = self.slots.lock().expect("hub lock").insert(
            session.to_owned(),
            Slot {
                conn_id,
                tx,
                close: close_tx,
            },
        );
        if let Some(old) = old {
            let _ = old.close.send(CloseCode::TakenOver);
        }
        Attachment {
            conn_id,
            frames: Frames { rx },
            close,
        }
    }

    /// Closes connection `conn_id` of `session` with `code`, if this node still has it.
    pub fn close_connection(&self, session: &str, conn_id: u64, code: CloseCode) {
        let mut slots = self.slots.lock().expect("hub lock");
        if slots.get(session).is_some_and(|s| s.conn_id == conn_id)
            && let Some(slot) = slots.remove(session)
        {
            let _ = slot.close.send(code);
        }
    }

    /// Removes the connection's slot if it is still the current one for `session`.
    pub fn detach(&self, session: &str, conn_id: u64) {
        let mut slots = self.slots.lock().expect("hub lock");
        if slots.get(session).is_some_and(|s| s.conn_id == conn_id) {
            slots.remove(session);
        }
    }

    /// Subscribes the node to `session`'s channel; returns once Redis confirmed it. Every call, successful or not,
    /// must be paired with one [`release`](Self::release).
    pub async fn subscribe(&self, session: &str) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.subs
            .send(SubRequest::Subscribe {
                session: session.to_owned(),
                ack,
            })
            .map_err(|_| "subscription task stopped".to_owned())?;
        done.await
            .map_err(|_| "subscription task stopped".to_owned())?
    }

    /// Releases one [`subscribe`](Self::subscribe); the channel is unsubscribed when no connection needs it.
    pub fn release(&self, session: &str) {
        let _ = self.subs.send(SubRequest::Release {
            session: session.to_owned(),
        });
    }

    /// Number of sessions with a local connection.
    pub fn local_sessions(&self) -> usize {
        self.slots.lock().expect("hub lock").len()
    }

    /// Asks every local socket to catch up from the buffer: called once the Pub/Sub connection is back and
    /// subscribed again, so an event published while it was down reaches its client now, not with the session's
    /// next event.
    pub fn resync_all(&self) {
        let sessions: Vec<String> = self
            .slots
            .lock()
            .expect("hub lock")
            .keys()
            .cloned()
            .collect();
        for session in &sessions {
            self.deliver(session, Live::resync());
        }
    }

    fn deliver(&self, session: &str, frame: Live) {
        let mut slots = self.slots.lock().expect("hub lock");
        let Some(slot) = slots.get(session) else {
            // Published between the last connection leaving and the UNSUBSCRIBE taking effect.
            metrics::counter!(m::UNDELIVERABLE).increment(1);
            return;
        };
        match slot.tx.try_send(frame) {
            Ok(()) => {}
            Err(queue::Refused::Full(_)) => {
                metrics::counter!(m::SLOW_CONSUMERS).increment(1);
                if let Some(slot) = slots.remove(session) {
                    warn!(
                        session_id = session,
                        conn_id = slot.conn_id,
                        "queue full; closing slow consumer"
                    );
                    let _ = slot.close.send(CloseCode::SlowConsumer);
                }
            }
            Err(queue::Refused::Closed(_)) => {
                metrics::counter!(m::UNDELIVERABLE).increment(1);
            }
        }
    }
}

async fn subscription_task(
    subscriber: SubscriberClient,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
) {
    let mut refs: HashMap<String, usize> = HashMap::new();
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut stale: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(SUBSCRIBE_BATCH);
    while requests.recv_many(&mut batch, SUBSCRIBE_BATCH).await > 0 {
        let mut touched = HashSet::new();
        let mut waiters = Vec::new();
        for req in batch.drain(..) {
            match req {
                SubRequest::Subscribe { session, ack } => {
                    *refs.entry(session.clone()).or_insert(0) += 1;
                    waiters.push((session.clone(), ack));
                    touched.insert(session);
                }
                SubRequest::Release { session } => {
                    if let Some(n) = refs.get_mut(&session) {
                        *n -= 1;
                        if *n == 0 {
                            refs.remove(&session);
                        }
                    }
                    touched.insert(session);
                }
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        // Channels whose UNSUBSCRIBE failed earlier are retried with this batch.
        touched.extend(stale.drain());
        for session in touched {
            match (refs.contains_key(&session), subscribed.contains(&session)) {
                (true, false) => add.push(session),
                (false, true) => remove.push(session),
                _ => {}
            }
        }
        let mut failed: HashMap<String, String> = HashMap::new();
        if !add.is_empty() {
            let channels: Vec<String> =
                add.iter().map(|s| ces_protocol::keys::channel(s)).collect();
            match subscriber.subscribe(channels).await {
                Ok(()) => subscribed.extend(add),
                Err(e) => {
                    warn!(sessions = add.len(), error = %e, "subscribe failed");
                    failed.extend(add.into_iter().map(|s| (s, e.to_string())));
                }
            }
        }
        if !remove.is_empty() {
            let channels: Vec<String> = remove
                .iter()
                .map(|s| ces_protocol::keys::channel(s))
                .collect();
            match subscriber.unsubscribe(channels).await {
                Ok(()) => {
                    for s in &remove {
                        subscribed.remove(s);
                    }
                }
                Err(e) => {
                    // fred keeps tracking (and re-subscribing) these channels, so they stay in `subscribed` and
                    // are retried with the next batch of requests.
                    warn!(sessions = remove.len(), error = %e, "unsubscribe failed; will retry");
                    stale.extend(remove);
                }
            }
        }
        metrics::gauge!(m::SUBSCRIBED_CHANNELS).set(subscribed.len() as f64);
        for (session, ack) in waiters {
            let _ = ack.send(match failed.get(&session) {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
    }
    debug!("subscription task stopped");
}

async fn dispatch_task(
    hub: std::sync::Weak<Hub>,
    mut messages: broadcast::Receiver<PubsubMessage>,
    control: String,
) {
    loop {
        let msg = match messages.recv().await {
            Ok(msg) => msg,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Lost messages leave a seq gap the client sees; it resumes from the reconnection buffer.
                metrics::counter!(m::SUBSCRIBER_LAGGED).increment(missed);
                warn!(missed, "pub/sub reader lagged; messages dropped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let Some(hub) = hub.upgrade() else { break };
        if *msg.channel == *control {
            handle_control(&hub, &msg.value);
            continue;
        }
        let Some(session) = ces_protocol::keys::session_of_channel(&msg.channel) else {
            continue;
        };
        let payload = match msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            other => {
                warn!(session_id = session, kind = ?other.kind(), "unexpected pub/sub payload");
                continue;
            }
        };
        match frame_of(payload) {
            Some(frame) => hub.deliver(session, frame),
            None => {
                metrics::counter!(m::MALFORMED_ENVELOPES).increment(1);
                warn!(session_id = session, "malformed envelope dropped");
            }
        }
    }
    debug!("dispatch task stopped");
}

fn handle_control(hub: &Hub, value: &Value) {
    let text = value
        .as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or_default();
    match NodeControl::parse(text) {
        Some(NodeControl::Close {
            session,
            conn_id,
            code,
        }) => hub.close_connection(session, conn_id, code),
        None => warn!(message = text, "unknown control message"),
    }
}

fn frame_of(payload: Bytes) -> Option<Live> {
    use ces_runtime::telemetry::{hop, observe_hop, seconds_between};
    let received = std::time::Instant::now();
    use ces_runtime::otel::{self, EventSpan, KeyValue, SpanKind};
    let env = ces_protocol::envelope::decode_bytes(payload).ok()?;
    let trace_id = otel::enabled()
        .then(|| otel::trace_id_of(&env.traceparent))
        .flatten();
    let frame = ces_protocol::frame::event_frame_traced(&env, trace_id)?;
    let span = EventSpan::start(
        "ces.deliver",
        SpanKind::Producer,
        Some(env.traceparent.as_str()).filter(|tp| !tp.is_empty()),
        || {
            vec![
                KeyValue::new("ces.session_id", env.session_id.clone()),
                KeyValue::new("ces.event_id", env.event_id.clone()),
                KeyValue::new("ces.seq", i64::try_from(env.seq).unwrap_or(i64::MAX)),
            ]
        },
    );
    if env.ingested_at_ms > 0 {
        observe_hop(
            hop::REDIS_TO_EDGE,
            seconds_between(env.ingested_at_ms, ces_runtime::now_ms()),
        );
    }
    Some(Live {
        seq: env.seq,
        epoch: Arc::from(env.epoch.as_str()),
        frame: Utf8Bytes::from(frame),
        resync: false,
        received,
        produced_at_ms: env.produced_at_ms,
        span,
    })
}
