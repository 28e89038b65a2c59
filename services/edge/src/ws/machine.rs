//! The socket's decisions, apart from its I/O: a [`Socket`] is told what happened (a client frame, a tick, a
//! heartbeat's answer, a live event, the hub's close) and says what to do, and the loop in [`super`] only does
//! it. Nothing here awaits, reads a clock or talks to Redis: time arrives as arguments (`now`, the drain delay
//! chosen by the caller) and Redis answers arrive as values ([`Snapshot`], [`Heartbeat`], [`Claim`]).
//!
//! - Set-up: [`on_claim`], [`before_welcome`] and [`Socket::open`] decide whether the socket is served at all
//!   (4003 for a closed session, 1011 when Redis is unavailable, 1012 or the hub's code when it ended before its
//!   welcome) and build the welcome frame and the replay.
//! - Live events: [`Socket::on_live`] keeps the stream exact against the cursor (epoch, last `seq` sent):
//!   deliver the next `seq`, skip what the replay already sent, or fill a gap, an epoch change or a resync
//!   request from the buffer first ([`Socket::on_fill`]).
//! - Everything else goes through [`Socket::on`] (and [`Socket::on_text`] for client text frames): acks, token
//!   refresh and expiry, invalid frames, rate limit, pings and heartbeats, shutdown, and every close code.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ces_protocol::close::{self, CloseCode};
use ces_protocol::frame::{ClientFrame, ServerFrame, parse_client_frame};
use ces_protocol::keys::SessionId;
use ces_protocol::token::{TokenError, TokenKeys};

use crate::hub::Live;
use crate::resume::{self, Decision, Position, Snapshot};
use crate::session::{Claim, Heartbeat};

/// Invalid client frames (bad JSON, unknown types, malformed fields) in a row before the socket is closed with
/// 1008: each one is answered with an error frame, but a client that only sends garbage is broken or hostile.
pub const MAX_INVALID_FRAMES: u32 = 10;

/// What a connection does once its subscription and its claim on the session are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    /// Serve the socket; `previous` (another connection, `<node>/<conn id>`) held the session and must be told
    /// to close with [`CloseCode::TakenOver`].
    Serve {
        /// The connection that held the session before, if any.
        previous: Option<String>,
    },
    /// Close at once with this code, without a welcome.
    Refuse(CloseCode),
}

/// Decides on a claim (`Err`: the subscription or the claim failed, i.e. Redis is unavailable).
pub fn on_claim<E>(claimed: Result<Claim, E>) -> Setup {
    match claimed {
        Ok(Claim::Held { previous }) => Setup::Serve { previous },
        Ok(Claim::Closed) => Setup::Refuse(CloseCode::SessionClosed),
        Err(_) => Setup::Refuse(CloseCode::InternalError),
    }
}

/// The close code of a socket that ended before its welcome: shutdown began, or the hub closed it (taken over
/// by a newer connection on this node, told by another node) while the subscription was being confirmed.
pub fn before_welcome(shutting_down: bool, hub_close: Option<CloseCode>) -> Option<CloseCode> {
    if shutting_down {
        Some(CloseCode::ServiceRestart)
    } else {
        hub_close
    }
}

/// What a socket is given at its start and keeps for its lifetime.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'p> {
    /// The session served.
    pub session: &'p SessionId,
    /// This node's id, for the welcome frame.
    pub node: &'p str,
    /// Keys to verify an in-band refresh token.
    pub keys: &'p TokenKeys,
    /// When the connection's token expires (unix seconds).
    pub expires_at: u64,
    /// Pings in a row without any inbound frame before the socket is closed with 4000.
    pub max_missed_pongs: u32,
    /// How long after shutdown begins this socket closes with 1012 (its moment in the drain window, fixed once
    /// so a busy socket cannot postpone it).
    pub drain_after: Duration,
}

/// The first frames of a served socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// The welcome frame.
    pub welcome: ServerFrame,
    /// The `resumed` frame (if the client resumes) and the replay, sent right after the welcome.
    pub decision: Decision,
}

/// One socket's state: where it stands in the session's stream and its counters.
#[derive(Debug)]
pub struct Socket<'p> {
    session: &'p SessionId,
    keys: &'p TokenKeys,
    epoch: String,
    last_sent: u64,
    /// The replay (or gap fill) in progress was read one page at a time and has more to read after `last_sent`.
    more: bool,
    // Acks are stored with the next heartbeat, so a client acking every event costs no Redis call per frame.
    pending_ack: Option<u64>,
    /// The ack the heartbeat in progress stores; back to `pending_ack` if the heartbeat fails.
    beat_ack: Option<u64>,
    expires_at: u64,
    drain_after: Duration,
    missed_pongs: u32,
    max_missed_pongs: u32,
    invalid_frames: u32,
}

