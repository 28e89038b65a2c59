//! Validation of an input record's value into an [`Event`].
//!
//! Pure: bytes in, a borrowed [`Event`] or a [`Rejection`] out. A rejection is permanent (retrying the same
//! bytes gives the same answer), so ingest dead-letters it and moves on. Every rejection carries a stable
//! [`Reason`] code, which operators filter on, and a human detail that points at the problem.
//!
//! The accepted value is a JSON object:
//! `{"session_id": "...", "type": "...", "data": <any JSON>, "id": "<optional producer key>"}`.
//! Unknown members are ignored so producers can add fields before CES knows them.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::keys::validate_session_id;

/// Default maximum size of a record value: 256 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 * 1024;
/// Longest accepted event type.
pub const MAX_TYPE_LEN: usize = 128;
/// Longest accepted producer event id.
pub const MAX_ID_LEN: usize = 256;

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
    /// A header name is not UTF-8 (the Kafka protocol requires it); the headers cannot be kept.
    InvalidHeaders,
}

impl Reason {
    /// Every reason, for exhaustive tests and metric pre-registration.
    pub const ALL: [Reason; 12] = [
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
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
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
    pub data: &'a str,
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

/// Validates a record value against the v1 contract.
///
/// `value` is `None` for a Kafka tombstone. Size is checked before anything is parsed, so an oversized record
/// costs no parsing.
pub fn validate(value: Option<&[u8]>, max_bytes: usize) -> Result<Event<'_>, Rejection> {
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

    fn ok(value: &str) -> Event<'_> {
        validate(Some(value.as_bytes()), DEFAULT_MAX_RECORD_BYTES).expect("valid")
    }

    fn reason(value: &[u8]) -> Reason {
        validate(Some(value), 64).expect_err("rejected").reason
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
        for (value, expected) in cases {
            assert_eq!(
                reason(value),
                *expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(validate(None, 64).unwrap_err().reason, Reason::MissingValue);
    }

    #[test]
    fn size_limit_is_inclusive_and_checked_before_parsing() {
        let v = br#"{"session_id":"s","type":"t","data":1}"#;
        assert!(validate(Some(v), v.len()).is_ok());
        let r = validate(Some(v), v.len() - 1).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
        assert!(
            r.detail.contains(&format!("{} bytes", v.len())),
            "{}",
            r.detail
        );
    }

    #[test]
    fn details_point_at_the_member() {
        let r = validate(Some(br#"{"session_id":{"a":1},"type":"t","data":1}"#), 1024).unwrap_err();
        assert_eq!(r.detail, "/session_id must be a string, got an object");
        let r = validate(
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
}
