//! The protobuf envelope on Redis.
//!
//! Ingest encodes an [`Envelope`] without `seq`; the publish function assigns the session's next sequence number
//! and appends it, with the session's epoch, as trailing fields (see [`append_trailer`] and `ces_runtime::redis::LIBRARY`), relying on the
//! protobuf rule that the last occurrence of a scalar field wins. That way the function never parses protobuf and
//! ingest never waits for the sequence number before it can encode.

use bytes::Bytes;
use prost::Message as _;

pub use ces_proto::v1::Envelope;

use crate::Error;

/// Encodes an envelope; `seq` and `epoch` should be unset because the Redis function appends the real ones.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// Appends `seq` (field 1, varint) and `epoch` (field 11, length-delimited), exactly as the Redis publish
/// function does.
pub fn append_trailer(buf: &mut Vec<u8>, seq: u64, epoch: &str) {
    buf.push(0x08); // field 1, wire type 0 (varint)
    push_varint(buf, seq);
    buf.push(0x5A); // field 11, wire type 2 (length-delimited)
    push_varint(buf, epoch.len() as u64);
    buf.extend_from_slice(epoch.as_bytes());
}

fn push_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Decodes an envelope published on a session channel.
pub fn decode(bytes: &[u8]) -> Result<Envelope, Error> {
    Ok(Envelope::decode(bytes)?)
}

/// Decodes from shared bytes without copying `data`.
pub fn decode_bytes(bytes: Bytes) -> Result<Envelope, Error> {
    Ok(Envelope::decode(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            seq: 0,
            event_id: "ev_1".into(),
            session_id: "s1".into(),
            event_type: "t".into(),
            data: Bytes::from_static(br#"{"a":1}"#),
            produced_at_ms: 1_700_000_000_000,
            ingested_at_ms: 1_700_000_000_005,
            source_topic: "ces.events".into(),
            source_partition: 3,
            source_offset: 42,
            epoch: String::new(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        }
    }

    #[test]
    fn appended_seq_is_what_decoders_read() {
        for seq in [
            1,
            127,
            128,
            300,
            16_384,
            u32::MAX as u64,
            (1 << 53) - 1,
            u64::MAX,
        ] {
            let mut buf = encode(&sample());
            append_trailer(&mut buf, seq, "e1");
            let env = decode(&buf).unwrap();
            assert_eq!((env.seq, env.epoch.as_str()), (seq, "e1"));
            assert_eq!(
                Envelope {
                    seq: 0,
                    epoch: String::new(),
                    ..env
                },
                sample()
            );
        }
    }

    #[test]
    fn appended_seq_overrides_an_encoded_one() {
        let mut buf = encode(&Envelope {
            seq: 9,
            epoch: "old".into(),
            ..sample()
        });
        append_trailer(&mut buf, 10, "e2");
        assert_eq!(decode(&buf).unwrap().seq, 10);
        assert_eq!(decode(&buf).unwrap().epoch, "e2");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [&b"\xff\xff\xff"[..], b"\x08", b"\x12\x05ab", &[0x80; 11]] {
            assert!(decode(garbage).is_err(), "{garbage:?}");
        }
    }
}
