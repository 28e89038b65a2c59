//! JSON frames of the WebSocket client protocol (docs/protocol.md).
//!
//! Server frames are built by hand into one buffer: an event frame embeds the producer's `data` as the exact JSON
//! text ingest validated, so the edge never parses or re-serialises it.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// The edge's cap on one socket's write buffer (tungstenite's `max_write_buffer_size`, set in
/// services/edge/src/api.rs): a frame that does not fit beside what the buffer holds is refused, never sent.
pub const EDGE_MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// What the edge's write buffer may still hold when a frame is added (tungstenite's `write_buffer_size`, set
/// in services/edge/src/api.rs): below it nothing is written out; past it everything is, before the next frame.
pub const EDGE_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// The longest header of a WebSocket frame a server sends: 2 bytes and a 64-bit length, no mask.
pub const WS_FRAME_HEADER_MAX_BYTES: usize = 10;
/// The largest event frame (its JSON text) an edge can always send: with its WebSocket header, beside a full
/// write threshold, it fits the write buffer's cap.
pub const MAX_EVENT_FRAME_BYTES: usize =
    EDGE_MAX_WRITE_BUFFER_BYTES - EDGE_WRITE_BUFFER_BYTES - WS_FRAME_HEADER_MAX_BYTES;
/// The most an event frame adds to its `data`: the JSON around it, with the longest `seq` (20 digits), `id`
/// ([`crate::record::MAX_ID_LEN`] bytes, each escaped to two), `event` type ([`crate::record::MAX_TYPE_LEN`]
/// bytes, never escaped) and `trace_id` (32 hex digits), all quoted.
pub const EVENT_FRAME_OVERHEAD_BYTES: usize =
    r#"{"type":"event","seq":,"id":,"event":,"data":,"trace_id":}"#.len()
        + 20
        + (2 * crate::record::MAX_ID_LEN + 2)
        + (crate::record::MAX_TYPE_LEN + 2)
        + (32 + 2);

/// Builds `{"type":"event","seq":..,"id":..,"event":..,"data":..}` from an envelope.
///
/// Returns `None` when the envelope's `data` is not UTF-8, which only a corrupt or foreign publisher can cause
/// (ingest publishes validated JSON only).
pub fn event_frame(env: &Envelope) -> Option<String> {
    event_frame_traced(env, None)
}

