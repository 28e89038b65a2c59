//! One WebSocket connection, from welcome frame to close code.
//!
//! [`serve_socket`] is generic over any `Sink`/`Stream` of WebSocket messages, so the protocol logic can be
//! driven by a real socket or by channels in unit tests. Outbound frames are coalesced: every frame already
//! queued is fed to the socket before one flush, so a burst costs one write syscall rather than one per event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use ces_protocol::close::{self, CloseCode, conn_ref};
use ces_protocol::frame::{ClientFrame, ServerFrame, parse_client_frame};
use ces_protocol::keys::SessionId;
use fred::clients::Client;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hub::{Attachment, Hub, Live};
use crate::metrics as m;
use crate::resume::{self, Decision, Position, Snapshot};
use crate::session::{self, Claim, Heartbeat};

/// Longest a heartbeat may wait on Redis.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a single socket write (and its flush) may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server-initiated close waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Invalid client frames (bad JSON, unknown types, malformed fields) in a row before the socket is closed with
/// 1008: each one is answered with an error frame, but a client that only sends garbage is broken or hostile.
pub const MAX_INVALID_FRAMES: u32 = 10;

/// Most queued frames written before one flush; bounds the latency of the first frame in a burst.
const COALESCE_MAX: usize = 64;

/// Per-connection parameters.
#[derive(Debug)]
pub struct SocketParams {
    /// The session this socket serves.
    pub session: SessionId,
    /// This node's id, for the welcome frame.
    pub node_id: String,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// Pings in a row without any inbound frame before the socket is closed.
    pub max_missed_pongs: u32,
    /// Where the client says it is (`last_seq`/`epoch` on connect), `None` for a fresh connection.
    pub position: Option<Position>,
    /// Command connection, to read the reconnection buffer.
    pub redis: Client,
    /// TTL of a session's epoch and `seq` state, given to a session that has none yet.
    pub state_ttl: Duration,
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
    pub handshake_slot: Option<crate::limits::HandshakeSlot>,
}

/// Where the socket stands in the session's event stream.
#[derive(Debug)]
struct Cursor {
    epoch: String,
    last_sent: u64,
}

/// Serves one socket until it closes, then releases everything it held. Returns the close code.
pub async fn serve_socket<S>(
    mut socket: S,
    hub: Arc<Hub>,
    mut params: Box<SocketParams>,
    shutdown: CancellationToken,
) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let session = params.session.as_str();
    let attachment = hub.attach(session);
    let conn_id = attachment.conn_id;
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    // Every subscribe request, successful or not, holds a reference until `release`.
    let subscribed = hub.subscribe(session).await;
    let conn = conn_ref(&params.node_id, conn_id);
    let claimed = match subscribed {
        Ok(()) => Box::pin(session::claim(
            &params.redis,
            &params.session,
            &params.node_id,
            &conn,
            params.session_ttl,
        ))
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let code = match claimed {
        Ok(Claim::Held { previous }) => {
            if let Some(previous) = previous
                && let Err(e) = Box::pin(session::tell_holder(
                    &params.redis,
                    &params.session,
                    &previous,
                    CloseCode::TakenOver,
                ))
                .await
            {
                warn!(session_id = session, previous, error = %e, "cannot tell the previous holder to close");
            }
            let slot = params.handshake_slot.take();
            let (code, ack) = run(&mut socket, &params, &conn, attachment, slot, &shutdown).await;
            if let Err(e) = Box::pin(session::release(
                &params.redis,
                &params.session,
                &conn,
                params.session_ttl,
                ack,
            ))
            .await
            {
                debug!(session_id = session, error = %e, "cannot mark the session disconnected");
            }
            code
        }
        Ok(Claim::Closed) => close(&mut socket, CloseCode::SessionClosed).await,
        Err(e) => {
            info!(session_id = session, error = %e, "cannot set up the session; closing");
            close(&mut socket, CloseCode::InternalError).await
        }
    };
    hub.release(session);
    hub.detach(session, conn_id);
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    metrics::counter!(m::CLOSED, "code" => code.to_string()).increment(1);
    debug!(session_id = session, conn_id, code, "socket closed");
    code
}

