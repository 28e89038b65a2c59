//! Drives ingest's [`Publisher`] against one Redis: `events` events over `sessions` sessions, in batches of
//! `batch`, exactly as the engine calls it (one pipeline per batch, envelopes as ingest encodes them), and prints
//! what was published. `scripts/redis-cost.sh` runs it against a Redis under callgrind and divides that Redis's
//! instructions by the events: the cost of the publish function per event, repeatable to the instruction.
//!
//! `cargo run --release -p ces-ingest --example publish_cost -- REDIS_URL EVENTS SESSIONS BATCH [FIRST]`: events
//! FIRST.. (ids and payloads follow the number, so a second run with another FIRST publishes new events).

use std::time::Duration;

use ces_ingest::batch::Publish;
use ces_ingest::publisher::{Limits, Outcome, Publisher};
use ces_protocol::envelope::{self, Envelope};
use fred::interfaces::ClientLike;

fn arg(n: usize, default: &str) -> String {
    std::env::args()
        .nth(n)
        .unwrap_or_else(|| default.to_owned())
}

/// The ingest defaults (`CES_BUFFER_*`, `CES_DEDUP_WINDOW_MS`, `CES_SESSION_TTL_MS`).
const LIMITS: Limits = Limits {
    buffer_max_events: 1000,
    buffer_max_age: Duration::from_secs(3600),
    dedup_window: Duration::from_secs(24 * 3600),
    state_ttl: Duration::from_secs(7 * 24 * 3600),
    durable_restarts: false,
};

fn event(n: u64, sessions: u64) -> Publish {
    let session_id = format!("cost-{:05}", n % sessions);
    let event_id = format!("{n:032x}");
    // A typical event of the load generator: a small JSON object, source coordinates, a traceparent-less
    // envelope.
    let data = format!(
        r#"{{"order":"o-{n}","status":"shipped","amount":{}}}"#,
        n % 977
    );
    let env = Envelope {
        seq: 0,
        event_id: event_id.clone(),
        session_id: session_id.clone(),
        event_type: "order.updated".to_owned(),
        data: data.into_bytes().into(),
        produced_at_ms: 1_764_000_000_000,
        ingested_at_ms: 1_764_000_000_003,
        source_topic: "ces.events".to_owned(),
        source_partition: (n % 8) as i32,
        source_offset: n as i64,
        epoch: String::new(),
        traceparent: String::new(),
    };
    Publish {
        record: 0,
        session_id,
        event_id,
        envelope: envelope::encode(&env).into(),
        produced_at_ms: env.produced_at_ms,
        ingested_at_ms: env.ingested_at_ms,
        span: Default::default(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = arg(1, "redis://127.0.0.1:6379");
    let events: u64 = arg(2, "20000").parse()?;
    let sessions: u64 = arg(3, "2000").parse()?;
    let batch: u64 = arg(4, "25").parse()?;
    let first: u64 = arg(5, "0").parse()?;
    let client = ces_runtime::redis::builder(&url)?.build()?;
    client.init().await?;
    let publisher = Publisher::new(client, LIMITS, Duration::from_secs(60)).await?;
    let (mut published, mut duplicates) = (0u64, 0u64);
    let (mut n, end) = (first, first + events);
    while n < end {
        let chunk: Vec<Publish> = (n..(n + batch).min(end))
            .map(|i| event(i, sessions))
            .collect();
        let refs: Vec<&Publish> = chunk.iter().collect();
        for outcome in publisher.publish(&refs).await {
            match outcome? {
                Outcome::Published(_) => published += 1,
                Outcome::Duplicate => duplicates += 1,
            }
        }
        n += batch;
    }
    println!("published {published} duplicates {duplicates}");
    Ok(())
}
