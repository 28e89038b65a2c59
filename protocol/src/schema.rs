//! JSON Schemas (draft 2020-12) per event type, checked against each event's `data`.
//!
//! A schema directory holds `<type>.json` files; the file name (without `.json`) is the event type it governs,
//! so it follows the event type rule. Other files are ignored. A set is loaded whole or not at all: one bad file
//! fails the load with every problem listed, so a reload never leaves ingest running with half a set.
//!
//! Remote `$ref`s are not fetched (the crate is built without its HTTP and file resolvers): a schema must be
//! self-contained, and validating an event never waits on the network. `format` is asserted, not just
//! annotated, because producers writing `"format": "date-time"` expect it to be enforced.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::error::ConfigErrors;
use crate::record::{Event, Reason, Rejection, truncate, validate_type};

/// Longest detail of a schema violation; the offending value is quoted and may be large.
const MAX_DETAIL: usize = 512;

/// What happens to an event whose type has no schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownTypes {
    /// Accepted after the structural checks (the default: types can be added before their schema).
    #[default]
    Allow,
    /// Dead-lettered as `unknown_type`.
    Reject,
}

impl UnknownTypes {
    /// Parses `allow` or `reject`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

/// The compiled schemas of every known event type.
#[derive(Clone, Default)]
pub struct Schemas {
    by_type: HashMap<String, jsonschema::Validator>,
    unknown: UnknownTypes,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schemas")
            .field("types", &self.types())
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl Schemas {
    /// No schemas; every type is `unknown`.
    pub fn new(unknown: UnknownTypes) -> Self {
        Self {
            by_type: HashMap::new(),
            unknown,
        }
    }

    /// Compiles `schema` for `event_type`, replacing any earlier one.
    pub fn insert(&mut self, event_type: &str, schema: &Value) -> Result<(), String> {
        validate_type(event_type)?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| format!("invalid schema: {e}"))?;
        self.by_type.insert(event_type.to_owned(), validator);
        Ok(())
    }

