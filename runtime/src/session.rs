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
//!
//! The live-session caps (`CES_MAX_SESSIONS`, `CES_MAX_SESSIONS_PER_SUBJECT`) are kept here too, in one place: a
//! sorted set of live sessions scored by their newest token's expiry (`ces:sessions`, and one per JWT subject).
//! [`admit`] enters a new session under a cap, [`extend_life`] moves a refreshed session forward (never back, and
//! never one that left), [`forget`] and [`free_place`] take one out at once.

use std::time::Duration;

use ces_protocol::close::{CloseCode, NodeControl, parse_conn_ref};
use ces_protocol::keys::{self, SessionId};
use fred::clients::Client;
use fred::interfaces::PubsubInterface;
use fred::types::Value;

use crate::redis::{ADMIT_FUNCTION, CLOSE_FUNCTION, fcall, millis};

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

/// Admits a new session into `set` (live sessions scored by their token's expiry, [`keys::SESSIONS_KEY`] or a
/// subject's) under the cap `max`; `false` when the cap is reached.
pub async fn admit(
    redis: &Client,
    set: String,
    session: &SessionId,
    expires_at_ms: i64,
    max: u64,
) -> Result<bool, fred::error::Error> {
    let args = vec![
        session.as_str().into(),
        Value::Integer(crate::now_ms()),
        Value::Integer(expires_at_ms),
        Value::Integer(i64::try_from(max).unwrap_or(i64::MAX)),
    ];
    let admitted: i64 = fcall(redis, ADMIT_FUNCTION, set, args).await?;
    Ok(admitted == 1)
}

/// Takes `session` out of `set` at once (a registration that was refused by another cap).
pub async fn forget(
    redis: &Client,
    set: String,
    session: &SessionId,
) -> Result<(), fred::error::Error> {
    use fred::interfaces::SortedSetsInterface as _;
    let _: Value = redis.zrem(set, session.as_str()).await?;
    Ok(())
}

/// A refreshed session lives until `expires_at_ms` (its new token's expiry): its record is kept at least `ttl`
/// more, and its places under the caps (the node-wide one, and `subject`'s if it registered with one) move
/// forward, never back, and only while it holds them (a closed session does not come back). One pipeline: a
/// round trip for the three writes.
pub async fn extend_life(
    redis: &Client,
    session: &SessionId,
    subject: Option<&str>,
    ttl: Duration,
    expires_at_ms: i64,
) -> Result<(), fred::error::Error> {
    use fred::interfaces::{KeysInterface as _, SortedSetsInterface as _};
    use fred::types::sorted_sets::Ordering;
    use fred::types::{ExpireOptions, SetOptions};
    let pipeline = redis.pipeline();
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let _: () = pipeline
        .expire(session.session_key(), ttl_secs, Some(ExpireOptions::GT))
        .await?;
    let score = (expires_at_ms as f64, session.as_str());
    let sets = std::iter::once(keys::SESSIONS_KEY.to_owned())
        .chain(subject.map(keys::subject_sessions_key));
    for set in sets {
        let _: () = pipeline
            .zadd(
                set,
                Some(SetOptions::XX),
                Some(Ordering::GreaterThan),
                false,
                false,
                score,
            )
            .await?;
    }
    for reply in pipeline.try_all::<Value>().await {
        reply?;
    }
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
