//! Events near the largest `CES_MAX_RECORD_BYTES` allows reach their client, live and on resume, or are
//! dead-lettered as `too_large`; none is retried or resent without end.

mod common;

use std::time::Duration;

use ces_protocol::record::MAX_RECORD_BYTES_CEILING;
use ces_systest::Metrics;
use ces_systest::client::{WsClient, register, resume_url, ws_url};
use ces_systest::kafka::{self, Record};
use common::{Stack, start_edge};
use serde_json::json;

/// A JSON event of exactly `bytes` bytes: `data` is `{"n": n, "pad": "xxx..."}`.
fn event_of_size(session: &str, n: u64, bytes: usize) -> Record {
    let bare = json!({"session_id": session, "type": "t", "data": {"n": n, "pad": ""}}).to_string();
    let pad = "x".repeat(bytes - bare.len());
    let value =
        json!({"session_id": session, "type": "t", "data": {"n": n, "pad": pad}}).to_string();
    assert_eq!(value.len(), bytes);
    let mut r = Record::keyed(session, value.into_bytes());
    r.partition = Some(0);
    r
}

/// `data.n` and the size of `data.pad` of each event.
fn numbered(events: &[serde_json::Value]) -> Vec<(u64, u64, usize)> {
    events
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["data"]["n"].as_u64().unwrap(),
                e["data"]["pad"].as_str().unwrap().len(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_up_to_the_largest_record_limit_are_delivered_live_and_on_resume()
-> anyhow::Result<()> {
    let stack = Stack::start(
        1,
        &[("CES_MAX_RECORD_BYTES", MAX_RECORD_BYTES_CEILING.to_string())],
    )
    .await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let session = reg.session_id.clone();
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;

    let records = [
        event_of_size(&session, 1, 300_000),
        event_of_size(&session, 2, MAX_RECORD_BYTES_CEILING),
        event_of_size(&session, 3, MAX_RECORD_BYTES_CEILING + 1),
        event_of_size(&session, 4, 300_000),
    ];
    let producer = kafka::large_producer(&stack.broker.bootstrap(), 4 << 20, "lz4")?;
    kafka::produce(&producer, &stack.topic, &records).await?;

    let pad = |n: usize| {
        let bare =
            json!({"session_id": session, "type": "t", "data": {"n": 1, "pad": ""}}).to_string();
        n - bare.len()
    };
    let expected = vec![
        (1, 1, pad(300_000)),
        (2, 2, pad(MAX_RECORD_BYTES_CEILING)),
        (3, 4, pad(300_000)),
    ];
    let live = ws.events(3, Duration::from_secs(30)).await?;
    assert_eq!(
        numbered(&live),
        expected,
        "live, in order, the too-large one left out"
    );
    let extra = ws.next_json(Duration::from_millis(500)).await?;
    assert!(extra.is_none(), "nothing sent twice: {extra:?}");

    // The same frames again on resume, from another edge.
    let epoch = {
        let mut again = WsClient::connect(&ws_url(&stack.edges[1].base, &reg.token)).await?;
        let welcome = again
            .next_json(Duration::from_secs(10))
            .await?
            .expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["seq"], 3);
        welcome["epoch"].as_str().unwrap().to_owned()
    };
    let mut resumed =
        WsClient::connect(&resume_url(&stack.edges[1].base, &reg.token, 0, &epoch)).await?;
    let replay = resumed.events(3, Duration::from_secs(30)).await?;
    assert_eq!(numbered(&replay), expected, "replayed whole");

    let dead = kafka::read_to_end(
        &stack.broker.bootstrap(),
        &stack.dlq,
        1,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        kafka::header(&dead[0], "ces-dlq-reason").as_deref(),
        Some("too_large")
    );
    assert_eq!(
        kafka::header(&dead[0], "ces-dlq-source-offset").as_deref(),
        Some("2")
    );

    let m = Metrics::scrape(&stack.ingest.as_ref().unwrap().internal).await?;
    assert_eq!(m.get("ces_ingest_published_total", &[]), 3.0);
    assert_eq!(
        m.get("ces_ingest_retries_total", &[]),
        0.0,
        "nothing retried"
    );
    for edge in &stack.edges {
        let m = Metrics::scrape(&edge.internal).await?;
        assert_eq!(m.get("ces_edge_slow_consumer_total", &[]), 0.0);
    }
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_300_kb_events_is_delivered_once_each_without_retries() -> anyhow::Result<()> {
    const BURST: u64 = 150;
    let mut stack = Stack::start(
        1,
        &[("CES_MAX_RECORD_BYTES", MAX_RECORD_BYTES_CEILING.to_string())],
    )
    .await?;
    // 45 MB in one burst can outrun a client that parses 300 KB frames on a loaded machine, and the default 4 MiB
    // queue would close it as a slow consumer (slow_consumer.rs tests that bound). This test is about ingest and
    // frames that fit: the edge gets room for the whole burst.
    for e in std::mem::take(&mut stack.edges) {
        e.stop().await?;
    }
    let roomy = start_edge(
        &stack.redis.url(),
        "edge-roomy",
        &[("CES_WS_QUEUE_BYTES", (64 << 20).to_string())],
    )
    .await?;
    let edge = &roomy.base;
    let reg = register(&stack.http, edge).await?;
    let session = reg.session_id.clone();
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;

    let records: Vec<Record> = (1..=BURST)
        .map(|n| event_of_size(&session, n, 300_000))
        .collect();
    let producer = kafka::large_producer(&stack.broker.bootstrap(), 4 << 20, "none")?;
    kafka::produce(&producer, &stack.topic, &records).await?;
    let got = ws.events(BURST as usize, Duration::from_secs(90)).await?;
    let ns: Vec<u64> = got
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(ns, (1..=BURST).collect::<Vec<_>>());
    assert_eq!(seqs, (1..=BURST).collect::<Vec<_>>());

    let m = Metrics::scrape(&stack.ingest.as_ref().unwrap().internal).await?;
    assert_eq!(m.get("ces_ingest_published_total", &[]), BURST as f64);
    assert_eq!(
        m.get("ces_ingest_retries_total", &[]),
        0.0,
        "nothing retried"
    );
    assert_eq!(m.get("ces_ingest_duplicates_total", &[]), 0.0);
    roomy.stop().await?;
    stack.stop().await
}
