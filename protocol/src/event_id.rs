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

use std::borrow::Cow;
use std::fmt::Write as _;

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
    hash_fields(session_id, event_type, &canonical)
}

/// `ev_` and the first 128 bits of SHA-256 over the domain and the length-prefixed fields.
fn hash_fields(session_id: &str, event_type: &str, canonical: &str) -> String {
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

/// The canonical form of JSON text: keys sorted by their UTF-8 bytes (of two members with one name the last
/// wins), no insignificant whitespace, strings re-escaped the way serde_json writes them, numbers as parsed into
/// a double when that loses nothing. `None` if `text` is not JSON, or nests arrays and objects deeper than
/// [`MAX_NESTING`].
///
/// A number with more than 15 significant digits that is not an exact 64-bit integer (a 20-digit id, a float
/// written to 17+ digits) is kept as written: parsed into a double, distinct numbers would collapse into one and
/// genuinely different events would share an id, so one of them would be dropped as a duplicate.
///
/// One pass: the text is read once into a tree of its tokens, which is then written out with each object's
/// members sorted, so the cost grows with the size of the text, not with its size times its depth.
pub fn canonical_json(text: &str) -> Option<String> {
    let mut reader = Reader {
        text: text.trim(),
        pos: 0,
    };
    let tree = reader.value(0)?;
    reader.skip_whitespace();
    if reader.pos != reader.text.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    write_canonical(tree, &mut out)?;
    Some(out)
}

/// Deepest nesting of arrays and objects [`canonical_json`] reads (serde_json's own limit). The validator rejects
/// `data` nested deeper than [`crate::record::MAX_DEPTH`], so every accepted event is well within it.
pub const MAX_NESTING: usize = 128;

/// A JSON value as read: scalars are their tokens, exactly as written, canonicalised only when written out (so a
/// member that a later one of the same name replaces is checked for syntax only, as a map would treat it).
#[derive(Debug)]
enum Node<'a> {
    /// A string (quotes included), number, `true`, `false` or `null`.
    Token(&'a str),
    Array(Vec<Node<'a>>),
    /// Members in the order written: the decoded name, and the value.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

/// A recursive-descent reader of JSON text (RFC 8259) into [`Node`]s.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after whitespace), or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek() == Some(byte)).then(|| self.pos += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' | b'[' if depth >= MAX_NESTING => None,
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Node::Token),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number(),
        }
    }

    fn object(&mut self, depth: usize) -> Option<Node<'a>> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(Node::Object(members));
        }
        loop {
            self.skip_whitespace();
            let name = self.string()?;
            // A name without escapes is its own text; one with escapes is decoded as a map's key would be.
            let name = if name.contains('\\') {
                Cow::Owned(serde_json::from_str::<String>(name).ok()?)
            } else {
                Cow::Borrowed(&name[1..name.len() - 1])
            };
            self.expect(b':')?;
            members.push((name, self.value(depth)?));
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(Node::Object(members));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<Node<'a>> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(Node::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(Node::Array(items));
                }
                _ => return None,
            }
        }
    }

    /// A string token, quotes included: escapes well-formed, no raw control characters. What the escapes name
    /// is checked when the string is decoded.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.pos += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(&self.text[start..self.pos]);
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.text.as_bytes().get(self.pos + 1..self.pos + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Option<Node<'a>> {
        let token = self.text.get(self.pos..self.pos + word.len())?;
        (token == word).then(|| {
            self.pos += word.len();
            Node::Token(token)
        })
    }

    /// A number token: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<Node<'a>> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            self.some_digits()?;
        }
        Some(Node::Token(&self.text[start..self.pos]))
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// At least one digit.
    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}

