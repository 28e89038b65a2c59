//! Protobuf messages of CES, generated at build time by prost from `ces/v1/*.proto` (compiled by protox, so no
//! `protoc` binary is needed).
//!
//! - [`v1::Envelope`]: what ingest publishes to a session's Redis channel; see the wire rule in
//!   `ces/v1/envelope.proto` about the trailing `seq` field.
//! - [`v1::Event`]: an input event in protobuf form (record header `content-type: application/x-protobuf`).

/// Version 1 of the CES messages.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ces.v1.rs"));
}

pub use prost::Message;
