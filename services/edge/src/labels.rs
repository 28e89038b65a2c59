//! Session labels: the `labels` member of the registration body, an object of strings (`{"team": "blue"}`) an
//! operator filters sessions by (`GET /v1/admin/sessions?label=team=blue`). They are stored inside the session's
//! metadata as the client sent them, so they are checked once, at registration, and read back from the metadata.
//!
//! Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::Value;

/// Most labels a session may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key, in characters (`A-Z a-z 0-9 _ . -`, at least one).
pub const MAX_KEY_CHARS: usize = 64;
/// Longest label value, in characters.
pub const MAX_VALUE_CHARS: usize = 128;

/// Checks the `labels` member of a registration body, if it has one: an object of at most [`MAX_LABELS`] members,
/// each key 1–[`MAX_KEY_CHARS`] characters of `A-Z a-z 0-9 _ . -`, each value a string of at most
/// [`MAX_VALUE_CHARS`] characters. The error names the offending label.
pub fn validate(body: &serde_json::Map<String, Value>) -> Result<(), String> {
    let Some(labels) = body.get("labels") else {
        return Ok(());
    };
    let Value::Object(labels) = labels else {
        return Err("labels must be an object of strings".into());
    };
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "labels has {} members, at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if !valid_key(key) {
            return Err(format!(
                "label {key:?}: a key is 1-{MAX_KEY_CHARS} characters of A-Z a-z 0-9 _ . -"
            ));
        }
        match value {
            Value::String(v) if v.chars().count() <= MAX_VALUE_CHARS => {}
            Value::String(_) => {
                return Err(format!(
                    "label {key:?}: the value is longer than {MAX_VALUE_CHARS} characters"
                ));
            }
            _ => return Err(format!("label {key:?}: the value must be a string")),
        }
    }
    Ok(())
}

/// Whether `key` is a label key: 1–[`MAX_KEY_CHARS`] characters of `A-Z a-z 0-9 _ . -`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The labels inside stored session metadata (the registration body as JSON text). Metadata that is not an
/// object, or has no `labels` object, has none; a member that is not a string (written before labels were
/// checked) is left out.
pub fn of_metadata(metadata: &str) -> BTreeMap<String, String> {
    let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(metadata) else {
        return BTreeMap::new();
    };
    let Some(Value::Object(labels)) = body.remove("labels") else {
        return BTreeMap::new();
    };
    labels
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(v) => Some((k, v)),
            _ => None,
        })
        .collect()
}

/// Whether `labels` hold every `(key, value)` of `wanted`.
pub fn matches(labels: &BTreeMap<String, String>, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: Value) -> Result<(), String> {
        validate(body.as_object().expect("an object"))
    }

    #[test]
    fn labels_are_optional_and_may_be_empty() {
        assert_eq!(check(json!({})), Ok(()));
        assert_eq!(check(json!({"client": "x"})), Ok(()));
        assert_eq!(check(json!({"labels": {}})), Ok(()));
        assert_eq!(
            check(json!({"labels": {"team": "blue", "A-z_0.9": ""}})),
            Ok(())
        );
    }

    #[test]
    fn the_limits_are_inclusive() {
        let sixteen: serde_json::Map<String, Value> =
            (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(check(json!({ "labels": sixteen })), Ok(()));
        let mut seventeen = sixteen.clone();
        seventeen.insert("k16".into(), json!("v"));
        assert_eq!(
            check(json!({ "labels": seventeen })),
            Err("labels has 17 members, at most 16 are allowed".into())
        );
        let key = "k".repeat(64);
        assert_eq!(check(json!({"labels": {key: "v"}})), Ok(()));
        let long_key = "k".repeat(65);
        let err = check(json!({"labels": {long_key.clone(): "v"}})).unwrap_err();
        assert!(
            err.starts_with(&format!("label {long_key:?}: a key is 1-64")),
            "{err}"
        );
        // Characters, not bytes: 128 two-byte characters are allowed.
        assert_eq!(check(json!({"labels": {"k": "é".repeat(128)}})), Ok(()));
        assert_eq!(
            check(json!({"labels": {"k": "v".repeat(129)}})),
            Err("label \"k\": the value is longer than 128 characters".into())
        );
    }

    #[test]
    fn bad_labels_are_named() {
        assert_eq!(
            check(json!({"labels": ["team"]})),
            Err("labels must be an object of strings".into())
        );
        assert_eq!(
            check(json!({"labels": {"team": 1}})),
            Err("label \"team\": the value must be a string".into())
        );
        assert_eq!(
            check(json!({"labels": {"team": null}})),
            Err("label \"team\": the value must be a string".into())
        );
        for bad in ["", "a b", "a=b", "é", "a/b", "a{b}", "a:b"] {
            let err = check(json!({"labels": {bad: "v"}})).unwrap_err();
            assert!(err.starts_with(&format!("label {bad:?}:")), "{err}");
        }
    }

    #[test]
    fn keys_take_the_documented_alphabet() {
        for ok in ["a", "Z", "0", "_", ".", "-", "team.name-2_x"] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", " ", "=", ":", "é", "a\n", "+"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
        assert!(valid_key(&"x".repeat(64)));
        assert!(!valid_key(&"x".repeat(65)));
    }

    #[test]
    fn labels_are_read_back_from_the_metadata() {
        let labels =
            of_metadata(r#"{"client":"web","labels":{"team":"blue","n":3,"tier":"gold"}}"#);
        assert_eq!(
            labels,
            BTreeMap::from([
                ("team".to_owned(), "blue".to_owned()),
                ("tier".to_owned(), "gold".to_owned())
            ])
        );
        for none in ["{}", "not json", "[1]", r#"{"labels":"x"}"#, ""] {
            assert!(of_metadata(none).is_empty(), "{none}");
        }
    }

    #[test]
    fn a_filter_needs_every_label() {
        let labels = of_metadata(r#"{"labels":{"team":"blue","tier":"gold"}}"#);
        let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(matches(&labels, &[]));
        assert!(matches(&labels, &want(&[("team", "blue")])));
        assert!(matches(
            &labels,
            &want(&[("team", "blue"), ("tier", "gold")])
        ));
        assert!(!matches(
            &labels,
            &want(&[("team", "blue"), ("tier", "silver")])
        ));
        assert!(!matches(&labels, &want(&[("team", "red")])));
        assert!(!matches(&labels, &want(&[("owner", "blue")])));
    }
}