/// Something that happened to the socket (other than a client text frame or a live event).
#[derive(Debug)]
pub enum Input<'a> {
    /// Shutdown began (given once).
    Shutdown,
    /// The moment returned by [`Action::DrainIn`] arrived.
    DrainDue,
    /// The time [`Socket::expires_at`] passed.
    Expired,
    /// The hub asked for a close; `None` if it dropped the request unsent.
    HubClose(Option<CloseCode>),
    /// The hub dropped the connection's queue.
    HubGone,
    /// A message other than text arrived from the client, or the receive side ended.
    Received {
        /// What arrived.
        message: Received<'a>,
        /// Whether it is over the socket's inbound budget (only asked for [`Received::metered`] messages).
        over_limit: bool,
    },
    /// The ping interval elapsed.
    PingDue,
    /// What the heartbeat asked for by [`Action::Heartbeat`] found; `None` if it failed or timed out.
    Beat(Option<Heartbeat>),
}

/// What the socket's receive side produced, besides text frames.
#[derive(Debug)]
pub enum Received<'a> {
    /// A binary frame.
    Binary,
    /// A WebSocket ping or pong.
    Control,
    /// The client's close frame and its code, if it carried one.
    Close(Option<u16>),
    /// A receive error.
    Error(&'a axum::Error),
    /// The stream ended without a close frame.
    End,
}

impl Received<'_> {
    /// Whether the message counts against the socket's inbound budget. Text frames count too, but they do not
    /// come through here: [`Socket::on_text`] takes the budget's answer with the text.
    pub fn metered(&self) -> bool {
        matches!(self, Self::Binary)
    }
}

/// What the loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing; wait for the next input.
    Wait,
    /// Shutdown began: feed [`Input::DrainDue`] this long from now.
    DrainIn(Duration),
    /// Send this close code, wait briefly for the client's close frame, and end with it.
    Close(CloseCode),
    /// The client closed: flush the close reply the WebSocket layer queued, and end with this code.
    Closed(u16),
    /// The connection is gone: end with [`close::ABNORMAL`], writing nothing.
    Abort,
    /// Answer the client with this frame.
    Reply(ServerFrame),
    /// Refresh the session in Redis, storing `ack`; feed its answer back as [`Input::Beat`].
    Heartbeat {
        /// The highest ack received since the last heartbeat.
        ack: Option<u64>,
    },
    /// Send a WebSocket ping.
    Ping,
}

/// What to do with one live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it: it is the next `seq` (the cursor has moved to it).
    Deliver,
    /// Drop it: the socket already sent it (with the replay or a gap fill), or it belongs to an older epoch.
    Skip,
    /// Read the buffer after [`Socket::position`], feed it to [`Socket::on_fill`], write what that returns,
    /// then ask [`Socket::after_fill`] about the same event.
    FillGap,
    /// Nothing more to write: a resync request, answered by the fill.
    Done,
}

/// A live event as the socket judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Its `seq`.
    pub seq: u64,
    /// Its epoch.
    pub epoch: &'a str,
    /// Not an event but a request to compare the position with the buffer ([`Live::resync`]).
    pub resync: bool,
}

impl<'a> From<&'a Live> for Event<'a> {
    fn from(live: &'a Live) -> Self {
        Self {
            seq: live.seq,
            epoch: &live.epoch,
            resync: live.resync,
        }
    }
}

/// What a gap fill writes: a notice if events are lost or the epoch changed, then the events read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// A `resumed ok:false` frame; a gap filled completely is invisible to the client.
    pub notice: Option<ServerFrame>,
    /// Event frames to write, in order.
    pub replay: Vec<Utf8Bytes>,
}

impl<'p> Socket<'p> {
    /// Starts a socket from the buffer read after the client's position (`None`: Redis could not be read, which
    /// closes it with 1011). With an epoch change, `snap` must be read from the epoch's start
    /// ([`resume::needs_full_read`]).
    pub fn open(
        terms: Terms<'p>,
        position: Option<&Position>,
        snap: Option<Snapshot>,
    ) -> Result<(Self, Opening), CloseCode> {
        let snap = snap.ok_or(CloseCode::InternalError)?;
        let decision = resume::decide(position, &snap);
        let welcome = ServerFrame::Welcome {
            session_id: terms.session.to_string(),
            node: terms.node.to_owned(),
            epoch: snap.epoch.clone(),
            seq: snap.last_seq,
        };
        let socket = Self {
            session: terms.session,
            keys: terms.keys,
            epoch: snap.epoch,
            last_sent: decision.last_sent,
            more: decision.more,
            pending_ack: None,
            beat_ack: None,
            expires_at: terms.expires_at,
            drain_after: terms.drain_after,
            missed_pongs: 0,
            max_missed_pongs: terms.max_missed_pongs,
            invalid_frames: 0,
        };
        Ok((socket, Opening { welcome, decision }))
    }

    /// When the token expires (unix seconds); [`Input::Expired`] is due then. Only a refresh moves it.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The highest ack not yet stored by a heartbeat, to store when the session is released.
    pub fn pending_ack(&self) -> Option<u64> {
        self.pending_ack
    }

    /// Whether a replay or gap fill is under way and its next page is due: read the buffer after
    /// [`position`](Self::position), feed it to [`on_fill`](Self::on_fill) and write what that returns, before
    /// live events (those past the position are skipped meanwhile; the pages bring them).
    pub fn replaying(&self) -> bool {
        self.more
    }

