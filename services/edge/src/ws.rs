//! One WebSocket connection, from welcome frame to close code.
//!
//! [`serve_socket`] is generic over any `Sink`/`Stream` of WebSocket messages, so the protocol logic can be
//! driven by a real socket or by channels in unit tests. Outbound frames are coalesced: every frame already
//! queued is fed to the socket before one flush, so a burst costs one write syscall rather than one per event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use ces_shared::frame::{ClientFrame, ServerFrame, parse_client_frame};
use ces_shared::keys::SessionId;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::hub::{Attachment, CloseReason, Hub};
use crate::metrics as m;

/// Close codes the edge uses (docs/protocol.md).
pub mod close_code {
    /// The server is shutting down or restarting; reconnect (to any node).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client sent a binary frame.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// The client sent a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client sent a message larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Protocol violation by the client.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The server could not set up the connection (e.g. Redis unavailable); retry later.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The client stopped answering pings.
    pub const PING_TIMEOUT: u16 = 4000;
    /// No close frame was exchanged (the peer vanished).
    pub const ABNORMAL: u16 = 1006;
}

/// Longest a single socket write (and its flush) may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server-initiated close waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most queued frames written before one flush; bounds the latency of the first frame in a burst.
const COALESCE_MAX: usize = 64;

/// Per-connection parameters.
#[derive(Debug, Clone)]
pub struct SocketParams {
    /// The session this socket serves.
    pub session: SessionId,
    /// This node's id, for the welcome frame.
    pub node_id: String,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// Pings in a row without any inbound frame before the socket is closed.
    pub max_missed_pongs: u32,
}

/// Serves one socket until it closes, then releases everything it held. Returns the close code.
pub async fn serve_socket<S>(
    mut socket: S,
    hub: Arc<Hub>,
    params: SocketParams,
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
    let code = match subscribed {
        Ok(()) => run(&mut socket, &params, attachment, &shutdown).await,
        Err(e) => {
            info!(session, error = %e, "cannot subscribe; closing");
            close(
                &mut socket,
                close_code::INTERNAL_ERROR,
                "temporarily unavailable",
            )
            .await
        }
    };
    hub.release(session);
    hub.detach(session, conn_id);
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    metrics::counter!(m::CLOSED, "code" => code.to_string()).increment(1);
    debug!(session, conn_id, code, "socket closed");
    code
}

async fn run<S>(
    socket: &mut S,
    params: &SocketParams,
    attachment: Attachment,
    shutdown: &CancellationToken,
) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let Attachment {
        mut frames,
        close: mut hub_close,
        ..
    } = attachment;
    // Taken over or shutting down while the subscription was being confirmed: no welcome, just the close.
    if shutdown.is_cancelled() {
        return close(socket, close_code::SERVICE_RESTART, "server shutting down").await;
    }
    if let Ok(CloseReason { code, reason }) = hub_close.try_recv() {
        return close(socket, code, reason).await;
    }
    let welcome = ServerFrame::Welcome {
        session_id: params.session.to_string(),
        node: params.node_id.clone(),
    };
    if bounded(socket.send(Message::Text(welcome.to_json().into())))
        .await
        .is_err()
    {
        return close_code::ABNORMAL;
    }
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + params.ping_interval,
        params.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut missed_pongs = 0u32;
    loop {
        // Inbound and pings come before outbound frames, so a steady stream cannot starve the client's close
        // frames, its pings, or the liveness check.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                return close(socket, close_code::SERVICE_RESTART, "server shutting down").await;
            }
            reason = &mut hub_close => {
                let CloseReason { code, reason } = reason.unwrap_or(crate::hub::TAKEN_OVER);
                return close(socket, code, reason).await;
            }
            inbound = socket.next() => {
                missed_pongs = 0;
                match inbound {
                    None => return close_code::ABNORMAL,
                    Some(Err(e)) => {
                        return match classify(&e) {
                            Some((code, reason)) => close(socket, code, reason).await,
                            None => close_code::ABNORMAL,
                        };
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = handle_client_text(&text, params)
                            && bounded(socket.send(Message::Text(reply.to_json().into()))).await.is_err()
                        {
                            return close_code::ABNORMAL;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return close(socket, close_code::UNSUPPORTED_DATA, "binary frames are not supported").await;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite queued the close reply; flush so the client gets it.
                        let _ = bounded(socket.flush()).await;
                        return frame.map_or(1005, |f| f.code);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = ping.tick() => {
                if missed_pongs >= params.max_missed_pongs {
                    return close(socket, close_code::PING_TIMEOUT, "ping timeout").await;
                }
                missed_pongs += 1;
                if bounded(socket.send(Message::Ping(Default::default()))).await.is_err() {
                    return close_code::ABNORMAL;
                }
            }
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    return close(socket, crate::hub::TAKEN_OVER.code, crate::hub::TAKEN_OVER.reason).await;
                };
                if bounded(write_coalesced(socket, frame, &mut frames)).await.is_err() {
                    return close_code::ABNORMAL;
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

async fn write_coalesced<S>(
    socket: &mut S,
    first: Utf8Bytes,
    frames: &mut tokio::sync::mpsc::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    socket.feed(Message::Text(first)).await?;
    let mut n = 1u64;
    while (n as usize) < COALESCE_MAX {
        match frames.try_recv() {
            Ok(frame) => {
                socket.feed(Message::Text(frame)).await?;
                n += 1;
            }
            Err(_) => break,
        }
    }
    socket.flush().await?;
    metrics::counter!(m::DELIVERED).increment(n);
    Ok(())
}

fn handle_client_text(text: &str, params: &SocketParams) -> Option<ServerFrame> {
    match parse_client_frame(text) {
        Ok(ClientFrame::Ping) => Some(ServerFrame::Pong),
        Ok(ClientFrame::Ack { seq }) => {
            debug!(session = %params.session, seq, "client ack");
            None
        }
        Err(reply) => Some(reply),
    }
}

/// Maps a receive error to the close code and reason to answer with; `None` means the connection is gone.
fn classify(e: &axum::Error) -> Option<(u16, &'static str)> {
    use std::error::Error as _;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())?
    {
        tungstenite::Error::Capacity(_) => Some((close_code::MESSAGE_TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => {
            Some((close_code::INVALID_PAYLOAD, "text frame is not UTF-8"))
        }
        tungstenite::Error::Protocol(_) => Some((close_code::PROTOCOL_ERROR, "protocol error")),
        _ => None,
    }
}

/// Sends a close frame and waits briefly for the client's close reply, so the close frame is not lost to a TCP
/// reset when the client writes (e.g. a pong) after the server already dropped the connection.
async fn close<S>(socket: &mut S, code: u16, reason: &'static str) -> u16
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
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
    code
}