fn write_canonical(node: Node<'_>, out: &mut String) -> Option<()> {
    match node {
        Node::Object(mut members) => {
            // Stable: of two members with one name, the one written last comes last and wins.
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            let mut members = members.into_iter().peekable();
            let mut first = true;
            while let Some((name, value)) = members.next() {
                if members.peek().is_some_and(|(next, _)| *next == name) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&serde_json::to_string(name.as_ref()).ok()?);
                out.push(':');
                write_canonical(value, out)?;
            }
            out.push('}');
        }
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Node::Token(token) => match *token.as_bytes().first()? {
            // Without escapes a string is already as serde_json writes it (the reader refused raw control
            // characters, the only other thing it escapes).
            b'"' if !token.contains('\\') => out.push_str(token),
            b'"' => {
                let s: String = serde_json::from_str(token).ok()?;
                out.push_str(&serde_json::to_string(&s).ok()?);
            }
            b't' | b'f' | b'n' => out.push_str(token),
            _ => {
                let n: serde_json::Number = serde_json::from_str(token).ok()?;
                if n.is_f64() && significant_digits(token) > 15 {
                    out.push_str(token);
                } else {
                    out.push_str(&n.to_string());
                }
            }
        },
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

    #[test]
    fn one_name_twice_keeps_the_last_as_a_map_would() {
        assert_eq!(
            canonical_json(r#"{"b":1,"a":2,"b":[3],"a":{"y":1,"x":2}}"#).unwrap(),
            r#"{"a":{"x":2,"y":1},"b":[3]}"#
        );
        // Names compare decoded: "\u0061" is "a".
        assert_eq!(
            canonical_json(r#"{"a":1,"\u0061":2}"#).unwrap(),
            r#"{"a":2}"#
        );
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        assert_eq!(
            canonical_json(r#"["plain é", "\u00e9\/\"\\\n\u001f\u007f", "\ud83d\ude00"]"#).unwrap(),
            "[\"plain é\",\"é/\\\"\\\\\\n\\u001f\u{7f}\",\"😀\"]"
        );
    }

    #[test]
    fn text_that_is_not_json_is_refused_whole() {
        for text in [
            "",
            " ",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":1,}",
            "{1:2}",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "1e+",
            "0x10",
            "tru",
            "nul",
            "truex",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "\"a",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\u{1}\"",
            "\"\\ud800\"",
            "[1e400]",
            "1 2",
            "[] []",
            "NaN",
            "Infinity",
        ] {
            assert_eq!(canonical_json(text), None, "{text:?}");
        }
        // A member a later one of the same name replaces is never written out, but its syntax is still checked.
        for first in ["1.", "1e", "1e+", "-", "01", "\"\\x\"", "tru", "[1,]"] {
            let text = format!(r#"{{"a":{first},"a":2}}"#);
            assert_eq!(canonical_json(&text), None, "{text}");
            assert_eq!(reference::canonical_json(&text), None, "{text}");
        }
        assert_eq!(
            canonical_json(r#"{"a":1.5e+3,"a":2}"#).unwrap(),
            r#"{"a":2}"#
        );
    }

    #[test]
    fn whitespace_around_and_between_tokens_is_insignificant() {
        assert_eq!(
            canonical_json(" \t\r\n{ \"a\" :\n[ 1 ,\t2 ] , \"b\" : { } , \"c\" : [ ] }\n ")
                .unwrap(),
            r#"{"a":[1,2],"b":{},"c":[]}"#
        );
    }

    /// `data` nested `depth` levels deep, objects and arrays alternating, each object's names out of order.
    fn nested(depth: usize) -> String {
        let mut text = String::from("1");
        for level in 0..depth {
            text = if level % 2 == 0 {
                format!(r#"{{ "z": {level}, "inner" : {text}, "a": "{level}" }}"#)
            } else {
                format!("[ {level}, {text} ]")
            };
        }
        text
    }

    #[test]
    fn deep_nesting_is_canonicalised_in_one_pass_with_the_same_ids() {
        // The deepest data the validator accepts, and a little more: the same text and ids as before.
        for depth in [1, 2, 17, crate::record::MAX_DEPTH, MAX_NESTING] {
            let text = nested(depth);
            assert_eq!(
                canonical_json(&text),
                reference::canonical_json(&text),
                "depth {depth}"
            );
            assert!(canonical_json(&text).is_some());
            assert_eq!(
                derive(None, "s", "t", &text),
                reference::derive(None, "s", "t", &text),
                "depth {depth}"
            );
        }
        let deepest = canonical_json(&nested(crate::record::MAX_DEPTH)).unwrap();
        assert!(
            deepest.starts_with(r#"[63,{"a":"62","inner":[61,{"a":"60","inner":"#),
            "{deepest}"
        );
        // Past the limit the text is hashed as written; far past it nothing recurses without bound.
        assert_eq!(canonical_json(&nested(MAX_NESTING + 1)), None);
        let abyss = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert_eq!(canonical_json(&abyss), None);
        assert!(derive(None, "s", "t", &abyss).starts_with("ev_"));
    }

    /// JSON text with what canonicalisation must see through: whitespace, member order, repeated names, escapes,
    /// numbers of every form (out of a double's range too, which is not JSON a consumer can parse).
    fn arb_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ws = || prop::sample::select(vec!["", "", " ", "\n\t", "\r "]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
            "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
            r#""([a-zé€ ]|\\[\\"/bfnrt]|\\u00[0-7][0-9a-fA-F]|\\ud83d\\ude00){0,6}""#,
        ];
        leaf.prop_recursive(6, 64, 5, move |inner| {
            let item = (ws(), inner, ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
            prop_oneof![
                prop::collection::vec(item.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["a", "b", "B", "é", "\\u0062", "aa", ""]),
                        ws(),
                        item
                    ),
                    0..5
                )
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, w, v)| format!("\"{k}\"{w}:{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        // The one-pass reader gives exactly what re-parsing every level gave, ids included.
        #[test]
        fn one_pass_canonical_form_is_the_re_parsing_one(text in arb_text()) {
            proptest::prop_assert_eq!(canonical_json(&text), reference::canonical_json(&text));
            proptest::prop_assert_eq!(derive(None, "s", "t", &text), reference::derive(None, "s", "t", &text));
        }

        // Arbitrary bytes: no panic, and never a canonical form for what serde_json refuses.
        #[test]
        fn arbitrary_text_is_canonicalised_only_if_it_is_json(text in "[\\[\\]{}\":,0-9eE.+\\-a-z\\\\ ]{0,40}") {
            if canonical_json(&text).is_some() {
                proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
            }
        }
    }

    /// The canonicalisation as it was before the one-pass reader (each level parsed again with serde_json),
    /// kept as the reference the new one must match.
    mod reference {
        use std::collections::BTreeMap;

        use serde_json::Value;
        use serde_json::value::RawValue;

        use super::super::significant_digits;

        pub(super) fn derive(
            producer_id: Option<&str>,
            session_id: &str,
            event_type: &str,
            data: &str,
        ) -> String {
            if let Some(id) = producer_id {
                return id.to_owned();
            }
            let canonical = canonical_json(data).unwrap_or_else(|| data.to_owned());
            super::super::hash_fields(session_id, event_type, &canonical)
        }

        pub(super) fn canonical_json(text: &str) -> Option<String> {
            let mut out = String::with_capacity(text.len());
            write_canonical(text, &mut out)?;
            Some(out)
        }

        fn write_canonical(raw: &str, out: &mut String) -> Option<()> {
            let text = raw.trim();
            match text.as_bytes().first()? {
                b'{' => {
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
    }
}
