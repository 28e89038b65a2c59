//! The node's fan-out: which local connection serves which session, and the one Redis subscriber connection
//! that feeds them.
//!
//! - [`Hub::attach`] registers a connection for a session. One live connection per session per node: a newer one
//!   replaces the older, which is told to close with 4009.
//! - A single subscription task owns the SUBSCRIBE/UNSUBSCRIBE state. Connections ask it to subscribe (and wait
//!   for the confirmation before their welcome frame) or to release; it batches their requests and sends the
//!   commands. What to send is decided by the pure [`SubscriptionTable`] (reference counts per session, retries
//!   of failed unsubscribes; its rules and tests are in [`crate::subscriptions`]); because the task is the only
//!   writer, it can never unsubscribe a channel a newer connection still needs.
//! - A single dispatch task reads every Pub/Sub message, turns the envelope into the event frame, and
//!   `try_send`s it into the session's bounded queue. It never waits on a socket: a full queue means a slow
//!   consumer, which is closed with 4008 and resumes from the reconnection buffer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use ces_protocol::close::{CloseCode, NodeControl};
use fred::clients::SubscriberClient;
use fred::interfaces::EventInterface;
use fred::types::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::metrics as m;
use crate::queue;
use crate::subscriptions::{Request, SubscriptionTable};

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

/// Who waits for a subscribe request's outcome.
type Ack = oneshot::Sender<Result<(), String>>;

/// How much the connections' queues of live events may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames per connection (`CES_WS_QUEUE_CAPACITY`).
    pub capacity: usize,
    /// Bytes per connection (`CES_WS_QUEUE_BYTES`); a single larger frame still fits an empty queue.
    pub bytes: usize,
    /// Bytes of every connection's queue together (`CES_EDGE_QUEUE_BUDGET_BYTES`).
    pub node_bytes: usize,
}

/// Local connections and the subscription state of one edge node.
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    next_conn_id: AtomicU64,
    queue_capacity: usize,
    queue_bytes: usize,
    /// Bytes queued for all local connections, bounded by [`QueueLimits::node_bytes`].
    budget: Arc<queue::Budget>,
    subs: mpsc::UnboundedSender<Request<Ack>>,
    /// Whether the node's subscriptions are known to be in place (`/readyz`); kept by `pubsub::keep_receiving`.
    receiving: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// How often `ces_edge_queued_bytes` is updated.
const QUEUED_BYTES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most requests per batch of SSUBSCRIBE/SUNSUBSCRIBE commands: bounds one batch's size during a reconnect storm.
const SUBSCRIBE_BATCH: usize = 512;

/// Most messages read from Redis and not yet dispatched (also bounded in bytes, `CES_PUBSUB_BUFFER_BYTES`).
const INBOUND_MESSAGES: usize = 65_536;

impl Hub {
    /// Creates the hub and starts its subscription, pump and dispatch tasks on `subscriber`. The tasks end when
    /// the hub is dropped (subscription) or the subscriber's message stream closes (pump, dispatch). The
    /// connections' queues hold what `queues` allows; messages read from Redis and not yet dispatched at most
    /// `inbound_bytes` bytes. The node's control channel is subscribed with the first
    /// [`resubscribe`](Self::resubscribe).
    pub fn start(
        subscriber: SubscriberClient,
        queues: QueueLimits,
        inbound_bytes: usize,
        node_id: &str,
    ) -> std::sync::Arc<Self> {
        // Unbounded is safe here: each connection sends at most two requests (subscribe, release), so the queue
        // is bounded by twice the number of connections being set up or torn down.
        let (subs_tx, subs_rx) = mpsc::unbounded_channel();
        let hub = std::sync::Arc::new(Self::new(queues, subs_tx));
        let messages = subscriber.message_rx();
        let control = ces_protocol::keys::node_channel(node_id);
        tokio::spawn(subscription_task(subscriber, subs_rx, control.clone()));
        let (inbound_tx, inbound_rx) = queue::bounded(INBOUND_MESSAGES, inbound_bytes);
        tokio::spawn(crate::pubsub::pump(
            std::sync::Arc::downgrade(&hub),
            messages,
            inbound_tx,
        ));
        tokio::spawn(dispatch_task(
            std::sync::Arc::downgrade(&hub),
            inbound_rx,
            control,
        ));
        tokio::spawn({
            let budget = hub.budget.clone();
            let hub = std::sync::Arc::downgrade(&hub);
            async move {
                let mut every = tokio::time::interval(QUEUED_BYTES_EVERY);
                while hub.strong_count() > 0 {
                    metrics::gauge!(m::QUEUED_BYTES).set(budget.used() as f64);
                    every.tick().await;
                }
            }
        });
        hub
    }

