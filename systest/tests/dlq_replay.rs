//! The DLQ runbook end to end: events rejected by a too-strict schema, the schema fixed and reloaded with SIGHUP,
//! `cesctl dlq replay --reason schema_violation` delivers them exactly once and in order; a second replay delivers
//! nothing new (event ids dedup); a record that fails again comes back with its replay count raised and is then
//! refused at the maximum.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Metrics, Redis, unique};
use common::{cesctl_json as cesctl, event_json, start_edge};
use serde_json::json;

const STRICT: &str = r#"{"type":"object","required":["n","currency"]}"#;
const FIXED: &str = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#;

/// Polls ingest's metrics until `name{labels}` reaches `value`.
async fn wait_metric(
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
) -> anyhow::Result<()> {
    for _ in 0..200 {
        if Metrics::scrape(base).await?.get(name, labels) >= value {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{name} did not reach {value}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_schema_then_replay_delivers_once_and_loops_are_refused() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let bootstrap = broker.bootstrap();
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&bootstrap, &[(&topic, 2), (&dlq, 1)]).await?;
    let schemas = tempfile::tempdir()?;
    let schema_file = schemas.path().join("order.json");
    std::fs::write(&schema_file, STRICT)?;
    let ingest = common::ingest_process(
        &redis.url(),
        &bootstrap,
        &topic,
        &dlq,
        &[("CES_SCHEMA_DIR", schemas.path().display().to_string())],
    )
    .await?;
    let edge = start_edge(&redis.url(), "edge-a", &[]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let session = reg.session_id.clone();
    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );

    // Five events the strict schema rejects, and one record that will stay broken.
    let producer = kafka::producer(&bootstrap)?;
    let mut records: Vec<Record> = (1..=5)
        .map(|n| Record::keyed(&session, event_json(&session, "order", json!({ "n": n }))))
        .collect();
    records.push(Record::keyed(&session, "{broken"));
    kafka::produce(&producer, &topic, &records).await?;
    let dead = kafka::read_to_end(&bootstrap, &dlq, 6, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 6);
    assert!(
        ws.next_json(Duration::from_millis(300)).await?.is_none(),
        "nothing delivered yet"
    );
    let detail = kafka::header(&dead[0], "ces-dlq-detail").unwrap();
    assert!(detail.starts_with("/data: "), "{detail}");

    // Fix the schema and reload it the way an operator would.
    std::fs::write(&schema_file, FIXED)?;
    ingest.signal("HUP").await?;
    wait_metric(
        &ingest.internal,
        "ces_ingest_schema_reloads_total",
        &[("result", "ok")],
        1.0,
    )
    .await?;

    // Replays go to allowed topics only: this test's input topic (ingest's CES_KAFKA_TOPICS in a deployment).
    let replay = [
        "dlq",
        "replay",
        "--brokers",
        &bootstrap,
        "--topic",
        &dlq,
        "--allowed-topics",
        &topic,
    ];
    let first =
        cesctl(&[&replay[..], &["--reason", "schema_violation", "--json"]].concat()).await?;
    assert_eq!(
        (first["replayed"].as_u64(), first["refused"].as_u64()),
        (Some(5), Some(0))
    );
    let events = ws.events(5, Duration::from_secs(30)).await?;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, ns), (vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 5]));

    // Replaying again is harmless: the same event ids are dropped as duplicates.
    let second =
        cesctl(&[&replay[..], &["--reason", "schema_violation", "--json"]].concat()).await?;
    assert_eq!(second["replayed"].as_u64(), Some(5));
    wait_metric(&ingest.internal, "ces_ingest_duplicates_total", &[], 5.0).await?;
    assert!(
        ws.next_json(Duration::from_millis(500)).await?.is_none(),
        "nothing new delivered"
    );

    // The broken record fails again and comes back with its replay count raised ...
    let once = cesctl(&[&replay[..], &["--reason", "invalid_json", "--json"]].concat()).await?;
    assert_eq!(once["replayed"].as_u64(), Some(1));
    let dead = kafka::read_to_end(&bootstrap, &dlq, 7, Duration::from_secs(30)).await?;
    let back = dead.last().unwrap();
    assert_eq!(
        kafka::header(back, "ces-dlq-reason").as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        kafka::header(back, "ces-replay-count").as_deref(),
        Some("1")
    );
    // ... and the copy that has used up its replays is refused, while the original may still go once.
    let capped = cesctl(
        &[
            &replay[..],
            &["--reason", "invalid_json", "--max-replays", "1", "--json"],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(
        (capped["replayed"].as_u64(), capped["refused"].as_u64()),
        (Some(1), Some(1))
    );

    let m = Metrics::scrape(&ingest.internal).await?;
    assert_eq!(m.get("ces_ingest_published_total", &[]), 5.0);
    edge.stop().await?;
    ingest.stop(Duration::from_secs(10)).await?;
    Ok(())
}
