//! The session token as the client holds it, and when to refresh it in band (docs/clients.md, "Token refresh and
//! acks").

use std::time::Duration;

/// The earliest a refresh follows the previous one: an app that hands back the same token again cannot make the
/// client ask in a tight loop as the expiry draws near.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

/// A session token and, when known, its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token, as `GET /v1/ws?token=` and the `refresh` frame take it.
    pub value: String,
    /// When it expires, unix seconds: given by the app (a registration's or refresh's `expires_at`) or read from
    /// the token itself; `None` when neither says, and then the client never refreshes in band.
    pub expires_at: Option<u64>,
}

impl Token {
    /// `value`, with the expiry written in it when it is a CES `v1` token.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let expires_at = ces_protocol::token::unverified_expiry(&value);
        Self { value, expires_at }
    }

    /// `value`, expiring at `expires_at` (unix seconds), as the server said.
    pub fn expiring_at(value: impl Into<String>, expires_at: u64) -> Self {
        Self {
            value: value.into(),
            expires_at: Some(expires_at),
        }
    }
}

impl From<String> for Token {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How long from `now_ms` (unix milliseconds) until a token expiring at `expires_at` (unix seconds) is refreshed:
/// at 80 % of the life it has left, and not sooner than [`MIN_REFRESH_GAP`]. `None` once it has expired: the
/// server closes the socket with 4001 and the client gets a token before it reconnects.
pub fn refresh_in(now_ms: u64, expires_at: u64) -> Option<Duration> {
    let left = expires_at.saturating_mul(1000).checked_sub(now_ms)?;
    if left == 0 {
        return None;
    }
    Some(Duration::from_millis(left / 10 * 8).max(MIN_REFRESH_GAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_at_four_fifths_of_the_life_it_has_left() {
        assert_eq!(refresh_in(1_000_000, 1_100), Some(Duration::from_secs(80)));
        assert_eq!(
            refresh_in(1_000_500, 1_010),
            Some(Duration::from_millis(7_600))
        );
    }

    #[test]
    fn never_sooner_than_the_minimum_gap_and_never_once_expired() {
        assert_eq!(refresh_in(999_900, 1_000), Some(MIN_REFRESH_GAP));
        assert_eq!(refresh_in(1_000_000, 1_000), None);
        assert_eq!(refresh_in(2_000_000, 1_000), None);
    }

    #[test]
    fn the_expiry_is_read_from_a_ces_token_and_never_shown() {
        // {"sid":"s","exp":1}
        let token = Token::new("v1.k1.eyJzaWQiOiJzIiwiZXhwIjoxfQ.sig");
        assert_eq!(token.expires_at, Some(1));
        assert_eq!(Token::from("opaque".to_owned()).expires_at, None);
        assert_eq!(Token::expiring_at("opaque", 7).expires_at, Some(7));
        let shown = format!("{token:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("expires_at: Some(1)"), "{shown}");
    }
}
