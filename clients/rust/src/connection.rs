//! The connection loop: connects, hands every frame to the [`Tracker`], reconnects as [`policy::after`] says with
//! the position to resume from, and sends the app [`Update`]s: events once and in order, gaps named exactly, and
//! each change of state.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::policy::{self, Ending, Next};
use crate::stream::{Gap, Position, Tracker, Verdict};
use crate::token::{self, Token};

/// How often the highest delivered `seq` is acknowledged, at most (and only when it moved).
const ACK_EVERY: Duration = Duration::from_millis(500);

/// Gives the current session token (the app's backend registers sessions and hands out tokens). The client calls
/// it at start, after a 4001 or a 401, and before the token expires to refresh it in band; never twice at once.
pub type GetToken =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<Token, String>> + Send + Sync>;

/// What the client needs.
#[derive(Clone)]
pub struct Options {
    /// The edge (or load balancer) base URL, `http://host:port` or `https://...`.
    pub url: String,
    /// The token source.
    pub get_token: GetToken,
    /// A position saved by an earlier run, to resume from.
    pub resume_from: Option<Position>,
    /// Nothing received for this long means the connection is dead (2.5 server ping intervals).
    pub silence_limit: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("resume_from", &self.resume_from)
            .field("silence_limit", &self.silence_limit)
            .finish_non_exhaustive()
    }
}

/// An event as the app gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its number in the session.
    pub seq: u64,
    /// The event id (the same for every delivery of one business event).
    pub id: String,
    /// The event type.
    pub event: String,
    /// The producer's data.
    pub data: serde_json::Value,
}

/// What the app is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The next event.
    Event(Event),
    /// Events that will never come.
    Gap(Gap),
    /// Connected (a `welcome` arrived) to this node.
    Connected {
        /// The edge serving the session.
        node: String,
    },
    /// The connection ended; `retry` says whether another attempt follows.
    Disconnected {
        /// How it ended.
        ending: Ending,
        /// Whether the client reconnects.
        retry: bool,
    },
    /// The client stopped for good, and why.
    Stopped(&'static str),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Incoming {
    Event {
        seq: u64,
        id: String,
        event: String,
        data: serde_json::Value,
    },
    Welcome {
        epoch: String,
        node: String,
    },
    Resumed {
        ok: bool,
        reason: Option<String>,
        lost: Option<ces_protocol::frame::Lost>,
        epoch: Option<String>,
    },
    Refreshed {
        expires_at: u64,
    },
    #[serde(other)]
    Other,
}

