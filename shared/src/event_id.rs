//! Deterministic event ids.
//!
//! The id is what makes redelivery harmless: Kafka redelivers after a crash or rebalance, operators replay the
//! DLQ, producers retry. Every copy of one business event must get the same id, so the id is derived only from
//! what the producer meant, never from where or when the copy travelled (offsets, partitions, timestamps,
//! headers). See docs/adr/0001-event-id.md.
//!
//! - The producer's `id`, when given, is used verbatim: the producer knows best what "the same event" means.
//! - Otherwise the id is `ev_` + the first 128 bits (hex) of SHA-256 over a versioned domain tag and the
//!   length-prefixed session id, type and canonical JSON of `data` (object keys sorted, insignificant whitespace
//!   removed, numbers as parsed), so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same event.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"ces.event-id.v1\0";

/// The event id of an event: `producer_id` if given, else the hash of the business fields.
///
/// `data` must be valid JSON text (validation guarantees it); text that does not parse is hashed verbatim so the
/// function stays total.
pub fn derive(producer_id: Option<&str>, session_id: &str, event_type: &str, data: &str) -> String {
    if let Some(id) = producer_id {
        return id.to_owned();
    }
    let canonical = canonical_json(data).unwrap_or_else(|| data.to_owned());
    let mut h = Sha256::new();
    h.update(DOMAIN);
    for field in [
        session_id.as_bytes(),
        event_type.as_bytes(),
        canonical.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(3 + 32);
    out.push_str("ev_");
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The canonical form of JSON text: keys sorted by their UTF-8 bytes, no insignificant whitespace, strings
/// re-escaped the way serde_json writes them. `None` if `text` is not JSON.
pub fn canonical_json(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    let mut out = String::with_capacity(text.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            // Sort explicitly rather than rely on serde_json's map type, which changes with the
            // `preserve_order` feature that any crate in the build may switch on.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_id_wins_verbatim() {
        assert_eq!(derive(Some("order-42/v3"), "s", "t", "1"), "order-42/v3");
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = derive(None, "s", "t", r#"{"a":1,"b":{"y":[1,2],"x":"é"}}"#);
        let b = derive(
            None,
            "s",
            "t",
            "{ \"b\" : { \"x\":\"\\u00e9\", \"y\":[1, 2] }, \"a\": 1 }",
        );
        assert_eq!(a, b);
        assert!(a.starts_with("ev_") && a.len() == 35, "{a}");
    }

    #[test]
    fn every_business_field_matters() {
        let base = derive(None, "s", "t", r#"{"a":1}"#);
        assert_ne!(base, derive(None, "s2", "t", r#"{"a":1}"#));
        assert_ne!(base, derive(None, "s", "t2", r#"{"a":1}"#));
        assert_ne!(base, derive(None, "s", "t", r#"{"a":2}"#));
        assert_ne!(base, derive(None, "s", "t", r#"{"a":"1"}"#));
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        // Without length prefixes, ("ab","c") and ("a","bc") would hash the same bytes.
        assert_ne!(derive(None, "ab", "c", "1"), derive(None, "a", "bc", "1"));
    }

    #[test]
    fn known_vector_is_stable_across_releases() {
        // Changing this value breaks dedup for every event in flight during an upgrade; bump DOMAIN instead.
        assert_eq!(
            derive(None, "s1", "order.updated", r#"{"n":1}"#),
            derive(None, "s1", "order.updated", r#"{ "n" : 1 }"#)
        );
        assert_eq!(
            derive(None, "s1", "order.updated", r#"{"n":1}"#),
            "ev_5a9418aec085e94d677e279abbd001ea"
        );
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        assert_eq!(
            canonical_json(r#"{"b":[{"d":1,"c":2}],"a":null}"#).unwrap(),
            r#"{"a":null,"b":[{"c":2,"d":1}]}"#
        );
        assert_eq!(canonical_json("not json"), None);
    }
}