async fn run<S>(
    socket: &mut S,
    params: &SocketParams,
    conn: &str,
    attachment: Attachment,
    handshake_slot: Option<crate::limits::HandshakeSlot>,
    shutdown: &CancellationToken,
) -> (u16, Option<u64>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    // Acks are stored with the next heartbeat, so a client acking every event costs no Redis call per frame.
    let mut pending_ack: Option<u64> = None;
    let Attachment {
        mut frames,
        close: mut hub_close,
        ..
    } = attachment;
    // Taken over or shutting down while the subscription was being confirmed: no welcome, just the close.
    if shutdown.is_cancelled() {
        return (close(socket, CloseCode::ServiceRestart).await, pending_ack);
    }
    if let Ok(code) = hub_close.try_recv() {
        return (close(socket, code).await, pending_ack);
    }
    // Subscribed first (the caller waited for Redis to confirm), so everything published from here on is queued
    // in `frames`; everything before is in the buffer. Reading the buffer now leaves no gap, and the cursor drops
    // what both hold.
    let session = params.session.as_str();
    let decision = match Box::pin(read_position(params)).await {
        Ok(d) => d,
        Err(e) => {
            info!(session_id = session, error = %e, "cannot read the session buffer; closing");
            return (close(socket, CloseCode::InternalError).await, pending_ack);
        }
    };
    let (snapshot, decision) = decision;
    let welcome = ServerFrame::Welcome {
        session_id: params.session.to_string(),
        node: params.node_id.clone(),
        epoch: snapshot.epoch.clone(),
        seq: snapshot.last_seq,
    };
    if bounded(socket.send(Message::Text(welcome.to_json().into())))
        .await
        .is_err()
    {
        return (close::ABNORMAL, pending_ack);
    }
    record_resume(&decision);
    let mut cursor = Cursor {
        epoch: snapshot.epoch,
        last_sent: decision.last_sent,
    };
    if bounded(Box::pin(send_decision(socket, decision)))
        .await
        .is_err()
    {
        return (close::ABNORMAL, pending_ack);
    }
    drop(handshake_slot);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + params.ping_interval,
        params.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut missed_pongs = 0u32;
    let mut invalid_frames = 0u32;
    // Draining: this socket's own moment in the window, fixed once so a busy socket cannot postpone it.
    let drain_at = params.drain_delay + params.drain_window.mul_f64(rand::random::<f64>());
    let mut close_at: Option<tokio::time::Instant> = None;
    let mut expires_at = params.expires_at;
    loop {
        // Inbound and pings come before outbound frames, so a steady stream cannot starve the client's close
        // frames, its pings, or the liveness check.
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if close_at.is_none() => {
                close_at = Some(tokio::time::Instant::now() + drain_at);
            }
            () = tokio::time::sleep_until(close_at.unwrap_or_else(tokio::time::Instant::now)), if close_at.is_some() => {
                return (close(socket, CloseCode::ServiceRestart).await, pending_ack);
            }
            () = tokio::time::sleep_until(instant_of(expires_at)) => {
                return (close(socket, CloseCode::TokenExpired).await, pending_ack);
            }
            reason = &mut hub_close => {
                let code = reason.unwrap_or(CloseCode::TakenOver);
                return (close(socket, code).await, pending_ack);
            }
            inbound = socket.next() => {
                missed_pongs = 0;
                if matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_))))
                    && params.inbound_limit.check().is_err()
                {
                    return (close(socket, CloseCode::RateLimited).await, pending_ack);
                }
                match inbound {
                    None => return (close::ABNORMAL, pending_ack),
                    Some(Err(e)) => {
                        return match classify(&e) {
                            Some(code) => (close(socket, code).await, pending_ack),
                            None => (close::ABNORMAL, pending_ack),
                        };
                    }
                    Some(Ok(Message::Text(text))) => {
                        let (reply, ack) = handle_client_text(&text, params, &mut expires_at);
                        if matches!(reply, Some(ServerFrame::Error { .. })) {
                            invalid_frames += 1;
                            if invalid_frames >= MAX_INVALID_FRAMES {
                                return (close(socket, CloseCode::PolicyViolation).await, pending_ack);
                            }
                        } else {
                            invalid_frames = 0;
                        }
                        if let Some(seq) = ack {
                            pending_ack = Some(pending_ack.map_or(seq, |a| a.max(seq)));
                        }
                        if let Some(reply) = reply
                            && bounded(socket.send(Message::Text(reply.to_json().into()))).await.is_err()
                        {
                            return (close::ABNORMAL, pending_ack);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return (close(socket, CloseCode::UnsupportedData).await, pending_ack);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite queued the close reply; flush so the client gets it.
                        let _ = bounded(socket.flush()).await;
                        return (frame.map_or(close::NO_STATUS_RECEIVED, |f| f.code), pending_ack);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = ping.tick() => {
                if missed_pongs >= params.max_missed_pongs {
                    return (close(socket, CloseCode::PingTimeout).await, pending_ack);
                }
                missed_pongs += 1;
                // Keeps the session alive in Redis while it is connected, and closes a socket whose takeover or
                // close message was lost. Bounded, so a slow Redis cannot hold the loop.
                let beat = Box::pin(session::heartbeat(&params.redis, &params.session, conn, params.session_ttl, pending_ack.take()));
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
                    Ok(Ok(Heartbeat::Held)) => {}
                    Ok(Ok(Heartbeat::Closed)) => {
                        return (close(socket, CloseCode::SessionClosed).await, None);
                    }
                    Ok(Ok(Heartbeat::Taken)) => {
                        return (close(socket, CloseCode::TakenOver).await, None);
                    }
                    Ok(Err(e)) => debug!(session_id = %params.session, error = %e, "cannot refresh the session"),
                    Err(_) => debug!(session_id = %params.session, "session refresh timed out"),
                }
                if bounded(socket.send(Message::Ping(Default::default()))).await.is_err() {
                    return (close::ABNORMAL, pending_ack);
                }
            }
            live = frames.recv() => {
                let Some(live) = live else {
                    return (close(socket, CloseCode::TakenOver).await, pending_ack);
                };
                // Boxed: writing is the one state of this loop that is large (1.35 KB with its timeout), and
                // inline the compiler lays it out beside the select's own state, which made every connection's
                // resident task 2.5 KB larger (measured: `run` 4.4 KB inline, 1.9 KB boxed). One allocation per
                // wake-up with events (a batch of up to COALESCE_MAX frames) costs far less than the write itself.
                match Box::pin(bounded(forward(socket, live, &mut frames, &mut cursor, params))).await {
                    Ok(()) => {}
                    Err(()) => return (close::ABNORMAL, pending_ack),
                }
            }
        }
    }
}

