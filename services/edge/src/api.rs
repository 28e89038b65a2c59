//! HTTP handlers: session registration, the WebSocket upgrade, probes and metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ces_protocol::keys::{self, SessionId};
use ces_protocol::token::TokenError;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::limits::HandshakeSlot;
use crate::resume::Position;
use crate::session;
use crate::ws::{SocketParams, serve_socket};
use crate::{AppState, Error, metrics as m};

/// Answer to `POST /v1/sessions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Registered {
    /// The new session's id.
    pub session_id: String,
    /// Signed token for `GET /v1/ws?token=`.
    pub token: String,
    /// When the token expires (RFC 3339, UTC).
    pub expires_at: String,
}

/// `POST /v1/sessions`: registers a session. The body is optional; when given it must be a JSON object of client
/// metadata (stored with the session, at most `CES_MAX_BODY_BYTES`). When registration is protected
/// ([`crate::register_auth`]), the request needs `Authorization: Bearer <API key or JWT>`.
///
/// The rate limit and the credential are checked before a byte of the body is read: a refused client costs no
/// body buffer, and a trickled body is cut off by the request deadline ([`crate::serve`]).
pub async fn register(
    State(state): State<Arc<AppState>>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Registered>), Error> {
    let client = client_ip(&state, connect_info.as_ref(), &headers);
    if let Some(ip) = client {
        state.limits.register(ip).map_err(Error::RateLimited)?;
    }
    let subject = state
        .config
        .register_auth
        .check(bearer(&headers))
        .map_err(Error::RegistrationRefused)?
        // As stored with the session, which refresh and delete read back.
        .map(|s| s.chars().take(256).collect::<String>());
    if let Some(subject) = &subject {
        state
            .limits
            .register_subject(subject)
            .map_err(Error::RateLimited)?;
    }
    let body = read_body(body, state.config.max_body_bytes).await?;
    let metadata = parse_metadata(&body)?;
    let session = SessionId::parse(&uuid::Uuid::now_v7().simple().to_string())
        .expect("uuid is a valid session id");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let expires_at = now + state.config.token_ttl;
    let token = state.config.token_keys.sign(&session, expires_at.as_secs());

    let mut fields: HashMap<&str, String> = HashMap::new();
    fields.insert("created_at_ms", now.as_millis().to_string());
    fields.insert("node", state.config.node_id.clone());
    fields.insert("metadata", metadata);
    if let Some(subject) = &subject {
        fields.insert("subject", subject.clone());
    }
    if let Some(ip) = client {
        fields.insert("ip", ip.to_string());
    }
    if let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        fields.insert("user_agent", ua.chars().take(512).collect());
    }
    fields.insert("status", "disconnected".to_owned());
    let expires_at_ms = i64::try_from(expires_at.as_millis()).unwrap_or(i64::MAX);
    // Live sessions are counted per subject and in total; a place lasts as long as the session's newest token.
    if let Some(subject) = &subject {
        let set = keys::subject_sessions_key(subject);
        let cap = state.config.max_sessions_per_subject;
        if !ces_runtime::session::admit(&state.redis, set, &session, expires_at_ms, cap).await? {
            return Err(Error::AtCapacity);
        }
    }
    let everyone = keys::SESSIONS_KEY.to_owned();
    let cap = state.config.max_sessions;
    if !ces_runtime::session::admit(&state.redis, everyone, &session, expires_at_ms, cap).await? {
        if let Some(subject) = &subject {
            ces_runtime::session::forget(
                &state.redis,
                keys::subject_sessions_key(subject),
                &session,
            )
            .await?;
        }
        return Err(Error::AtCapacity);
    }
    let key = session.session_key();
    let pipeline = state.redis.pipeline();
    let _: () = pipeline.hset(&key, fields).await?;
    // A never-connected session lives as long as its token; connecting extends it.
    let _: () = pipeline
        .expire(&key, state.config.token_ttl.as_secs() as i64, None)
        .await?;
    let _: Vec<fred::types::Value> = pipeline.all().await?;

    metrics::counter!(m::SESSIONS_REGISTERED).increment(1);
    let expires_at = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(expires_at.as_secs());
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            session_id: session.to_string(),
            token,
            expires_at: expires_at.format(&Rfc3339).unwrap_or_default(),
        }),
    ))
}

/// The whole body, at most `limit` bytes (413 past it, without reading the rest).
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Error> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge(limit)),
        Err(e) => Err(Error::BadRequest {
            code: "invalid_body",
            message: format!("the body could not be read: {e}"),
        }),
    }
}

/// The registration body as the metadata stored with the session: a JSON object (`{}` for an empty body), whose
/// `labels` member, if any, follows [`crate::labels::validate`].
fn parse_metadata(body: &[u8]) -> Result<String, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok("{}".to_owned());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Error::BadRequest {
        code: "invalid_body",
        message: format!("body is not JSON: {e}"),
    })?;
    let Some(body) = value.as_object() else {
        return Err(Error::BadRequest {
            code: "invalid_body",
            message: "body must be a JSON object".into(),
        });
    };
    crate::labels::validate(body).map_err(|message| Error::BadRequest {
        code: "invalid_body",
        message,
    })?;
    Ok(value.to_string())
}

