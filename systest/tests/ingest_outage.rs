//! Ingest through a Redis outage: a stream keeps coming while Redis is down for 10 s. Nothing is dead-lettered
//! because of it, the breaker opens and closes, partitions are paused (ingest holds at most two batches in
//! memory), and every event arrives exactly once, in order, once Redis is back.

mod common;

use std::time::Duration;

use ces_systest::kafka;
use ces_systest::{Broker, Metrics, Redis, unique};
use common::start_edge;
use fred::interfaces::{ClientLike as _, HashesInterface as _, StreamsInterface as _};

const SESSIONS: usize = 20;
const ROUNDS: u64 = 80;
const ROUND_EVERY: Duration = Duration::from_millis(200);
const BATCH_MAX: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_pauses_ingest_and_loses_nothing() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (mut redis, broker) = tokio::try_join!(Redis::start_persistent(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 4), (&dlq, 1)]).await?;
    let ingest = common::ingest_process(
        &redis.url(),
        &broker.bootstrap(),
        &topic,
        &dlq,
        &[
            ("CES_BATCH_MAX", BATCH_MAX.to_string()),
            ("CES_BREAKER_FAILURES", "3".into()),
            ("CES_BREAKER_OPEN_MS", "500".into()),
            ("CES_BREAKER_OPEN_MAX_MS", "2000".into()),
            // Redis writes every command to its append-only file before answering: a restart keeps every
            // session's epoch (tests/redis_restore.rs covers a restart that does not).
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
    let mut clients =
        common::connect_sessions(&reqwest::Client::new(), &edge.base, SESSIONS).await?;
    let sessions: Vec<String> = clients.iter().map(|(s, _)| s.clone()).collect();

    // A paced stream: 16 s in all, Redis down from 2 s to 12 s.
    let producer = kafka::producer(&broker.bootstrap())?;
    let stream = common::paced_stream(producer, topic.clone(), sessions, ROUNDS, ROUND_EVERY);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = ingest.rss_bytes()?;
    redis.stop().await?;
    let outage = tokio::time::Instant::now();
    let (mut peak_pending, mut peak_paused, mut peak_open, mut peak_rss) = (0f64, 0f64, 0f64, 0u64);
    let mut down = true;
    while !stream.is_finished() {
        if down && outage.elapsed() >= Duration::from_secs(10) {
            redis.start_again().await?;
            down = false;
        }
        let m = Metrics::scrape(&ingest.internal).await?;
        peak_pending = peak_pending.max(m.get("ces_ingest_pending_records", &[]));
        peak_paused = peak_paused.max(m.get("ces_ingest_paused_partitions", &[]));
        peak_open = peak_open.max(m.get("ces_ingest_breaker_open", &[("target", "redis")]));
        peak_rss = peak_rss.max(ingest.rss_bytes()?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!down, "the stream outlasts the outage");
    eprintln!(
        "outage: peak pending {peak_pending}, peak paused {peak_paused}, rss before {rss_before} B, peak {peak_rss} B"
    );
    stream.await??;

    let check = ces_runtime::redis::builder(&redis.url())?.build()?;
    check.init().await?;
    for (session, ws) in &mut clients {
        let events = ws.events(ROUNDS as usize, Duration::from_secs(60)).await?;
        if events.len() < ROUNDS as usize {
            // Say where the missing events are: never published, or published and not delivered.
            let keys = ces_protocol::keys::SessionKeys::of(session);
            let seq: Option<u64> = check.hget(&keys.meta, "seq").await?;
            let buffered: u64 = check.xlen(&keys.buffer).await?;
            let m = Metrics::scrape(&ingest.internal).await?;
            let page = reqwest::get(format!("{}/metrics", ingest.internal))
                .await?
                .text()
                .await?;
            for line in page
                .lines()
                .filter(|l| l.starts_with("ces_ingest") && !l.contains("_bucket"))
            {
                eprintln!("  {line}");
            }
            eprintln!(
                "session {session}: {} events received; redis seq {seq:?}, {buffered} buffered; ingest read {} records, published {}",
                events.len(),
                m.get("ces_ingest_records_total", &[]),
                m.get("ces_ingest_published_total", &[])
            );
        }
        common::assert_numbered(session, &events, ROUNDS);
        let extra = ws.next_json(Duration::from_millis(50)).await?;
        assert!(extra.is_none(), "nothing more for {session}: {extra:?}");
    }

    let m = Metrics::scrape(&ingest.internal).await?;
    assert_eq!(m.get("ces_ingest_dead_lettered_total", &[]), 0.0);
    let dead = kafka::read_to_end(&broker.bootstrap(), &dlq, 0, Duration::from_secs(5)).await?;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    assert_eq!(peak_open, 1.0, "the redis breaker opened");
    assert!(
        m.get(
            "ces_ingest_breaker_transitions_total",
            &[("target", "redis"), ("to", "open")]
        ) >= 1.0
    );
    assert!(
        m.get(
            "ces_ingest_breaker_transitions_total",
            &[("target", "redis"), ("to", "closed")]
        ) >= 1.0
    );
    assert_eq!(
        m.get("ces_ingest_breaker_open", &[("target", "redis")]),
        0.0
    );
    assert_eq!(peak_paused, 4.0, "all four partitions paused");
    assert_eq!(m.get("ces_ingest_paused_partitions", &[]), 0.0, "resumed");
    // 20 sessions x 50 rounds were produced during the outage; ingest held at most the batch in flight and one
    // batch read ahead (plus what librdkafka had already fetched when the pause began).
    assert!(
        peak_pending <= (3 * BATCH_MAX) as f64,
        "peak pending {peak_pending}"
    );
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(
        growth < 32 << 20,
        "rss grew by {growth} bytes during the outage"
    );
    edge.stop().await?;
    ingest.stop(Duration::from_secs(10)).await?;
    Ok(())
}