    /// A hub without its tasks: subscription requests go to `subs`. Tests drive it without Redis.
    fn new(queues: QueueLimits, subs: mpsc::UnboundedSender<Request<Ack>>) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            queue_capacity: queues.capacity,
            queue_bytes: queues.bytes,
            budget: queue::Budget::new(queues.node_bytes),
            subs,
            receiving: AtomicBool::new(false),
        }
    }

    /// Registers a connection for `session`, closing any older one on this node with 4009.
    pub fn attach(&self, session: &str) -> Attachment {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) =
            queue::bounded_within(self.queue_capacity, self.queue_bytes, self.budget.clone());
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
            .send(Request::Subscribe {
                session: session.to_owned(),
                waiter: ack,
            })
            .map_err(|_| "subscription task stopped".to_owned())?;
        done.await
            .map_err(|_| "subscription task stopped".to_owned())?
    }

    /// Subscribes the node's control channel and every session a local connection needs again, whatever Redis
    /// confirmed before (after a reconnect, or when Redis was found to have dropped the node's subscriptions);
    /// returns once Redis confirmed all of them.
    pub async fn resubscribe(&self) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.subs
            .send(Request::Resubscribe { waiter: ack })
            .map_err(|_| "subscription task stopped".to_owned())?;
        done.await
            .map_err(|_| "subscription task stopped".to_owned())?
    }

    /// Whether the node's subscriptions are known to be in place.
    pub fn receiving(&self) -> bool {
        self.receiving.load(Ordering::Relaxed)
    }

    /// Records whether the node's subscriptions are known to be in place.
    pub(crate) fn set_receiving(&self, receiving: bool) {
        self.receiving.store(receiving, Ordering::Relaxed);
    }

    /// Releases one [`subscribe`](Self::subscribe); the channel is unsubscribed when no connection needs it.
    pub fn release(&self, session: &str) {
        let _ = self.subs.send(Request::Release {
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
        let refused = match slot.tx.try_send(frame) {
            Ok(()) => return,
            Err(queue::Refused::OverBudget(frame)) => {
                // The node's queues together are full: the largest goes, which is the slowest socket's (maybe
                // this one), and its client resumes from the buffer. One more try, then this socket goes too.
                close_largest(&mut slots);
                match slots.get(session) {
                    Some(slot) => slot.tx.try_send(frame).err(),
                    // It was the largest.
                    None => return,
                }
            }
            Err(refused) => Some(refused),
        };
        match refused {
            None => {}
            Some(queue::Refused::Full(_) | queue::Refused::OverBudget(_)) => {
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
            Some(queue::Refused::Closed(_)) => {
                metrics::counter!(m::UNDELIVERABLE).increment(1);
            }
        }
    }
}

/// Closes the connection whose queue holds the most bytes with 4008, dropping what it queued at once so the
/// node's budget has room again. A scan of every local connection, done only when the node's queues together
/// reach their budget.
fn close_largest(slots: &mut HashMap<String, Slot>) {
    let Some((session, bytes)) = slots
        .iter()
        .map(|(session, slot)| (session, slot.tx.queued_bytes()))
        .max_by_key(|(_, bytes)| *bytes)
    else {
        return;
    };
    let session = session.clone();
    let Some(slot) = slots.remove(&session) else {
        return;
    };
    slot.tx.clear();
    metrics::counter!(m::BUDGET_CLOSES).increment(1);
    warn!(
        session_id = session,
        conn_id = slot.conn_id,
        queued_bytes = bytes,
        "the node's queues are over their budget; closing the largest"
    );
    metrics::counter!(m::SLOW_CONSUMERS).increment(1);
    let _ = slot.close.send(CloseCode::SlowConsumer);
}

/// The two Pub/Sub commands the subscription task sends: the seam between its loop and fred, so tests can run the
/// loop against a fake. The real one is in [`crate::pubsub`] (sharded, grouped per slot).
pub(crate) trait Channels: Send + Sync {
    /// Subscribes `channels`; `Ok` once Redis confirmed all of them.
    fn subscribe(&self, channels: Vec<String>) -> impl Future<Output = Result<(), String>> + Send;
    /// Unsubscribes `channels`.
    fn unsubscribe(&self, channels: Vec<String>)
    -> impl Future<Output = Result<(), String>> + Send;
}

fn channels_of(sessions: &[String]) -> Vec<String> {
    sessions
        .iter()
        .map(|s| ces_protocol::keys::channel(s))
        .collect()
}

/// Receives batches of requests, has the table decide, sends what it decided, and answers the batch's callers
/// once the SUBSCRIBE (if any) completed. Ends when the hub (every sender) is gone.
async fn subscription_task(
    channels: impl Channels,
    mut requests: mpsc::UnboundedReceiver<Request<Ack>>,
    control: String,
) {
    let mut table = SubscriptionTable::default();
    let mut batch = Vec::with_capacity(SUBSCRIBE_BATCH);
    while requests.recv_many(&mut batch, SUBSCRIBE_BATCH).await > 0 {
        let plan = table.plan(batch.drain(..));
        let mut subscribed = Ok(());
        if !plan.subscribe.is_empty() || plan.resubscribe {
            let mut names = channels_of(&plan.subscribe);
            if plan.resubscribe {
                names.push(control.clone());
            }
            match channels.subscribe(names).await {
                Ok(()) => table.subscribed(&plan.subscribe),
                Err(e) => {
                    warn!(sessions = plan.subscribe.len(), error = %e, "subscribe failed");
                    subscribed = Err(e);
                }
            }
        }
        if !plan.unsubscribe.is_empty() {
            match channels.unsubscribe(channels_of(&plan.unsubscribe)).await {
                Ok(()) => table.unsubscribed(&plan.unsubscribe),
                Err(e) => {
                    // fred keeps tracking (and re-subscribing) these channels, so they stay subscribed and are
                    // retried with the next batch of requests.
                    warn!(sessions = plan.unsubscribe.len(), error = %e, "unsubscribe failed; will retry");
                    table.unsubscribe_failed(&plan.unsubscribe);
                }
            }
        }
        metrics::gauge!(m::SUBSCRIBED_CHANNELS).set(table.subscribed_count() as f64);
        for (ack, answer) in plan.answers(subscribed) {
            let _ = ack.send(answer);
        }
    }
    debug!("subscription task stopped");
}

async fn dispatch_task(
    hub: std::sync::Weak<Hub>,
    mut messages: queue::Receiver<crate::pubsub::Inbound>,
    control: String,
) {
    while let Some(crate::pubsub::Inbound(msg)) = messages.recv().await {
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
    use ces_runtime::telemetry::seconds_between;
    let received = std::time::Instant::now();
    use ces_runtime::otel::{EventSpan, KeyValue, SpanKind};
    let env = ces_protocol::envelope::decode_bytes(payload).ok()?;
    let frame = crate::resume::frame_of(&env);
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
        crate::metrics::per_event()
            .redis_to_edge
            .record(seconds_between(env.ingested_at_ms, ces_runtime::now_ms()));
    }
    Some(Live {
        seq: env.seq,
        epoch: Arc::from(env.epoch.as_str()),
        frame,
        resync: false,
        received,
        produced_at_ms: env.produced_at_ms,
        span,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use fred::types::Message as PubsubMessage;
    use tokio::sync::broadcast;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    /// A hub without tasks, and the receiving end of its subscription requests.
    fn hub(capacity: usize, bytes: usize) -> (Arc<Hub>, mpsc::UnboundedReceiver<Request<Ack>>) {
        hub_within(capacity, bytes, usize::MAX)
    }

    /// [`hub`] with a node-wide budget of `node_bytes`.
    fn hub_within(
        capacity: usize,
        bytes: usize,
        node_bytes: usize,
    ) -> (Arc<Hub>, mpsc::UnboundedReceiver<Request<Ack>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queues = QueueLimits {
            capacity,
            bytes,
            node_bytes,
        };
        (Arc::new(Hub::new(queues, tx)), rx)
    }

    fn live(seq: u64, frame: &'static str) -> Live {
        Live {
            seq,
            epoch: Arc::from("e1"),
            frame: Utf8Bytes::from_static(frame),
            resync: false,
            received: std::time::Instant::now(),
            produced_at_ms: 0,
            span: Default::default(),
        }
    }

    #[test]
    fn a_published_envelope_becomes_its_event_frame_and_garbage_nothing() {
        let env = ces_protocol::envelope::Envelope {
            seq: 7,
            epoch: "e9".into(),
            event_id: "id7".into(),
            event_type: "t".into(),
            data: br#"{"n":7}"#.to_vec().into(),
            produced_at_ms: 1234,
            ..Default::default()
        };
        let live = frame_of(Bytes::from(ces_protocol::envelope::encode(&env))).expect("decoded");
        assert_eq!(
            (live.seq, &*live.epoch, live.resync, live.produced_at_ms),
            (7, "e9", false, 1234)
        );
        assert_eq!(
            live.frame.as_str(),
            ces_protocol::frame::event_frame(&env).unwrap()
        );
        assert!(frame_of(Bytes::from_static(b"\xff\xff not an envelope")).is_none());
    }

    /// Sequence numbers of what is queued now.
    fn drain(frames: &mut Frames) -> Vec<u64> {
        std::iter::from_fn(|| frames.try_recv().map(|l| l.seq)).collect()
    }

    #[test]
    fn the_close_codes_on_the_wire() {
        // The numbers clients see for the two closes the hub decides.
        assert_eq!(CloseCode::TakenOver.code(), 4009);
        assert_eq!(CloseCode::SlowConsumer.code(), 4008);
    }

    #[tokio::test]
    async fn a_newer_attach_closes_the_older_with_taken_over() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut old = hub.attach("s");
        let mut new = hub.attach("s");
        assert_eq!((old.conn_id, new.conn_id), (1, 2));
        assert_eq!(old.close.try_recv(), Ok(CloseCode::TakenOver));
        assert_eq!(new.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 1);
        hub.deliver("s", live(1, "x"));
        assert_eq!(drain(&mut new.frames), vec![1]);
        // The older queue ended with the slot.
        assert!(old.frames.recv().await.is_none());
    }

    #[test]
    fn each_newer_attach_closes_the_one_before() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut first = hub.attach("s");
        let mut second = hub.attach("s");
        let mut third = hub.attach("s");
        assert_eq!(third.conn_id, 3);
        assert_eq!(first.close.try_recv(), Ok(CloseCode::TakenOver));
        assert_eq!(second.close.try_recv(), Ok(CloseCode::TakenOver));
        assert_eq!(third.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 1);
    }

    #[test]
    fn sessions_do_not_take_over_each_other() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut a = hub.attach("a");
        let mut b = hub.attach("b");
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(b.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 2);
        hub.deliver("a", live(1, "x"));
        hub.deliver("b", live(2, "x"));
        assert_eq!(drain(&mut a.frames), vec![1]);
        assert_eq!(drain(&mut b.frames), vec![2]);
    }

    #[tokio::test]
    async fn detach_of_a_stale_conn_id_keeps_the_newer_slot() {
        let (hub, _rx) = hub(8, 1 << 20);
        let old = hub.attach("s");
        let mut new = hub.attach("s");
        hub.detach("s", old.conn_id);
        assert_eq!(hub.local_sessions(), 1);
        assert_eq!(new.close.try_recv(), Err(TryRecvError::Empty));
        hub.deliver("s", live(1, "x"));
        assert_eq!(drain(&mut new.frames), vec![1]);
        // The newer one's own detach removes it, without a close code.
        hub.detach("s", new.conn_id);
        assert_eq!(hub.local_sessions(), 0);
        assert_eq!(new.close.try_recv(), Err(TryRecvError::Closed));
        assert!(new.frames.recv().await.is_none());
    }

    #[test]
    fn detach_of_an_unknown_session_or_twice_does_nothing() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut a = hub.attach("a");
        hub.detach("b", a.conn_id);
        assert_eq!(hub.local_sessions(), 1);
        hub.detach("a", a.conn_id);
        hub.detach("a", a.conn_id);
        assert_eq!(hub.local_sessions(), 0);
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn close_connection_closes_only_the_matching_conn_id() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut old = hub.attach("s");
        let mut new = hub.attach("s");
        assert_eq!(old.close.try_recv(), Ok(CloseCode::TakenOver));
        // A close meant for the older connection (sent before it was replaced) leaves the newer one alone.
        hub.close_connection("s", old.conn_id, CloseCode::SessionClosed);
        hub.close_connection("other", new.conn_id, CloseCode::SessionClosed);
        assert_eq!(new.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 1);
        hub.close_connection("s", new.conn_id, CloseCode::SessionClosed);
        assert_eq!(new.close.try_recv(), Ok(CloseCode::SessionClosed));
        assert_eq!(hub.local_sessions(), 0);
        assert!(new.frames.recv().await.is_none());
        // Nothing left to close.
        hub.close_connection("s", new.conn_id, CloseCode::TakenOver);
        assert_eq!(hub.local_sessions(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_slow_consumer_with_4008() {
        let (hub, _rx) = hub(2, 1 << 20);
        let mut a = hub.attach("s");
        let mut other = hub.attach("t");
        hub.deliver("s", live(1, "x"));
        hub.deliver("s", live(2, "x"));
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Empty));
        hub.deliver("s", live(3, "x"));
        assert_eq!(a.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(hub.local_sessions(), 1);
        // What was queued is still readable; the refused frame is not; then the queue ends.
        assert_eq!(drain(&mut a.frames), vec![1, 2]);
        assert!(a.frames.recv().await.is_none());
        // Later frames for the session go nowhere; the other session is untouched.
        hub.deliver("s", live(4, "x"));
        assert_eq!(hub.local_sessions(), 1);
        assert_eq!(other.close.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn the_byte_bound_also_makes_a_slow_consumer() {
        let (hub, _rx) = hub(100, 10);
        let mut a = hub.attach("s");
        hub.deliver("s", live(1, "123456"));
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Empty));
        hub.deliver("s", live(2, "123456"));
        assert_eq!(a.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(drain(&mut a.frames), vec![1]);
        assert_eq!(hub.local_sessions(), 0);
    }

    #[test]
    fn past_the_node_budget_the_largest_queue_is_closed_with_4008_and_emptied() {
        let (hub, _rx) = hub_within(100, 100, 14);
        let mut big = hub.attach("big");
        let mut small = hub.attach("small");
        let mut other = hub.attach("other");
        for seq in 1..=4 {
            hub.deliver("big", live(seq, "12"));
        }
        hub.deliver("small", live(1, "12"));
        hub.deliver("other", live(1, "1234"));
        assert_eq!(hub.budget.used(), 14);
        // 2 more bytes for `small` pass the budget: `big` (8 bytes) goes, `small` gets its frame.
        hub.deliver("small", live(2, "12"));
        assert_eq!(big.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(drain(&mut big.frames), Vec::<u64>::new(), "emptied at once");
        assert_eq!(drain(&mut small.frames), vec![1, 2]);
        assert_eq!(small.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(other.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 2);
        assert_eq!(hub.budget.used(), 4, "only `other`'s frame is still queued");
    }

    #[test]
    fn the_socket_that_passes_the_node_budget_goes_itself_when_its_queue_is_the_largest() {
        let (hub, _rx) = hub_within(100, 100, 10);
        let mut big = hub.attach("big");
        let mut small = hub.attach("small");
        for seq in 1..=4 {
            hub.deliver("big", live(seq, "12"));
        }
        hub.deliver("small", live(1, "12"));
        hub.deliver("big", live(5, "12"));
        assert_eq!(big.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(drain(&mut big.frames), Vec::<u64>::new());
        assert_eq!(small.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.budget.used(), 2);
        // Still over after the largest went (a frame larger than what was freed): this one goes too.
        let (hub, _rx) = hub_within(100, 100, 6);
        let mut a = hub.attach("a");
        let mut b = hub.attach("b");
        hub.deliver("a", live(1, "123"));
        hub.deliver("b", live(1, "12"));
        hub.deliver("b", live(2, "1234567"));
        assert_eq!(a.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(b.close.try_recv(), Ok(CloseCode::SlowConsumer));
        assert_eq!(hub.local_sessions(), 0);
    }

    #[test]
    fn a_slow_consumer_close_spares_the_newer_connection_that_replaces_it() {
        let (hub, _rx) = hub(1, 1 << 20);
        let mut a = hub.attach("s");
        hub.deliver("s", live(1, "x"));
        hub.deliver("s", live(2, "x"));
        assert_eq!(a.close.try_recv(), Ok(CloseCode::SlowConsumer));
        let mut b = hub.attach("s");
        hub.deliver("s", live(3, "x"));
        assert_eq!(b.close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(drain(&mut b.frames), vec![3]);
        // The slow one's late detach does not remove its successor.
        hub.detach("s", a.conn_id);
        assert_eq!(hub.local_sessions(), 1);
    }

    #[test]
    fn a_frame_for_a_socket_that_stopped_reading_keeps_the_slot() {
        let (hub, _rx) = hub(1, 1 << 20);
        let Attachment {
            conn_id,
            frames,
            mut close,
        } = hub.attach("s");
        drop(frames);
        hub.deliver("s", live(1, "x"));
        hub.deliver("s", live(2, "x"));
        // Not a slow consumer: the socket is on its way out and detaches itself.
        assert_eq!(close.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(hub.local_sessions(), 1);
        hub.detach("s", conn_id);
        assert_eq!(hub.local_sessions(), 0);
    }

    #[test]
    fn a_frame_for_a_session_without_a_connection_is_dropped() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut a = hub.attach("a");
        hub.deliver("b", live(1, "x"));
        assert_eq!(hub.local_sessions(), 1);
        assert_eq!(drain(&mut a.frames), Vec::<u64>::new());
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn resync_all_asks_every_local_socket_to_catch_up() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut a = hub.attach("a");
        let mut b = hub.attach("b");
        hub.resync_all();
        for frames in [&mut a.frames, &mut b.frames] {
            let got = frames.try_recv().expect("a resync request");
            assert!(got.resync);
            assert!(frames.try_recv().is_none());
        }
    }

    #[tokio::test]
    async fn messages_the_pump_drops_make_every_local_socket_catch_up_once_it_takes_messages_again()
    {
        let (hub, _rx) = hub(8, 1 << 20);
        let (mut a, mut b) = (hub.attach("s1"), hub.attach("s2"));
        let message = || PubsubMessage {
            channel: ces_protocol::keys::channel("gone").into(),
            value: Value::String("not an envelope".into()),
            kind: fred::types::MessageKind::SMessage,
            server: fred::types::config::Server::new("127.0.0.1", 6379),
        };
        let resyncs = |a: &mut Attachment| {
            std::iter::from_fn(|| a.frames.try_recv())
                .filter(|l| l.resync)
                .count()
        };
        // Room for one message in the broadcast channel: of three sent at once, the first two are dropped there.
        let (tx, rx) = broadcast::channel(1);
        let (inbound, mut out) = queue::bounded(2, 1 << 20);
        let pump = tokio::spawn(crate::pubsub::pump(Arc::downgrade(&hub), rx, inbound));
        for _ in 0..3 {
            tx.send(message()).expect("a receiver");
        }
        settle().await;
        // The third was taken: every socket catches up, once.
        assert_eq!((resyncs(&mut a), resyncs(&mut b)), (1, 1));
        // Room for two in the inbound queue: the fourth fits, the fifth and sixth are dropped there.
        for _ in 0..3 {
            tx.send(message()).expect("a receiver");
            settle().await;
        }
        assert_eq!(
            (resyncs(&mut a), resyncs(&mut b)),
            (0, 0),
            "nothing taken since the drops"
        );
        assert!(out.try_recv().is_some() && out.try_recv().is_some() && out.try_recv().is_none());
        tx.send(message()).expect("a receiver");
        settle().await;
        assert_eq!((resyncs(&mut a), resyncs(&mut b)), (1, 1));
        assert!(out.try_recv().is_some(), "the message after the drops");
        drop(tx);
        pump.await.unwrap();
    }

    #[test]
    fn a_control_message_closes_the_named_connection_only() {
        let (hub, _rx) = hub(8, 1 << 20);
        let mut a = hub.attach("s");
        let control = |conn_id| {
            Value::String(
                NodeControl::Close {
                    session: "s",
                    conn_id,
                    code: CloseCode::TakenOver,
                }
                .encode()
                .into(),
            )
        };
        handle_control(&hub, &control(a.conn_id + 1));
        handle_control(&hub, &Value::String("garbage".into()));
        assert_eq!(a.close.try_recv(), Err(TryRecvError::Empty));
        handle_control(&hub, &control(a.conn_id));
        assert_eq!(a.close.try_recv(), Ok(CloseCode::TakenOver));
        assert_eq!(hub.local_sessions(), 0);
    }

    /// Pub/Sub commands recorded instead of sent; a command named in `failing` fails with "boom".
    #[derive(Debug, Default)]
    struct Fake {
        log: Mutex<Vec<(&'static str, Vec<String>)>>,
        failing: Mutex<HashSet<&'static str>>,
    }

    impl Fake {
        fn call(&self, command: &'static str, channels: Vec<String>) -> Result<(), String> {
            self.log.lock().unwrap().push((command, channels));
            if self.failing.lock().unwrap().contains(command) {
                Err("boom".to_owned())
            } else {
                Ok(())
            }
        }

        fn fail(&self, command: &'static str, fail: bool) {
            let mut failing = self.failing.lock().unwrap();
            if fail {
                failing.insert(command);
            } else {
                failing.remove(command);
            }
        }

        /// The commands sent since the last call.
        fn sent(&self) -> Vec<(&'static str, Vec<String>)> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl Channels for Arc<Fake> {
        async fn subscribe(&self, channels: Vec<String>) -> Result<(), String> {
            self.call("SUBSCRIBE", channels)
        }

        async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), String> {
            self.call("UNSUBSCRIBE", channels)
        }
    }

    fn ch(sessions: &[&str]) -> Vec<String> {
        sessions
            .iter()
            .map(|s| ces_protocol::keys::channel(s))
            .collect()
    }

    /// A hub whose subscription task runs against a fake.
    fn hub_with_fake() -> (Arc<Hub>, Arc<Fake>) {
        let (hub, rx) = hub(8, 1 << 20);
        let fake = Arc::new(Fake::default());
        tokio::spawn(subscription_task(fake.clone(), rx, "ces:node:{n}".into()));
        (hub, fake)
    }

    /// Lets the subscription task (on this single-threaded runtime) handle everything queued so far.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn subscribe_returns_once_one_batched_subscribe_succeeded() {
        let (hub, fake) = hub_with_fake();
        let (a, b, a2) = futures::join!(hub.subscribe("a"), hub.subscribe("b"), hub.subscribe("a"));
        assert_eq!((a, b, a2), (Ok(()), Ok(()), Ok(())));
        assert_eq!(fake.sent(), vec![("SUBSCRIBE", ch(&["a", "b"]))]);
    }

    #[tokio::test]
    async fn two_connections_then_one_release_keep_the_channel_until_the_last() {
        let (hub, fake) = hub_with_fake();
        assert_eq!(hub.subscribe("a").await, Ok(()));
        assert_eq!(hub.subscribe("a").await, Ok(()));
        assert_eq!(fake.sent(), vec![("SUBSCRIBE", ch(&["a"]))]);
        hub.release("a");
        settle().await;
        assert_eq!(fake.sent(), vec![]);
        hub.release("a");
        settle().await;
        assert_eq!(fake.sent(), vec![("UNSUBSCRIBE", ch(&["a"]))]);
        // A stray release sends nothing.
        hub.release("a");
        settle().await;
        assert_eq!(fake.sent(), vec![]);
    }

    #[tokio::test]
    async fn subscribe_and_release_in_one_batch_send_nothing() {
        let (hub, fake) = hub_with_fake();
        let (a, ()) = futures::join!(hub.subscribe("a"), async { hub.release("a") });
        assert_eq!(a, Ok(()));
        assert_eq!(fake.sent(), vec![]);
    }

    #[tokio::test]
    async fn a_failed_subscribe_answers_the_callers_of_its_sessions_with_the_error() {
        let (hub, fake) = hub_with_fake();
        assert_eq!(hub.subscribe("a").await, Ok(()));
        fake.sent();
        fake.fail("SUBSCRIBE", true);
        let (a, b) = futures::join!(hub.subscribe("a"), hub.subscribe("b"));
        assert_eq!((a, b), (Ok(()), Err("boom".to_owned())));
        assert_eq!(fake.sent(), vec![("SUBSCRIBE", ch(&["b"]))]);
        // The failed caller still releases; nothing was subscribed, so nothing is unsubscribed.
        hub.release("b");
        settle().await;
        assert_eq!(fake.sent(), vec![]);
        // The next caller tries again.
        fake.fail("SUBSCRIBE", false);
        assert_eq!(hub.subscribe("b").await, Ok(()));
        assert_eq!(fake.sent(), vec![("SUBSCRIBE", ch(&["b"]))]);
    }

    #[tokio::test]
    async fn a_failed_unsubscribe_is_retried_with_the_next_batch() {
        let (hub, fake) = hub_with_fake();
        assert_eq!(hub.subscribe("a").await, Ok(()));
        fake.sent();
        fake.fail("UNSUBSCRIBE", true);
        hub.release("a");
        settle().await;
        assert_eq!(fake.sent(), vec![("UNSUBSCRIBE", ch(&["a"]))]);
        fake.fail("UNSUBSCRIBE", false);
        assert_eq!(hub.subscribe("b").await, Ok(()));
        assert_eq!(
            fake.sent(),
            vec![("SUBSCRIBE", ch(&["b"])), ("UNSUBSCRIBE", ch(&["a"]))]
        );
        // Done: the next batch has nothing to retry.
        assert_eq!(hub.subscribe("b").await, Ok(()));
        assert_eq!(fake.sent(), vec![]);
    }

    #[tokio::test]
    async fn subscribe_fails_once_the_task_is_gone() {
        let (hub, rx) = hub(8, 1 << 20);
        drop(rx);
        assert_eq!(
            hub.subscribe("a").await,
            Err("subscription task stopped".to_owned())
        );
        // Releasing then is harmless.
        hub.release("a");
    }
}
