//! What every CES process needs around the protocol: configuration, telemetry, Redis, TLS, shutdown and
//! backoff. The pure formats these carry live in `ces-protocol`; this crate is where I/O and process-global
//! state are.
//!
//! # Layout
//! - [`config`]: reading `CES_*` variables from a replaceable [`config::Source`], reporting every error at once.
//! - [`redis`]: Redis client construction with CES's reconnect policy, and the Redis function library.
//! - [`session`]: closing a session for good (the edge's `DELETE`, `cesctl session revoke`).
//! - [`tls`]: PEM certificates and keys, rustls client configurations.
//! - [`otel`]: OpenTelemetry spans and W3C trace context, off unless an OTLP endpoint is configured.
//! - [`backoff`]: jittered exponential backoff for transient failures.
//! - [`telemetry`], [`shutdown`]: logging/metrics initialisation and the process shutdown signal.

pub mod backoff;
pub mod config;
pub mod net;
pub mod otel;
pub mod redis;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

mod error;

pub use error::Error;

/// Milliseconds since the Unix epoch, as carried in envelopes and tokens.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
