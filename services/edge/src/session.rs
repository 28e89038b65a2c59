//! Session state in Redis (`ces:{<session>}:session`): who holds the session, since when, and whether it is
//! closed; plus the node control channel that carries takeovers and closes to the node holding a socket.
//!
//! A connection *claims* the session after its subscription is confirmed. The claim returns the previous
//! holder (`<node>/<conn id>`), and the new connection's node publishes `close <session> <conn id> <code>` on
//! the previous node's channel (`ces:node:{<node>}`), which closes the old socket with 4009 in well under a
//! second. A connection that ends *releases* the session (status `disconnected`, TTL `CES_SESSION_TTL_SECS`)
//! unless a newer one holds it. `DELETE /v1/sessions/{id}` *closes* it: status `closed` (kept as long as a token
//! can live), the holder is told to close with 4003, and no new connection is accepted. Closing and telling the
//! holder are [`ces_runtime::session`]'s, shared with `cesctl session revoke`.

use std::time::Duration;

use ces_protocol::close::CloseCode;
use ces_protocol::keys::{SessionId, SessionKeys};
use ces_runtime::redis::{CLAIM_FUNCTION, RELEASE_FUNCTION, TOUCH_FUNCTION, millis as ms};
use fred::clients::Client;
use fred::interfaces::HashesInterface;
use fred::types::{FromValue, Value};

use crate::Error;

async fn fcall<R: FromValue>(
    redis: &Client,
    function: &str,
    key: String,
    args: Vec<Value>,
) -> Result<R, Error> {
    Ok(ces_runtime::redis::fcall(redis, function, key, args).await?)
}

async fn fcall_keys<R: FromValue>(
    redis: &Client,
    function: &str,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<R, Error> {
    Ok(ces_runtime::redis::fcall_keys(redis, function, keys, args).await?)
}

/// Outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The connection holds the session; `previous` held it before (`<node>/<conn id>`), if anyone did.
    Held {
        /// The previous holder.
        previous: Option<String>,
    },
    /// The session was closed; the connection must not serve it.
    Closed,
}

/// Claims `session` for connection `conn` on `node`; the session hash lives `ttl` from now.
pub async fn claim(
    redis: &Client,
    session: &SessionId,
    node: &str,
    conn: &str,
    ttl: Duration,
) -> Result<Claim, Error> {
    let args = vec![
        conn.into(),
        node.into(),
        Value::Integer(ces_runtime::now_ms()),
        ms(ttl),
    ];
    let (previous, status): (String, String) =
        fcall(redis, CLAIM_FUNCTION, session.session_key(), args).await?;
    if status == "closed" {
        return Ok(Claim::Closed);
    }
    Ok(Claim::Held {
        previous: (!previous.is_empty() && previous != conn).then_some(previous),
    })
}

/// Arguments of `ces_release` and `ces_touch`: the connection, now, the TTL, and the pending ack (or '').
fn conn_args(conn: &str, ttl: Duration, ack: Option<u64>) -> Vec<Value> {
    let ack = ack.map(|a| a.to_string()).unwrap_or_default();
    vec![
        conn.into(),
        Value::Integer(ces_runtime::now_ms()),
        ms(ttl),
        ack.into(),
    ]
}

/// Releases `session` if `conn` still holds it, storing the client's last `ack` if one is pending; the session
/// then lives `ttl` after this disconnect.
pub async fn release(
    redis: &Client,
    session: &SessionId,
    conn: &str,
    ttl: Duration,
    ack: Option<u64>,
) -> Result<(), Error> {
    let args = conn_args(conn, ttl, ack);
    let _: i64 = fcall(redis, RELEASE_FUNCTION, session.session_key(), args).await?;
    Ok(())
}

/// Closes `session` for good; the tombstone lives `ttl`. Returns the connection that held it
/// ([`ces_runtime::session::close`]).
pub async fn close(
    redis: &Client,
    session: &SessionId,
    ttl: Duration,
) -> Result<Option<String>, Error> {
    Ok(ces_runtime::session::close(redis, session, ttl).await?)
}

/// Whether `session` was closed.
pub async fn is_closed(redis: &Client, session: &SessionId) -> Result<bool, Error> {
    let status: Option<String> = redis.hget(session.session_key(), "status").await?;
    Ok(status.as_deref() == Some("closed"))
}

/// Tells the node holding `holder` (`<node>/<conn id>`) to close it with `code`
/// ([`ces_runtime::session::tell_holder`]).
pub async fn tell_holder(
    redis: &Client,
    session: &SessionId,
    holder: &str,
    code: CloseCode,
) -> Result<(), Error> {
    Ok(ces_runtime::session::tell_holder(redis, session, holder, code).await?)
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// This connection still holds the session; it was refreshed.
    Held,
    /// The session was closed (`DELETE`).
    Closed,
    /// Another connection holds the session.
    Taken,
}

/// Refreshes a connected session (last seen now, alive `ttl` more) and stores `ack` if given, provided `conn`
/// still holds it. A socket whose control message was lost learns here that it must close.
pub async fn heartbeat(
    redis: &Client,
    session: &SessionId,
    conn: &str,
    ttl: Duration,
    ack: Option<u64>,
) -> Result<Heartbeat, Error> {
    let args = conn_args(conn, ttl, ack);
    let keys = vec![
        session.session_key(),
        SessionKeys::of(session.as_str()).meta,
    ];
    let answer: String = fcall_keys(redis, TOUCH_FUNCTION, keys, args).await?;
    Ok(match answer.as_str() {
        "closed" => Heartbeat::Closed,
        "taken" => Heartbeat::Taken,
        _ => Heartbeat::Held,
    })
}
