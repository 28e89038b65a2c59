//! Session ids and the Redis names derived from them.
//!
//! Every key and channel of a session carries the session id as a Redis Cluster hash tag (`ces:{<id>}:...`), so
//! one session's sequence counter, buffer and channel always live on one shard and a Redis function may touch them
//! together. The id alphabet excludes `{` and `}`, so a tag can never be broken out of.

use std::fmt;

/// Longest accepted session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A validated session id: 1–128 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a string is not a session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdError {
    /// The string is empty.
    Empty,
    /// Longer than [`MAX_SESSION_ID_LEN`] bytes.
    TooLong(usize),
    /// Contains a character outside `[A-Za-z0-9_.:-]`; carries the first offender.
    BadChar(char),
}

impl fmt::Display for SessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "session id is empty"),
            Self::TooLong(n) => {
                write!(f, "session id is {n} bytes, more than {MAX_SESSION_ID_LEN}")
            }
            Self::BadChar(c) => write!(
                f,
                "session id contains {c:?}; allowed are A-Z a-z 0-9 _ . : -"
            ),
        }
    }
}

impl std::error::Error for SessionIdError {}

impl SessionId {
    /// Validates `s` as a session id.
    pub fn parse(s: &str) -> Result<Self, SessionIdError> {
        validate_session_id(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Every Redis name of the session's event stream.
    pub fn keys(&self) -> SessionKeys {
        SessionKeys::of(&self.0)
    }

    /// The Pub/Sub channel its events are published on.
    pub fn channel(&self) -> String {
        channel(&self.0)
    }

    /// The hash holding the session's registration data.
    pub fn session_key(&self) -> String {
        format!("ces:{{{}}}:session", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `s` against the session id rules without allocating.
pub fn validate_session_id(s: &str) -> Result<(), SessionIdError> {
    if s.is_empty() {
        return Err(SessionIdError::Empty);
    }
    if s.len() > MAX_SESSION_ID_LEN {
        return Err(SessionIdError::TooLong(s.len()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        Some(c) => Err(SessionIdError::BadChar(c)),
        None => Ok(()),
    }
}

/// The Redis names of one session's event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionKeys {
    /// Hash: `epoch`, `seq` (last assigned), `evicted` (highest seq trimmed from the buffer), `evicted_reason`,
    /// `due` (when the session's upkeep runs next, ms since the Unix epoch).
    pub meta: String,
    /// Stream: the reconnection buffer, one entry per event, entry id `<seq>-0`.
    pub buffer: String,
    /// Sorted set: event ids seen within the dedup window, scored by when.
    pub ids: String,
    /// Pub/Sub channel of live events.
    pub channel: String,
}

impl SessionKeys {
    /// The names for a (validated) session id.
    pub fn of(session: &str) -> Self {
        Self {
            meta: session_key(session, "meta"),
            buffer: session_key(session, "buf"),
            ids: session_key(session, "ids"),
            channel: channel(session),
        }
    }
}

/// `ces:{<session>}:<kind>`, built without the formatting machinery: ingest makes four of these per event.
fn session_key(session: &str, kind: &str) -> String {
    let mut key = String::with_capacity(7 + session.len() + kind.len());
    key.push_str("ces:{");
    key.push_str(session);
    key.push_str("}:");
    key.push_str(kind);
    key
}

/// String `<epoch>:<seq>`: every `delivered` receipt of the session up to `seq` of `epoch` is in Kafka (written by the
/// edge that produced them, read by the edge a client resumes on; docs/admin.md, "Delivery receipts").
pub fn receipted_key(session: &str) -> String {
    format!("ces:{{{session}}}:rcpt")
}

/// Sharded Pub/Sub channel on which edge node `node` takes control messages (close a connection it holds). The
/// node id is its hash tag, so on a Redis Cluster the channel lives on one shard like a session's.
pub fn node_channel(node: &str) -> String {
    format!("ces:node:{{{node}}}")
}

/// Sorted set of edge nodes scored by their last heartbeat (ms since the Unix epoch); members older than a day are
/// trimmed by the nodes that write it.
pub const NODES_KEY: &str = "ces:nodes";

/// Hash of one edge node's heartbeat (`connections`, `draining`, `started_ms`, `version`), expiring three
/// heartbeats after the last. The node id is the hash tag, as for its control channel.
pub fn node_info_key(node: &str) -> String {
    format!("ces:node:{{{node}}}:info")
}

/// `SCAN` pattern of every session hash ([`SessionId::session_key`]).
pub const SESSION_KEY_PATTERN: &str = "ces:{*}:session";

/// The session id inside a session hash's name ([`SessionId::session_key`]), or `None` for any other string.
pub fn session_of_key(key: &str) -> Option<&str> {
    let inner = key.strip_prefix("ces:{")?.strip_suffix("}:session")?;
    validate_session_id(inner).ok()?;
    Some(inner)
}

/// Sorted set of registered sessions scored by expiry (ms), for the session cap.
pub const SESSIONS_KEY: &str = "ces:sessions";

/// The live sessions of one registration subject (a JWT's `sub`), scored by expiry like [`SESSIONS_KEY`]. The
/// subject is hashed: any string a token carries makes a key of bounded length.
pub fn subject_sessions_key(subject: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(subject.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ces:subject:{{{hex}}}:sessions")
}

/// Pub/Sub channel of a (validated) session id.
pub fn channel(session: &str) -> String {
    session_key(session, "ch")
}

/// The session id inside a channel name produced by [`channel`], or `None` for any other string.
pub fn session_of_channel(channel: &str) -> Option<&str> {
    let inner = channel.strip_prefix("ces:{")?.strip_suffix("}:ch")?;
    validate_session_id(inner).ok()?;
    Some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "a",
            "A-z_0.9:x",
            &"x".repeat(128),
            "0190f3c2-7b1e-7c1d-9a51-3f1f8a9b6c2d",
        ] {
            assert!(SessionId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else_with_the_reason() {
        assert_eq!(SessionId::parse(""), Err(SessionIdError::Empty));
        assert_eq!(
            SessionId::parse(&"x".repeat(129)),
            Err(SessionIdError::TooLong(129))
        );
        for (bad, c) in [
            ("a}b", '}'),
            ("a{b", '{'),
            ("a b", ' '),
            ("é", 'é'),
            ("a/b", '/'),
            ("a\0", '\0'),
        ] {
            assert_eq!(
                SessionId::parse(bad),
                Err(SessionIdError::BadChar(c)),
                "{bad:?}"
            );
        }
        // What a client is told (the registration API's error message).
        assert_eq!(SessionIdError::Empty.to_string(), "session id is empty");
        assert_eq!(
            SessionIdError::TooLong(129).to_string(),
            "session id is 129 bytes, more than 128"
        );
        assert_eq!(
            SessionIdError::BadChar('/').to_string(),
            "session id contains '/'; allowed are A-Z a-z 0-9 _ . : -"
        );
    }

    #[test]
    fn names_are_hash_tagged_by_session() {
        let s = SessionId::parse("abc").unwrap();
        let k = s.keys();
        assert_eq!(
            [
                k.meta.as_str(),
                k.buffer.as_str(),
                k.ids.as_str(),
                k.channel.as_str()
            ],
            [
                "ces:{abc}:meta",
                "ces:{abc}:buf",
                "ces:{abc}:ids",
                "ces:{abc}:ch"
            ]
        );
        assert_eq!(s.channel(), "ces:{abc}:ch");
        assert_eq!(s.session_key(), "ces:{abc}:session");
        assert_eq!(s.to_string(), "abc");
        assert_eq!(receipted_key("abc"), "ces:{abc}:rcpt");
        assert_eq!(node_channel("edge-a"), "ces:node:{edge-a}");
        // A subject's set is named by a digest of the subject (any text), 16 bytes in hex, as its own hash tag.
        let key = subject_sessions_key("user 42");
        let hex = key
            .strip_prefix("ces:subject:{")
            .and_then(|k| k.strip_suffix("}:sessions"))
            .expect("the subject key's shape");
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key, subject_sessions_key("user 42"));
        assert_ne!(key, subject_sessions_key("user 43"));
    }

    #[test]
    fn node_and_session_key_names() {
        assert_eq!(node_info_key("edge-a"), "ces:node:{edge-a}:info");
        assert_eq!(NODES_KEY, "ces:nodes");
        let s = SessionId::parse("s-1").unwrap();
        assert_eq!(session_of_key(&s.session_key()), Some("s-1"));
        for foreign in [
            "ces:{s}:meta",
            "ces:{}:session",
            "ces:{a}b}:session",
            "ces:{s}:session:x",
            "x:{s}:session",
        ] {
            assert_eq!(session_of_key(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn channel_round_trips_and_rejects_foreign_names() {
        assert_eq!(session_of_channel(&channel("s-1")), Some("s-1"));
        for foreign in [
            "ces:{s}:meta",
            "other:{s}:ch",
            "ces:{}:ch",
            "ces:{a}b}:ch",
            "ces:{s}:ch:x",
        ] {
            assert_eq!(session_of_channel(foreign), None, "{foreign}");
        }
    }
}
