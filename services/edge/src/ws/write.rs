//! Writing to the socket: the opening (welcome, `resumed`, the replay's first page), the replay's next pages,
//! live events coalesced into one flush with the gap fills the machine asks for, and the close handshake. Every
//! write is bounded by the socket's write timeout (`CES_WS_WRITE_TIMEOUT_MS`, a page of a replay counting as one
//! write), and
//! the rare or large paths are boxed, because the socket's task lives as long as the connection and its size is a
//! per-connection cost.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use ces_protocol::close::CloseCode;
use ces_protocol::frame::ServerFrame;
use futures::{Sink, SinkExt, Stream, StreamExt};

use super::machine::{Event, Fill, Opening, Socket, Verdict};
use super::{LiveQueue, SessionStore, SocketParams, read_after};
use crate::hub::Live;
use crate::metrics as m;
use crate::resume::Decision;

/// How long a server-initiated close waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most queued frames written before one flush; bounds the latency of the first frame in a burst.
const COALESCE_MAX: usize = 64;

/// Runs a socket write within `timeout`: a peer whose TCP window stays closed (a suspended app, a dead link)
/// must not hold the task, its queue and its buffers forever.
pub(super) async fn bounded<T>(
    timeout: Duration,
    write: impl Future<Output = Result<T, axum::Error>>,
) -> Result<T, ()> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

fn record_resume(decision: &Decision) {
    if let Some(ServerFrame::Resumed { ok, reason, .. }) = &decision.resumed {
        let result = if *ok {
            m::RESUMED_OK.to_owned()
        } else {
            reason.clone().unwrap_or_default()
        };
        metrics::counter!(m::RESUMES, "result" => result).increment(1);
    }
    metrics::counter!(m::REPLAYED).increment(decision.replay.len() as u64);
}

/// The epoch of `opening` and the frames after its welcome, for the receipts of what it writes.
pub(super) fn opening_frames(opening: &Opening) -> (String, Vec<Utf8Bytes>) {
    let epoch = match &opening.welcome {
        ServerFrame::Welcome { epoch, .. } => epoch.clone(),
        _ => String::new(),
    };
    let frames = opening
        .decision
        .resumed
        .iter()
        .map(|f| Utf8Bytes::from(f.to_json()))
        .chain(opening.decision.replay.iter().cloned())
        .collect();
    (epoch, frames)
}

/// Writes the welcome frame, then the decision: its `resumed` frame and the first page of the replay, with one
/// flush. Each write is bounded by `timeout` on its own.
pub(super) async fn send_opening<S>(
    socket: &mut S,
    opening: Opening,
    timeout: Duration,
) -> Result<(), ()>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let Opening { welcome, decision } = opening;
    bounded(
        timeout,
        socket.send(Message::Text(welcome.to_json().into())),
    )
    .await?;
    record_resume(&decision);
    bounded(timeout, send_decision(socket, decision)).await
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

/// Writes `first` and whatever else is already queued (up to [`COALESCE_MAX`]) with one flush, as the machine
/// judges each event: written, skipped as already sent, or preceded by a gap fill.
pub(super) async fn forward<S, St, Q>(
    socket: &mut S,
    first: Live,
    frames: &mut Q,
    machine: &mut Socket<'_>,
    params: &SocketParams<St>,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
    Q: LiveQueue,
{
    let mut next = Some(first);
    let mut written = 0usize;
    // What this flush writes, for its receipts (only when they are on).
    let mut receipted = params.receipts.as_ref().map(|_| Vec::new());
    let mut delivered = 0u64;
    // (dispatched, produced_at_ms) of each live frame fed, timed once the flush is done.
    let mut timings: Vec<(std::time::Instant, i64, ces_runtime::otel::EventSpan)> = Vec::new();
    while let Some(live) = next.take() {
        written += 1;
        let mut verdict = machine.on_live(Event::from(&live));
        if verdict == Verdict::FillGap {
            // Rare path, boxed so its Redis reads do not weigh on every connection's resident task.
            Box::pin(feed_page(
                socket,
                machine,
                params,
                m::GAPS_FILLED,
                receipted.as_mut(),
            ))
            .await?;
            verdict = machine.after_fill(Event::from(&live));
        }
        match verdict {
            Verdict::Deliver => {
                if let Some(receipted) = receipted.as_mut() {
                    receipted.push(live.frame.clone());
                }
                socket.feed(Message::Text(live.frame)).await?;
                delivered += 1;
                timings.push((live.received, live.produced_at_ms, live.span));
            }
            Verdict::Skip => metrics::counter!(m::SKIPPED).increment(1),
            Verdict::Done | Verdict::FillGap => {}
        }
        if written < COALESCE_MAX {
            next = frames.try_recv();
        }
    }
    socket.flush().await?;
    if let (Some(receipts), Some(frames)) = (&params.receipts, receipted) {
        receipts.written(params.session.as_str(), frames);
    }
    let handles = m::per_event();
    handles.delivered.increment(delivered);
    let now_ms = ces_runtime::now_ms();
    for (received, produced_at_ms, span) in timings {
        span.end(Vec::new);
        handles
            .edge_to_socket
            .record(received.elapsed().as_secs_f64());
        if produced_at_ms > 0 {
            handles.e2e.record(ces_runtime::telemetry::seconds_between(
                produced_at_ms,
                now_ms,
            ));
        }
    }
    Ok(())
}

/// Writes the next page of a replay or gap fill that [`Socket::replaying`] says is under way, with one flush.
pub(super) async fn next_page<S, St>(
    socket: &mut S,
    machine: &mut Socket<'_>,
    params: &SocketParams<St>,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
{
    let mut receipted = params.receipts.as_ref().map(|_| Vec::new());
    feed_page(socket, machine, params, m::REPLAYED, receipted.as_mut()).await?;
    socket.flush().await?;
    if let (Some(receipts), Some(frames)) = (&params.receipts, receipted) {
        receipts.written(params.session.as_str(), frames);
    }
    Ok(())
}

/// Reads one page after the machine's position and feeds what the socket misses: a notice first if events are lost
/// or the epoch changed (a gap, a resync request, an epoch change under a live socket, the next page of a replay),
/// then the events, counted in `counter`; each frame also goes to `receipted` when given.
async fn feed_page<S, St>(
    socket: &mut S,
    machine: &mut Socket<'_>,
    params: &SocketParams<St>,
    counter: &'static str,
    mut receipted: Option<&mut Vec<Utf8Bytes>>,
) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
    St: SessionStore,
{
    let position = machine.position();
    let Ok(snap) = read_after(params, Some(&position)).await else {
        return Err(axum::Error::new("cannot read the session buffer"));
    };
    let Fill { notice, replay } = machine.on_fill(snap);
    if let Some(ServerFrame::Resumed { reason, .. }) = &notice {
        metrics::counter!(m::RESUMES, "result" => reason.clone().unwrap_or_default()).increment(1);
    }
    metrics::counter!(counter).increment(replay.len() as u64);
    for frame in notice
        .map(|f| Utf8Bytes::from(f.to_json()))
        .into_iter()
        .chain(replay)
    {
        if let Some(receipted) = receipted.as_mut() {
            receipted.push(frame.clone());
        }
        socket.feed(Message::Text(frame)).await?;
    }
    Ok(())
}

/// Sends a close frame and waits briefly for the client's close reply, so the close frame is not lost to a TCP
/// reset when the client writes (e.g. a pong) after the server already dropped the connection.
pub(super) async fn close<S>(socket: &mut S, code: CloseCode) -> u16
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
