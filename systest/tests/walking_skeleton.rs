//! End-to-end: Kafka → ingest → Redis → two edges → WebSocket clients, on a real broker and a real Redis.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use common::{Stack, event_json};
use serde_json::json;

const SESSIONS: usize = 100;
const EVENTS_PER_SESSION: u64 = 10;

/// Every client gets exactly its own events, seq 1..=10 in production order, and nothing else — with half the
/// clients on each edge and sessions spread over four partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_receives_exactly_its_own_events_in_order() -> anyhow::Result<()> {
    let stack = Stack::start(4, &[]).await?;

    let mut clients = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let edge = &stack.edges[i % 2].base;
        let reg = register(&stack.http, edge).await?;
        let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
        let welcome = ws
            .next_json(Duration::from_secs(5))
            .await?
            .expect("welcome frame");
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["session_id"], reg.session_id.as_str());
        assert_eq!(
            welcome["node"],
            if i % 2 == 0 { "edge-a" } else { "edge-b" }
        );
        clients.push((reg.session_id, ws));
    }

    // Interleave sessions so every batch mixes sessions and partitions.
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let mut records = Vec::new();
    for n in 1..=EVENTS_PER_SESSION {
        for (session, _) in &clients {
            records.push(Record::keyed(
                session,
                event_json(session, "order.updated", json!({ "n": n, "s": session })),
            ));
        }
    }
    kafka::produce(&producer, &stack.topic, &records).await?;

    for (session, ws) in &mut clients {
        let events = ws
            .events(EVENTS_PER_SESSION as usize, Duration::from_secs(30))
            .await?;
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=EVENTS_PER_SESSION).collect::<Vec<_>>(),
            "session {session}"
        );
        let ns: Vec<u64> = events
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ns,
            (1..=EVENTS_PER_SESSION).collect::<Vec<_>>(),
            "session {session} order"
        );
        for e in &events {
            assert_eq!(
                e["data"]["s"],
                session.as_str(),
                "foreign event delivered to {session}"
            );
            assert_eq!(e["event"], "order.updated");
            assert!(e["id"].as_str().unwrap().starts_with("ev_"));
        }
    }
    // Nothing else arrives afterwards.
    for (session, ws) in &mut clients {
        let extra = ws.next_json(Duration::from_millis(20)).await?;
        assert!(
            extra.is_none(),
            "session {session} got an extra frame: {extra:?}"
        );
    }
    stack.stop().await
}

/// Bad records go to the DLQ with the right reason and their source coordinates; valid records after them are
/// still delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_and_good_ones_still_flow() -> anyhow::Result<()> {
    let stack = Stack::start(1, &[("CES_MAX_RECORD_BYTES", "1024".to_owned())]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
    ws.next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");
    let s = reg.session_id.as_str();

    let too_large = event_json(s, "t", json!({ "pad": "x".repeat(2000) }));
    let cases: Vec<(Record, Option<&str>)> = vec![
        (
            Record::keyed(s, event_json(s, "t", json!({ "n": 1 }))),
            None,
        ),
        (
            Record {
                headers: vec![("origin".into(), b"test".to_vec())],
                ..Record::keyed(s, "{not json")
            },
            Some("invalid_json"),
        ),
        (
            Record::keyed(s, event_json(s, "t", json!({ "n": 2 }))),
            None,
        ),
        (
            Record::keyed(s, serde_json::to_vec(&json!({ "type": "t", "data": 1 }))?),
            Some("missing_session_id"),
        ),
        (Record::keyed(s, too_large), Some("too_large")),
        (
            Record::keyed(s, event_json(s, "t", json!({ "n": 3 }))),
            None,
        ),
    ];
    // One at a time, so each record's offset is its index (single partition, fresh topic).
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    for (record, _) in &cases {
        kafka::produce(&producer, &stack.topic, std::slice::from_ref(record)).await?;
    }

    let events = ws.events(3, Duration::from_secs(30)).await?;
    let delivered: Vec<(u64, u64)> = events
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"]["n"].as_u64().unwrap()))
        .collect();
    assert_eq!(delivered, [(1, 1), (2, 2), (3, 3)]);

    let dead = kafka::read_to_end(
        &stack.broker.bootstrap(),
        &stack.dlq,
        3,
        Duration::from_secs(30),
    )
    .await?;
    let expected: Vec<(usize, &str)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, reason))| reason.map(|r| (i, r)))
        .collect();
    assert_eq!(
        dead.len(),
        expected.len(),
        "exactly one dead letter per bad record"
    );
    for (m, (offset, reason)) in dead.iter().zip(&expected) {
        let h = |name| kafka::header(m, name).unwrap_or_else(|| panic!("header {name} missing"));
        assert_eq!(h("ces-dlq-reason"), *reason);
        assert_eq!(h("ces-dlq-source-topic"), stack.topic);
        assert_eq!(h("ces-dlq-source-partition"), "0");
        assert_eq!(h("ces-dlq-source-offset"), offset.to_string());
        assert!(!h("ces-dlq-detail").is_empty());
        assert!(h("ces-dlq-failed-at").ends_with('Z'), "RFC 3339 UTC");
        let original = &cases[*offset].0;
        assert_eq!(
            kafka::value(m),
            original.value.as_deref(),
            "value must be untouched"
        );
        assert_eq!(
            rdkafka::Message::key(m),
            original.key.as_deref(),
            "key must be untouched"
        );
        for (k, v) in &original.headers {
            assert_eq!(
                kafka::header(m, k).as_deref().map(str::as_bytes),
                Some(v.as_slice()),
                "header {k} kept"
            );
        }
    }
    stack.stop().await
}