/// Query of `GET /v1/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Session token from registration.
    pub token: Option<String>,
    /// Resume: the last `seq` the client processed.
    pub last_seq: Option<u64>,
    /// Resume: the epoch that `last_seq` belongs to (from the welcome frame).
    pub epoch: Option<String>,
}

/// `GET /v1/ws?token=`: checks the token before anything else (401 without upgrading), then upgrades.
pub async fn websocket(
    State(state): State<Arc<AppState>>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    // Cheapest checks first: a storm is turned away before any token or Redis work.
    if let Some(ip) = client_ip(&state, connect_info.as_ref(), &headers) {
        state.limits.connect(ip).map_err(Error::RateLimited)?;
    }
    if state.hub.local_sessions() >= state.limits.max_connections() {
        return Err(Error::NodeFull);
    }
    // A page of another site must not open sockets with a token it got hold of (cross-site WebSocket hijacking).
    if let Some(origin) = headers.get(header::ORIGIN)
        && !state.config.allowed_origins.is_empty()
        && !state
            .config
            .allowed_origins
            .iter()
            .any(|allowed| origin.as_bytes() == allowed.as_bytes())
    {
        return Err(Error::Forbidden("this origin may not open sockets"));
    }
    let verified = verify_token(&state, query.token.as_deref().unwrap_or_default())?;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    // Admission: from here on the handshake costs Redis round trips. A reconnect storm waits for a slot (never
    // holding a lock) and is shed with 503 `overloaded` and a spread-out Retry-After when none frees up in time.
    let Some(handshake_slot) =
        HandshakeSlot::acquire(&state.handshakes, state.config.admission_wait).await
    else {
        return Err(Error::Overloaded);
    };
    if session::is_closed(&state.redis, &verified.session_id).await? {
        return Err(Error::Unauthorized(TokenError::Revoked));
    }
    if state.shutdown.is_cancelled() {
        return Err(Error::Draining);
    }
    if query
        .epoch
        .as_ref()
        .is_some_and(|e| e.is_empty() || e.len() > 64)
    {
        return Err(Error::BadRequest {
            code: "invalid_epoch",
            message: "epoch must be 1-64 characters".into(),
        });
    }
    if query.last_seq.is_some_and(|n| n > i64::MAX as u64) {
        return Err(Error::BadRequest {
            code: "invalid_last_seq",
            message: "last_seq is out of range".into(),
        });
    }
    let position = (query.last_seq.is_some() || query.epoch.is_some()).then(|| Position {
        last_seq: query.last_seq.unwrap_or(0),
        epoch: query.epoch,
    });
    let params = Box::new(SocketParams {
        position,
        store: state.redis.clone(),
        state: crate::resume::StateTerms {
            ttl: state.config.state_ttl,
            durable_restarts: state.config.common.redis_durable_restarts,
            unpublished_ttl: state.config.session_ttl,
        },
        page: crate::resume::Page::REPLAY,
        session_ttl: state.config.session_ttl,
        session: verified.session_id,
        node_id: state.config.node_id.clone(),
        ping_interval: state.config.ping_interval,
        write_timeout: state.config.ws_write_timeout,
        max_missed_pongs: state.config.max_missed_pongs,
        drain_delay: state.config.drain_delay,
        drain_window: state.config.drain_window,
        expires_at: verified.expires_at,
        token_keys: state.config.token_keys.clone(),
        inbound_limit: Arc::new(state.limits.socket()),
        handshake_slot: Some(handshake_slot),
        receipts: state.receipts.clone(),
    });
    let max = state.config.max_message_bytes;
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let tracker = state.tracker.clone();
    Ok(upgrade
        // tungstenite allocates the read buffer up front for every socket (128 KiB by default). Clients send
        // small frames (acks, pings, a token refresh of a few hundred bytes), and a larger frame reserves its own
        // length anyway, so 1 KiB is enough. A 16 KiB write threshold coalesces frames; the 1 MiB write cap
        // bounds what one stuck socket can hold.
        .read_buffer_size(1024)
        .write_buffer_size(ces_protocol::frame::EDGE_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(ces_protocol::frame::EDGE_MAX_WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        // The task that serves the socket lives as long as the connection, so its size is a per-connection cost.
        // The parameters travel boxed (axum keeps the closure's captures beside the future it returns) and the
        // socket's future is tracked as it is (an `async` block around it would hold a second copy of its
        // arguments): 4.2 KB per task before, see docs/performance.md.
        .on_upgrade(move |socket| {
            tracker.track_future(serve_socket(socket, hub, params, shutdown).map(drop))
        }))
}

/// Answer to `POST /v1/sessions/{id}/refresh`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refreshed {
    /// A new token for the same session, signed with the current signing key.
    pub token: String,
    /// When it expires (RFC 3339, UTC).
    pub expires_at: String,
}

/// `POST /v1/sessions/{id}/refresh` with the session's current (unexpired) token as `Authorization: Bearer`:
/// a new token with a full lifetime. A live socket takes it in-band (`{"type":"refresh","token":...}`) and stays
/// open past the old token's expiry. A closed session is refused (401 `revoked`).
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Refreshed>, Error> {
    let verified = verify_token(&state, bearer(&headers))?;
    if verified.session_id.as_str() != id {
        return Err(Error::Forbidden("the token is for another session"));
    }
    let (status, subject, created_at_ms): (Option<String>, Option<String>, Option<u64>) = state
        .redis
        .hmget(
            verified.session_id.session_key(),
            vec!["status", "subject", "created_at_ms"],
        )
        .await?;
    // A session whose state is gone (expired, or removed by an operator) is as good as revoked: a token must not
    // outlive the record that can revoke it.
    let (Some(status), Some(created_at_ms)) = (status, created_at_ms) else {
        return Err(Error::Unauthorized(TokenError::Revoked));
    };
    if status == "closed" {
        return Err(Error::Unauthorized(TokenError::Revoked));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let expires_at = refreshed_expiry(
        now,
        state.config.token_ttl,
        Duration::from_millis(created_at_ms) + state.config.max_session_lifetime,
    )
    .ok_or(Error::Unauthorized(TokenError::Expired))?;
    let token = state
        .config
        .token_keys
        .sign(&verified.session_id, expires_at);
    let expires_at_ms = i64::try_from(expires_at.saturating_mul(1000)).unwrap_or(i64::MAX);
    // The session's record lives at least as long as the token just issued, and its places under the caps
    // until that token expires.
    let ttl = Duration::from_secs(expires_at.saturating_sub(now.as_secs()));
    ces_runtime::session::extend_life(
        &state.redis,
        &verified.session_id,
        subject.as_deref(),
        ttl,
        expires_at_ms,
    )
    .await?;
    let expires_at = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(expires_at);
    Ok(Json(Refreshed {
        token,
        expires_at: expires_at.format(&Rfc3339).unwrap_or_default(),
    }))
}

/// The expiry (Unix seconds) of a token refreshed at `now`: a full `ttl`, but never past the session's end of
/// life; `None` once that has passed.
fn refreshed_expiry(now: Duration, ttl: Duration, end_of_life: Duration) -> Option<u64> {
    let expires_at = (now + ttl).min(end_of_life);
    (expires_at > now).then_some(expires_at.as_secs())
}

/// The client's address (through trusted proxies, see [`crate::client_addr::client_ip`]).
fn client_ip(
    state: &AppState,
    connect_info: Option<&Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Option<std::net::IpAddr> {
    let Extension(ConnectInfo(peer)) = connect_info?;
    // Every line: a proxy may add its entry as a line of its own, after the client's. A line that is not text
    // stands for a garbage entry.
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    Some(crate::client_addr::client_ip(
        peer.ip(),
        forwarded,
        &state.config.serving.trusted,
    ))
}

/// The credential of `Authorization: Bearer <credential>`; empty without one.
pub(crate) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// `DELETE /v1/sessions/{id}` with the session's token as `Authorization: Bearer`: closes the session on every
/// node (its socket gets 4003) and refuses it from then on.
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Error> {
    let verified = verify_token(&state, bearer(&headers))?;
    if verified.session_id.as_str() != id {
        return Err(Error::Forbidden("the token is for another session"));
    }
    // The tombstone must outlive every token that could still be presented.
    // Its place under the session caps is free at once (the same revocation as `cesctl session revoke`).
    let ttl = state.config.token_ttl;
    ces_runtime::session::revoke(&state.redis, &verified.session_id, ttl).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn verify_token(state: &AppState, token: &str) -> Result<ces_protocol::token::Verified, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    state
        .config
        .token_keys
        .verify(token, now)
        .map_err(Error::Unauthorized)
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the node is not draining, its subscriptions are in place, and Redis answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !state.hub.receiving() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not receiving");
    }
    // Bounded well below the load balancer's check interval, whatever the command timeout is.
    match tokio::time::timeout(Duration::from_secs(1), state.redis.ping::<String>(None)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable"),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> String {
    state.metrics.render()
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::Unauthorized(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_never_reaches_past_the_sessions_end_of_life() {
        let s = Duration::from_secs;
        assert_eq!(refreshed_expiry(s(1000), s(900), s(5000)), Some(1900));
        assert_eq!(refreshed_expiry(s(1000), s(900), s(1500)), Some(1500));
        assert_eq!(
            refreshed_expiry(s(1000), s(900), s(1000)),
            None,
            "its end of life is now"
        );
        assert_eq!(refreshed_expiry(s(1000), s(900), s(10)), None);
        assert_eq!(refreshed_expiry(s(1000), s(900), s(1001)), Some(1001));
    }
}
