//! Validation of an input record's value into an [`Event`].
//!
//! Pure: bytes in, a borrowed [`Event`] or a [`Rejection`] out. A rejection is permanent (retrying the same
//! bytes gives the same answer), so ingest dead-letters it and moves on. Every rejection carries a stable
//! [`Reason`] code, which operators filter on, and a human detail that points at the problem.
//!
//! The accepted value is a JSON object:
//! `{"session_id": "...", "type": "...", "data": <any JSON>, "id": "<optional producer key>"}`,
//! or, with the record header `content-type: application/x-protobuf`, a protobuf `ces.v1.Event` with the same
//! members (`data` as JSON text). Unknown members are ignored so producers can add fields before CES knows them.
//! Then `data` is checked against the JSON Schema of its event type ([`crate::schema`]).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use ces_proto::Message as _;

use crate::keys::validate_session_id;
use crate::schema::Schemas;

/// Default maximum size of a record value: 256 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 * 1024;
/// The highest the maximum size of a record value may be set: 1,031,426 bytes. An accepted record's `data` is at
/// most as long as its value, and its event frame adds at most [`crate::frame::EVENT_FRAME_OVERHEAD_BYTES`], so
/// every event frame fits [`crate::frame::MAX_EVENT_FRAME_BYTES`], the largest an edge can always send. A larger
/// frame would be refused by the edge's socket every time it was sent, live and on every resume.
pub const MAX_RECORD_BYTES_CEILING: usize =
    crate::frame::MAX_EVENT_FRAME_BYTES - crate::frame::EVENT_FRAME_OVERHEAD_BYTES;
/// Default maximum size of a record's headers, names and values counted: 64 KiB. Headers are not part of an
/// event, but they travel with its dead letter; far more than tracing and content-type headers need.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest accepted event type.
pub const MAX_TYPE_LEN: usize = 128;
/// Longest accepted producer event id.
pub const MAX_ID_LEN: usize = 256;
/// Deepest accepted nesting of arrays and objects in `data`. The structural parser has no depth limit but the
/// event id and schema checks parse `data` into a tree (serde_json stops at 128 levels); rejecting deeper data
/// up front gives it one clear reason instead of a misleading one.
pub const MAX_DEPTH: usize = 64;

/// Why a record was rejected. The string forms are part of the external contract (the `ces-dlq-reason` header)
/// and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The record has no value (a tombstone or an empty payload).
    MissingValue,
    /// The value is larger than the configured limit.
    TooLarge,
    /// The value is not UTF-8 text.
    InvalidUtf8,
    /// The value is not valid JSON.
    InvalidJson,
    /// The value is JSON but not an object.
    NotAnObject,
    /// `session_id` is absent or null.
    MissingSessionId,
    /// `session_id` is not a string of 1–128 `[A-Za-z0-9_.:-]`.
    InvalidSessionId,
    /// `type` is absent or null.
    MissingType,
    /// `type` is not a string of 1–128 `[A-Za-z0-9_.-]` starting with a letter or digit.
    InvalidType,
    /// `data` is absent.
    MissingData,
    /// `id` is present but not a string of 1–256 bytes without control characters.
    InvalidId,
    /// A header name is not UTF-8 (the Kafka protocol requires it), or the headers are larger than the
    /// configured limit ([`validate_headers`]); the headers are not kept.
    InvalidHeaders,
    /// The `content-type` header names an encoding CES does not read.
    UnsupportedContentType,
    /// The value is not a protobuf `ces.v1.Event` (with `content-type: application/x-protobuf`).
    InvalidProtobuf,
    /// No JSON Schema is registered for the event type and unknown types are rejected.
    UnknownType,
    /// `data` does not match the JSON Schema of its event type.
    SchemaViolation,
    /// `data` nests arrays and objects deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A valid event kept failing in Redis for a reason that is not an outage (e.g. a key of the wrong type),
    /// and was given up after the configured number of attempts (`ces-dlq-attempts`).
    ProcessingFailed,
}

impl Reason {
    /// Every reason, for exhaustive tests and metric pre-registration.
    pub const ALL: [Reason; 18] = [
        Reason::MissingValue,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingSessionId,
        Reason::InvalidSessionId,
        Reason::MissingType,
        Reason::InvalidType,
        Reason::MissingData,
        Reason::InvalidId,
        Reason::InvalidHeaders,
        Reason::UnsupportedContentType,
        Reason::InvalidProtobuf,
        Reason::UnknownType,
        Reason::SchemaViolation,
        Reason::TooDeep,
        Reason::ProcessingFailed,
    ];