    /// Compiles a schema set from the files of a schema directory, read by the caller: each file's name and its
    /// contents (or why it could not be read). Every `<type>.json` defines the schema of `<type>`; other files
    /// are ignored. Fails with every bad file listed, `source` (the directory) naming where they came from.
    pub fn from_files(
        source: &str,
        files: impl IntoIterator<Item = (String, Result<Vec<u8>, String>)>,
        unknown: UnknownTypes,
    ) -> Result<Self, crate::Error> {
        let mut schemas = Self::new(unknown);
        let mut problems = Vec::new();
        for (name, contents) in files {
            let Some(event_type) = name.strip_suffix(".json") else {
                continue;
            };
            let loaded = contents
                .and_then(|bytes| {
                    serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("not JSON: {e}"))
                })
                .and_then(|schema| schemas.insert(event_type, &schema));
            if let Err(e) = loaded {
                problems.push(format!("{name}: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(schemas)
        } else {
            problems.sort();
            Err(crate::Error::Schemas {
                dir: source.to_owned(),
                problems: ConfigErrors(problems),
            })
        }
    }

    /// The event types with a schema, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }

    /// Checks `event.data` against the schema of its type, or applies the unknown-type policy.
    ///
    /// The detail of a violation starts with the JSON pointer of the failing value within the record
    /// (`/data/...`), then says what is wrong, and how many other violations there are.
    pub fn check(&self, event: &Event<'_>) -> Result<(), Rejection> {
        let Some(validator) = self.by_type.get(event.event_type.as_ref()) else {
            return match self.unknown {
                UnknownTypes::Allow => Ok(()),
                UnknownTypes::Reject => Err(Rejection::new(
                    Reason::UnknownType,
                    format!("/type: no schema for {:?}", event.event_type),
                )),
            };
        };
        // `data` passed the structural check, so it parses; parsing it again only when a schema needs it keeps
        // schema-less types at zero cost.
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| Rejection::new(Reason::InvalidJson, format!("/data is not JSON: {e}")))?;
        let mut errors = validator.iter_errors(&data);
        let Some(first) = errors.next() else {
            return Ok(());
        };
        let more = errors.count();
        let message = format!("/data{}: {first}", first.instance_path());
        // Cut the message, never the count: the offending value it quotes can be large.
        let mut detail = truncate(&message, MAX_DETAIL).to_owned();
        if more > 0 {
            detail.push_str(&format!(" (and {more} more)"));
        }
        Err(Rejection::new(Reason::SchemaViolation, detail))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::json;

    use super::*;

    fn event<'a>(event_type: &'a str, data: &'a str) -> Event<'a> {
        Event {
            session_id: Cow::Borrowed("s"),
            event_type: Cow::Borrowed(event_type),
            data: Cow::Borrowed(data),
            id: None,
        }
    }

    fn order_schemas(unknown: UnknownTypes) -> Schemas {
        let mut s = Schemas::new(unknown);
        s.insert(
            "order.updated",
            &json!({
                "type": "object",
                "required": ["order_id", "amount"],
                "properties": {
                    "order_id": {"type": "string"},
                    "amount": {"type": "integer", "minimum": 0},
                    "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
                }
            }),
        )
        .unwrap();
        s
    }

    #[test]
    fn accepts_matching_data_and_points_at_the_failing_member() {
        let s = order_schemas(UnknownTypes::Allow);
        assert!(
            s.check(&event("order.updated", r#"{"order_id":"o1","amount":5}"#))
                .is_ok()
        );
        let r = s
            .check(&event("order.updated", r#"{"order_id":"o1","amount":"5"}"#))
            .unwrap_err();
        assert_eq!(r.reason, Reason::SchemaViolation);
        assert!(r.detail.starts_with("/data/amount: "), "{}", r.detail);
        let r = s
            .check(&event(
                "order.updated",
                r#"{"order_id":"o1","amount":1,"items":[{"sku":"a"},{}]}"#,
            ))
            .unwrap_err();
        assert!(r.detail.starts_with("/data/items/1: "), "{}", r.detail);
        let r = s
            .check(&event("order.updated", r#"{"amount":-1}"#))
            .unwrap_err();
        assert!(r.detail.contains("(and 1 more)"), "{}", r.detail);
    }

    #[test]
    fn unknown_types_follow_the_policy() {
        let e = event("other", "1");
        assert!(order_schemas(UnknownTypes::Allow).check(&e).is_ok());
        let r = order_schemas(UnknownTypes::Reject).check(&e).unwrap_err();
        assert_eq!(r.reason, Reason::UnknownType);
        assert_eq!(r.detail, r#"/type: no schema for "other""#);
    }

    #[test]
    fn formats_are_asserted() {
        let mut s = Schemas::new(UnknownTypes::Allow);
        s.insert("t", &json!({"type": "string", "format": "date-time"}))
            .unwrap();
        assert!(s.check(&event("t", r#""2026-11-23T10:00:00Z""#)).is_ok());
        assert_eq!(
            s.check(&event("t", r#""yesterday""#)).unwrap_err().reason,
            Reason::SchemaViolation
        );
    }

    #[test]
    fn a_file_set_loads_whole_or_reports_every_bad_file() {
        let file = |name: &str, text: &str| (name.to_owned(), Ok(text.as_bytes().to_vec()));
        let s = Schemas::from_files(
            "schemas/",
            [
                file("a.json", r#"{"type":"integer"}"#),
                file("README.md", "ignored"),
            ],
            UnknownTypes::Reject,
        )
        .unwrap();
        assert_eq!(s.types(), ["a"]);

        let err = Schemas::from_files(
            "schemas/",
            [
                file("a.json", r#"{"type":"integer"}"#),
                file("b.json", "{"),
                file("c.json", r#"{"type": 7}"#),
                file(".hidden.json", "{}"),
                ("d.json".to_owned(), Err("permission denied".to_owned())),
            ],
            UnknownTypes::Reject,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid schemas in schemas/:\n"), "{err}");
        for needle in [
            "b.json: not JSON",
            "c.json: invalid schema",
            ".hidden.json: ",
            "d.json: permission denied",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        assert!(
            !err.contains("a.json"),
            "a good file is not a problem: {err}"
        );
    }
}
