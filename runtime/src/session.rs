//! Closing a session for good: the one implementation behind the edge's `DELETE /v1/sessions/{id}` (the token
//! holder closes its own session) and `cesctl session revoke` (an operator closes any session, without its token).
//!
//! Closing has two steps. [`close`] writes the tombstone: the session hash `ces:{<session>}:session` gets status
//! `closed` and `closed_at_ms`, loses its holder, and is kept as long as a token of the session can still be
//! presented (`CES_TOKEN_TTL_SECS`), all in one call of the library's `ces_close`. From then on every edge refuses
//! the session: a new socket and a refresh get 401 `revoked`, and a socket's heartbeat finds it closed. Then
//! [`tell_holder`] publishes `close <session> <conn id> 4003` on the control channel of the node whose connection
//! held it (`ces:node:{<node>}`), so the live socket closes within a second rather than at its next heartbeat.
//! [`revoke`] does both.

use std::time::Duration;

use ces_protocol::close::{CloseCode, NodeControl, parse_conn_ref};
use ces_protocol::keys::{self, SessionId};
use fred::clients::Client;
use fred::interfaces::PubsubInterface;
use fred::types::Value;

use crate::redis::{CLOSE_FUNCTION, fcall, millis};

/// Closes `session` for good; the tombstone lives `ttl` (at least the token lifetime, so no token of the session
/// outlives it). Returns the connection that held it (`<node>/<conn id>`), if one did.
pub async fn close(
    redis: &Client,
    session: &SessionId,
    ttl: Duration,
) -> Result<Option<String>, fred::error::Error> {
    let args = vec![Value::Integer(crate::now_ms()), millis(ttl)];
    let holder: String = fcall(redis, CLOSE_FUNCTION, session.session_key(), args).await?;
    Ok((!holder.is_empty()).then_some(holder))
}

/// Tells the node holding `holder` (`<node>/<conn id>`) to close that connection with `code`. A holder that is not
/// a connection reference (a foreign writer) is ignored: there is no node to tell.
pub async fn tell_holder(
    redis: &Client,
    session: &SessionId,
    holder: &str,
    code: CloseCode,
) -> Result<(), fred::error::Error> {
    let Some((node, conn_id)) = parse_conn_ref(holder) else {
        return Ok(());
    };
    let message = NodeControl::Close {
        session: session.as_str(),
        conn_id,
        code,
    };
    let _: i64 = redis
        .spublish(keys::node_channel(node), message.encode())
        .await?;
    Ok(())
}

/// Frees `session`'s place under the live-session caps at once: the node-wide one (`ces:sessions`) and its JWT
/// subject's, if it registered with one.
pub async fn free_place(redis: &Client, session: &SessionId) -> Result<(), fred::error::Error> {
    use fred::interfaces::{HashesInterface as _, SortedSetsInterface as _};
    let subject: Option<String> = redis.hget(session.session_key(), "subject").await?;
    let _: Value = redis.zrem(keys::SESSIONS_KEY, session.as_str()).await?;
    if let Some(subject) = subject {
        let _: Value = redis
            .zrem(keys::subject_sessions_key(&subject), session.as_str())
            .await?;
    }
    Ok(())
}

/// [`free_place`], [`close`], then [`tell_holder`] with 4003 ([`CloseCode::SessionClosed`]) when a connection held
/// the session. Returns that connection. Idempotent: revoking a closed session writes the tombstone again and tells
/// nobody.
pub async fn revoke(
    redis: &Client,
    session: &SessionId,
    ttl: Duration,
) -> Result<Option<String>, fred::error::Error> {
    free_place(redis, session).await?;
    let holder = close(redis, session, ttl).await?;
    if let Some(h) = &holder {
        tell_holder(redis, session, h, CloseCode::SessionClosed).await?;
    }
    Ok(holder)
}
