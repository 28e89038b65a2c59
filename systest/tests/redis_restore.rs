//! Redis restored from an older snapshot under traffic: the sessions' state goes back (their `seq` with it) while
//! ingest has committed the Kafka offsets of the writes that are gone. No `seq` may be handed out again for
//! another event, and no client may miss an event without being told: every session starts a new epoch, which
//! its client learns with `resumed ok:false` / `epoch_changed`.

mod common;

use std::time::Duration;

use ces_systest::client::register;
use ces_systest::{Broker, Redis, kafka, unique};
use common::exact::{assert_exact_or_told, follow};
use common::{paced_stream, start_edge, start_ingest};

const SESSIONS: usize = 6;
const ROUNDS: u64 = 60;
const ROUND_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_an_older_snapshot_under_traffic_reuses_no_seq_and_announces_every_loss()
-> anyhow::Result<()> {
    ces_systest::init_logs();
    let (mut redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 2), (&dlq, 1)]).await?;
    let fast_breaker = [
        ("CES_BREAKER_FAILURES", "2".to_owned()),
        ("CES_BREAKER_OPEN_MS", "200".to_owned()),
        ("CES_BREAKER_OPEN_MAX_MS", "500".to_owned()),
    ];
    let ingest = start_ingest(
        &redis.url(),
        &broker.bootstrap(),
        &topic,
        &dlq,
        &fast_breaker,
    )
    .await?;
    let edges = [
        start_edge(&redis.url(), "edge-a", &[]).await?,
        start_edge(&redis.url(), "edge-b", &[]).await?,
    ];
    let bases: Vec<String> = edges.iter().map(|e| e.base.clone()).collect();
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    let mut followers = Vec::new();
    for i in 0..SESSIONS {
        let reg = register(&http, &bases[i % 2]).await?;
        let mut order = bases.clone();
        order.rotate_left(i % 2);
        sessions.push(reg.session_id.clone());
        followers.push(tokio::spawn(follow(
            order,
            reg.token,
            ROUNDS,
            Duration::from_secs(60),
        )));
    }
    // Every client is connected before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = paced_stream(
        kafka::producer(&broker.bootstrap())?,
        topic.clone(),
        sessions.clone(),
        ROUNDS,
        ROUND_EVERY,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snapshot = redis.snapshot().await?;
    // Two more seconds of events land (and are delivered, and committed) after the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restore(&snapshot).await?;
    stream.await??;

    for (session, follower) in sessions.iter().zip(followers) {
        let timeline = follower.await??;
        let told = assert_exact_or_told(session, &timeline, ROUNDS);
        // Every session had events after the snapshot: every client must have learned of the new epoch.
        assert!(
            told,
            "session {session} was not told of the restore: {timeline:?}"
        );
    }
    for edge in edges {
        edge.stop().await?;
    }
    ingest.stop().await
}