    /// The stable code, as written to `ces-dlq-reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingValue => "missing_value",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingSessionId => "missing_session_id",
            Reason::InvalidSessionId => "invalid_session_id",
            Reason::MissingType => "missing_type",
            Reason::InvalidType => "invalid_type",
            Reason::MissingData => "missing_data",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidHeaders => "invalid_headers",
            Reason::UnsupportedContentType => "unsupported_content_type",
            Reason::InvalidProtobuf => "invalid_protobuf",
            Reason::UnknownType => "unknown_type",
            Reason::SchemaViolation => "schema_violation",
            Reason::TooDeep => "too_deep",
            Reason::ProcessingFailed => "processing_failed",
        }
    }

    /// Parses a stable code back into a reason.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permanent validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub reason: Reason,
    /// Human-readable explanation naming the offending member.
    pub detail: String,
}

impl Rejection {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A valid event, borrowing from the record value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The session the event is for (already validated).
    pub session_id: Cow<'a, str>,
    /// Event type.
    pub event_type: Cow<'a, str>,
    /// The exact JSON text of `data`, as the producer sent it.
    pub data: Cow<'a, str>,
    /// Producer idempotency key, if given.
    pub id: Option<Cow<'a, str>>,
}

/// The members CES reads, each kept raw so every one can be checked with a precise reason.
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow, default)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<&'a RawValue>,
    // `Option<&RawValue>` would read `null` as absent; `data: null` is valid and must stay present.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// How a record's value is encoded, named by its `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON object (the default when the header is absent).
    Json,
    /// A protobuf `ces.v1.Event`.
    Protobuf,
}

impl Encoding {
    /// Reads a `content-type` header value; absent means JSON. Case and parameters (`; charset=utf-8`) are
    /// ignored, so what HTTP tooling writes is accepted.
    pub fn from_content_type(value: Option<&[u8]>) -> Result<Self, Rejection> {
        let Some(value) = value else {
            return Ok(Encoding::Json);
        };
        let text = String::from_utf8_lossy(value);
        let essence = text.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(crate::dlq::CONTENT_TYPE_JSON) {
            Ok(Encoding::Json)
        } else if essence.eq_ignore_ascii_case(crate::dlq::CONTENT_TYPE_PROTOBUF) {
            Ok(Encoding::Protobuf)
        } else {
            Err(Rejection::new(
                Reason::UnsupportedContentType,
                format!(
                    "content-type {:?} is not {} or {}",
                    truncate(&text, 64),
                    crate::dlq::CONTENT_TYPE_JSON,
                    crate::dlq::CONTENT_TYPE_PROTOBUF
                ),
            ))
        }
    }
}

/// Validates a whole record: its `content-type`, size, structure, and the JSON Schema of its event type.
///
/// `value` is `None` for a Kafka tombstone. Size is checked before anything is parsed, so an oversized record
/// costs no parsing. This is the one entry point ingest uses, and the one the fuzz target drives.
pub fn validate_record<'a>(
    value: Option<&'a [u8]>,
    content_type: Option<&[u8]>,
    max_bytes: usize,
    schemas: &Schemas,
) -> Result<Event<'a>, Rejection> {
    let encoding = Encoding::from_content_type(content_type)?;
    let event = validate(value, encoding, max_bytes)?;
    schemas.check(&event)?;
    Ok(event)
}

/// The size of a record's headers: every name and value, in bytes.
pub fn header_bytes<'h>(headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>) -> usize {
    headers
        .into_iter()
        .map(|(name, value)| name.len() + value.map_or(0, <[u8]>::len))
        .sum()
}

/// Checks that a record's headers, names and values counted, take at most `max_bytes`.
///
/// A record whose headers alone come near the broker's message size could never be dead-lettered with them, and
/// a dead letter that cannot be written holds up its whole partition; such a record is rejected up front, and its
/// dead letter goes without them.
pub fn validate_headers<'h>(
    headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    max_bytes: usize,
) -> Result<(), Rejection> {
    let bytes = header_bytes(headers);
    if bytes > max_bytes {
        return Err(Rejection::new(
            Reason::InvalidHeaders,
            format!("headers are {bytes} bytes (names and values), limit is {max_bytes}"),
        ));
    }
    Ok(())
}

/// Validates a record value against the v1 contract of `encoding` (everything but the schema).
pub fn validate(
    value: Option<&[u8]>,
    encoding: Encoding,
    max_bytes: usize,
) -> Result<Event<'_>, Rejection> {
    let value = match value {
        None | Some([]) => return Err(Rejection::new(Reason::MissingValue, "record has no value")),
        Some(v) => v,
    };
    if value.len() > max_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("value is {} bytes, limit is {max_bytes}", value.len()),
        ));
    }
    match encoding {
        Encoding::Json => validate_json(value),
        Encoding::Protobuf => validate_protobuf(value),
    }
}

