//! Every WebSocket close code CES sends, with its reason text, and the node control messages that carry a close
//! from the edge that decided it to the edge that holds the socket (docs/protocol.md, "Close codes").
//!
//! This is the only place a close code is written down: the socket loop, the hub, the session store and the
//! clients all name [`CloseCode`] variants, so a code cannot drift between the node that sends it and the one
//! that parses it.

use std::fmt;

/// A close code the edge sends, and what it tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1002: the client violated the WebSocket protocol.
    ProtocolError,
    /// 1003: the client sent a binary frame.
    UnsupportedData,
    /// 1007: the client sent a text frame that is not UTF-8.
    InvalidPayload,
    /// 1008: the client kept sending frames the protocol does not know (too many in a row).
    PolicyViolation,
    /// 1009: the client sent a message larger than the limit.
    MessageTooBig,
    /// 1011: the server could not set up the connection (e.g. Redis unavailable); retry later.
    InternalError,
    /// 1012: the server is shutting down or restarting; reconnect (to any node) and resume.
    ServiceRestart,
    /// 4000: the client stopped answering pings.
    PingTimeout,
    /// 4001: the socket's token expired without a refresh; reconnect with a new token.
    TokenExpired,
    /// 4003: the session was closed (`DELETE /v1/sessions/{id}`); do not reconnect.
    SessionClosed,
    /// 4008: the client read too slowly and its queue overflowed; reconnect and resume.
    SlowConsumer,
    /// 4009: a newer connection for the same session took over.
    TakenOver,
    /// 4029: the client sent messages faster than its limit.
    RateLimited,
}

/// A peer vanished without a close frame (never sent; reported when a socket ends that way).
pub const ABNORMAL: u16 = 1006;

/// The peer's close frame carried no code (never sent; reported when a client closes that way).
pub const NO_STATUS_RECEIVED: u16 = 1005;

impl CloseCode {
    /// Every code, for tests and documentation.
    pub const ALL: [CloseCode; 13] = [
        Self::ProtocolError,
        Self::UnsupportedData,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::MessageTooBig,
        Self::InternalError,
        Self::ServiceRestart,
        Self::PingTimeout,
        Self::TokenExpired,
        Self::SessionClosed,
        Self::SlowConsumer,
        Self::TakenOver,
        Self::RateLimited,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::ProtocolError => 1002,
            Self::UnsupportedData => 1003,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::ServiceRestart => 1012,
            Self::PingTimeout => 4000,
            Self::TokenExpired => 4001,
            Self::SessionClosed => 4003,
            Self::SlowConsumer => 4008,
            Self::TakenOver => 4009,
            Self::RateLimited => 4029,
        }
    }

    /// The reason text sent with the code (short, stable, for people reading logs).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::ProtocolError => "protocol error",
            Self::UnsupportedData => "binary frames are not supported",
            Self::InvalidPayload => "text frame is not UTF-8",
            Self::PolicyViolation => "too many invalid frames",
            Self::MessageTooBig => "message too big",
            Self::InternalError => "temporarily unavailable",
            Self::ServiceRestart => "server shutting down",
            Self::PingTimeout => "ping timeout",
            Self::TokenExpired => "token expired",
            Self::SessionClosed => "session closed",
            Self::SlowConsumer => "slow consumer",
            Self::TakenOver => "session taken over",
            Self::RateLimited => "too many messages",
        }
    }

    /// The variant sent with `code`, if CES sends it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// A message on a node's control channel (`ces:node:{<node>}`, [`crate::keys::node_channel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeControl<'a> {
    /// Close connection `conn_id` of `session` with `code`, if the node still has it. Text form:
    /// `close <session> <conn id> <code>`.
    Close {
        /// The session.
        session: &'a str,
        /// The connection within the node (the part after `/` of a connection reference).
        conn_id: u64,
        /// Why.
        code: CloseCode,
    },
}

impl<'a> NodeControl<'a> {
    /// The text published on the control channel.
    pub fn encode(&self) -> String {
        match self {
            Self::Close {
                session,
                conn_id,
                code,
            } => format!("close {session} {conn_id} {}", code.code()),
        }
    }

    /// Parses [`encode`](Self::encode)'s text; `None` for anything else, including a code CES does not send.
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(' ');
        if parts.next()? != "close" {
            return None;
        }
        let session = parts.next().filter(|s| !s.is_empty())?;
        let conn_id = parts.next()?.parse().ok()?;
        let code = CloseCode::from_code(parts.next()?.parse().ok()?)?;
        parts.next().is_none().then_some(Self::Close {
            session,
            conn_id,
            code,
        })
    }
}

/// Identifies one connection across nodes: `<node>/<conn id>`, as stored in the session's `conn` field.
pub fn conn_ref(node: &str, conn_id: u64) -> String {
    format!("{node}/{conn_id}")
}

/// Splits a [`conn_ref`] into node and connection id; `None` if it is not one.
pub fn parse_conn_ref(conn: &str) -> Option<(&str, u64)> {
    let (node, conn_id) = conn.rsplit_once('/')?;
    Some((node, conn_id.parse().ok()?)).filter(|(node, _)| !node.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()), "{c:?} repeats a code");
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(!c.reason().is_empty());
            // Application codes are 4000-4999; the rest are registered IANA codes the edge may send.
            assert!((1000..=1015).contains(&c.code()) || (4000..=4999).contains(&c.code()));
        }
        for unsent in [1000, ABNORMAL, NO_STATUS_RECEIVED, 4002, 4999] {
            assert_eq!(CloseCode::from_code(unsent), None, "{unsent}");
        }
    }

    /// The wire values are part of the protocol (docs/protocol.md); changing one breaks every deployed client.
    #[test]
    fn wire_values_are_stable() {
        let table: Vec<(u16, &str)> = CloseCode::ALL
            .iter()
            .map(|c| (c.code(), c.reason()))
            .collect();
        assert_eq!(
            table,
            [
                (1002, "protocol error"),
                (1003, "binary frames are not supported"),
                (1007, "text frame is not UTF-8"),
                (1008, "too many invalid frames"),
                (1009, "message too big"),
                (1011, "temporarily unavailable"),
                (1012, "server shutting down"),
                (4000, "ping timeout"),
                (4001, "token expired"),
                (4003, "session closed"),
                (4008, "slow consumer"),
                (4009, "session taken over"),
                (4029, "too many messages"),
            ]
        );
        assert_eq!(CloseCode::TakenOver.to_string(), "4009 session taken over");
    }

    #[test]
    fn control_messages_round_trip_and_reject_garbage() {
        let msg = NodeControl::Close {
            session: "s-1",
            conn_id: 42,
            code: CloseCode::TakenOver,
        };
        assert_eq!(msg.encode(), "close s-1 42 4009");
        assert_eq!(NodeControl::parse(&msg.encode()), Some(msg));
        for bad in [
            "",
            "close",
            "close s",
            "close  1 4009",
            "close s x 4009",
            "close s 1",
            "close s 1 99999",
            "close s 1 1006",
            "open s 1 4009",
            "close s 1 4009 x",
        ] {
            assert_eq!(NodeControl::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connection_references_round_trip() {
        assert_eq!(conn_ref("edge-a", 7), "edge-a/7");
        assert_eq!(parse_conn_ref("edge-a/7"), Some(("edge-a", 7)));
        assert_eq!(parse_conn_ref("a/b/7"), Some(("a/b", 7)));
        for bad in ["", "edge-a", "edge-a/", "/7", "edge-a/x"] {
            assert_eq!(parse_conn_ref(bad), None, "{bad:?}");
        }
    }
}