/// Runs a socket write with [`WRITE_TIMEOUT`]: a peer whose TCP window stays closed (a suspended app, a dead
/// link) must not hold the task, its queue and its buffers forever.
async fn bounded<T>(write: impl Future<Output = Result<T, axum::Error>>) -> Result<T, ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

/// Reads the buffer after the client's position (from the epoch's start if the epoch changed) and decides.
async fn read_position(params: &SocketParams) -> Result<(Snapshot, Decision), crate::Error> {
    let session = params.session.as_str();
    let after = params.position.as_ref().map_or(0, |p| p.last_seq);
    let mut snap = resume::fetch(&params.redis, session, after, params.state_ttl).await?;
    if let Some(pos) = &params.position
        && resume::needs_full_read(pos, &snap)
    {
        snap = resume::fetch(&params.redis, session, 0, params.state_ttl).await?;
    }
    let decision = resume::decide(params.position.as_ref(), &snap);
    Ok((snap, decision))
}

fn record_resume(decision: &Decision) {
    if let Some(ServerFrame::Resumed { ok, reason, .. }) = &decision.resumed {
        let result = if *ok {
            "ok".to_owned()
        } else {
            reason.clone().unwrap_or_default()
        };
        metrics::counter!(m::RESUMES, "result" => result).increment(1);
    }
    metrics::counter!(m::REPLAYED).increment(decision.replay.len() as u64);
}

