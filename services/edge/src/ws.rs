//! One WebSocket connection, from welcome frame to close code: a thin loop around [`machine::Socket`], which
//! makes every decision (what to write, when to close and with which code). The loop only waits on the
//! socket's inputs (shutdown, timers, the hub, the client, live events), hands each to the machine and performs
//! what it returns: socket writes and flushes, Redis calls through [`SessionStore`], timers.
//!
//! The loop is generic over any `Sink`/`Stream` of WebSocket messages and any [`SessionStore`], so unit tests
//! drive it with channels and an in-memory store. Outbound frames are coalesced: every frame already queued is
//! fed to the socket before one flush, so a burst costs one write syscall rather than one per event.

pub mod machine;
pub mod store;
mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use ces_protocol::close::{self, CloseCode, conn_ref};
use ces_protocol::keys::SessionId;
use fred::clients::Client;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hub::{Attachment, Hub, Live};
use crate::limits::HandshakeSlot;
use crate::metrics as m;
use crate::resume::{self, Position, Snapshot};
use machine::{Action, Input, Received, Setup, Socket, Terms};

use write::{bounded, close, forward, next_page, send_opening};

pub use machine::MAX_INVALID_FRAMES;
pub use store::SessionStore;

/// Longest a heartbeat may wait on Redis.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-connection parameters. `St` is the session store: the node's command connection, or a stand-in in tests.
#[derive(Debug)]
pub struct SocketParams<St = Client> {
    /// The session this socket serves.
    pub session: SessionId,
    /// This node's id, for the welcome frame.
    pub node_id: String,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// Longest one write (a batch of live events, one page of a replay, a reply) may take before the peer is
    /// considered gone (`CES_WS_WRITE_TIMEOUT_MS`).
    pub write_timeout: Duration,
    /// Pings in a row without any inbound frame before the socket is closed.
    pub max_missed_pongs: u32,
    /// Where the client says it is (`last_seq`/`epoch` on connect), `None` for a fresh connection.
    pub position: Option<Position>,
    /// Session state and the reconnection buffer (the command connection).
    pub store: St,
    /// How the session's epoch and `seq` state is kept (its TTL; whether Redis restarts keep it).
    pub state: resume::StateTerms,
    /// How much of the buffer one read takes: replays and gap fills are read and written a page at a time
    /// ([`resume::Page::REPLAY`]).
    pub page: resume::Page,
    /// How long the session's state lives after its last activity.
    pub session_ttl: Duration,
    /// When shutdown starts, the socket closes with 1012 after this delay plus a random part of `drain_window`.
    pub drain_delay: Duration,
    /// See `drain_delay`.
    pub drain_window: Duration,
    /// When the socket's token expires (unix seconds); the socket is closed with 4001 then unless refreshed.
    pub expires_at: u64,
    /// Keys to verify an in-band refresh token.
    pub token_keys: ces_protocol::token::TokenKeys,
    /// Inbound message budget; a client over it is closed with 4029.
    pub inbound_limit: Arc<governor::DefaultDirectRateLimiter>,
    /// The handshake's admission slot, released once the welcome and the replay are sent.
    pub handshake_slot: Option<HandshakeSlot>,
    /// Where the socket reports what it wrote and what the client acknowledged, when receipts are on.
    pub receipts: Option<crate::receipts::Receipts>,
}

/// A connection's queue of live events as the loop reads it: the hub's [`crate::hub::Frames`], or a bare queue
/// in tests.
trait LiveQueue {
    /// The next event; `None` once the hub dropped the connection. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Option<Live>> + Send;
    /// The next event if one is queued.
    fn try_recv(&mut self) -> Option<Live>;
}

impl LiveQueue for crate::hub::Frames {
    fn recv(&mut self) -> impl Future<Output = Option<Live>> + Send {
        crate::hub::Frames::recv(self)
    }

    fn try_recv(&mut self) -> Option<Live> {
        crate::hub::Frames::try_recv(self)
    }
}

/// What the hub gives a connection: its live events, and the close it may ask for.
struct FromHub<Q> {
    frames: Q,
    close: oneshot::Receiver<CloseCode>,
}

