//! The error type of ces-edge, and its one mapping to HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ces_protocol::token::TokenError;

/// What can fail in the edge, at start or while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or telemetry could not be set up.
    #[error(transparent)]
    Runtime(#[from] ces_runtime::Error),
    /// Protocol data could not be decoded.
    #[error(transparent)]
    Protocol(#[from] ces_protocol::Error),
    /// Redis failure.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The delivery receipts producer could not be created (`CES_RECEIPTS_TOPIC`, `CES_KAFKA_PROP_*`).
    #[error("receipts producer: {0}")]
    Receipts(String),
    /// The listener failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// The request carried no valid session token.
    #[error("unauthorized: token {0}")]
    Unauthorized(TokenError),
    /// Registration is protected and the request's credential was missing or not accepted.
    #[error("registration refused: {0}")]
    RegistrationRefused(crate::register_auth::Refusal),
    /// The request was malformed; `code` is stable, `message` explains.
    #[error("bad request: {code}: {message}")]
    BadRequest {
        /// Stable error code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Redis answered something CES does not expect (a foreign library, a corrupt key).
    #[error("unexpected redis reply: {0}")]
    UnexpectedReply(&'static str),
    /// The token is valid but not for this resource.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The session cap (`CES_MAX_SESSIONS`) is reached.
    #[error("at capacity")]
    AtCapacity,
    /// The node is shutting down and takes no new connections.
    #[error("draining")]
    Draining,
    /// This node holds `CES_MAX_CONNECTIONS` sockets.
    #[error("node full")]
    NodeFull,
    /// No handshake slot freed up within `CES_WS_ADMISSION_WAIT_MS` (a reconnect storm).
    #[error("overloaded")]
    Overloaded,
    /// The request body is larger than the configured limit (bytes).
    #[error("body over {0} bytes")]
    BodyTooLarge(usize),
    /// The client IP exceeded a rate limit; retry after the duration.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// An admin route, on a node without `CES_ADMIN_TOKENS`.
    #[error("admin API disabled")]
    AdminDisabled,
    /// An admin route without one of the configured admin tokens.
    #[error("admin token missing or not accepted")]
    AdminUnauthorized,
    /// An admin route naming something that does not exist (what, in the message).
    #[error("not found: {0}")]
    NotFound(&'static str),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Error::Unauthorized(reason) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("session token {reason}"),
            ),
            Error::RegistrationRefused(reason) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "registration needs an API key or a valid JWT as Authorization: Bearer ({reason})"
                ),
            ),
            Error::Forbidden(message) => {
                (StatusCode::FORBIDDEN, "forbidden", (*message).to_owned())
            }
            Error::AtCapacity => (
                StatusCode::SERVICE_UNAVAILABLE,
                "at_capacity",
                "the session limit is reached; try again later".to_owned(),
            ),
            Error::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "node is shutting down; connect again (to any node)".to_owned(),
            ),
            Error::NodeFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "node_full",
                "this node holds its maximum of connections; connect again (to any node)"
                    .to_owned(),
            ),
            Error::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many connections are being set up; retry after the Retry-After delay"
                    .to_owned(),
            ),
            Error::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; retry after the Retry-After delay".to_owned(),
            ),
            Error::BodyTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body may be at most {limit} bytes"),
            ),
            Error::AdminDisabled => (
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "the admin API is disabled on this node: set CES_ADMIN_TOKENS to enable it"
                    .to_owned(),
            ),
            Error::AdminUnauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an admin token is required as Authorization: Bearer (one of CES_ADMIN_TOKENS)"
                    .to_owned(),
            ),
            Error::NotFound(what) => (StatusCode::NOT_FOUND, "not_found", (*what).to_owned()),
            Error::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, *code, message.clone())
            }
            Error::Redis(_) => {
                tracing::warn!(error = %self, "request failed on redis");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage temporarily unavailable".to_owned(),
                )
            }
            Error::Runtime(_)
            | Error::Protocol(_)
            | Error::Io(_)
            | Error::UnexpectedReply(_)
            | Error::Receipts(_) => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": code, "message": message })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Error::Overloaded = &self {
            // Spread the retries of a storm over 1-5 s instead of having them all come back in the same second.
            let secs = rand::random_range(1..=5u32);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            metrics::counter!(crate::metrics::HANDSHAKES_SHED).increment(1);
        }
        if let Error::RateLimited(wait) = &self {
            // Whole seconds, rounded up: a client that waits exactly this long is admitted.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL).increment(1);
        }
        if let Error::AdminUnauthorized = &self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Error::RegistrationRefused(reason) = &self {
            metrics::counter!(crate::metrics::REGISTRATIONS_REFUSED, "reason" => reason.code())
                .increment(1);
        }
        if let Error::Unauthorized(reason) = &self {
            metrics::counter!(crate::metrics::TOKEN_FAILURES, "reason" => reason.to_string())
                .increment(1);
        }
        response
    }
}
