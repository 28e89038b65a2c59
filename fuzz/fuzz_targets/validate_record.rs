//! Fuzzes the whole record validator: content type, size, JSON or protobuf structure, and a JSON Schema.
//!
//! The first input byte picks the `content-type` header (none, JSON, protobuf, or something unsupported); the rest
//! is the record value. Whatever the bytes, validation must answer without panicking, an accepted event must
//! satisfy every rule the validator promises (its `data` is JSON a consumer can parse into values, and has a
//! canonical form for its event id), and a rejection must explain itself.

#![no_main]

use std::sync::OnceLock;

use ces_protocol::event_id::{canonical_json, derive};
use ces_protocol::keys::validate_session_id;
use ces_protocol::record::{validate_record, validate_type};
use ces_protocol::schema::{Schemas, UnknownTypes};
use libfuzzer_sys::fuzz_target;

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut s = Schemas::new(UnknownTypes::Allow);
        s.insert(
            "t",
            &serde_json::json!({
                "type": "object",
                "required": ["n"],
                "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}
            }),
        )
        .expect("schema compiles");
        s
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, value)) = input.split_first() else {
        return;
    };
    let content_type: Option<&[u8]> = match selector % 4 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/x-protobuf"),
        _ => Some(b"text/plain"),
    };
    match validate_record(Some(value), content_type, 4096, schemas()) {
        Ok(event) => {
            assert!(selector % 4 != 3, "an unsupported content type was accepted");
            assert!(validate_session_id(&event.session_id).is_ok());
            assert!(validate_type(&event.event_type).is_ok());
            assert!(serde_json::from_str::<serde_json::Value>(&event.data).is_ok());
            assert!(canonical_json(&event.data).is_some(), "accepted data has no canonical form");
            let id = derive(event.id.as_deref(), &event.session_id, &event.event_type, &event.data);
            assert!(!id.is_empty());
        }
        Err(rejection) => assert!(!rejection.detail.is_empty()),
    }
});