/// [`event_frame`] with the event's `trace_id` (when tracing is on). One allocation: the frame's own buffer, sized
/// for it, with the strings escaped straight into it.
pub fn event_frame_traced(env: &Envelope, trace_id: Option<&str>) -> Option<String> {
    let data = std::str::from_utf8(&env.data).ok()?;
    // The fixed text, a 20-digit seq and the quotes; escapes past that grow the buffer.
    let mut out = Vec::with_capacity(
        96 + env.event_id.len()
            + env.event_type.len()
            + data.len()
            + trace_id.map_or(0, |t| t.len() + 16),
    );
    out.extend_from_slice(br#"{"type":"event","seq":"#);
    // serde_json writes integers and strings straight into `out`; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &env.seq);
    out.extend_from_slice(br#","id":"#);
    push_json_string(&mut out, &env.event_id);
    out.extend_from_slice(br#","event":"#);
    push_json_string(&mut out, &env.event_type);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(if data.is_empty() {
        b"null"
    } else {
        data.as_bytes()
    });
    if let Some(trace_id) = trace_id {
        out.extend_from_slice(br#","trace_id":"#);
        push_json_string(&mut out, trace_id);
    }
    out.push(b'}');
    // Only UTF-8 went in: `data` was checked above, the rest is ASCII or serde_json's output.
    String::from_utf8(out).ok()
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Frames the server sends besides events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection.
    Welcome {
        /// The session this socket serves.
        session_id: String,
        /// Id of the edge node serving it.
        node: String,
        /// The session buffer's current epoch; `seq` counts within it.
        epoch: String,
        /// The latest `seq` assigned in this epoch (0 if none yet).
        seq: u64,
    },
    /// Answer to a resume request (`last_seq`/`epoch` on connect), or to a gap found while live; followed by
    /// the replayed events.
    Resumed {
        /// Whether every event after the client's position could be replayed.
        ok: bool,
        /// How many events follow as replay.
        replayed: u64,
        /// Why not everything could be replayed: `buffer_overflow`, `expired` or `epoch_changed`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The exact range that is gone.
        #[serde(skip_serializing_if = "Option::is_none")]
        lost: Option<Lost>,
        /// With `epoch_changed`: the new epoch, which the events that follow belong to (resume with it).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Answer to a client `ping`.
    Pong,
    /// Answer to a client `refresh`: the socket now lives until `expires_at`.
    Refreshed {
        /// New expiry of the socket's token, unix seconds.
        expires_at: u64,
    },
    /// A client frame could not be understood; the connection stays open.
    Error {
        /// Stable code: `invalid_json`, `unknown_type`, `invalid_frame`.
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A range of sequence numbers that can no longer be delivered. `to` is `None` when the range is open-ended:
/// after an epoch change the old epoch's last `seq` is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// First lost `seq`.
    pub from: u64,
    /// Last lost `seq`, inclusive.
    pub to: Option<u64>,
}

/// Frames a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Application-level keepalive for clients that cannot send WebSocket pings (browsers).
    Ping,
    /// The client has processed every event up to and including `seq`.
    Ack {
        /// Highest processed sequence number.
        seq: u64,
    },
    /// A fresher token for the same session (from `POST /v1/sessions/{id}/refresh`): the socket stays open past
    /// the old token's expiry.
    Refresh {
        /// The new token.
        token: String,
    },
}

/// Parses a client text frame, or says which error frame to answer with.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ServerFrame> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ServerFrame::Error {
        code: "invalid_json".into(),
        message: format!("frame is not JSON: {e}"),
    })?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    match kind.as_deref() {
        Some("ping" | "ack" | "refresh") => {
            serde_json::from_value(value).map_err(|e| ServerFrame::Error {
                code: "invalid_frame".into(),
                message: format!("{e}"),
            })
        }
        Some(other) => Err(ServerFrame::Error {
            code: "unknown_type".into(),
            message: format!("unknown frame type {other:?}"),
        }),
        None => Err(ServerFrame::Error {
            code: "invalid_frame".into(),
            message: "frame must be an object with a string \"type\"".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn event_frame_embeds_data_verbatim_and_escapes_strings() {
        let env = Envelope {
            seq: 7,
            event_id: "id\"1".into(),
            event_type: "order.updated".into(),
            data: Bytes::from_static(br#"{"z":1,"a":[1.50]}"#),
            ..Default::default()
        };
        let frame = event_frame(&env).unwrap();
        assert_eq!(
            frame,
            r#"{"type":"event","seq":7,"id":"id\"1","event":"order.updated","data":{"z":1,"a":[1.50]}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(parsed["seq"], 7);
    }

    #[test]
    fn the_largest_frame_adds_exactly_the_overhead_to_its_data() {
        let env = Envelope {
            seq: u64::MAX,
            event_id: "\"".repeat(crate::record::MAX_ID_LEN),
            event_type: "t".repeat(crate::record::MAX_TYPE_LEN),
            data: Bytes::from_static(b"[1]"),
            ..Default::default()
        };
        let frame = event_frame_traced(&env, Some("4bf92f3577b34da6a3ce929d0e0e4736")).unwrap();
        assert_eq!(frame.len(), 3 + EVENT_FRAME_OVERHEAD_BYTES);
        assert_eq!(EVENT_FRAME_OVERHEAD_BYTES, 756);
        // A producer id escapes to at most two bytes a byte: control characters, which take six, are invalid.
        assert!(
            crate::record::validate_record(
                Some(br#"{"session_id":"s","type":"t","data":1,"id":"\u0001"}"#),
                None,
                1024,
                &crate::schema::Schemas::default()
            )
            .is_err()
        );
        assert_eq!(MAX_EVENT_FRAME_BYTES, 1_032_182);
    }

    #[test]
    fn event_frame_refuses_non_utf8_data() {
        let env = Envelope {
            data: Bytes::from_static(b"\xff"),
            ..Default::default()
        };
        assert_eq!(event_frame(&env), None);
    }

    #[test]
    fn welcome_has_the_contract_shape() {
        let w = ServerFrame::Welcome {
            session_id: "s".into(),
            node: "edge-a".into(),
            epoch: "e1".into(),
            seq: 7,
        }
        .to_json();
        assert_eq!(
            w,
            r#"{"type":"welcome","session_id":"s","node":"edge-a","epoch":"e1","seq":7}"#
        );
    }

    #[test]
    fn resumed_has_the_contract_shape() {
        let ok = ServerFrame::Resumed {
            ok: true,
            replayed: 3,
            reason: None,
            lost: None,
            epoch: None,
        }
        .to_json();
        assert_eq!(ok, r#"{"type":"resumed","ok":true,"replayed":3}"#);
        let lost = ServerFrame::Resumed {
            ok: false,
            replayed: 2,
            reason: Some("buffer_overflow".into()),
            lost: Some(Lost {
                from: 3,
                to: Some(7),
            }),
            epoch: None,
        }
        .to_json();
        assert_eq!(
            lost,
            r#"{"type":"resumed","ok":false,"replayed":2,"reason":"buffer_overflow","lost":{"from":3,"to":7}}"#
        );
        let changed = ServerFrame::Resumed {
            ok: false,
            replayed: 0,
            reason: Some("epoch_changed".into()),
            lost: Some(Lost { from: 42, to: None }),
            epoch: Some("e2".into()),
        }
        .to_json();
        assert_eq!(
            changed,
            r#"{"type":"resumed","ok":false,"replayed":0,"reason":"epoch_changed","lost":{"from":42,"to":null},"epoch":"e2"}"#
        );
    }

    #[test]
    fn client_frames_parse_or_explain() {
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ack","seq":3}"#),
            Ok(ClientFrame::Ack { seq: 3 })
        );
        let code = |t: &str| match parse_client_frame(t) {
            Err(ServerFrame::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code(r#"{"type":"subscribe"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"ack","seq":-1}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"ack"}"#), "invalid_frame");
        assert_eq!(code("[]"), "invalid_frame");
        assert_eq!(code(r#"{"type":1}"#), "invalid_frame");
    }

    #[test]
    fn refresh_frames() {
        assert_eq!(
            parse_client_frame(r#"{"type":"refresh","token":"v1.k.p.s"}"#),
            Ok(ClientFrame::Refresh {
                token: "v1.k.p.s".into()
            })
        );
        assert!(parse_client_frame(r#"{"type":"refresh"}"#).is_err());
        assert_eq!(
            ServerFrame::Refreshed { expires_at: 5 }.to_json(),
            r#"{"type":"refreshed","expires_at":5}"#
        );
    }
}
