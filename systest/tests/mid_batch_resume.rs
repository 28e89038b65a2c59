//! Ingest pauses its partitions in the middle of record batches and resumes there: every client still gets
//! exactly seq 1..n.
//!
//! Each produce call writes 1,000 records to a partition as one record batch (the test reads the broker's log
//! segments to make sure), and ingest reads at most 2 x `CES_BATCH_MAX` = 200 records before a Redis outage
//! makes it pause every partition. Its position is then inside a batch. On resume the broker answers a fetch from
//! that position with the whole batch and the client skips the records before it; a broker or client that
//! skipped the rest of the batch instead would lose 800 records a partition per outage, which this test counts.

mod common;

use std::time::Duration;

use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Metrics, Redis, unique};
use common::{event_json, start_edge};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde_json::json;

const PARTITIONS: i32 = 2;
/// Sessions per partition: each produce call is this many sessions x `PER_SESSION` events = 1,000 records.
const SESSIONS_PER_PARTITION: usize = 10;
const PER_SESSION: u64 = 100;
const RECORDS_PER_BATCH: u32 = 1_000;
/// Outages, each with one batch a partition produced while Redis is down.
const OUTAGES: u64 = 3;
const BATCH_MAX: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_inside_record_batches_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    ces_systest::init_logs();
    // The broker's log segments are read below, so this test takes a broker of its own.
    let (mut redis, broker) = tokio::try_join!(Redis::start_persistent(), Broker::own())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, PARTITIONS), (&dlq, 1)]).await?;
    let ingest = common::ingest_process(
        &redis.url(),
        &broker.bootstrap(),
        &topic,
        &dlq,
        &[
            ("CES_BATCH_MAX", BATCH_MAX.to_string()),
            ("CES_BREAKER_FAILURES", "2".into()),
            ("CES_BREAKER_OPEN_MS", "300".into()),
            ("CES_BREAKER_OPEN_MAX_MS", "1000".into()),
            // Redis writes every command to its append-only file before answering: a restart keeps every
            // session's epoch.
            ("CES_REDIS_DURABLE_RESTARTS", "true".into()),
        ],
    )
    .await?;
    let edge = start_edge(
        &redis.url(),
        "edge-a",
        &[("CES_REDIS_DURABLE_RESTARTS", "true".into())],
    )
    .await?;
    // Session i is produced to partition i % PARTITIONS.
    let mut clients = common::connect_sessions(
        &reqwest::Client::new(),
        &edge.base,
        SESSIONS_PER_PARTITION * PARTITIONS as usize,
    )
    .await?;
    let sessions: Vec<String> = clients.iter().map(|(s, _)| s.clone()).collect();
    // Everything one produce call sends to a partition goes out as one batch: the linger outlasts the call.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "500")
        .set("batch.num.messages", RECORDS_PER_BATCH.to_string())
        .set("batch.size", "10000000")
        .create()?;

    for outage in 0..OUTAGES {
        redis.stop().await?;
        let records: Vec<Record> = (1..=PER_SESSION)
            .map(|k| outage * PER_SESSION + k)
            .flat_map(|n| {
                sessions.iter().enumerate().map(move |(i, s)| Record {
                    partition: Some(i as i32 % PARTITIONS),
                    ..Record::keyed(s, event_json(s, "t", json!({ "n": n })))
                })
            })
            .collect();
        kafka::produce(&producer, &topic, &records).await?;
        // Ingest has read the start of the new batches, failed to publish it, and paused both partitions.
        wait_until(
            &ingest.internal,
            &["ces_ingest_paused_partitions"],
            PARTITIONS as f64,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.start_again().await?;
        // Every record of the round settled: published, or found already published (a reply lost to the kill).
        let expected = ((outage + 1) * PER_SESSION) as f64 * sessions.len() as f64;
        wait_until(
            &ingest.internal,
            &["ces_ingest_published_total", "ces_ingest_duplicates_total"],
            expected,
        )
        .await?;
    }

    for p in 0..PARTITIONS {
        let batches = broker.record_batches(&topic, p)?;
        let counts: Vec<u32> = batches.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            counts,
            vec![RECORDS_PER_BATCH; OUTAGES as usize],
            "partition {p} holds one batch of {RECORDS_PER_BATCH} records per outage: {batches:?}"
        );
    }
    for (session, ws) in &mut clients {
        let events = ws
            .events((OUTAGES * PER_SESSION) as usize, Duration::from_secs(30))
            .await?;
        common::assert_numbered(session, &events, OUTAGES * PER_SESSION);
        let extra = ws.next_json(Duration::from_millis(50)).await?;
        assert!(extra.is_none(), "nothing more for {session}: {extra:?}");
    }
    let m = Metrics::scrape(&ingest.internal).await?;
    assert_eq!(m.get("ces_ingest_dead_lettered_total", &[]), 0.0);
    assert!(
        m.get(
            "ces_ingest_breaker_transitions_total",
            &[("target", "redis"), ("to", "open")]
        ) >= OUTAGES as f64,
        "the breaker opened in every outage"
    );
    edge.stop().await?;
    ingest.stop(Duration::from_secs(10)).await?;
    Ok(())
}

/// Scrapes `base` until the sum of metrics `names` (over all their series) reaches `at_least`, for up to 30 s.
async fn wait_until(base: &str, names: &[&str], at_least: f64) -> anyhow::Result<()> {
    let mut last = 0.0;
    for _ in 0..300 {
        let m = Metrics::scrape(base).await?;
        last = names.iter().map(|n| m.get(n, &[])).sum();
        if last >= at_least {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let ingest: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("ces_ingest") && !l.contains("_bucket"))
        .collect();
    anyhow::bail!(
        "{names:?} reached only {last} of {at_least} in 30 s; ingest's metrics:\n{}",
        ingest.join("\n")
    )
}