/// Runs the client until `stop` fires or the policy stops it; every [`Update`] goes to `updates`.
pub async fn run(options: Options, updates: mpsc::Sender<Update>, stop: CancellationToken) {
    let mut tracker = Tracker::new(options.resume_from.clone());
    let mut backoff = Backoff::default();
    let mut token = None;
    let mut refreshed_last = false;
    loop {
        if token.is_none() {
            match (options.get_token)().await {
                Ok(t) => token = Some(t),
                // The app's backend may be down for a moment: asked again after the next backoff delay, for as
                // long as the app keeps the client.
                Err(_) => {
                    let wait = backoff.next_delay(rand::random::<f64>());
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            }
        }
        let Some(current) = token.as_mut() else {
            continue;
        };
        let started = tokio::time::Instant::now();
        let ending = tokio::select! {
            () = stop.cancelled() => return,
            ending = session(&options, current, &mut tracker, &updates) => ending,
        };
        backoff.connection_ended(started.elapsed());
        let next = policy::after(ending, refreshed_last);
        refreshed_last = false;
        let retry = !matches!(next, Next::Stop(_));
        if updates
            .send(Update::Disconnected { ending, retry })
            .await
            .is_err()
        {
            return;
        }
        let wait = match next {
            Next::Stop(why) => {
                let _ = updates.send(Update::Stopped(why)).await;
                return;
            }
            Next::Soon => Duration::from_millis(1000).mul_f64(rand::random::<f64>()),
            Next::Backoff => backoff.next_delay(rand::random::<f64>()),
            Next::After(d) => d,
            Next::Refresh => {
                token = None;
                refreshed_last = true;
                Duration::ZERO
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The WebSocket URL for `base` with `token`, resuming from `position` if there is one.
pub fn url_for(base: &str, token: &str, position: Option<&Position>) -> String {
    let ws = base.replacen("http", "ws", 1);
    match position {
        Some(p) => format!(
            "{ws}/v1/ws?token={token}&last_seq={}&epoch={}",
            p.last_seq, p.epoch
        ),
        None => format!("{ws}/v1/ws?token={token}"),
    }
}

/// The next in-band refresh of `token`, if it has an expiry that has not passed.
fn refresh_deadline(token: &Token) -> Option<tokio::time::Instant> {
    let delay = token::refresh_in(now_ms(), token.expires_at?)?;
    Some(tokio::time::Instant::now() + delay)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One connection, until it ends. `token` is the one it connects with, replaced in place by each in-band refresh
/// so that the next connection uses the newest.
async fn session(
    options: &Options,
    token: &mut Token,
    tracker: &mut Tracker,
    updates: &mpsc::Sender<Update>,
) -> Ending {
    let url = url_for(&options.url, &token.value, tracker.resume_from());
    // A handshake that gets no answer (a black-holed path) counts as silence, like a connection that goes quiet.
    let handshake = tokio::time::timeout(
        options.silence_limit,
        tokio_tungstenite::connect_async(&url),
    );
    let mut socket = match handshake
        .await
        .unwrap_or(Err(tungstenite::Error::ConnectionClosed))
    {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            return Ending::Refused {
                status: response.status().as_u16(),
                retry_after,
            };
        }
        Err(_) => return Ending::Silent,
    };
    let mut epoch = String::new();
    // Acks are coalesced: one frame per ACK_EVERY at most, carrying the highest seq delivered so far.
    // The position last acknowledged: an epoch change moves it back to a lower seq, which is acknowledged too.
    let mut acked = tracker.resume_from().cloned();
    let mut ack_tick = tokio::time::interval(ACK_EVERY);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent_since = tokio::time::Instant::now();
    // In-band refresh: one `get_token` in flight at most, started at the deadline, its token sent as a `refresh`
    // frame; the server's `refreshed` answer sets the next deadline.
    let mut refresh_at = refresh_deadline(token);
    let mut fetching: Option<futures::future::BoxFuture<'static, Result<Token, String>>> = None;
    loop {
        let received = tokio::select! {
            received = socket.next() => received,
            () = sleep_until(refresh_at), if fetching.is_none() => {
                fetching = Some((options.get_token)());
                refresh_at = None;
                continue;
            }
            fetched = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                fetching = None;
                match fetched {
                    Ok(fresh) => {
                        let frame = serde_json::json!({"type": "refresh", "token": fresh.value});
                        if socket.send(Message::text(frame.to_string())).await.is_err() {
                            return Ending::Closed(ces_protocol::close::ABNORMAL);
                        }
                        // Until the answer comes, the fresh token's own expiry schedules the next refresh.
                        refresh_at = refresh_deadline(&fresh);
                        *token = fresh;
                    }
                    // Tried again after the minimum gap while the token lives; past its expiry the server closes
                    // with 4001 and the policy gets a token before reconnecting.
                    Err(_) => refresh_at = refresh_deadline(token),
                }
                continue;
            }
            _ = ack_tick.tick() => {
                if let Some(p) = tracker.resume_from().filter(|p| acked.as_ref() != Some(p)) {
                    let ack = format!(r#"{{"type":"ack","seq":{}}}"#, p.last_seq);
                    if socket.send(Message::text(ack)).await.is_err() {
                        return Ending::Closed(ces_protocol::close::ABNORMAL);
                    }
                    acked = Some(p.clone());
                }
                if silent_since.elapsed() >= options.silence_limit {
                    return Ending::Silent;
                }
                continue;
            }
        };
        silent_since = tokio::time::Instant::now();
        let message = match received {
            None | Some(Err(_)) => return Ending::Closed(ces_protocol::close::ABNORMAL),
            Some(Ok(message)) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Ending::Closed(
                    frame.map_or(ces_protocol::close::NO_STATUS_RECEIVED, |f| f.code.into()),
                );
            }
            _ => continue,
        };
        let Ok(frame) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        let sent = match frame {
            Incoming::Welcome { epoch: e, node } => {
                epoch = e;
                updates.send(Update::Connected { node }).await
            }
            Incoming::Resumed {
                ok,
                reason,
                lost,
                epoch: new_epoch,
            } => {
                if let Some(e) = &new_epoch {
                    epoch.clone_from(e);
                }
                match tracker.on_resumed(ok, lost.as_ref(), reason.as_deref(), new_epoch.as_deref())
                {
                    Some(gap) => updates.send(Update::Gap(gap)).await,
                    None => Ok(()),
                }
            }
            Incoming::Event {
                seq,
                id,
                event,
                data,
            } => {
                let event = Update::Event(Event {
                    seq,
                    id,
                    event,
                    data,
                });
                match tracker.on_event(&epoch, seq) {
                    Verdict::Repeat => Ok(()),
                    Verdict::Deliver => updates.send(event).await,
                    Verdict::GapThenDeliver(gap) => {
                        let gap = updates.send(Update::Gap(gap)).await;
                        gap.and(updates.send(event).await)
                    }
                }
            }
            Incoming::Refreshed { expires_at } => {
                token.expires_at = Some(expires_at);
                refresh_at = refresh_deadline(token);
                Ok(())
            }
            Incoming::Other => Ok(()),
        };
        if sent.is_err() {
            // The app is gone.
            let _ = socket.close(None).await;
            return Ending::Closed(1000);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_resumes_from_the_position_with_its_epoch() {
        assert_eq!(
            url_for("http://lb:8080", "t", None),
            "ws://lb:8080/v1/ws?token=t"
        );
        let p = Position {
            epoch: "e1".into(),
            last_seq: 41,
        };
        assert_eq!(
            url_for("https://lb", "t", Some(&p)),
            "wss://lb/v1/ws?token=t&last_seq=41&epoch=e1"
        );
    }
}