    /// Where the socket stands: the last `seq` it sent and its epoch (what a gap fill reads after).
    pub fn position(&self) -> Position {
        Position {
            last_seq: self.last_sent,
            epoch: Some(self.epoch.clone()),
        }
    }

    /// Decides on an input.
    pub fn on(&mut self, input: Input<'_>) -> Action {
        match input {
            Input::Shutdown => Action::DrainIn(self.drain_after),
            Input::DrainDue => Action::Close(CloseCode::ServiceRestart),
            Input::Expired => Action::Close(CloseCode::TokenExpired),
            // A dropped request means the hub replaced the slot without a word: only a takeover does that.
            Input::HubClose(code) => Action::Close(code.unwrap_or(CloseCode::TakenOver)),
            Input::HubGone => Action::Close(CloseCode::TakenOver),
            Input::Received {
                message,
                over_limit,
            } => self.on_received(message, over_limit),
            Input::PingDue => {
                if self.missed_pongs >= self.max_missed_pongs {
                    return Action::Close(CloseCode::PingTimeout);
                }
                self.missed_pongs += 1;
                self.beat_ack = self.pending_ack.take();
                Action::Heartbeat { ack: self.beat_ack }
            }
            // The heartbeat closes a socket whose takeover or close message was lost. A failed one is not a
            // reason to close: the next interval tries again, with its ack, which is not lost either.
            Input::Beat(Some(Heartbeat::Closed)) => Action::Close(CloseCode::SessionClosed),
            Input::Beat(Some(Heartbeat::Taken)) => Action::Close(CloseCode::TakenOver),
            Input::Beat(Some(Heartbeat::Held)) => {
                self.beat_ack = None;
                Action::Ping
            }
            Input::Beat(None) => {
                if let Some(seq) = self.beat_ack.take() {
                    self.acked(seq);
                }
                Action::Ping
            }
        }
    }

    /// Keeps the highest ack until a heartbeat or the release stores it.
    fn acked(&mut self, seq: u64) {
        self.pending_ack = Some(self.pending_ack.map_or(seq, |a| a.max(seq)));
    }

    fn on_received(&mut self, message: Received<'_>, over_limit: bool) -> Action {
        // Any inbound frame shows the client is alive, not only a pong.
        self.missed_pongs = 0;
        if over_limit && message.metered() {
            return Action::Close(CloseCode::RateLimited);
        }
        match message {
            Received::Binary => Action::Close(CloseCode::UnsupportedData),
            Received::Control => Action::Wait,
            Received::Close(code) => Action::Closed(code.unwrap_or(close::NO_STATUS_RECEIVED)),
            Received::Error(e) => classify(e).map_or(Action::Abort, Action::Close),
            Received::End => Action::Abort,
        }
    }

    /// Decides on a client text frame received at `now` (unix seconds), `over_limit` its inbound budget. Also
    /// returns why a refresh token was refused, to count it.
    pub fn on_text(
        &mut self,
        text: &str,
        now: u64,
        over_limit: bool,
    ) -> (Action, Option<TokenError>) {
        self.missed_pongs = 0;
        if over_limit {
            return (Action::Close(CloseCode::RateLimited), None);
        }
        let mut rejected = None;
        let (reply, ack) = match parse_client_frame(text) {
            Ok(ClientFrame::Ping) => (Some(ServerFrame::Pong), None),
            Ok(ClientFrame::Ack { seq }) => (None, Some(seq)),
            Ok(ClientFrame::Refresh { token }) => {
                let reply = match self.keys.verify(&token, now) {
                    Ok(v) if v.session_id == *self.session => {
                        // Never back: a refresh with an older token must not shorten the socket's life.
                        self.expires_at = self.expires_at.max(v.expires_at);
                        ServerFrame::Refreshed {
                            expires_at: self.expires_at,
                        }
                    }
                    Ok(_) => ServerFrame::Error {
                        code: "invalid_token".into(),
                        message: "the token is for another session".into(),
                    },
                    Err(e) => {
                        rejected = Some(e);
                        ServerFrame::Error {
                            code: "invalid_token".into(),
                            message: format!("token rejected: {e}"),
                        }
                    }
                };
                (Some(reply), None)
            }
            Err(reply) => (Some(reply), None),
        };
        if matches!(reply, Some(ServerFrame::Error { .. })) {
            self.invalid_frames += 1;
            if self.invalid_frames >= MAX_INVALID_FRAMES {
                return (Action::Close(CloseCode::PolicyViolation), rejected);
            }
        } else {
            self.invalid_frames = 0;
        }
        if let Some(seq) = ack {
            self.acked(seq);
        }
        (reply.map_or(Action::Wait, Action::Reply), rejected)
    }

    /// Decides on a live event. A frame at or below the cursor was already sent (by the replay) and is skipped;
    /// a frame past a gap, from another epoch (Redis lost the session's buffer) or a resync request needs the
    /// buffer read first.
    pub fn on_live(&mut self, event: Event<'_>) -> Verdict {
        if event.resync || event.epoch != self.epoch || event.seq > self.last_sent.saturating_add(1)
        {
            return Verdict::FillGap;
        }
        self.after_fill(event)
    }

