//! What every CES service shares. Everything here is pure (bytes in, typed values or errors out) except
//! [`telemetry`] and [`shutdown`], which touch process-global state, and [`redis`], which connects.
//!
//! # Layout
//! - [`config`]: reading `CES_*` variables from a replaceable [`config::Source`], reporting every error at once.
//! - [`keys`]: session ids and the hash-tagged Redis key and channel names derived from them.
//! - [`record`]: validation of an input Kafka record into an event, with stable rejection reason codes.
//! - [`dlq`]: header names of dead letters and replays, shared by ingest and `cesctl`.
//! - [`schema`]: JSON Schemas per event type, loaded from a directory.
//! - [`event_id`]: the deterministic event id (producer key, or a hash of the business fields).
//! - [`envelope`]: the protobuf envelope on Redis, including the trailing `seq` field the Redis function appends.
//! - [`frame`]: the JSON WebSocket frames of the client protocol.
//! - [`token`]: HMAC-SHA256 signed session tokens.
//! - [`otel`]: OpenTelemetry spans and W3C trace context, off unless an OTLP endpoint is configured.
//! - [`redis`]: Redis client construction with CES's reconnect policy.
//! - [`tls`]: PEM certificates and keys, rustls client configurations.
//! - [`backoff`]: jittered exponential backoff for transient failures.
//! - [`telemetry`], [`shutdown`]: logging/metrics initialisation and the process shutdown signal.

pub mod backoff;
pub mod config;
pub mod dlq;
pub mod envelope;
pub mod event_id;
pub mod frame;
pub mod keys;
pub mod otel;
pub mod record;
pub mod redis;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod token;

mod error;

pub use error::Error;

/// Milliseconds since the Unix epoch, as carried in envelopes and tokens.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