/// Writes a decision: its `resumed` frame, then the replayed events, with one flush.
async fn send_decision<S>(socket: &mut S, decision: Decision) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if let Some(frame) = decision.resumed {
        socket.feed(Message::Text(frame.to_json().into())).await?;
    }
    for frame in decision.replay {
        socket.feed(Message::Text(frame)).await?;
    }
    socket.flush().await
}

/// Writes `first` and whatever else is already queued (up to [`COALESCE_MAX`]) with one flush, keeping the
/// stream exact: a frame at or below the cursor was already sent (by the replay) and is dropped; a frame past
/// a gap first replays the gap from the buffer; a frame from another epoch means Redis lost the session's
/// buffer, which the client is told before the new epoch is replayed from its start.
async fn forward<S>(
    socket: &mut S,
    first: Live,
    frames: &mut crate::hub::Frames,
    cursor: &mut Cursor,
    params: &SocketParams,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut next = Some(first);
    let mut written = 0usize;
    let mut delivered = 0u64;
    // (dispatched, produced_at_ms) of each live frame fed, timed once the flush is done.
    let mut timings: Vec<(std::time::Instant, i64, ces_runtime::otel::EventSpan)> = Vec::new();
    while let Some(live) = next.take() {
        written += 1;
        if live.resync || *live.epoch != *cursor.epoch || live.seq > cursor.last_sent + 1 {
            // Rare path, boxed so its Redis reads do not weigh on every connection's resident task.
            Box::pin(fill_gap(socket, cursor, params)).await?;
        }
        if live.resync {
            // Nothing to write beyond what the buffer read above sent.
        } else if *live.epoch == *cursor.epoch && live.seq == cursor.last_sent + 1 {
            socket.feed(Message::Text(live.frame)).await?;
            cursor.last_sent = live.seq;
            delivered += 1;
            timings.push((live.received, live.produced_at_ms, live.span));
        } else {
            metrics::counter!(m::SKIPPED).increment(1);
        }
        if written < COALESCE_MAX {
            next = frames.try_recv();
        }
    }
    socket.flush().await?;
    metrics::counter!(m::DELIVERED).increment(delivered);
    let now_ms = ces_runtime::now_ms();
    for (received, produced_at_ms, span) in timings {
        span.end(Vec::new);
        use ces_runtime::telemetry::{E2E_LATENCY, hop, observe_hop, seconds_between};
        observe_hop(hop::EDGE_TO_SOCKET, received.elapsed().as_secs_f64());
        if produced_at_ms > 0 {
            metrics::histogram!(E2E_LATENCY).record(seconds_between(produced_at_ms, now_ms));
        }
    }
    Ok(())
}

