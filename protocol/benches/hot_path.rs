//! Micro-benchmarks of the pure functions every event passes through: validation, event id, envelope encode and
//! decode, frame build. `cargo bench -p ces-protocol` (results in target/criterion/).

use std::hint::black_box;

use bytes::Bytes;
use ces_protocol::envelope::{self, Envelope};
use ces_protocol::record::validate_record;
use ces_protocol::schema::{Schemas, UnknownTypes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A record as `ces-loadtest` produces it: the same shape and size as the measured end-to-end runs.
const RECORD: &str = r#"{"session_id":"0190f3c27b1e7c1d9a513f1f8a9b6c2d","type":"load.tick","data":{"n":42,"t":1763900000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

fn envelope() -> Envelope {
    Envelope {
        event_id: "ev_0123456789abcdef0123456789abcdef".into(),
        session_id: "0190f3c27b1e7c1d9a513f1f8a9b6c2d".into(),
        event_type: "load.tick".into(),
        data: Bytes::from_static(
            br#"{"n":42,"t":1763900000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ),
        produced_at_ms: 1_763_900_000_000,
        ingested_at_ms: 1_763_900_000_001,
        source_topic: "ces.events".into(),
        source_partition: 3,
        source_offset: 123_456,
        ..Default::default()
    }
}

fn hot_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(1));

    let schemas = Schemas::new(UnknownTypes::Allow);
    g.bench_function("validate_record", |b| {
        b.iter(|| validate_record(Some(black_box(RECORD.as_bytes())), None, 262_144, &schemas))
    });

    let mut with_schema = Schemas::new(UnknownTypes::Allow);
    with_schema
        .insert(
            "load.tick",
            &serde_json::json!({
                "type": "object",
                "required": ["n", "t"],
                "properties": {"n": {"type": "integer"}, "t": {"type": "integer"}, "p": {"type": "string"}}
            }),
        )
        .expect("valid schema");
    g.bench_function("validate_record_with_schema", |b| {
        b.iter(|| {
            validate_record(
                Some(black_box(RECORD.as_bytes())),
                None,
                262_144,
                &with_schema,
            )
        })
    });

    let event =
        validate_record(Some(RECORD.as_bytes()), None, 262_144, &schemas).expect("valid record");
    g.bench_function("event_id", |b| {
        b.iter(|| {
            ces_protocol::event_id::derive(
                None,
                black_box(&event.session_id),
                black_box(&event.event_type),
                black_box(&event.data),
            )
        })
    });

    let env = envelope();
    g.bench_function("envelope_encode", |b| {
        b.iter(|| envelope::encode(black_box(&env)))
    });

    // As Redis hands it to the edge: encoded without seq, then the trailer the publish function appends.
    let mut published = envelope::encode(&env);
    envelope::append_trailer(&mut published, 17, "e1");
    let published = Bytes::from(published);
    g.bench_function("envelope_decode", |b| {
        b.iter(|| envelope::decode_bytes(black_box(published.clone())))
    });

    let decoded = envelope::decode_bytes(published.clone()).expect("valid envelope");
    g.bench_function("event_frame", |b| {
        b.iter(|| ces_protocol::frame::event_frame(black_box(&decoded)))
    });

    // The edge's whole per-event work before the socket: decode the envelope and build the frame.
    g.bench_function("decode_and_frame", |b| {
        b.iter(|| {
            let env = envelope::decode_bytes(black_box(published.clone())).expect("valid envelope");
            ces_protocol::frame::event_frame(&env)
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
