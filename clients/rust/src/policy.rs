//! What a connection's end leads to (docs/clients.md, "Close codes and HTTP answers").

use std::time::Duration;

use ces_protocol::close::{ABNORMAL, CloseCode};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The socket closed with this code (a close frame), or [`ABNORMAL`] when it dropped without one.
    Closed(u16),
    /// The upgrade was answered with this HTTP status, and `Retry-After` in seconds if it came with one.
    Refused {
        /// The HTTP status.
        status: u16,
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
    /// Nothing arrived for too long (the liveness check), or the connection could not be made at all.
    Silent,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Reconnect after a short random delay (an edge draining or gone: its clients must not all come back at once).
    Soon,
    /// Reconnect after the next backoff delay.
    Backoff,
    /// Reconnect after exactly this long (the server said when).
    After(Duration),
    /// Get a fresh token first, then reconnect.
    Refresh,
    /// Stop: the app is told why and no reconnect follows.
    Stop(&'static str),
}

/// The next step after `ending`; `refreshed_last` is whether the connection that ended was the first one after a
/// token refresh (a second expiry or 401 in a row backs off instead of refreshing in a loop).
pub fn after(ending: Ending, refreshed_last: bool) -> Next {
    match ending {
        Ending::Silent => Next::Backoff,
        Ending::Refused {
            status,
            retry_after,
        } => match status {
            401 if refreshed_last => Next::Stop("unauthorized"),
            401 => Next::Refresh,
            429 | 503 => retry_after.map_or(Next::Backoff, |s| Next::After(Duration::from_secs(s))),
            400..=499 => Next::Stop("refused"),
            _ => Next::Backoff,
        },
        Ending::Closed(code) => match CloseCode::from_code(code) {
            Some(CloseCode::ServiceRestart) => Next::Soon,
            Some(CloseCode::TokenExpired) if refreshed_last => Next::Backoff,
            Some(CloseCode::TokenExpired) => Next::Refresh,
            Some(CloseCode::SessionClosed) => Next::Stop("session closed"),
            Some(CloseCode::TakenOver) => Next::Stop("taken over"),
            Some(
                CloseCode::ProtocolError
                | CloseCode::UnsupportedData
                | CloseCode::InvalidPayload
                | CloseCode::PolicyViolation
                | CloseCode::MessageTooBig,
            ) => Next::Stop("protocol error"),
            Some(
                CloseCode::InternalError
                | CloseCode::PingTimeout
                | CloseCode::SlowConsumer
                | CloseCode::RateLimited,
            ) => Next::Backoff,
            None if code == ABNORMAL => Next::Soon,
            None if (4500..=4999).contains(&code) => Next::Stop("closed by the server"),
            None => Next::Backoff,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> Next {
        after(Ending::Closed(code), false)
    }

    #[test]
    fn every_close_code_has_its_step() {
        assert_eq!(closed(1012), Next::Soon, "draining edge");
        assert_eq!(closed(ABNORMAL), Next::Soon, "edge gone");
        for code in [1011, 4000, 4008, 4029] {
            assert_eq!(closed(code), Next::Backoff, "{code}");
        }
        assert_eq!(closed(4001), Next::Refresh);
        assert_eq!(
            after(Ending::Closed(4001), true),
            Next::Backoff,
            "no refresh loop"
        );
        assert_eq!(closed(4003), Next::Stop("session closed"));
        assert_eq!(closed(4009), Next::Stop("taken over"));
        for code in [1002, 1003, 1007, 1008, 1009] {
            assert_eq!(closed(code), Next::Stop("protocol error"), "{code}");
        }
        // Codes a later server may add: 4000-4499 retry, 4500-4999 final.
        assert_eq!(closed(4321), Next::Backoff);
        assert_eq!(closed(4499), Next::Backoff);
        assert_eq!(closed(4500), Next::Stop("closed by the server"));
        assert_eq!(closed(4999), Next::Stop("closed by the server"));
        assert_eq!(closed(5000), Next::Backoff);
        assert_eq!(after(Ending::Silent, false), Next::Backoff);
    }

    #[test]
    fn http_answers_follow_retry_after_and_refresh_once() {
        let refused = |status, retry_after| Ending::Refused {
            status,
            retry_after,
        };
        assert_eq!(
            after(refused(429, Some(7)), false),
            Next::After(Duration::from_secs(7))
        );
        assert_eq!(
            after(refused(503, Some(2)), false),
            Next::After(Duration::from_secs(2))
        );
        assert_eq!(after(refused(503, None), false), Next::Backoff);
        assert_eq!(after(refused(401, None), false), Next::Refresh);
        assert_eq!(after(refused(401, None), true), Next::Stop("unauthorized"));
        assert_eq!(after(refused(403, None), false), Next::Stop("refused"));
        assert_eq!(after(refused(400, None), false), Next::Stop("refused"));
        assert_eq!(after(refused(500, None), false), Next::Backoff);
        assert_eq!(after(refused(502, Some(9)), false), Next::Backoff);
    }
}
