//! CES's wire and storage formats, as pure functions: bytes in, typed values or errors out. This crate performs
//! no I/O, reads no clock and depends on no runtime (no tokio, fred, rdkafka, OpenTelemetry or rustls); a check
//! in `make test` (`scripts/check-protocol-deps.sh`) keeps it that way. Callers pass the current time where a
//! decision needs it.
//!
//! # Layout
//! - [`record`]: validation of an input Kafka record into an event, with stable rejection reason codes.
//! - [`schema`]: JSON Schemas per event type, loaded from a directory.
//! - [`event_id`]: the deterministic event id (producer key, or a hash of the business fields).
//! - [`envelope`]: the protobuf envelope on Redis, including the trailing `seq` field the Redis function appends.
//! - [`frame`]: the JSON WebSocket frames of the client protocol.
//! - [`close`]: every WebSocket close code CES sends, and the node control messages that carry them between
//!   edges.
//! - [`keys`]: session ids and the hash-tagged Redis key and channel names derived from them.
//! - [`token`]: HMAC-SHA256 signed session tokens.
//! - [`dlq`]: header names of dead letters and replays, shared by ingest and `cesctl`.

pub mod close;
pub mod dlq;
pub mod envelope;
pub mod event_id;
pub mod frame;
pub mod keys;
pub mod record;
pub mod schema;
pub mod token;

mod error;

pub use error::{ConfigErrors, Error};