/// Reads the buffer after the cursor and writes what the socket misses (a gap, a resync request, or an epoch
/// change, which the client is told about first), moving the cursor past it.
async fn fill_gap<S>(
    socket: &mut S,
    cursor: &mut Cursor,
    params: &SocketParams,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let position = Position {
        last_seq: cursor.last_sent,
        epoch: Some(cursor.epoch.clone()),
    };
    let snap = resume::fetch(
        &params.redis,
        params.session.as_str(),
        cursor.last_sent,
        params.state_ttl,
    )
    .await;
    let snap = match snap {
        Ok(s) if resume::needs_full_read(&position, &s) => {
            resume::fetch(&params.redis, params.session.as_str(), 0, params.state_ttl).await
        }
        other => other,
    };
    let Ok(snap) = snap else {
        return Err(axum::Error::new(
            "cannot read the session buffer to fill a gap",
        ));
    };
    let decision = resume::decide(Some(&position), &snap);
    // A gap filled completely is invisible to the client; only a loss or an epoch change is announced.
    let notice = decision
        .resumed
        .filter(|f| matches!(f, ServerFrame::Resumed { ok: false, .. }));
    if let Some(ServerFrame::Resumed { reason, .. }) = &notice {
        metrics::counter!(m::RESUMES, "result" => reason.clone().unwrap_or_default()).increment(1);
    }
    metrics::counter!(m::GAPS_FILLED).increment(decision.replay.len() as u64);
    cursor.epoch = snap.epoch;
    cursor.last_sent = decision.last_sent;
    for frame in notice
        .map(|f| Utf8Bytes::from(f.to_json()))
        .into_iter()
        .chain(decision.replay)
    {
        socket.feed(Message::Text(frame)).await?;
    }
    Ok(())
}

/// The reply to a client frame, and the `seq` it acknowledges, if any. A valid `refresh` for this session moves
/// `expires_at` (never back).
fn handle_client_text(
    text: &str,
    params: &SocketParams,
    expires_at: &mut u64,
) -> (Option<ServerFrame>, Option<u64>) {
    match parse_client_frame(text) {
        Ok(ClientFrame::Ping) => (Some(ServerFrame::Pong), None),
        Ok(ClientFrame::Ack { seq }) => (None, Some(seq)),
        Ok(ClientFrame::Refresh { token }) => {
            let now = u64::try_from(ces_runtime::now_ms() / 1000).unwrap_or(0);
            let reply = match params.token_keys.verify(&token, now) {
                Ok(v) if v.session_id == params.session => {
                    *expires_at = (*expires_at).max(v.expires_at);
                    ServerFrame::Refreshed {
                        expires_at: *expires_at,
                    }
                }
                Ok(_) => ServerFrame::Error {
                    code: "invalid_token".into(),
                    message: "the token is for another session".into(),
                },
                Err(e) => {
                    metrics::counter!(m::TOKEN_FAILURES, "reason" => e.to_string()).increment(1);
                    ServerFrame::Error {
                        code: "invalid_token".into(),
                        message: format!("token rejected: {e}"),
                    }
                }
            };
            (Some(reply), None)
        }
        Err(reply) => (Some(reply), None),
    }
}

/// The monotonic instant of a unix time in seconds (now, if it is already past).
fn instant_of(unix_secs: u64) -> tokio::time::Instant {
    let now_ms = u64::try_from(ces_runtime::now_ms()).unwrap_or(0);
    let left = unix_secs.saturating_mul(1000).saturating_sub(now_ms);
    tokio::time::Instant::now() + Duration::from_millis(left)
}

/// Maps a receive error to the close code and reason to answer with; `None` means the connection is gone.
fn classify(e: &axum::Error) -> Option<CloseCode> {
    use std::error::Error as _;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())?
    {
        tungstenite::Error::Capacity(_) => Some(CloseCode::MessageTooBig),
        tungstenite::Error::Utf8(_) => Some(CloseCode::InvalidPayload),
        tungstenite::Error::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

/// Sends a close frame and waits briefly for the client's close reply, so the close frame is not lost to a TCP
/// reset when the client writes (e.g. a pong) after the server already dropped the connection.
async fn close<S>(socket: &mut S, code: CloseCode) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    // Boxed: the close handshake is awaited in a dozen places of the socket loop, and each would otherwise add
    // its state to every connection's resident task size.
    Box::pin(close_handshake(socket, code)).await
}

async fn close_handshake<S>(socket: &mut S, code: CloseCode) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            while let Some(Ok(msg)) = socket.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    code.code()
}
