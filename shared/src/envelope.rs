//! The protobuf envelope on Redis.
//!
//! Ingest encodes an [`Envelope`] without `seq`; the publish function assigns the session's next sequence number
//! and appends it as a trailing field 1 (see [`append_seq`] and `LIBRARY` in ces-ingest), relying on the
//! protobuf rule that the last occurrence of a scalar field wins. That way the function never parses protobuf and
//! ingest never waits for the sequence number before it can encode.

use bytes::Bytes;
use prost::Message as _;

pub use ces_proto::v1::Envelope;

use crate::Error;

/// Encodes an envelope; `seq` should be 0 (unset) because the Redis function appends the real one.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// Appends `seq` as a trailing protobuf field 1 (varint), exactly as the Redis publish function does.
pub fn append_seq(buf: &mut Vec<u8>, seq: u64) {
    buf.push(0x08); // field 1, wire type 0 (varint)
    let mut n = seq;
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
            append_seq(&mut buf, seq);
            let env = decode(&buf).unwrap();
            assert_eq!(env.seq, seq);
            assert_eq!(Envelope { seq: 0, ..env }, sample());
        }
    }

    #[test]
    fn appended_seq_overrides_an_encoded_one() {
        let mut buf = encode(&Envelope { seq: 9, ..sample() });
        append_seq(&mut buf, 10);
        assert_eq!(decode(&buf).unwrap().seq, 10);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [&b"\xff\xff\xff"[..], b"\x08", b"\x12\x05ab", &[0x80; 11]] {
            assert!(decode(garbage).is_err(), "{garbage:?}");
        }
    }
}
