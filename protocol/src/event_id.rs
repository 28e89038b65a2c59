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
//!   removed, numbers as parsed unless that would merge different numbers), so `{"a":1,"b":2}` and `{ "b": 2, "a": 1 }` are the same event.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;
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
/// re-escaped the way serde_json writes them, numbers as parsed into a double when that loses nothing.
/// `None` if `text` is not JSON.
///
/// A number with more than 15 significant digits that is not an exact 64-bit integer (a 20-digit id, a float
/// written to 17+ digits) is kept as written: parsed into a double, distinct numbers would collapse into one and
/// genuinely different events would share an id, so one of them would be dropped as a duplicate.
pub fn canonical_json(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    write_canonical(text, &mut out)?;
    Some(out)
}

fn write_canonical(raw: &str, out: &mut String) -> Option<()> {
    let text = raw.trim();
    match text.as_bytes().first()? {
        b'{' => {
            // A BTreeMap sorts by the names' UTF-8 bytes, whatever map type serde_json is built with.
            let members: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&k).ok()?);
                out.push(':');
                write_canonical(v.get(), out)?;
            }
            out.push('}');
        }
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            out.push('[');
            for (i, v) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v.get(), out)?;
            }
            out.push(']');
        }
        b'"' => {
            let s: String = serde_json::from_str(text).ok()?;
            out.push_str(&serde_json::to_string(&s).ok()?);
        }
        b't' | b'f' | b'n' => {
            let v: Value = serde_json::from_str(text).ok()?;
            out.push_str(&v.to_string());
        }
        _ => {
            let n: serde_json::Number = serde_json::from_str(text).ok()?;
            if n.is_f64() && significant_digits(text) > 15 {
                out.push_str(text);
            } else {
                out.push_str(&n.to_string());
            }
        }
    }
    Some(())
}

/// Significant digits of a JSON number token: its mantissa digits without leading or trailing zeros.
fn significant_digits(token: &str) -> usize {
    let mantissa = token.split(['e', 'E']).next().unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len()
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
    fn numbers_compare_as_doubles_unless_a_double_would_merge_different_numbers() {
        assert_eq!(
            canonical_json("[1e2, 100.0, 1, -0, 1.5]").unwrap(),
            "[100.0,100.0,1,-0.0,1.5]"
        );
        // Beyond u64 and beyond 15 significant digits, numbers keep their text: these two must not merge.
        let a = derive(None, "s", "t", r#"{"id":98765432109876543210}"#);
        let b = derive(None, "s", "t", r#"{"id":98765432109876543211}"#);
        assert_ne!(a, b);
        assert_ne!(
            derive(None, "s", "t", "0.12345678901234567"),
            derive(None, "s", "t", "0.12345678901234568")
        );
        // Exact 64-bit integers are still numbers, whatever their size.
        assert_eq!(
            canonical_json("18446744073709551615").unwrap(),
            "18446744073709551615"
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
