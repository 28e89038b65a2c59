//! A client that stops reading: its queue overflows (by frame count, by bytes, or the node's queues together pass
//! their budget) and it is closed with 4008, its neighbour on the same edge keeps receiving meanwhile, and after
//! the close it resumes with nothing lost.

mod common;

use std::time::Duration;

use ces_systest::Metrics;
use ces_systest::client::{WsClient, register, resume_url, ws_url};
use ces_systest::kafka::{self, Record};
use common::{Stack, event_json, start_edge};
use serde_json::json;

/// Enough bytes to fill the kernel's loopback buffers (several MB each way) and then the 64-frame queue.
const SLOW_EVENTS: u64 = 1200;
const PAD: usize = 16 * 1024;
const NEIGHBOUR_EVENTS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4008_and_resumes_with_nothing_lost()
-> anyhow::Result<()> {
    stops_reading_then_resumes(
        &[("CES_WS_QUEUE_CAPACITY", "64".into())],
        "ces_edge_slow_consumer_total",
    )
    .await
}

/// The byte bound: frames of 16 KiB against a 256 KiB queue whose frame count would allow far more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_by_bytes_closes_with_4008_too() -> anyhow::Result<()> {
    stops_reading_then_resumes(
        &[
            ("CES_WS_QUEUE_CAPACITY", "1000000".into()),
            ("CES_WS_QUEUE_BYTES", (256 * 1024).to_string()),
        ],
        "ces_edge_slow_consumer_total",
    )
    .await
}

/// The node's budget: no queue is full on its own (1 GiB each), but together they may hold 1 MiB, and the stuck
/// client's is the largest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_nodes_queue_budget_the_largest_queue_closes_with_4008() -> anyhow::Result<()> {
    stops_reading_then_resumes(
        &[
            ("CES_WS_QUEUE_CAPACITY", "1000000".into()),
            ("CES_WS_QUEUE_BYTES", (1 << 30).to_string()),
            ("CES_EDGE_QUEUE_BUDGET_BYTES", (1 << 20).to_string()),
        ],
        "ces_edge_queue_budget_closes_total",
    )
    .await
}

/// Runs the scenario on an edge with `edge_env`; `counter` is the metric that must count the close.
async fn stops_reading_then_resumes(
    edge_env: &[(&'static str, String)],
    counter: &str,
) -> anyhow::Result<()> {
    let mut stack = Stack::start(1, &[("CES_BUFFER_MAX_EVENTS", "5000".into())]).await?;
    for e in std::mem::take(&mut stack.edges) {
        e.stop().await?;
    }
    let edge = start_edge(&stack.redis.url(), "edge-a", edge_env).await?;
    let slow = register(&stack.http, &edge.base).await?;
    let neighbour = register(&stack.http, &edge.base).await?;
    let mut slow_ws = WsClient::connect(&ws_url(&edge.base, &slow.token)).await?;
    let welcome = slow_ws.next_json(Duration::from_secs(5)).await?.unwrap();
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    let mut neighbour_ws = WsClient::connect(&ws_url(&edge.base, &neighbour.token)).await?;
    neighbour_ws.next_json(Duration::from_secs(5)).await?;

    // The slow client reads nothing from here on.
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let pad = "x".repeat(PAD);
    let mut records: Vec<Record> = (1..=SLOW_EVENTS)
        .map(|n| {
            Record::keyed(
                &slow.session_id,
                event_json(&slow.session_id, "t", json!({"n": n, "pad": pad})),
            )
        })
        .collect();
    records.extend((1..=NEIGHBOUR_EVENTS).map(|n| {
        Record::keyed(
            &neighbour.session_id,
            event_json(&neighbour.session_id, "t", json!({"n": n})),
        )
    }));
    kafka::produce(&producer, &stack.topic, &records).await?;

    // The neighbour gets all of its events while the slow client is stuck.
    let events = neighbour_ws
        .events(NEIGHBOUR_EVENTS as usize, Duration::from_secs(30))
        .await?;
    common::assert_numbered(&neighbour.session_id, &events, NEIGHBOUR_EVENTS);
    let mut slow_closed = false;
    for _ in 0..100 {
        if Metrics::scrape(&edge.internal).await?.get(counter, &[]) >= 1.0 {
            slow_closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slow_closed, "the stuck client was found slow");

    // Reading again, the slow client gets what was already on its way, then the 4008 close.
    let mut seqs = Vec::new();
    let ending = loop {
        match slow_ws.next_json(Duration::from_secs(15)).await {
            Ok(Some(f)) if f["type"] == "event" => seqs.push(f["seq"].as_u64().unwrap()),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("no close after {} events", seqs.len()),
            Err(e) => break e.to_string(),
        }
    };
    assert!(ending.contains("4008"), "closed with 4008: {ending}");
    assert!((seqs.len() as u64) < SLOW_EVENTS, "closed before the end");
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );

    // It resumes from where it is: the rest, exactly once.
    let last = seqs.len() as u64;
    let mut resumed = WsClient::connect(&resume_url(&edge.base, &slow.token, last, &epoch)).await?;
    let rest = resumed
        .events((SLOW_EVENTS - last) as usize, Duration::from_secs(60))
        .await?;
    let rest: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(rest, (last + 1..=SLOW_EVENTS).collect::<Vec<_>>());
    stack.edges = vec![edge];
    stack.stop().await
}
