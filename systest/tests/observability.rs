//! The metrics of ingest and of each edge, scraped from their own processes after a scripted stream, move by exactly
//! what happened: records read, events published, dead-lettered and duplicated, frames delivered, and one
//! observation per live event on every latency hop.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Metrics, Process, Redis, unique, workspace_binary};
use serde_json::json;

const SESSIONS_PER_EDGE: usize = 5;
const EVENTS_PER_SESSION: u64 = 6;
const DUPLICATES: u64 = 5;
const INVALID_JSON: u64 = 4;
const MISSING_SESSION: u64 = 3;
const PARTITIONS: i32 = 4;

async fn edge_process(redis_url: &str, node: &str) -> anyhow::Result<Process> {
    Process::start_edge(
        &workspace_binary("ces-edge", "CES_EDGE_BIN")?,
        &[
            ("CES_TOKEN_SECRET", common::SECRET.to_owned()),
            ("CES_REGISTER_OPEN", "true".to_owned()),
            ("CES_REDIS_URL", redis_url.to_owned()),
            ("CES_NODE_ID", node.to_owned()),
            ("CES_DRAIN_DELAY_MS", "0".to_owned()),
            ("CES_DRAIN_WINDOW_MS", "0".to_owned()),
        ],
    )
    .await
}

fn event(session: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("{session}-{n}"),
        "session_id": session,
        "type": "order.updated",
        "data": { "n": n },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_every_process_move_by_exactly_what_happened() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = unique("ces.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, PARTITIONS), (&dlq, 1)]).await?;
    let ingest = common::ingest_process(
        &redis.url(),
        &broker.bootstrap(),
        &topic,
        &dlq,
        &[("CES_KAFKA_STATS_INTERVAL_MS", "200".to_owned())],
    )
    .await?;
    let edges = [
        edge_process(&redis.url(), "edge-a").await?,
        edge_process(&redis.url(), "edge-b").await?,
    ];

    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for edge in &edges {
        for _ in 0..SESSIONS_PER_EDGE {
            let reg = register(&http, &edge.base).await?;
            let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
            ws.next_json(Duration::from_secs(5))
                .await?
                .expect("welcome");
            clients.push((reg.session_id, ws));
        }
    }

    // Every event, then a few of them again (same ids: duplicates), then records that are dead-lettered.
    let mut records = Vec::new();
    for n in 1..=EVENTS_PER_SESSION {
        for (session, _) in &clients {
            records.push(Record::keyed(session, event(session, n)));
        }
    }
    for (session, _) in clients.iter().take(DUPLICATES as usize) {
        records.push(Record::keyed(session, event(session, 1)));
    }
    for i in 0..INVALID_JSON {
        records.push(Record::keyed("bad", format!("{{not json {i}")));
    }
    for i in 0..MISSING_SESSION {
        records.push(Record::keyed(
            "bad",
            serde_json::to_vec(&json!({"type": "t", "data": {"i": i}}))?,
        ));
    }
    let producer = kafka::producer(&broker.bootstrap())?;
    kafka::produce(&producer, &topic, &records).await?;

    for (session, ws) in &mut clients {
        let events = ws
            .events(EVENTS_PER_SESSION as usize, Duration::from_secs(30))
            .await?;
        common::assert_numbered(session, &events, EVENTS_PER_SESSION);
    }

    let valid = clients.len() as u64 * EVENTS_PER_SESSION;
    let total = valid + DUPLICATES + INVALID_JSON + MISSING_SESSION;
    // Ingest counts each record once it has settled its batch; wait for the last one.
    let mut m = Metrics::scrape(&ingest.internal).await?;
    for _ in 0..200 {
        let settled = m.get("ces_ingest_published_total", &[])
            + m.get("ces_ingest_duplicates_total", &[])
            + m.get("ces_ingest_dead_lettered_total", &[]);
        if settled == total as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = Metrics::scrape(&ingest.internal).await?;
    }
    let get = |m: &Metrics, name: &str, labels: &[(&str, &str)]| m.get(name, labels) as u64;
    assert_eq!(
        get(&m, "ces_ingest_records_total", &[("topic", &topic)]),
        total
    );
    assert_eq!(get(&m, "ces_ingest_published_total", &[]), valid);
    assert_eq!(get(&m, "ces_ingest_duplicates_total", &[]), DUPLICATES);
    assert_eq!(
        get(
            &m,
            "ces_ingest_dead_lettered_total",
            &[("reason", "invalid_json")]
        ),
        INVALID_JSON
    );
    assert_eq!(
        get(
            &m,
            "ces_ingest_dead_lettered_total",
            &[("reason", "missing_session_id")]
        ),
        MISSING_SESSION
    );
    for hop in ["kafka_to_ingest", "ingest_to_redis"] {
        assert_eq!(
            get(&m, "ces_hop_latency_seconds_count", &[("hop", hop)]),
            valid,
            "{hop}: one observation per published event"
        );
    }
    assert_eq!(
        get(&m, "ces_ingest_batch_size_count", &[]),
        get(&m, "ces_ingest_batch_size_bucket", &[("le", "+Inf")]),
        "batch size is a histogram with buckets"
    );

    // Each edge delivered exactly its own sessions' events, and timed each of them on its hops.
    let per_edge = SESSIONS_PER_EDGE as u64 * EVENTS_PER_SESSION;
    for edge in &edges {
        let m = Metrics::scrape(&edge.internal).await?;
        assert_eq!(get(&m, "ces_edge_delivered_total", &[]), per_edge);
        assert_eq!(
            get(&m, "ces_edge_sessions_registered_total", &[]),
            SESSIONS_PER_EDGE as u64
        );
        assert_eq!(
            get(&m, "ces_edge_connections", &[]),
            SESSIONS_PER_EDGE as u64
        );
        for hop in ["redis_to_edge", "edge_to_socket"] {
            assert_eq!(
                get(&m, "ces_hop_latency_seconds_count", &[("hop", hop)]),
                per_edge,
                "{hop} on {}",
                edge.base
            );
        }
        assert_eq!(get(&m, "ces_e2e_latency_seconds_count", &[]), per_edge);
        assert!(m.get("ces_e2e_latency_seconds_sum", &[]) > 0.0);
    }

    // Consumer lag from librdkafka's statistics: reported for every partition, and 0 once all is committed.
    let mut lags = Vec::new();
    for _ in 0..100 {
        let m = Metrics::scrape(&ingest.internal).await?;
        lags = (0..PARTITIONS)
            .map(|p| {
                let p = p.to_string();
                let labels = [("topic", topic.as_str()), ("partition", p.as_str())];
                m.series_value("ces_ingest_consumer_lag", &labels)
            })
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lags, vec![Some(0.0); PARTITIONS as usize]);
    Ok(())
}