fn validate_protobuf(value: &[u8]) -> Result<Event<'static>, Rejection> {
    let ev = ces_proto::v1::Event::decode(value).map_err(|e| {
        Rejection::new(
            Reason::InvalidProtobuf,
            format!("value is not a ces.v1.Event: {e}"),
        )
    })?;
    if ev.session_id.is_empty() {
        return Err(Rejection::new(
            Reason::MissingSessionId,
            "/session_id is required",
        ));
    }
    validate_session_id(&ev.session_id)
        .map_err(|e| Rejection::new(Reason::InvalidSessionId, format!("/session_id: {e}")))?;
    if ev.r#type.is_empty() {
        return Err(Rejection::new(Reason::MissingType, "/type is required"));
    }
    validate_type(&ev.r#type)
        .map_err(|e| Rejection::new(Reason::InvalidType, format!("/type: {e}")))?;
    if ev.data.is_empty() {
        return Err(Rejection::new(
            Reason::MissingData,
            "/data is required (use the JSON text null for no data)",
        ));
    }
    let data = String::from_utf8(ev.data.to_vec()).map_err(|e| {
        Rejection::new(
            Reason::InvalidUtf8,
            format!(
                "/data is not UTF-8: invalid byte at offset {}",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    check_data(&data)?;
    let id = if ev.id.is_empty() {
        None
    } else {
        validate_id(&ev.id).map_err(|e| Rejection::new(Reason::InvalidId, format!("/id: {e}")))?;
        Some(Cow::Owned(ev.id))
    };
    Ok(Event {
        session_id: Cow::Owned(ev.session_id),
        event_type: Cow::Owned(ev.r#type),
        data: Cow::Owned(data),
        id,
    })
}

fn validate_json(value: &[u8]) -> Result<Event<'_>, Rejection> {
    let text = std::str::from_utf8(value).map_err(|e| {
        Rejection::new(
            Reason::InvalidUtf8,
            format!(
                "value is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Distinguish "valid JSON, wrong shape" from "not JSON at all".
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Rejection::new(Reason::NotAnObject, "value must be a JSON object"),
            Err(e) => Rejection::new(Reason::InvalidJson, format!("value is not JSON: {e}")),
        });
    }
    let members: Members<'_> = serde_json::from_str(text)
        .map_err(|e| Rejection::new(Reason::InvalidJson, format!("value is not JSON: {e}")))?;

    let session_id = string_member(
        members.session_id,
        "session_id",
        Reason::MissingSessionId,
        Reason::InvalidSessionId,
    )?;
    validate_session_id(&session_id)
        .map_err(|e| Rejection::new(Reason::InvalidSessionId, format!("/session_id: {e}")))?;

    let event_type = string_member(
        members.event_type,
        "type",
        Reason::MissingType,
        Reason::InvalidType,
    )?;
    validate_type(&event_type)
        .map_err(|e| Rejection::new(Reason::InvalidType, format!("/type: {e}")))?;

    let data = members
        .data
        .ok_or_else(|| {
            Rejection::new(
                Reason::MissingData,
                "/data is required (use null for no data)",
            )
        })?
        .get();
    check_data(data)?;
    let data = Cow::Borrowed(data);

    let id = match members.id {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => {
            let id = serde_json::from_str::<Cow<'_, str>>(raw.get())
                .map_err(|_| Rejection::new(Reason::InvalidId, "/id must be a string"))?;
            validate_id(&id).map_err(|e| Rejection::new(Reason::InvalidId, format!("/id: {e}")))?;
            Some(id)
        }
    };

    Ok(Event {
        session_id,
        event_type,
        data,
        id,
    })
}

fn string_member<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
    missing: Reason,
    invalid: Reason,
) -> Result<Cow<'a, str>, Rejection> {
    let raw = match raw {
        Some(raw) if raw.get() != "null" => raw,
        _ => return Err(Rejection::new(missing, format!("/{name} is required"))),
    };
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| {
        Rejection::new(
            invalid,
            format!("/{name} must be a string, got {}", json_kind(raw.get())),
        )
    })
}

/// Checks that `data` is JSON every consumer can parse into values, the same way for both encodings: nested at
/// most [`MAX_DEPTH`] deep, then parsed whole.
///
/// Well-formed is not enough. `serde::de::IgnoredAny` and `RawValue` check only the syntax: they accept a number
/// no double can hold (`4E44444`) and a `\u` escape naming half a surrogate pair (`"\ud800"`), which a client's
/// parser rejects (serde_json) or silently turns into something else (`Infinity`, U+FFFD). [`Parses`] reads every
/// number and string as a value would, and keeps nothing.
fn check_data(data: &str) -> Result<(), Rejection> {
    check_depth(data)?;
    serde_json::from_str::<Parses>(data)
        .map(|Parses| ())
        .map_err(|e| Rejection::new(Reason::InvalidJson, format!("/data is not JSON: {e}")))
}

/// The prefix of serde_json's private object keys (`$serde_json::private::RawValue`, `...::Number`).
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// JSON parsed as into a value (every number converted, every string unescaped), with nothing kept.
struct Parses;

impl<'de> Deserialize<'de> for Parses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `deserialize_any`, unlike `deserialize_ignored_any`, makes serde_json convert what it reads.
        d.deserialize_any(Parses)
    }
}

