//! One event, one trace: a record produced with a W3C `traceparent` header yields ingest's span and the edge's
//! delivery span in that trace (parent to child), the client's frame carries the trace id, and a dead letter keeps
//! the header.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use common::{Stack, event_json};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rdkafka::message::Headers as _;
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> Vec<u8> {
    format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01").into_bytes()
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> Option<&'a SpanData> {
    spans.iter().find(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_record_yields_ingest_and_edge_spans_in_its_trace_and_the_frame_carries_it()
-> anyhow::Result<()> {
    // Every span of this test process goes to memory, exported as each span ends.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    ces_runtime::otel::install(provider.clone());

    let stack = Stack::start(2, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
    ws.next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");

    let mut traced = Record::keyed(
        &reg.session_id,
        event_json(&reg.session_id, "order.updated", json!({"n": 1})),
    );
    traced.headers.push(("traceparent".into(), traceparent()));
    let mut rejected = Record::keyed(&reg.session_id, b"{not json".to_vec());
    rejected.headers.push(("traceparent".into(), traceparent()));
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    kafka::produce(&producer, &stack.topic, &[traced, rejected]).await?;

    let events = ws.events(1, Duration::from_secs(30)).await?;
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(
        events[0]["trace_id"], TRACE_ID,
        "the frame carries the trace id"
    );

    // The edge ends its span once the frame is flushed, just before the client can read it.
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = exporter.get_finished_spans()?;
        if span(&spans, "ces.ingest").is_some() && span(&spans, "ces.deliver").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ingest = span(&spans, "ces.ingest").expect("ingest span");
    let deliver = span(&spans, "ces.deliver").expect("delivery span");
    let trace_id = TraceId::from_hex(TRACE_ID)?;
    assert_eq!(ingest.span_context.trace_id(), trace_id);
    assert_eq!(ingest.parent_span_id, SpanId::from_hex(PRODUCER_SPAN)?);
    assert_eq!(ingest.span_kind, SpanKind::Consumer);
    assert_eq!(deliver.span_context.trace_id(), trace_id);
    assert_eq!(
        deliver.parent_span_id,
        ingest.span_context.span_id(),
        "delivery is a child of ingest"
    );
    let attribute = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(ingest, "ces.session_id").as_deref(),
        Some(reg.session_id.as_str())
    );
    assert_eq!(attribute(deliver, "ces.seq").as_deref(), Some("1"));

    // The dead letter keeps the record's traceparent, so a replay joins the trace again.
    let dead = kafka::read_to_end(
        &stack.broker.bootstrap(),
        &stack.dlq,
        1,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(dead.len(), 1);
    let headers = rdkafka::Message::headers(&dead[0]).expect("headers");
    let kept = headers
        .iter()
        .find(|h| h.key == "traceparent")
        .and_then(|h| h.value)
        .map(<[u8]>::to_vec);
    assert_eq!(kept, Some(traceparent()));
    drop(provider);
    stack.stop().await
}