/// Serves one socket until it closes, then releases everything it held. Returns the close code.
pub async fn serve_socket<S, St>(
    mut socket: S,
    hub: Arc<Hub>,
    mut params: Box<SocketParams<St>>,
    shutdown: CancellationToken,
) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
{
    let slot = params.handshake_slot.take();
    let session = params.session.as_str();
    let Attachment {
        conn_id,
        frames,
        close: hub_close,
    } = hub.attach(session);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    // Every subscribe request, successful or not, holds a reference until `release`.
    let subscribed = hub.subscribe(session).await;
    let hub_side = FromHub {
        frames,
        close: hub_close,
    };
    let code = serve(
        &mut socket,
        &params,
        conn_id,
        hub_side,
        slot,
        subscribed,
        &shutdown,
    )
    .await;
    if let Some(receipts) = &params.receipts {
        receipts.ended(session);
    }
    hub.release(session);
    hub.detach(session, conn_id);
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    metrics::counter!(m::CLOSED, "code" => code.to_string()).increment(1);
    debug!(session_id = session, conn_id, code, "socket closed");
    code
}

/// Claims the session (once subscribed), serves the socket and releases the session with the pending ack.
async fn serve<S, St, Q>(
    socket: &mut S,
    params: &SocketParams<St>,
    conn_id: u64,
    hub_side: FromHub<Q>,
    handshake_slot: Option<HandshakeSlot>,
    subscribed: Result<(), String>,
    shutdown: &CancellationToken,
) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
    Q: LiveQueue,
{
    let session = params.session.as_str();
    let store = &params.store;
    let conn = conn_ref(&params.node_id, conn_id);
    let claimed = match subscribed {
        Ok(()) => {
            Box::pin(store.claim(&params.session, &params.node_id, &conn, params.session_ttl))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &claimed {
        info!(session_id = session, error = %e, "cannot set up the session; closing");
    }
    match machine::on_claim(claimed) {
        Setup::Serve { previous } => {
            if let Some(previous) = previous
                && let Err(e) =
                    Box::pin(store.tell_holder(&params.session, &previous, CloseCode::TakenOver))
                        .await
            {
                warn!(session_id = session, previous, error = %e, "cannot tell the previous holder to close");
            }
            let (code, ack) = run(socket, params, &conn, hub_side, handshake_slot, shutdown).await;
            if let Err(e) =
                Box::pin(store.release(&params.session, &conn, params.session_ttl, ack)).await
            {
                debug!(session_id = session, error = %e, "cannot mark the session disconnected");
            }
            code
        }
        Setup::Refuse(code) => close(socket, code).await,
    }
}

async fn run<S, St, Q>(
    socket: &mut S,
    params: &SocketParams<St>,
    conn: &str,
    hub_side: FromHub<Q>,
    handshake_slot: Option<HandshakeSlot>,
    shutdown: &CancellationToken,
) -> (u16, Option<u64>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
    Q: LiveQueue,
{
    let FromHub {
        mut frames,
        close: mut hub_close,
    } = hub_side;
    // Taken over or shutting down while the subscription was being confirmed: no welcome, just the close.
    if let Some(code) = machine::before_welcome(shutdown.is_cancelled(), hub_close.try_recv().ok())
    {
        return (close(socket, code).await, None);
    }
    // Subscribed first (the caller waited for Redis to confirm), so everything published from here on is queued
    // in `frames`; everything before is in the buffer. Reading the buffer now leaves no gap, and the machine
    // drops what both hold.
    let session = params.session.as_str();
    let position = params.position.as_ref();
    let read = Box::pin(read_after(params, position)).await;
    let snap = read
        .inspect_err(
            |e| info!(session_id = session, error = %e, "cannot read the session buffer; closing"),
        )
        .ok();
    let terms = Terms {
        session: &params.session,
        node: &params.node_id,
        keys: &params.token_keys,
        expires_at: params.expires_at,
        max_missed_pongs: params.max_missed_pongs,
        // Draining: this socket's own moment in the window, fixed once so a busy socket cannot postpone it.
        drain_after: params.drain_delay + params.drain_window.mul_f64(rand::random::<f64>()),
    };
    let (mut machine, opening) = match Socket::open(terms, position, snap) {
        Ok(opened) => opened,
        Err(code) => return (close(socket, code).await, None),
    };
    let written = params
        .receipts
        .as_ref()
        .map(|_| write::opening_frames(&opening));
    // Boxed: sent once per connection, so its state has no business in every connection's resident task.
    if Box::pin(send_opening(socket, opening, params.write_timeout))
        .await
        .is_err()
    {
        return (close::ABNORMAL, machine.pending_ack());
    }
    if let (Some(receipts), Some((epoch, frames))) = (&params.receipts, written) {
        // The client has every event up to its position only if the position is of this epoch.
        let resumed = position.filter(|p| p.epoch.as_deref() == Some(epoch.as_str()));
        receipts.opened(session, &epoch, resumed.map(|p| p.last_seq));
        receipts.written(session, frames);
    }
    drop(handshake_slot);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + params.ping_interval,
        params.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut close_at: Option<tokio::time::Instant> = None;
    // The token's expiry as one timer for the connection's life, moved only when a refresh moves the expiry:
    // a timer made afresh in every turn of the loop cost a clock read, a timer-wheel insert and a removal per
    // delivered event.
    let mut expires_at = machine.expires_at();
    let expiry = tokio::time::sleep_until(instant_of(expires_at));
    tokio::pin!(expiry);
    loop {
        if machine.expires_at() != expires_at {
            expires_at = machine.expires_at();
            expiry.as_mut().reset(instant_of(expires_at));
        }
        // Inbound and pings come before outbound frames, so a steady stream cannot starve the client's close
        // frames, its pings, or the liveness check.
        let action = tokio::select! {
            biased;
            () = shutdown.cancelled(), if close_at.is_none() => machine.on(Input::Shutdown),
            () = tokio::time::sleep_until(close_at.unwrap_or_else(tokio::time::Instant::now)), if close_at.is_some() => {
                machine.on(Input::DrainDue)
            }
            () = &mut expiry => machine.on(Input::Expired),
            reason = &mut hub_close => machine.on(Input::HubClose(reason.ok())),
            inbound = socket.next() => receive(&mut machine, &inbound, params),
            _ = ping.tick() => machine.on(Input::PingDue),
            // The next page of a replay, each under its own write deadline; between pages the socket answers its
            // client, pings and closes as usual.
            () = std::future::ready(()), if machine.replaying() => {
                match Box::pin(bounded(params.write_timeout, next_page(socket, &mut machine, params))).await {
                    Ok(()) => Action::Wait,
                    Err(()) => Action::Abort,
                }
            }
            live = frames.recv() => match live {
                None => machine.on(Input::HubGone),
                Some(live) => {
                    // Boxed: writing is the one state of this loop that is large (1.35 KB with its timeout), and
                    // inline the compiler lays it out beside the select's own state, which made every
                    // connection's resident task 2.5 KB larger (measured: `run` 4.4 KB inline, 1.9 KB boxed). One
                    // allocation per wake-up with events (a batch of up to COALESCE_MAX frames) costs far less
                    // than the write itself.
                    match Box::pin(bounded(params.write_timeout, forward(socket, live, &mut frames, &mut machine, params))).await {
                        Ok(()) => Action::Wait,
                        Err(()) => Action::Abort,
                    }
                }
            },
        };
        // A heartbeat's answer is one more input, so one wake-up can take two steps.
        let mut next = Some(action);
        while let Some(action) = next.take() {
            match action {
                Action::Wait => {}
                Action::DrainIn(after) => close_at = Some(tokio::time::Instant::now() + after),
                Action::Close(code) => return (close(socket, code).await, machine.pending_ack()),
                Action::Closed(code) => {
                    // tungstenite queued the close reply; flush so the client gets it.
                    let _ = bounded(params.write_timeout, socket.flush()).await;
                    return (code, machine.pending_ack());
                }
                Action::Abort => return (close::ABNORMAL, machine.pending_ack()),
                Action::Reply(frame) => {
                    if bounded(
                        params.write_timeout,
                        socket.send(Message::Text(frame.to_json().into())),
                    )
                    .await
                    .is_err()
                    {
                        return (close::ABNORMAL, machine.pending_ack());
                    }
                }
                Action::Heartbeat { ack } => {
                    // Keeps the session alive in Redis while it is connected, and closes a socket whose takeover
                    // or close message was lost. Bounded, so a slow Redis cannot hold the loop.
                    let beat = Box::pin(params.store.heartbeat(
                        &params.session,
                        conn,
                        params.session_ttl,
                        ack,
                    ));
                    let found = match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
                        Ok(Ok(found)) => Some(found),
                        Ok(Err(e)) => {
                            debug!(session_id = %params.session, error = %e, "cannot refresh the session");
                            None
                        }
                        Err(_) => {
                            debug!(session_id = %params.session, "session refresh timed out");
                            None
                        }
                    };
                    next = Some(machine.on(Input::Beat(found)));
                }
                Action::Ping => {
                    if bounded(
                        params.write_timeout,
                        socket.send(Message::Ping(Default::default())),
                    )
                    .await
                    .is_err()
                    {
                        return (close::ABNORMAL, machine.pending_ack());
                    }
                }
            }
        }
    }
}

/// Hands what the socket's receive side produced to the machine, asking the inbound budget only for the messages
/// it meters.
fn receive<St>(
    machine: &mut Socket<'_>,
    inbound: &Option<Result<Message, axum::Error>>,
    params: &SocketParams<St>,
) -> Action {
    let limit = &params.inbound_limit;
    let message = match inbound {
        Some(Ok(Message::Text(text))) => {
            let now = u64::try_from(ces_runtime::now_ms() / 1000).unwrap_or(0);
            let (action, rejected) = machine.on_text(text, now, limit.check().is_err());
            if let Some(e) = rejected {
                metrics::counter!(m::TOKEN_FAILURES, "reason" => e.to_string()).increment(1);
            }
            if let Some(receipts) = &params.receipts
                && let Ok(ces_protocol::frame::ClientFrame::Ack { seq }) =
                    ces_protocol::frame::parse_client_frame(text)
            {
                receipts.acked(params.session.as_str(), seq);
            }
            return action;
        }
        Some(Ok(Message::Binary(_))) => Received::Binary,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Received::Control,
        Some(Ok(Message::Close(frame))) => Received::Close(frame.as_ref().map(|f| f.code)),
        Some(Err(e)) => Received::Error(e),
        None => Received::End,
    };
    let over_limit = message.metered() && limit.check().is_err();
    machine.on(Input::Received {
        message,
        over_limit,
    })
}

/// Reads one page of the buffer after `position` (from the epoch's start if the position belongs to another
/// epoch); a fresh connection reads from the start.
async fn read_after<St: SessionStore>(
    params: &SocketParams<St>,
    position: Option<&Position>,
) -> Result<Snapshot, crate::Error> {
    let (store, session) = (&params.store, params.session.as_str());
    let after = position.map_or(0, |p| p.last_seq);
    let snap = store
        .fetch(session, after, params.state, params.page)
        .await?;
    if let Some(pos) = position
        && resume::needs_full_read(pos, &snap)
    {
        return store.fetch(session, 0, params.state, params.page).await;
    }
    Ok(snap)
}

/// The monotonic instant of a unix time in seconds (now, if it is already past).
fn instant_of(unix_secs: u64) -> tokio::time::Instant {
    let now_ms = u64::try_from(ces_runtime::now_ms()).unwrap_or(0);
    let left = unix_secs.saturating_mul(1000).saturating_sub(now_ms);
    tokio::time::Instant::now() + Duration::from_millis(left)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use ces_protocol::envelope::Envelope;
    use ces_protocol::frame::Lost;
    use futures::channel::mpsc;
    use tokio::task::JoinHandle;

    use super::machine::tests::env;
    use super::*;
    use crate::queue;
    use crate::session::{Claim, Heartbeat};
    use axum::extract::ws::{CloseFrame, Utf8Bytes};
    use ces_protocol::frame::ServerFrame;

    /// The server's end of a WebSocket made of two channels.
    struct Duplex {
        rx: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
        tx: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Duplex {
        type Item = Result<Message, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.rx.poll_next_unpin(cx)
        }
    }

    impl Sink<Message> for Duplex {
        type Error = axum::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.tx.poll_ready_unpin(cx).map_err(axum::Error::new)
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.tx.start_send_unpin(item).map_err(axum::Error::new)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.tx.poll_flush_unpin(cx).map_err(axum::Error::new)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.tx.poll_close_unpin(cx).map_err(axum::Error::new)
        }
    }

    impl LiveQueue for queue::Receiver<Live> {
        fn recv(&mut self) -> impl Future<Output = Option<Live>> + Send {
            queue::Receiver::recv(self)
        }

        fn try_recv(&mut self) -> Option<Live> {
            queue::Receiver::try_recv(self)
        }
    }

    /// A call the socket made to its store.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Claim { conn: String },
        Tell { holder: String, code: CloseCode },
        Heartbeat { ack: Option<u64> },
        Release { conn: String, ack: Option<u64> },
        Fetch { after: u64 },
    }

    #[derive(Debug, Default)]
    struct State {
        /// Every call fails, as with Redis down.
        down: bool,
        previous: Option<String>,
        closed: bool,
        /// Answers of the next heartbeats (`Held` once they run out).
        beats: Vec<Heartbeat>,
        epoch: String,
        events: Vec<Envelope>,
        calls: Vec<Call>,
    }

    /// An in-memory session store: one session's claim and its reconnection buffer.
    #[derive(Debug, Clone, Default)]
    struct Memory(Arc<Mutex<State>>);

    impl Memory {
        fn with_events(epoch: &str, seqs: impl IntoIterator<Item = u64>) -> Self {
            let store = Self::default();
            store.set_buffer(epoch, seqs);
            store
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().expect("store lock")
        }

        fn set_buffer(&self, epoch: &str, seqs: impl IntoIterator<Item = u64>) {
            let mut state = self.state();
            state.epoch = epoch.into();
            state.events = seqs.into_iter().map(|s| env(epoch, s)).collect();
        }

        fn calls(&self) -> Vec<Call> {
            self.state().calls.clone()
        }

        fn call<T>(
            &self,
            call: Call,
            answer: impl FnOnce(&mut State) -> T,
        ) -> Result<T, crate::Error> {
            let mut state = self.state();
            state.calls.push(call);
            if state.down {
                return Err(crate::Error::UnexpectedReply("redis down"));
            }
            Ok(answer(&mut state))
        }
    }

    impl SessionStore for Memory {
        fn claim(
            &self,
            _: &SessionId,
            _: &str,
            conn: &str,
            _: Duration,
        ) -> impl Future<Output = Result<Claim, crate::Error>> + Send {
            let call = Call::Claim { conn: conn.into() };
            std::future::ready(self.call(call, |s| {
                if s.closed {
                    Claim::Closed
                } else {
                    Claim::Held {
                        previous: s.previous.clone(),
                    }
                }
            }))
        }

        fn tell_holder(
            &self,
            _: &SessionId,
            holder: &str,
            code: CloseCode,
        ) -> impl Future<Output = Result<(), crate::Error>> + Send {
            let call = Call::Tell {
                holder: holder.into(),
                code,
            };
            std::future::ready(self.call(call, |_| ()))
        }

        fn heartbeat(
            &self,
            _: &SessionId,
            _: &str,
            _: Duration,
            ack: Option<u64>,
        ) -> impl Future<Output = Result<Heartbeat, crate::Error>> + Send {
            std::future::ready(self.call(Call::Heartbeat { ack }, |s| {
                if s.beats.is_empty() {
                    Heartbeat::Held
                } else {
                    s.beats.remove(0)
                }
            }))
        }

        fn release(
            &self,
            _: &SessionId,
            conn: &str,
            _: Duration,
            ack: Option<u64>,
        ) -> impl Future<Output = Result<(), crate::Error>> + Send {
            let call = Call::Release {
                conn: conn.into(),
                ack,
            };
            std::future::ready(self.call(call, |_| ()))
        }

        fn fetch(
            &self,
            _: &str,
            after: u64,
            _: resume::StateTerms,
            page: resume::Page,
        ) -> impl Future<Output = Result<Snapshot, crate::Error>> + Send {
            std::future::ready(self.call(Call::Fetch { after }, |s| {
                let last_seq = s.events.last().map_or(0, |e| e.seq);
                let events: Vec<Envelope> = s
                    .events
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(page.events)
                    .cloned()
                    .collect();
                Snapshot {
                    epoch: s.epoch.clone(),
                    last_seq,
                    after,
                    more: events.last().is_some_and(|e| e.seq < last_seq),
                    events,
                    ..Default::default()
                }
            }))
        }
    }

    const CONN: &str = "edge-a/7";

    // The edge's tokio has no `test-util` (no paused clock): tests that need no ping get one that never comes
    // during the test, and those that do get a short one. Assertions are on what is sent and in which order only.
    const NO_PING: Duration = Duration::from_secs(3600);
    const QUICK_PING: Duration = Duration::from_millis(10);
    const GUARD: Duration = Duration::from_secs(10);

    fn event(seq: u64) -> Message {
        Message::Text(
            format!(r#"{{"type":"event","seq":{seq},"id":"id{seq}","event":"t","data":1}}"#).into(),
        )
    }

    fn live(epoch: &str, seq: u64) -> Live {
        let frame = ces_protocol::frame::event_frame(&env(epoch, seq)).expect("frame");
        Live {
            seq,
            epoch: Arc::from(epoch),
            frame: Utf8Bytes::from(frame),
            resync: false,
            received: std::time::Instant::now(),
            produced_at_ms: 0,
            span: Default::default(),
        }
    }

    fn text(frame: ServerFrame) -> Message {
        Message::Text(frame.to_json().into())
    }

    fn welcome(epoch: &str, seq: u64) -> Message {
        text(ServerFrame::Welcome {
            session_id: "s-1".into(),
            node: "edge-a".into(),
            epoch: epoch.into(),
            seq,
        })
    }

    fn closing(code: CloseCode) -> Message {
        Message::Close(Some(CloseFrame {
            code: code.code(),
            reason: Utf8Bytes::from_static(code.reason()),
        }))
    }

    /// A socket served over channels, and the test's ends of them.
    struct Served {
        to_server: mpsc::UnboundedSender<Result<Message, axum::Error>>,
        from_server: mpsc::UnboundedReceiver<Message>,
        live: queue::Sender<Live>,
        hub_close: Option<oneshot::Sender<CloseCode>>,
        shutdown: CancellationToken,
        code: JoinHandle<u16>,
    }

    impl Served {
        async fn next(&mut self) -> Message {
            // A guard, not an assertion on time: a socket that never sends fails the test instead of hanging it.
            tokio::time::timeout(GUARD, self.from_server.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
        }

        fn send(&self, message: Message) {
            self.to_server
                .unbounded_send(Ok(message))
                .expect("socket open");
        }

        /// Closes the socket as the hub does (a takeover on this node or by a control message, a slow consumer).
        fn close_from_hub(&mut self, code: CloseCode) {
            let hub_close = self.hub_close.take().expect("closed once");
            hub_close.send(code).expect("socket open");
        }

        fn push(&self, live: Live) {
            assert!(self.live.try_send(live).is_ok(), "queue full");
        }

        /// Ends the client side and returns the socket's close code.
        async fn code(self) -> u16 {
            drop(self.to_server);
            tokio::time::timeout(GUARD, self.code)
                .await
                .expect("closed in time")
                .expect("served")
        }
    }

    type Params = SocketParams<Memory>;

    fn params(store: Memory, position: Option<Position>) -> Params {
        let expires_at = u64::try_from(ces_runtime::now_ms() / 1000).unwrap_or(0) + 3600;
        let per_second = std::num::NonZeroU32::new(100).expect("nonzero");
        SocketParams {
            session: SessionId::parse("s-1").expect("session id"),
            node_id: "edge-a".into(),
            ping_interval: NO_PING,
            write_timeout: Duration::from_secs(10),
            max_missed_pongs: 2,
            position,
            store,
            state: resume::StateTerms {
                ttl: Duration::from_secs(60),
                durable_restarts: false,
                unpublished_ttl: Duration::from_secs(30),
            },
            page: resume::Page::REPLAY,
            session_ttl: Duration::from_secs(60),
            drain_delay: Duration::ZERO,
            drain_window: Duration::ZERO,
            expires_at,
            token_keys: ces_protocol::token::TokenKeys::new([("k1", &[7u8; 32][..])])
                .expect("keys"),
            inbound_limit: Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                per_second,
            ))),
            handshake_slot: None,
            receipts: None,
        }
    }

    fn serve_with(params: Params) -> Served {
        let (to_server, server_rx) = mpsc::unbounded();
        let (server_tx, from_server) = mpsc::unbounded();
        // Room for every frame a test queues before the socket reads them.
        let (live, frames) = queue::bounded(16, 1 << 20);
        let (hub_close, close_rx) = oneshot::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let code = tokio::spawn(async move {
            let mut socket = Duplex {
                rx: server_rx,
                tx: server_tx,
            };
            let hub_side = FromHub {
                frames,
                close: close_rx,
            };
            serve(&mut socket, &params, 7, hub_side, None, Ok(()), &stop).await
        });
        Served {
            to_server,
            from_server,
            live,
            hub_close: Some(hub_close),
            shutdown,
            code,
        }
    }

    fn start(store: &Memory) -> Served {
        serve_with(params(store.clone(), None))
    }

    #[tokio::test]
    async fn the_welcome_and_the_replay_come_first_then_live_frames_without_duplicates() {
        let store = Memory::with_events("e1", 1..=2);
        let mut socket = start(&store);
        assert_eq!(socket.next().await, welcome("e1", 2));
        assert_eq!(socket.next().await, event(1));
        assert_eq!(socket.next().await, event(2));
        // Published while the buffer was read: queued live, and already sent by the replay.
        socket.push(live("e1", 2));
        socket.push(live("e1", 3));
        assert_eq!(socket.next().await, event(3));
        socket.send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static("bye"),
        })));
        assert_eq!(socket.code().await, 1000);
        assert_eq!(
            store.calls(),
            [
                Call::Claim { conn: CONN.into() },
                Call::Fetch { after: 0 },
                Call::Release {
                    conn: CONN.into(),
                    ack: None
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_resuming_client_gets_resumed_ok_and_what_it_missed() {
        let store = Memory::with_events("e1", 1..=4);
        let position = Position {
            last_seq: 2,
            epoch: Some("e1".into()),
        };
        let mut socket = serve_with(params(store.clone(), Some(position)));
        assert_eq!(socket.next().await, welcome("e1", 4));
        assert_eq!(
            socket.next().await,
            text(ServerFrame::Resumed {
                ok: true,
                replayed: 2,
                reason: None,
                lost: None,
                epoch: None,
            })
        );
        assert_eq!(socket.next().await, event(3));
        assert_eq!(socket.next().await, event(4));
        assert_eq!(socket.code().await, close::ABNORMAL);
        assert_eq!(store.calls()[1], Call::Fetch { after: 2 });
    }

    #[tokio::test]
    async fn a_long_replay_goes_page_by_page_and_live_events_follow_it_once() {
        let store = Memory::with_events("e1", 1..=7);
        let mut socket = serve_with(SocketParams {
            page: resume::Page {
                events: 2,
                bytes: 1 << 20,
            },
            ..params(store.clone(), None)
        });
        // Queued live while the pages are written: 6 and 7 come with the pages, 8 after them.
        for seq in 6..=7 {
            socket.push(live("e1", seq));
        }
        assert_eq!(socket.next().await, welcome("e1", 7));
        for seq in 1..=7 {
            assert_eq!(socket.next().await, event(seq));
        }
        store.set_buffer("e1", 1..=8);
        socket.push(live("e1", 8));
        assert_eq!(socket.next().await, event(8));
        assert_eq!(socket.code().await, close::ABNORMAL);
        let fetches: Vec<Call> = store
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Fetch { .. }))
            .collect();
        assert_eq!(
            fetches,
            [0, 2, 4, 6].map(|after| Call::Fetch { after }),
            "one read per page, each after the last event sent"
        );
    }

    #[tokio::test]
    async fn a_takeover_closes_with_4009_after_telling_the_previous_holder() {
        let store = Memory::with_events("e1", []);
        store.state().previous = Some("edge-b/3".into());
        let mut socket = start(&store);
        assert_eq!(socket.next().await, welcome("e1", 0));
        socket.close_from_hub(CloseCode::TakenOver);
        assert_eq!(socket.next().await, closing(CloseCode::TakenOver));
        socket.send(Message::Close(None));
        assert_eq!(socket.code().await, CloseCode::TakenOver.code());
        assert_eq!(
            store.calls(),
            [
                Call::Claim { conn: CONN.into() },
                Call::Tell {
                    holder: "edge-b/3".into(),
                    code: CloseCode::TakenOver
                },
                Call::Fetch { after: 0 },
                Call::Release {
                    conn: CONN.into(),
                    ack: None
                },
            ]
        );
    }

    #[tokio::test]
    async fn the_pending_ack_reaches_release() {
        let store = Memory::with_events("e1", 1..=3);
        let mut socket = start(&store);
        for expected in [welcome("e1", 3), event(1), event(2), event(3)] {
            assert_eq!(socket.next().await, expected);
        }
        for seq in [3, 2] {
            socket.send(Message::Text(
                format!(r#"{{"type":"ack","seq":{seq}}}"#).into(),
            ));
        }
        socket.send(Message::Close(None));
        assert_eq!(socket.code().await, close::NO_STATUS_RECEIVED);
        assert_eq!(
            store.calls().last(),
            Some(&Call::Release {
                conn: CONN.into(),
                ack: Some(3)
            })
        );
    }

    #[tokio::test]
    async fn the_heartbeat_stores_the_ack_and_closes_with_4009_when_another_holds_the_session() {
        let store = Memory::with_events("e1", []);
        store.state().beats = vec![Heartbeat::Held, Heartbeat::Taken];
        let mut socket = serve_with(Params {
            ping_interval: QUICK_PING,
            ..params(store.clone(), None)
        });
        // Queued before the loop starts, and inbound frames come before pings: read before the first heartbeat.
        socket.send(Message::Text(r#"{"type":"ack","seq":0}"#.into()));
        assert_eq!(socket.next().await, welcome("e1", 0));
        assert_eq!(socket.next().await, Message::Ping(Default::default()));
        assert_eq!(socket.next().await, closing(CloseCode::TakenOver));
        assert_eq!(socket.code().await, CloseCode::TakenOver.code());
        assert_eq!(
            store.calls()[2..],
            [
                Call::Heartbeat { ack: Some(0) },
                Call::Heartbeat { ack: None },
                Call::Release {
                    conn: CONN.into(),
                    ack: None
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_with_4000() {
        let store = Memory::with_events("e1", []);
        let mut socket = serve_with(Params {
            ping_interval: QUICK_PING,
            ..params(store, None)
        });
        assert_eq!(socket.next().await, welcome("e1", 0));
        for _ in 0..2 {
            assert_eq!(socket.next().await, Message::Ping(Default::default()));
        }
        assert_eq!(socket.next().await, closing(CloseCode::PingTimeout));
        assert_eq!(socket.code().await, CloseCode::PingTimeout.code());
    }

    #[tokio::test]
    async fn a_gap_is_filled_and_an_epoch_change_announced_from_the_buffer() {
        let store = Memory::with_events("e1", 1..=1);
        let mut socket = start(&store);
        assert_eq!(socket.next().await, welcome("e1", 1));
        assert_eq!(socket.next().await, event(1));
        // 2 and 3 were lost on the way; 4 reveals the gap.
        store.set_buffer("e1", 1..=4);
        socket.push(live("e1", 4));
        for seq in 2..=4 {
            assert_eq!(socket.next().await, event(seq));
        }
        // Redis lost the buffer: the new epoch's first event arrives live.
        store.set_buffer("e2", 1..=1);
        socket.push(live("e2", 1));
        assert_eq!(
            socket.next().await,
            text(ServerFrame::Resumed {
                ok: false,
                replayed: 1,
                reason: Some(resume::reason::EPOCH_CHANGED.into()),
                lost: Some(Lost { from: 5, to: None }),
                epoch: Some("e2".into()),
            })
        );
        assert_eq!(socket.next().await, event(1));
        // The Pub/Sub connection came back: what was published meanwhile arrives without a next event.
        store.set_buffer("e2", 1..=2);
        socket.push(Live::resync());
        assert_eq!(socket.next().await, event(2));
        assert_eq!(socket.code().await, close::ABNORMAL);
        assert_eq!(
            store.calls()[1..5],
            [
                Call::Fetch { after: 0 },
                Call::Fetch { after: 1 },
                Call::Fetch { after: 4 },
                Call::Fetch { after: 0 },
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_closes_with_1012() {
        let store = Memory::with_events("e1", []);
        let mut socket = start(&store);
        assert_eq!(socket.next().await, welcome("e1", 0));
        socket.shutdown.cancel();
        assert_eq!(socket.next().await, closing(CloseCode::ServiceRestart));
        assert_eq!(socket.code().await, CloseCode::ServiceRestart.code());
    }

    #[tokio::test]
    async fn an_expired_token_closes_with_4001() {
        let store = Memory::with_events("e1", []);
        let mut params = params(store, None);
        params.expires_at = 0;
        let mut socket = serve_with(params);
        assert_eq!(socket.next().await, welcome("e1", 0));
        assert_eq!(socket.next().await, closing(CloseCode::TokenExpired));
        assert_eq!(socket.code().await, CloseCode::TokenExpired.code());
    }

    #[tokio::test]
    async fn a_slow_consumer_closed_by_the_hub_gets_4008() {
        let store = Memory::with_events("e1", []);
        let mut socket = start(&store);
        assert_eq!(socket.next().await, welcome("e1", 0));
        socket.close_from_hub(CloseCode::SlowConsumer);
        assert_eq!(socket.next().await, closing(CloseCode::SlowConsumer));
        assert_eq!(socket.code().await, CloseCode::SlowConsumer.code());
    }

    #[tokio::test]
    async fn a_deleted_session_closes_with_4003_without_a_welcome() {
        let store = Memory::with_events("e1", []);
        store.state().closed = true;
        let mut socket = start(&store);
        assert_eq!(socket.next().await, closing(CloseCode::SessionClosed));
        assert_eq!(socket.code().await, CloseCode::SessionClosed.code());
        assert_eq!(store.calls(), [Call::Claim { conn: CONN.into() }]);
    }

    #[tokio::test]
    async fn redis_down_at_set_up_closes_with_1011_without_a_welcome() {
        let store = Memory::with_events("e1", []);
        store.state().down = true;
        let mut socket = start(&store);
        assert_eq!(socket.next().await, closing(CloseCode::InternalError));
        assert_eq!(socket.code().await, CloseCode::InternalError.code());
        assert_eq!(store.calls(), [Call::Claim { conn: CONN.into() }]);
    }

    #[tokio::test]
    async fn a_shutdown_before_the_welcome_closes_with_1012_and_releases() {
        let store = Memory::with_events("e1", []);
        let mut socket = start(&store);
        socket.shutdown.cancel();
        // The socket task has not run yet: it finds the shutdown before its welcome.
        assert_eq!(socket.next().await, closing(CloseCode::ServiceRestart));
        assert_eq!(socket.code().await, CloseCode::ServiceRestart.code());
        assert_eq!(
            store.calls(),
            [
                Call::Claim { conn: CONN.into() },
                Call::Release {
                    conn: CONN.into(),
                    ack: None
                },
            ]
        );
    }
}