impl<'de> serde::de::Visitor<'de> for Parses {
    type Value = Parses;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_str<E>(self, _: &str) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_unit<E>(self) -> Result<Parses, E> {
        Ok(Parses)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parses, A::Error> {
        while let Some(Parses) = seq.next_element()? {}
        Ok(Parses)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parses, A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // serde_json reads an object whose key is one of its private tokens as a raw value or an exact number,
            // and fails when the value is not what it put there: such data could never reach a Rust client.
            if key.starts_with(SERDE_JSON_PRIVATE) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} is reserved by serde_json, whose clients cannot read it"
                )));
            }
            map.next_value::<Parses>()?;
        }
        Ok(Parses)
    }
}

/// Rejects `data` nested deeper than [`MAX_DEPTH`]; a linear scan that skips string contents.
fn check_depth(data: &str) -> Result<(), Rejection> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in data.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Rejection::new(
                        Reason::TooDeep,
                        format!("/data nests arrays and objects deeper than {MAX_DEPTH} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The first `max` bytes of `s` (at a character boundary), for details that quote producer input.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        _ => "a number",
    }
}

/// Checks an event type: 1–128 of `[A-Za-z0-9_.-]`, first character a letter or digit. The rule keeps types
/// usable as file names (`schemas/<type>.json`) and metric labels.
pub fn validate_type(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("type is empty".into());
    }
    if t.len() > MAX_TYPE_LEN {
        return Err(format!(
            "type is {} bytes, more than {MAX_TYPE_LEN}",
            t.len()
        ));
    }
    if !t.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("type must start with a letter or digit".into());
    }
    match t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(c) => Err(format!(
            "type contains {c:?}; allowed are A-Z a-z 0-9 _ . -"
        )),
        None => Ok(()),
    }
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is {} bytes, more than {MAX_ID_LEN}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err("id contains a control character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: Option<&[u8]>, max: usize) -> Result<Event<'_>, Rejection> {
        validate(value, Encoding::Json, max)
    }

    fn ok(value: &str) -> Event<'_> {
        json(Some(value.as_bytes()), DEFAULT_MAX_RECORD_BYTES).expect("valid")
    }

    fn reason(value: &[u8]) -> Reason {
        json(Some(value), 64).expect_err("rejected").reason
    }

    #[test]
    fn accepts_a_minimal_event_and_keeps_data_verbatim() {
        let e = ok(r#"{"session_id":"s1","type":"order.updated","data":{"b":1, "a":[true,null]}}"#);
        assert_eq!(e.session_id, "s1");
        assert_eq!(e.event_type, "order.updated");
        assert_eq!(e.data, r#"{"b":1, "a":[true,null]}"#);
        assert_eq!(e.id, None);
    }

    #[test]
    fn reads_escaped_strings_and_the_optional_id() {
        let e = ok(
            r#"{"session_id":"s\u0031","type":"t","data":null,"id":"k\"1","extra":{"ignored":1}}"#,
        );
        assert_eq!(e.session_id, "s1");
        assert_eq!(e.data, "null");
        assert_eq!(e.id.as_deref(), Some("k\"1"));
        assert_eq!(
            ok(r#"{"session_id":"s","type":"t","data":1,"id":null}"#).id,
            None
        );
    }

    #[test]
    fn each_rule_has_its_reason() {
        let cases: &[(&[u8], Reason)] = &[
            (b"", Reason::MissingValue),
            (&[b'x'; 65], Reason::TooLarge),
            (b"\xff\xfe{}", Reason::InvalidUtf8),
            (b"{not json", Reason::InvalidJson),
            (b"nope", Reason::InvalidJson),
            (b"[1,2]", Reason::NotAnObject),
            (b"\"s\"", Reason::NotAnObject),
            (br#"{"type":"t","data":1}"#, Reason::MissingSessionId),
            (
                br#"{"session_id":null,"type":"t","data":1}"#,
                Reason::MissingSessionId,
            ),
            (
                br#"{"session_id":7,"type":"t","data":1}"#,
                Reason::InvalidSessionId,
            ),
            (
                br#"{"session_id":"a b","type":"t","data":1}"#,
                Reason::InvalidSessionId,
            ),
            (
                br#"{"session_id":"","type":"t","data":1}"#,
                Reason::InvalidSessionId,
            ),
            (br#"{"session_id":"s","data":1}"#, Reason::MissingType),
            (
                br#"{"session_id":"s","type":[],"data":1}"#,
                Reason::InvalidType,
            ),
            (
                br#"{"session_id":"s","type":".x","data":1}"#,
                Reason::InvalidType,
            ),
            (
                br#"{"session_id":"s","type":"a/b","data":1}"#,
                Reason::InvalidType,
            ),
            (br#"{"session_id":"s","type":"t"}"#, Reason::MissingData),
            (
                br#"{"session_id":"s","type":"t","data":1,"id":5}"#,
                Reason::InvalidId,
            ),
            (
                br#"{"session_id":"s","type":"t","data":1,"id":""}"#,
                Reason::InvalidId,
            ),
            (
                br#"{"session_id":"s","session_id":"t"}"#,
                Reason::InvalidJson,
            ),
        ];
        let deep = format!(
            r#"{{"session_id":"s","type":"t","data":{}1{}}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            json(Some(deep.as_bytes()), 1024).unwrap_err().reason,
            Reason::TooDeep
        );
        let ok_depth = format!(
            r#"{{"session_id":"s","type":"t","data":{}"[[{{"{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(
            json(Some(ok_depth.as_bytes()), 1024).is_ok(),
            "brackets inside strings do not count"
        );
        for (value, expected) in cases {
            assert_eq!(
                reason(value),
                *expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(json(None, 64).unwrap_err().reason, Reason::MissingValue);
    }

    #[test]
    fn size_limit_is_inclusive_and_checked_before_parsing() {
        let v = br#"{"session_id":"s","type":"t","data":1}"#;
        assert!(json(Some(v), v.len()).is_ok());
        let r = json(Some(v), v.len() - 1).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
        assert!(
            r.detail.contains(&format!("{} bytes", v.len())),
            "{}",
            r.detail
        );
    }

    #[test]
    fn details_point_at_the_member() {
        let r = json(Some(br#"{"session_id":{"a":1},"type":"t","data":1}"#), 1024).unwrap_err();
        assert_eq!(r.detail, "/session_id must be a string, got an object");
        let r = json(
            Some(br#"{"session_id":"s","type":"bad type","data":1}"#),
            1024,
        )
        .unwrap_err();
        assert!(r.detail.starts_with("/type: "), "{}", r.detail);
    }

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert_eq!(Reason::from_code("nope"), None);
    }

    fn proto(session_id: &str, event_type: &str, data: &[u8], id: &str) -> Vec<u8> {
        ces_proto::v1::Event {
            session_id: session_id.into(),
            r#type: event_type.into(),
            data: bytes::Bytes::copy_from_slice(data),
            id: id.into(),
        }
        .encode_to_vec()
    }

    #[test]
    fn content_type_selects_the_encoding() {
        let ct = |v: &str| Encoding::from_content_type(Some(v.as_bytes()));
        assert_eq!(Encoding::from_content_type(None), Ok(Encoding::Json));
        assert_eq!(ct("application/json; charset=utf-8"), Ok(Encoding::Json));
        assert_eq!(ct("Application/X-Protobuf"), Ok(Encoding::Protobuf));
        let r = ct("text/xml").unwrap_err();
        assert_eq!(r.reason, Reason::UnsupportedContentType);
        assert!(
            r.detail.starts_with(r#"content-type "text/xml""#),
            "{}",
            r.detail
        );
    }

    #[test]
    fn protobuf_events_carry_the_same_members_and_get_the_same_id_as_json() {
        let v = proto("s1", "order.updated", br#"{"a": 1}"#, "");
        let e = validate(Some(&v), Encoding::Protobuf, 1024).unwrap();
        assert_eq!(
            (
                e.session_id.as_ref(),
                e.event_type.as_ref(),
                e.data.as_ref(),
                e.id.as_deref()
            ),
            ("s1", "order.updated", r#"{"a": 1}"#, None)
        );
        let j = json(
            Some(br#"{"session_id":"s1","type":"order.updated","data":{"a":1}}"#),
            1024,
        )
        .unwrap();
        let id = |e: &Event<'_>| {
            crate::event_id::derive(e.id.as_deref(), &e.session_id, &e.event_type, &e.data)
        };
        assert_eq!(id(&e), id(&j));
        let v = proto("s", "t", b"1", "k1");
        let e = validate(Some(&v), Encoding::Protobuf, 1024).unwrap();
        assert_eq!(e.id.as_deref(), Some("k1"));
    }

    #[test]
    fn each_protobuf_rule_has_its_reason() {
        let cases: Vec<(Vec<u8>, Reason, &str)> = vec![
            (
                vec![0xff, 0xff, 0xff],
                Reason::InvalidProtobuf,
                "value is not a ces.v1.Event",
            ),
            (
                proto("", "t", b"1", ""),
                Reason::MissingSessionId,
                "/session_id is required",
            ),
            (
                proto("a b", "t", b"1", ""),
                Reason::InvalidSessionId,
                "/session_id: ",
            ),
            (
                proto("s", "", b"1", ""),
                Reason::MissingType,
                "/type is required",
            ),
            (proto("s", "-t", b"1", ""), Reason::InvalidType, "/type: "),
            (
                proto("s", "t", b"", ""),
                Reason::MissingData,
                "/data is required",
            ),
            (
                proto("s", "t", b"\xff", ""),
                Reason::InvalidUtf8,
                "/data is not UTF-8",
            ),
            (
                proto("s", "t", b"{", ""),
                Reason::InvalidJson,
                "/data is not JSON",
            ),
            (
                proto("s", "t", b"1 2", ""),
                Reason::InvalidJson,
                "/data is not JSON",
            ),
            (proto("s", "t", b"1", "\u{7}"), Reason::InvalidId, "/id: "),
            (
                proto("s", "t", &[b'['; 65], ""),
                Reason::TooDeep,
                "/data nests",
            ),
        ];
        for (value, reason, detail) in cases {
            let r = validate(Some(&value), Encoding::Protobuf, 1024).unwrap_err();
            assert_eq!(r.reason, reason, "{value:?}");
            assert!(r.detail.starts_with(detail), "{}", r.detail);
        }
        let big = proto("s", "t", &[b'1'; 100], "");
        let r = validate(Some(&big), Encoding::Protobuf, 64).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
    }

    #[test]
    fn headers_count_names_and_values_and_the_limit_is_inclusive() {
        let headers: [(&str, Option<&[u8]>); 3] =
            [("ab", Some(b"xyz")), ("c", None), ("", Some(b"1234"))];
        assert_eq!(header_bytes(headers), 2 + 3 + 1 + 4);
        assert_eq!(header_bytes([]), 0);
        assert!(validate_headers(headers, 10).is_ok());
        let r = validate_headers(headers, 9).unwrap_err();
        assert_eq!(r.reason, Reason::InvalidHeaders);
        assert_eq!(
            r.detail,
            "headers are 10 bytes (names and values), limit is 9"
        );
        assert_eq!(
            (DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_RECORD_BYTES),
            (65_536, 262_144)
        );
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let data = |d: &str| {
            let value = format!(r#"{{"session_id":"s","type":"t","data":{d}}}"#);
            json(Some(value.as_bytes()), 4096)
                .map(|_| ())
                .map_err(|r| r.reason)
        };
        let over = MAX_DEPTH + 1;
        // Brackets after an escaped quote are still inside the string.
        assert!(data(&format!(r#""\"{}""#, "[".repeat(over))).is_ok());
        assert!(data(&format!(r#""\\\"{}""#, "{".repeat(over))).is_ok());
        // A string ends at its closing quote: what follows counts again.
        let after_string = format!(r#"["x",{}{}]"#, "[".repeat(over), "]".repeat(over));
        assert_eq!(data(&after_string), Err(Reason::TooDeep));
        let after_escape = format!(r#"["\\",{}{}]"#, "[".repeat(over), "]".repeat(over));
        assert_eq!(data(&after_escape), Err(Reason::TooDeep));
        // Closing brackets count down: many shallow siblings are not deep.
        assert!(data(&format!("[{}[]]", "[],{},".repeat(over))).is_ok());
    }

    #[test]
    fn quoted_input_is_cut_at_a_character_boundary_and_kinds_are_named() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(truncate("éé", 1), "");
        let detail = |v: &str| {
            json(
                Some(format!(r#"{{"session_id":{v},"type":"t","data":1}}"#).as_bytes()),
                1024,
            )
            .unwrap_err()
            .detail
        };
        assert_eq!(detail("[1]"), "/session_id must be a string, got an array");
        assert_eq!(
            detail("true"),
            "/session_id must be a string, got a boolean"
        );
        assert_eq!(
            detail("false"),
            "/session_id must be a string, got a boolean"
        );
        assert_eq!(detail("7"), "/session_id must be a string, got a number");
        // A string no parser can read (half a surrogate pair) is named for what it looks like.
        assert_eq!(
            detail(r#""\ud800""#),
            "/session_id must be a string, got a string"
        );
        let r = json(
            Some(br#"{"session_id":"s","type":"t","data":1,"id":"x"}"#),
            1024,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("x"));
        assert_eq!(Reason::TooDeep.to_string(), "too_deep");
        assert_eq!(
            Rejection::new(Reason::InvalidId, "/id: id is empty").to_string(),
            "invalid_id: /id: id is empty"
        );
    }

    #[test]
    fn a_type_may_take_exactly_its_longest_length() {
        assert!(validate_type(&"t".repeat(MAX_TYPE_LEN)).is_ok());
        assert_eq!(
            validate_type(&"t".repeat(MAX_TYPE_LEN + 1)).unwrap_err(),
            "type is 129 bytes, more than 128"
        );
    }

    #[test]
    fn the_largest_accepted_record_makes_a_frame_the_edge_can_send() {
        assert_eq!(MAX_RECORD_BYTES_CEILING, 1_031_426);
        // The worst case: a protobuf value that is nearly all data, with the longest id escaping to twice its size.
        let id = "\"".repeat(MAX_ID_LEN);
        let overhead = proto("s", "t", b"", &id).len() + 4;
        let data = format!(
            "\"{}\"",
            "x".repeat(MAX_RECORD_BYTES_CEILING - overhead - 2)
        );
        let value = proto("s", "t", data.as_bytes(), &id);
        assert!(value.len() <= MAX_RECORD_BYTES_CEILING, "{}", value.len());
        let e = validate(Some(&value), Encoding::Protobuf, MAX_RECORD_BYTES_CEILING).unwrap();
        let env = crate::envelope::Envelope {
            seq: u64::MAX,
            event_id: e.id.as_deref().unwrap().to_owned(),
            event_type: e.event_type.to_string(),
            data: bytes::Bytes::copy_from_slice(e.data.as_bytes()),
            ..Default::default()
        };
        let frame =
            crate::frame::event_frame_traced(&env, Some("4bf92f3577b34da6a3ce929d0e0e4736"))
                .unwrap();
        assert!(
            frame.len() <= crate::frame::MAX_EVENT_FRAME_BYTES,
            "{}",
            frame.len()
        );
        // The ceiling wastes little: this frame comes within 1 KiB of what the edge can send.
        assert!(
            frame.len() > crate::frame::MAX_EVENT_FRAME_BYTES - 1024,
            "{}",
            frame.len()
        );
    }

    /// `make fuzz` found it: the selector byte 2 (protobuf), then a `ces.v1.Event` whose `data` is the JSON text
    /// `4E44444`, well-formed but beyond any double, so no consumer that builds values can parse it.
    const FUZZ_NUMBER_OUT_OF_RANGE: &[u8] = &[
        0x02, 0x0a, 0x01, 0x73, 0x12, 0x01, 0x71, 0x1a, 0x07, 0x34, 0x45, 0x34, 0x34, 0x34, 0x34,
        0x34,
    ];

    #[test]
    fn fuzz_regression_a_number_out_of_range_is_not_json_in_either_encoding() {
        let (selector, value) = FUZZ_NUMBER_OUT_OF_RANGE.split_first().unwrap();
        assert_eq!(selector % 4, 2, "the fuzz target's protobuf selector");
        let schemas = Schemas::new(crate::schema::UnknownTypes::Allow);
        let r = validate_record(Some(value), Some(b"application/x-protobuf"), 4096, &schemas)
            .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
        assert!(
            r.detail
                .starts_with("/data is not JSON: number out of range"),
            "{}",
            r.detail
        );
        let r = json(
            Some(br#"{"session_id":"s","type":"q","data":4E44444}"#),
            4096,
        )
        .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJson);
        assert!(
            r.detail
                .starts_with("/data is not JSON: number out of range"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn both_encodings_agree_on_what_json_data_is() {
        // Each `data` text with whether a consumer that builds values can parse it.
        let cases: &[(&str, bool)] = &[
            ("4E44444", false),
            ("-1e309", false),
            ("[1, {\"a\": 1e400}]", false),
            ("{\"n\": -4E44444}", false),
            (r#""\ud800""#, false),
            (r#"{"\udc00": 1}"#, false),
            (r#"["\ud83d"]"#, false),
            ("1e308", true),
            ("-0", true),
            ("1e-400", true),
            ("18446744073709551616", true),
            (r#""\ud83d\ude00""#, true),
            (r#"{"a": [true, null, "x", 1.5]}"#, true),
        ];
        for &(data, parses) in cases {
            let as_json = format!(r#"{{"session_id":"s","type":"t","data":{data}}}"#);
            let as_proto = proto("s", "t", data.as_bytes(), "");
            let j = json(Some(as_json.as_bytes()), 4096).map(|e| e.data.into_owned());
            let p =
                validate(Some(&as_proto), Encoding::Protobuf, 4096).map(|e| e.data.into_owned());
            assert_eq!(
                j.as_ref().map_err(|r| r.reason),
                p.as_ref().map_err(|r| r.reason),
                "{data}"
            );
            assert_eq!(j.is_ok(), parses, "{data}: {j:?}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(data).is_ok(),
                parses,
                "{data}: the consumer's view"
            );
            if let Err(r) = j {
                assert_eq!(r.reason, Reason::InvalidJson, "{data}");
                assert!(r.detail.starts_with("/data is not JSON: "), "{}", r.detail);
            }
        }
    }

    #[test]
    fn validate_record_applies_content_type_structure_and_schema_in_turn() {
        let mut schemas = Schemas::new(crate::schema::UnknownTypes::Allow);
        schemas
            .insert("t", &serde_json::json!({"type": "integer"}))
            .unwrap();
        let check = |v: &[u8], ct: Option<&[u8]>| {
            validate_record(Some(v), ct, 1024, &schemas)
                .map(|_| ())
                .map_err(|r| r.reason)
        };
        let good = br#"{"session_id":"s","type":"t","data":1}"#;
        assert!(check(good, None).is_ok());
        assert_eq!(
            check(br#"{"session_id":"s","type":"t","data":"x"}"#, None).unwrap_err(),
            Reason::SchemaViolation
        );
        assert_eq!(
            check(good, Some(b"text/plain")).unwrap_err(),
            Reason::UnsupportedContentType
        );
        assert_eq!(
            check(good, Some(b"application/x-protobuf")).unwrap_err(),
            Reason::InvalidProtobuf
        );
        assert_eq!(
            check(
                &proto("s", "t", b"\"x\"", ""),
                Some(b"application/x-protobuf")
            )
            .unwrap_err(),
            Reason::SchemaViolation
        );
    }

    mod prop {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::super::*;
        use crate::schema::UnknownTypes;

        fn schemas() -> Schemas {
            let mut s = Schemas::new(UnknownTypes::Reject);
            s.insert(
                "t",
                &serde_json::json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}),
            )
            .unwrap();
            s
        }

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec(
                        (
                            prop_oneof![
                                Just("session_id".to_owned()),
                                Just("type".to_owned()),
                                Just("data".to_owned()),
                                Just("id".to_owned()),
                                ".{0,6}"
                            ],
                            inner
                        ),
                        0..6
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            // Whatever the bytes, the validator answers (never panics) and a rejection has a non-empty detail.
            #[test]
            fn arbitrary_bytes_are_accepted_or_rejected_with_a_detail(
                value in prop::collection::vec(any::<u8>(), 0..512),
                protobuf in any::<bool>(),
            ) {
                let ct: Option<&[u8]> = protobuf.then_some(b"application/x-protobuf");
                if let Err(r) = validate_record(Some(&value), ct, 256, &schemas()) {
                    prop_assert!(!r.detail.is_empty());
                }
            }

            // Arbitrary JSON: accepted exactly when it has the required members and its data matches the
            // schema; an accepted event reports the members it was given.
            #[test]
            fn arbitrary_json_is_judged_by_its_members(value in arb_json()) {
                let text = serde_json::to_string(&value).unwrap();
                let result = validate_record(Some(text.as_bytes()), None, 1 << 20, &schemas());
                let obj = value.as_object();
                let member = |k: &str| obj.and_then(|o| o.get(k));
                // JSON Schema's "integer" is any number without a fractional part, 1.0 included.
                let data_ok = member("data")
                    .and_then(Value::as_object)
                    .and_then(|d| d.get("n"))
                    .is_some_and(|n| n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0));
                let structurally_ok = member("session_id").and_then(Value::as_str).is_some_and(|s| crate::keys::validate_session_id(s).is_ok())
                    && member("type").and_then(Value::as_str) == Some("t")
                    && member("data").is_some()
                    && member("id").is_none_or(|i| i.is_null() || i.as_str().is_some_and(|s| !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)));
                match result {
                    Ok(e) => {
                        prop_assert!(structurally_ok && data_ok, "accepted {text}");
                        prop_assert_eq!(Some(e.session_id.as_ref()), member("session_id").and_then(Value::as_str));
                        let data: Value = serde_json::from_str(&e.data).unwrap();
                        prop_assert_eq!(Some(&data), member("data"));
                    }
                    Err(r) => prop_assert!(!(structurally_ok && data_ok), "rejected {text}: {r}"),
                }
            }

            // A well-formed event round-trips through both encodings with the same id.
            #[test]
            fn valid_events_are_accepted_in_both_encodings(
                sid in "[A-Za-z0-9_.:-]{1,40}",
                n in any::<i64>(),
            ) {
                let data = format!(r#"{{"n":{n}}}"#);
                let json_text = format!(r#"{{"session_id":"{sid}","type":"t","data":{data}}}"#);
                let j = validate_record(Some(json_text.as_bytes()), None, 1 << 20, &schemas()).unwrap();
                let pb = ces_proto::v1::Event { session_id: sid.clone(), r#type: "t".into(), data: data.clone().into(), id: String::new() }.encode_to_vec();
                let p = validate_record(Some(&pb), Some(b"application/x-protobuf"), 1 << 20, &schemas()).unwrap();
                prop_assert_eq!(&j, &p);
            }
        }
    }

    #[test]
    fn data_serde_json_cannot_read_into_a_value_is_refused() {
        // Found by the fuzzer: accepted, then unreadable by every serde_json client (the Rust SDK among them).
        let schemas = Schemas::new(crate::schema::UnknownTypes::Allow);
        for data in [
            r#"{"$serde_json::private::RawValue":5}"#,
            r#"{"a":[{"$serde_json::private::Number":"1"}]}"#,
        ] {
            let value = format!(r#"{{"session_id":"s","type":"z","data":{data}}}"#);
            let err = validate_record(Some(value.as_bytes()), None, 4096, &schemas).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidJson, "{data}");
            assert!(
                err.detail.contains("reserved by serde_json"),
                "{}",
                err.detail
            );
        }
        let fine =
            r#"{"session_id":"s","type":"z","data":{"$serde_json":1,"x$serde_json::private::":2}}"#;
        assert!(validate_record(Some(fine.as_bytes()), None, 4096, &schemas).is_ok());
    }
}
