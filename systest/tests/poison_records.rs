//! Records that cannot be dead-lettered whole never stall their partition: a record with ~900 KB of headers (and
//! a 200 KB key) on a broker with the default 1 MB message limit, and one whose key alone nearly fills that limit,
//! are dead-lettered without what does not fit, each omission named by a `ces-dlq-*-omitted` header; a DLQ topic
//! that refuses every dead letter however small gets each one skipped after `CES_MAX_ATTEMPTS` refusals. Either
//! way the valid records behind them on the same partition reach their client within seconds, and the Kafka
//! breaker never opens.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::{Metrics, unique};
use common::Stack;
use rdkafka::Message as _;
use serde_json::json;

/// Valid events produced behind the poison records.
const EVENTS: u64 = 20;
/// The broker's default `max.message.bytes`: 1 MiB plus the 12 bytes of a batch's log overhead.
const BROKER_LIMIT: usize = 1_048_588;

/// Bytes no compression shrinks (xorshift), so a record's size on the wire is its size.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn event(session: &str, n: u64) -> Record {
    let mut r = Record::keyed(
        session,
        serde_json::to_vec(&json!({"session_id": session, "type": "t", "data": {"n": n}})).unwrap(),
    );
    r.partition = Some(0);
    r
}

/// Waits until ingest has read `records` records, so whatever is produced next comes in a later batch.
async fn wait_consumed(ingest: &str, topic: &str, records: f64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = Metrics::scrape(ingest).await?;
        if m.get("ces_ingest_records_total", &[("topic", topic)]) >= records {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "ingest did not read {records} records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces the valid events behind the poison records and asserts their client gets every one, in order, within
/// seconds, and that the Kafka breaker never opened meanwhile.
async fn valid_records_behind_flow(
    stack: &Stack,
    session: &str,
    ws: &mut WsClient,
) -> anyhow::Result<()> {
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let events: Vec<Record> = (1..=EVENTS).map(|n| event(session, n)).collect();
    kafka::produce(&producer, &stack.topic, &events).await?;
    let got = ws.events(EVENTS as usize, Duration::from_secs(10)).await?;
    common::assert_numbered(session, &got, EVENTS);
    let ingest = &stack.ingest.as_ref().unwrap().internal;
    let m = Metrics::scrape(ingest).await?;
    assert_eq!(
        m.get(
            "ces_ingest_breaker_transitions_total",
            &[("target", "kafka"), ("to", "open")]
        ),
        0.0,
        "the partition never stalled on its dead letters"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_too_large_to_dead_letter_whole_go_without_parts_and_the_partition_flows_on()
-> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let session = reg.session_id;
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
    let bootstrap = stack.broker.bootstrap();

    // ~900 KB of headers and a 200 KB key: compressed, a small record; whole, more than the DLQ topic takes
    // even without its value. Over CES_MAX_HEADER_BYTES, it is dead-lettered without its headers.
    let mut headers_heavy = Record::keyed(&"k".repeat(200_000), b"{not json".to_vec());
    headers_heavy.partition = Some(0);
    for i in 0..9 {
        headers_heavy
            .headers
            .push((format!("pad-{i}"), vec![b'h'; 102_400]));
    }
    let header_bytes: usize = headers_heavy
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert_eq!(header_bytes, 921_645);
    // A key that fills the broker's limit to within ~100 bytes: the record fits, its dead letter (the same plus
    // ~250 bytes of ces-dlq-* headers) does not, until its key is dropped too.
    let key_len = BROKER_LIMIT - 61 - 12 - 115;
    let key_heavy = Record {
        key: Some(noise(key_len, 0x9e37_79b9_7f4a_7c15)),
        value: Some(b"x".to_vec()),
        partition: Some(0),
        headers: Vec::new(),
    };
    kafka::produce(
        &kafka::large_producer(&bootstrap, 4 << 20, "lz4")?,
        &stack.topic,
        std::slice::from_ref(&headers_heavy),
    )
    .await?;
    kafka::produce(
        &kafka::large_producer(&bootstrap, 4 << 20, "none")?,
        &stack.topic,
        std::slice::from_ref(&key_heavy),
    )
    .await?;
    let ingest = stack.ingest.as_ref().unwrap().internal.clone();
    wait_consumed(&ingest, &stack.topic, 2.0).await?;

    valid_records_behind_flow(&stack, &session, &mut ws).await?;

    let dead = kafka::read_to_end(&bootstrap, &stack.dlq, 2, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 2, "each poison record dead-lettered once");
    let (first, second) = (&dead[0], &dead[1]);
    assert_eq!(
        kafka::header(first, "ces-dlq-reason").as_deref(),
        Some("invalid_headers")
    );
    assert_eq!(
        kafka::header(first, "ces-dlq-headers-omitted").as_deref(),
        Some("921645")
    );
    assert_eq!(first.key(), headers_heavy.key.as_deref(), "the key is kept");
    assert_eq!(
        kafka::value(first),
        headers_heavy.value.as_deref(),
        "the value is kept"
    );
    assert_eq!(kafka::header(first, "pad-0"), None);
    assert_eq!(
        kafka::header(first, "ces-dlq-source-offset").as_deref(),
        Some("0")
    );

    assert_eq!(
        kafka::header(second, "ces-dlq-reason").as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        kafka::header(second, "ces-dlq-value-omitted").as_deref(),
        Some("1")
    );
    assert_eq!(
        kafka::header(second, "ces-dlq-key-omitted"),
        Some(key_len.to_string())
    );
    assert_eq!(
        kafka::header(second, "ces-dlq-headers-omitted"),
        None,
        "it had none"
    );
    assert_eq!((second.key(), kafka::value(second)), (None, None));
    assert_eq!(
        kafka::header(second, "ces-dlq-source-offset").as_deref(),
        Some("1")
    );

    let m = Metrics::scrape(&ingest).await?;
    assert_eq!(m.get("ces_ingest_dead_lettered_total", &[]), 2.0);
    assert_eq!(m.get("ces_ingest_dead_letters_skipped_total", &[]), 0.0);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_kafka_keeps_refusing_are_skipped_and_the_partition_flows_on()
-> anyhow::Result<()> {
    let stack = Stack::start(1, &[("CES_MAX_ATTEMPTS", "2".into())]).await?;
    // Not even the ces-dlq-* headers fit: every dead letter is refused, whatever it goes without.
    kafka::set_topic_config(
        &stack.broker.bootstrap(),
        &stack.dlq,
        &[("max.message.bytes", "64")],
    )
    .await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let session = reg.session_id;
    let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;

    let poison: Vec<Record> = (0..3)
        .map(|i| {
            let mut r = Record::keyed(&unique("poison"), format!("{{nope {i}").into_bytes());
            r.partition = Some(0);
            r
        })
        .collect();
    kafka::produce(
        &kafka::producer(&stack.broker.bootstrap())?,
        &stack.topic,
        &poison,
    )
    .await?;
    let ingest = stack.ingest.as_ref().unwrap().internal.clone();
    wait_consumed(&ingest, &stack.topic, 3.0).await?;

    valid_records_behind_flow(&stack, &session, &mut ws).await?;

    let m = Metrics::scrape(&ingest).await?;
    assert_eq!(
        m.get(
            "ces_ingest_dead_letters_skipped_total",
            &[("reason", "invalid_json")]
        ),
        3.0
    );
    assert_eq!(m.get("ces_ingest_dead_lettered_total", &[]), 0.0);
    let dead = kafka::read_to_end(
        &stack.broker.bootstrap(),
        &stack.dlq,
        0,
        Duration::from_secs(5),
    )
    .await?;
    assert!(dead.is_empty(), "the DLQ topic took nothing");
    stack.stop().await
}