    /// Decides on a live event once the gap before it was filled: it is written only if it is the next `seq`.
    pub fn after_fill(&mut self, event: Event<'_>) -> Verdict {
        if event.resync {
            Verdict::Done
        } else if event.epoch == self.epoch && event.seq == self.last_sent.saturating_add(1) {
            self.last_sent = event.seq;
            Verdict::Deliver
        } else {
            Verdict::Skip
        }
    }

    /// Takes the buffer read after [`position`](Self::position) (from the epoch's start if
    /// [`resume::needs_full_read`]), moves the cursor past it and says what to write.
    pub fn on_fill(&mut self, snap: Snapshot) -> Fill {
        let decision = resume::decide(Some(&self.position()), &snap);
        let notice = decision
            .resumed
            .filter(|f| matches!(f, ServerFrame::Resumed { ok: false, .. }));
        self.epoch = snap.epoch;
        self.last_sent = decision.last_sent;
        self.more = decision.more;
        Fill {
            notice,
            replay: decision.replay,
        }
    }
}

/// The close code to answer a receive error with; `None` means the connection is gone.
pub fn classify(e: &axum::Error) -> Option<CloseCode> {
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

#[cfg(test)]
pub(super) mod tests {
    use ces_protocol::envelope::Envelope;
    use ces_protocol::frame::Lost;

    use super::*;

    const NOW: u64 = 1_000_000;
    const EXPIRES: u64 = NOW + 600;
    const DRAIN: Duration = Duration::from_millis(1234);

    struct Fixture {
        session: SessionId,
        other: SessionId,
        keys: TokenKeys,
    }

    fn fixture() -> Fixture {
        Fixture {
            session: SessionId::parse("s-1").expect("session id"),
            other: SessionId::parse("s-2").expect("session id"),
            keys: TokenKeys::new([("k1", &[7u8; 32][..])]).expect("keys"),
        }
    }

    fn terms(f: &Fixture, max_missed_pongs: u32) -> Terms<'_> {
        Terms {
            session: &f.session,
            node: "edge-a",
            keys: &f.keys,
            expires_at: EXPIRES,
            max_missed_pongs,
            drain_after: DRAIN,
        }
    }

    /// An envelope of event `seq` in `epoch` (also used by the socket loop's tests).
    pub(in crate::ws) fn env(epoch: &str, seq: u64) -> Envelope {
        Envelope {
            seq,
            epoch: epoch.into(),
            event_id: format!("id{seq}"),
            event_type: "t".into(),
            data: "1".into(),
            ..Default::default()
        }
    }

    fn frame(seq: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!(
            r#"{{"type":"event","seq":{seq},"id":"id{seq}","event":"t","data":1}}"#
        ))
    }

    fn frames(seqs: impl IntoIterator<Item = u64>) -> Vec<Utf8Bytes> {
        seqs.into_iter().map(frame).collect()
    }

    /// The buffer of epoch `epoch` read after `after`, holding `seqs`, newest `seq` `last_seq`.
    fn snap(
        epoch: &str,
        after: u64,
        seqs: impl IntoIterator<Item = u64>,
        last_seq: u64,
    ) -> Snapshot {
        Snapshot {
            epoch: epoch.into(),
            last_seq,
            after,
            events: seqs.into_iter().map(|s| env(epoch, s)).collect(),
            ..Default::default()
        }
    }

    /// A fresh socket welcomed in epoch `e1` with `last_seq` events buffered (all replayed).
    fn opened(f: &Fixture, last_seq: u64) -> Socket<'_> {
        opened_with(f, last_seq, 3)
    }

    fn opened_with(f: &Fixture, last_seq: u64, max_missed_pongs: u32) -> Socket<'_> {
        let snap = snap("e1", 0, 1..=last_seq, last_seq);
        Socket::open(terms(f, max_missed_pongs), None, Some(snap))
            .expect("opened")
            .0
    }

    fn live(epoch: &str, seq: u64) -> Event<'_> {
        Event {
            seq,
            epoch,
            resync: false,
        }
    }

    const RESYNC: Event<'static> = Event {
        seq: 0,
        epoch: "",
        resync: true,
    };

    fn text(socket: &mut Socket<'_>, text: &str) -> (Action, Option<TokenError>) {
        socket.on_text(text, NOW, false)
    }

    fn refresh(token: &str) -> String {
        format!(r#"{{"type":"refresh","token":"{token}"}}"#)
    }

    fn received(message: Received<'_>) -> Input<'_> {
        Input::Received {
            message,
            over_limit: false,
        }
    }

    fn error_frame(code: &str, message: &str) -> Action {
        Action::Reply(ServerFrame::Error {
            code: code.into(),
            message: message.into(),
        })
    }

    // --- set-up ---

    #[test]
    fn a_held_claim_is_served_and_names_the_previous_holder() {
        let held = |previous: Option<&str>| Claim::Held {
            previous: previous.map(Into::into),
        };
        assert_eq!(
            on_claim::<()>(Ok(held(Some("edge-b/7")))),
            Setup::Serve {
                previous: Some("edge-b/7".into())
            }
        );
        assert_eq!(
            on_claim::<()>(Ok(held(None))),
            Setup::Serve { previous: None }
        );
    }

    #[test]
    fn a_deleted_session_is_refused_with_4003() {
        assert_eq!(
            on_claim::<()>(Ok(Claim::Closed)),
            Setup::Refuse(CloseCode::SessionClosed)
        );
    }

    #[test]
    fn redis_down_at_set_up_closes_with_1011() {
        assert_eq!(
            on_claim(Err("connection refused")),
            Setup::Refuse(CloseCode::InternalError)
        );
        let f = fixture();
        assert_eq!(
            Socket::open(terms(&f, 3), None, None).map(|_| ()),
            Err(CloseCode::InternalError)
        );
    }

    #[test]
    fn shutdown_or_a_hub_close_before_the_welcome_closes_without_one() {
        assert_eq!(before_welcome(false, None), None);
        assert_eq!(before_welcome(true, None), Some(CloseCode::ServiceRestart));
        assert_eq!(
            before_welcome(true, Some(CloseCode::TakenOver)),
            Some(CloseCode::ServiceRestart)
        );
        assert_eq!(
            before_welcome(false, Some(CloseCode::TakenOver)),
            Some(CloseCode::TakenOver)
        );
    }

    #[test]
    fn a_fresh_connection_is_welcomed_at_the_newest_seq_and_gets_the_buffer() {
        let f = fixture();
        let (socket, opening) =
            Socket::open(terms(&f, 3), None, Some(snap("e1", 0, 1..=3, 3))).expect("opened");
        assert_eq!(
            opening,
            Opening {
                welcome: ServerFrame::Welcome {
                    session_id: "s-1".into(),
                    node: "edge-a".into(),
                    epoch: "e1".into(),
                    seq: 3,
                },
                decision: Decision {
                    resumed: None,
                    replay: frames(1..=3),
                    last_sent: 3,
                    more: false,
                },
            }
        );
        assert_eq!(
            socket.position(),
            Position {
                last_seq: 3,
                epoch: Some("e1".into())
            }
        );
        assert_eq!((socket.expires_at(), socket.pending_ack()), (EXPIRES, None));
    }

    #[test]
    fn a_resuming_connection_gets_resumed_ok_and_what_it_missed() {
        let f = fixture();
        let pos = Position {
            last_seq: 2,
            epoch: Some("e1".into()),
        };
        let (socket, opening) =
            Socket::open(terms(&f, 3), Some(&pos), Some(snap("e1", 2, 3..=5, 5))).expect("opened");
        assert_eq!(
            opening.decision,
            Decision {
                resumed: Some(ServerFrame::Resumed {
                    ok: true,
                    replayed: 3,
                    reason: None,
                    lost: None,
                    epoch: None,
                }),
                replay: frames(3..=5),
                last_sent: 5,
                more: false,
            }
        );
        assert_eq!(socket.position().last_seq, 5);
    }

    #[test]
    fn an_epoch_change_on_resume_is_announced_as_resumed_ok_false() {
        let f = fixture();
        let pos = Position {
            last_seq: 40,
            epoch: Some("e1".into()),
        };
        let (socket, opening) =
            Socket::open(terms(&f, 3), Some(&pos), Some(snap("e2", 0, 1..=2, 2))).expect("opened");
        assert_eq!(
            opening.decision.resumed,
            Some(ServerFrame::Resumed {
                ok: false,
                replayed: 2,
                reason: Some(resume::reason::EPOCH_CHANGED.into()),
                lost: Some(Lost { from: 41, to: None }),
                epoch: Some("e2".into()),
            })
        );
        assert_eq!(opening.decision.replay, frames(1..=2));
        assert_eq!(
            socket.position(),
            Position {
                last_seq: 2,
                epoch: Some("e2".into())
            }
        );
    }

    // --- live events ---

    #[test]
    fn the_next_seq_is_delivered_and_moves_the_cursor() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        assert_eq!(socket.on_live(live("e1", 4)), Verdict::Deliver);
        assert_eq!(socket.on_live(live("e1", 5)), Verdict::Deliver);
        assert_eq!(socket.position().last_seq, 5);
    }

    #[test]
    fn frames_the_replay_already_sent_are_dropped_as_duplicates() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        for seq in 1..=3 {
            assert_eq!(socket.on_live(live("e1", seq)), Verdict::Skip, "{seq}");
        }
        assert_eq!(socket.on_live(live("e1", 4)), Verdict::Deliver);
        assert_eq!(socket.on_live(live("e1", 4)), Verdict::Skip);
        assert_eq!(socket.position().last_seq, 4);
    }

    #[test]
    fn a_gap_is_filled_from_the_buffer_without_a_notice() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        assert_eq!(socket.on_live(live("e1", 6)), Verdict::FillGap);
        // Nothing moved until the buffer was read.
        assert_eq!(socket.position().last_seq, 3);
        assert_eq!(
            socket.on_fill(snap("e1", 3, 4..=6, 6)),
            Fill {
                notice: None,
                replay: frames(4..=6)
            }
        );
        // The fill already sent the frame that revealed the gap.
        assert_eq!(socket.after_fill(live("e1", 6)), Verdict::Skip);
        assert_eq!(socket.on_live(live("e1", 7)), Verdict::Deliver);
    }

    #[test]
    fn a_frame_newer_than_the_buffer_read_is_delivered_after_the_fill() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        assert_eq!(socket.on_live(live("e1", 6)), Verdict::FillGap);
        assert_eq!(
            socket.on_fill(snap("e1", 3, 4..=5, 5)).replay,
            frames(4..=5)
        );
        assert_eq!(socket.after_fill(live("e1", 6)), Verdict::Deliver);
        assert_eq!(socket.position().last_seq, 6);
    }

    #[test]
    fn a_gap_the_buffer_no_longer_holds_is_announced_with_its_range() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        assert_eq!(socket.on_live(live("e1", 9)), Verdict::FillGap);
        let trimmed = Snapshot {
            evicted: 6,
            evicted_reason: resume::reason::BUFFER_OVERFLOW.into(),
            ..snap("e1", 3, 7..=9, 9)
        };
        assert_eq!(
            socket.on_fill(trimmed),
            Fill {
                notice: Some(ServerFrame::Resumed {
                    ok: false,
                    replayed: 3,
                    reason: Some(resume::reason::BUFFER_OVERFLOW.into()),
                    lost: Some(Lost {
                        from: 4,
                        to: Some(6)
                    }),
                    epoch: None,
                }),
                replay: frames(7..=9),
            }
        );
        assert_eq!(socket.after_fill(live("e1", 9)), Verdict::Skip);
    }

    #[test]
    fn an_epoch_change_under_a_live_socket_is_announced_as_resumed_ok_false() {
        let f = fixture();
        let mut socket = opened(&f, 40);
        assert_eq!(socket.on_live(live("e2", 1)), Verdict::FillGap);
        assert_eq!(
            socket.position(),
            Position {
                last_seq: 40,
                epoch: Some("e1".into())
            }
        );
        assert!(resume::needs_full_read(
            &socket.position(),
            &snap("e2", 40, [], 2)
        ));
        assert_eq!(
            socket.on_fill(snap("e2", 0, 1..=2, 2)),
            Fill {
                notice: Some(ServerFrame::Resumed {
                    ok: false,
                    replayed: 2,
                    reason: Some(resume::reason::EPOCH_CHANGED.into()),
                    lost: Some(Lost { from: 41, to: None }),
                    epoch: Some("e2".into()),
                }),
                replay: frames(1..=2),
            }
        );
        assert_eq!(socket.after_fill(live("e2", 1)), Verdict::Skip);
        assert_eq!(socket.on_live(live("e2", 3)), Verdict::Deliver);
        assert_eq!(
            socket.position(),
            Position {
                last_seq: 3,
                epoch: Some("e2".into())
            }
        );
    }

    #[test]
    fn a_frame_of_the_old_epoch_after_the_change_is_dropped() {
        let f = fixture();
        let mut socket = opened(&f, 5);
        assert_eq!(socket.on_live(live("e2", 1)), Verdict::FillGap);
        socket.on_fill(snap("e2", 0, 1..=1, 1));
        // A late frame of the old epoch does not match the new cursor, even though its seq follows it.
        assert_eq!(socket.on_live(live("e1", 2)), Verdict::FillGap);
        assert_eq!(
            socket.on_fill(snap("e2", 1, [], 1)),
            Fill {
                notice: None,
                replay: vec![]
            }
        );
        assert_eq!(socket.after_fill(live("e1", 2)), Verdict::Skip);
        assert_eq!(socket.position().last_seq, 1);
    }

    #[test]
    fn a_resync_after_the_pubsub_connection_came_back_sends_what_was_missed() {
        let f = fixture();
        let mut socket = opened(&f, 3);
        assert_eq!(socket.on_live(RESYNC), Verdict::FillGap);
        assert_eq!(
            socket.on_fill(snap("e1", 3, 4..=5, 5)),
            Fill {
                notice: None,
                replay: frames(4..=5)
            }
        );
        assert_eq!(socket.after_fill(RESYNC), Verdict::Done);
        assert_eq!(socket.position().last_seq, 5);
        // Nothing was missed: the resync writes nothing.
        assert_eq!(socket.on_live(RESYNC), Verdict::FillGap);
        assert_eq!(
            socket.on_fill(snap("e1", 5, [], 5)),
            Fill {
                notice: None,
                replay: vec![]
            }
        );
        assert_eq!(socket.after_fill(RESYNC), Verdict::Done);
        assert_eq!(socket.on_live(live("e1", 6)), Verdict::Deliver);
    }

    #[test]
    fn an_event_converts_from_a_live_frame() {
        assert_eq!(Event::from(&Live::resync()), RESYNC);
    }

    // --- client frames ---

    #[test]
    fn acks_keep_the_highest_until_a_heartbeat_takes_them() {
        let f = fixture();
        let mut socket = opened(&f, 9);
        for seq in [5, 3, 7, 6] {
            let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
            assert_eq!(text(&mut socket, &ack), (Action::Wait, None));
        }
        assert_eq!(socket.pending_ack(), Some(7));
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Heartbeat { ack: Some(7) }
        );
        assert_eq!(socket.pending_ack(), None);
        assert_eq!(socket.on(Input::Beat(Some(Heartbeat::Held))), Action::Ping);
        assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
        // An ack after the heartbeat waits for the next one, or for the release.
        assert_eq!(
            text(&mut socket, r#"{"type":"ack","seq":2}"#),
            (Action::Wait, None)
        );
        assert_eq!(socket.pending_ack(), Some(2));
    }

    #[test]
    fn the_ack_of_a_failed_heartbeat_waits_for_the_next_one() {
        let f = fixture();
        let mut socket = opened(&f, 9);
        text(&mut socket, r#"{"type":"ack","seq":5}"#);
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Heartbeat { ack: Some(5) }
        );
        // Acked while the heartbeat was in progress: the higher of the two is kept.
        text(&mut socket, r#"{"type":"ack","seq":3}"#);
        assert_eq!(
            socket.on(Input::Beat(None)),
            Action::Ping,
            "a failed heartbeat is not a reason to close"
        );
        assert_eq!(socket.pending_ack(), Some(5), "and its ack is not lost");
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Heartbeat { ack: Some(5) }
        );
        assert_eq!(socket.on(Input::Beat(Some(Heartbeat::Held))), Action::Ping);
        assert_eq!(socket.pending_ack(), None);
        // A later failure has no stored ack to give back.
        assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
        assert_eq!(socket.on(Input::Beat(None)), Action::Ping);
        assert_eq!(socket.pending_ack(), None);
    }

    #[test]
    fn a_client_ping_frame_gets_a_pong() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            text(&mut socket, r#"{"type":"ping"}"#),
            (Action::Reply(ServerFrame::Pong), None)
        );
    }

    #[test]
    fn invalid_frames_get_error_replies_and_the_tenth_in_a_row_closes_with_1008() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        for _ in 0..MAX_INVALID_FRAMES - 1 {
            assert_eq!(
                text(&mut socket, r#"{"type":"x"}"#),
                (
                    error_frame("unknown_type", r#"unknown frame type "x""#),
                    None
                )
            );
        }
        assert_eq!(
            text(&mut socket, r#"{"kind":1}"#),
            (Action::Close(CloseCode::PolicyViolation), None)
        );
    }

    #[test]
    fn a_valid_frame_resets_the_invalid_count() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        let invalid = error_frame(
            "invalid_frame",
            r#"frame must be an object with a string "type""#,
        );
        for valid in [r#"{"type":"ping"}"#, r#"{"type":"ack","seq":1}"#] {
            for _ in 0..MAX_INVALID_FRAMES - 1 {
                assert_eq!(text(&mut socket, "[]"), (invalid.clone(), None));
            }
            assert_ne!(text(&mut socket, valid).0, invalid);
        }
        for _ in 0..MAX_INVALID_FRAMES - 1 {
            assert_eq!(text(&mut socket, "[]"), (invalid.clone(), None));
        }
        assert_eq!(
            text(&mut socket, "[]"),
            (Action::Close(CloseCode::PolicyViolation), None)
        );
    }

    #[test]
    fn over_the_inbound_budget_closes_with_4029() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on_text(r#"{"type":"ping"}"#, NOW, true),
            (Action::Close(CloseCode::RateLimited), None)
        );
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(Input::Received {
                message: Received::Binary,
                over_limit: true
            }),
            Action::Close(CloseCode::RateLimited)
        );
        // Pings and pongs are not metered.
        assert!(!Received::Control.metered());
        assert!(Received::Binary.metered());
        assert_eq!(
            socket.on(Input::Received {
                message: Received::Control,
                over_limit: true
            }),
            Action::Wait
        );
    }

    #[test]
    fn binary_frames_close_with_1003() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(received(Received::Binary)),
            Action::Close(CloseCode::UnsupportedData)
        );
    }

    #[test]
    fn receive_errors_close_with_1009_1007_1002_or_end_the_socket() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let f = fixture();
        let cases = [
            (
                tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                Action::Close(CloseCode::MessageTooBig),
            ),
            (
                tungstenite::Error::Utf8("invalid utf-8".into()),
                Action::Close(CloseCode::InvalidPayload),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                Action::Close(CloseCode::ProtocolError),
            ),
            (tungstenite::Error::ConnectionClosed, Action::Abort),
            (
                tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                Action::Abort,
            ),
        ];
        for (error, expected) in cases {
            let mut socket = opened(&f, 0);
            let error = axum::Error::new(error);
            assert_eq!(
                socket.on(received(Received::Error(&error))),
                expected,
                "{error}"
            );
        }
        // Not a tungstenite error at all: the connection is gone.
        let mut socket = opened(&f, 0);
        let error = axum::Error::new("other");
        assert_eq!(socket.on(received(Received::Error(&error))), Action::Abort);
    }

    #[test]
    fn the_clients_close_frame_ends_the_socket_with_its_code() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(received(Received::Close(Some(1000)))),
            Action::Closed(1000)
        );
        assert_eq!(
            socket.on(received(Received::Close(None))),
            Action::Closed(close::NO_STATUS_RECEIVED)
        );
        assert_eq!(socket.on(received(Received::End)), Action::Abort);
    }

    // --- liveness ---

    #[test]
    fn pings_without_any_inbound_frame_close_with_4000() {
        let f = fixture();
        let mut socket = opened_with(&f, 0, 2);
        for _ in 0..2 {
            assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
            assert_eq!(socket.on(Input::Beat(Some(Heartbeat::Held))), Action::Ping);
        }
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Close(CloseCode::PingTimeout)
        );
        let mut impatient = opened_with(&f, 0, 0);
        assert_eq!(
            impatient.on(Input::PingDue),
            Action::Close(CloseCode::PingTimeout)
        );
    }

    #[test]
    fn any_inbound_frame_resets_the_missed_pings() {
        let f = fixture();
        let mut socket = opened_with(&f, 0, 1);
        assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
        assert_eq!(socket.on(received(Received::Control)), Action::Wait);
        assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
        assert_eq!(
            text(&mut socket, r#"{"type":"ack","seq":0}"#),
            (Action::Wait, None)
        );
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Heartbeat { ack: Some(0) }
        );
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Close(CloseCode::PingTimeout)
        );
    }

    #[test]
    fn a_heartbeat_finding_the_session_deleted_closes_with_4003() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(socket.on(Input::PingDue), Action::Heartbeat { ack: None });
        assert_eq!(
            socket.on(Input::Beat(Some(Heartbeat::Closed))),
            Action::Close(CloseCode::SessionClosed)
        );
    }

    #[test]
    fn a_heartbeat_finding_another_holder_closes_with_4009() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(Input::Beat(Some(Heartbeat::Taken))),
            Action::Close(CloseCode::TakenOver)
        );
    }

    #[test]
    fn a_failed_heartbeat_keeps_the_socket_open() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            text(&mut socket, r#"{"type":"ack","seq":4}"#),
            (Action::Wait, None)
        );
        assert_eq!(
            socket.on(Input::PingDue),
            Action::Heartbeat { ack: Some(4) }
        );
        assert_eq!(socket.on(Input::Beat(None)), Action::Ping);
        // The failed heartbeat did not store the ack: the next heartbeat (or the release) does.
        assert_eq!(socket.pending_ack(), Some(4));
    }

    // --- closes from outside ---

    #[test]
    fn shutdown_drains_at_the_sockets_moment_then_closes_with_1012() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(socket.on(Input::Shutdown), Action::DrainIn(DRAIN));
        assert_eq!(
            socket.on(Input::DrainDue),
            Action::Close(CloseCode::ServiceRestart)
        );
    }

    #[test]
    fn the_hubs_close_is_passed_on() {
        let f = fixture();
        for code in [
            CloseCode::TakenOver,
            CloseCode::SessionClosed,
            CloseCode::SlowConsumer,
        ] {
            let mut socket = opened(&f, 0);
            assert_eq!(socket.on(Input::HubClose(Some(code))), Action::Close(code));
        }
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(Input::HubClose(None)),
            Action::Close(CloseCode::TakenOver)
        );
        assert_eq!(
            socket.on(Input::HubGone),
            Action::Close(CloseCode::TakenOver)
        );
    }

    // --- token ---

    #[test]
    fn expiry_closes_with_4001() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        assert_eq!(
            socket.on(Input::Expired),
            Action::Close(CloseCode::TokenExpired)
        );
    }

    #[test]
    fn a_refresh_moves_the_expiry_forward_only() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        let later = refresh(&f.keys.sign(&f.session, EXPIRES + 300));
        assert_eq!(
            text(&mut socket, &later),
            (
                Action::Reply(ServerFrame::Refreshed {
                    expires_at: EXPIRES + 300
                }),
                None
            )
        );
        assert_eq!(socket.expires_at(), EXPIRES + 300);
        let earlier = refresh(&f.keys.sign(&f.session, EXPIRES + 100));
        assert_eq!(
            text(&mut socket, &earlier),
            (
                Action::Reply(ServerFrame::Refreshed {
                    expires_at: EXPIRES + 300
                }),
                None
            )
        );
        assert_eq!(socket.expires_at(), EXPIRES + 300);
    }

    #[test]
    fn a_refresh_for_another_session_is_an_error_frame() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        let foreign = refresh(&f.keys.sign(&f.other, EXPIRES + 300));
        assert_eq!(
            text(&mut socket, &foreign),
            (
                error_frame("invalid_token", "the token is for another session"),
                None
            )
        );
        assert_eq!(socket.expires_at(), EXPIRES);
    }

    #[test]
    fn a_rejected_refresh_token_is_an_error_frame_and_reported() {
        let f = fixture();
        let mut socket = opened(&f, 0);
        let expired = refresh(&f.keys.sign(&f.session, NOW - 1));
        assert_eq!(
            text(&mut socket, &expired),
            (
                error_frame("invalid_token", "token rejected: expired"),
                Some(TokenError::Expired)
            )
        );
        assert_eq!(socket.expires_at(), EXPIRES);
        // Counted as an invalid frame: the tenth in a row closes, and is still reported.
        for _ in 0..MAX_INVALID_FRAMES - 2 {
            assert_eq!(text(&mut socket, &expired).1, Some(TokenError::Expired));
        }
        assert_eq!(
            text(&mut socket, &expired),
            (
                Action::Close(CloseCode::PolicyViolation),
                Some(TokenError::Expired)
            )
        );
    }
}
