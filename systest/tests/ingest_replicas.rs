//! Ingest scales as a consumer group: three replicas share the input topic's partitions, and one is SIGKILLed
//! mid-stream, between commits. Its partitions move to the other two, which read them again from the last commit;
//! the events it had already published are dropped by id. Every client gets exactly seq 1..n, in order, each once.

mod common;

use std::time::Duration;

use ces_systest::kafka;
use ces_systest::{Broker, Metrics, Redis, unique};
use common::start_edge;

const SESSIONS: usize = 24;
const ROUNDS: u64 = 60;
const ROUND_EVERY: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 6), (&dlq, 1)]).await?;
    let env = [
        ("CES_KAFKA_GROUP", unique("ingest")),
        ("CES_BATCH_MAX", "20".to_owned()),
        // A killed member leaves the group when its session times out: the broker's minimum, not 45 s.
        ("CES_KAFKA_PROP_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("CES_KAFKA_PROP_HEARTBEAT_INTERVAL_MS", "1000".to_owned()),
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            common::ingest_process(&redis.url(), &broker.bootstrap(), &topic, &dlq, &env).await?,
        );
    }
    let edge = start_edge(&redis.url(), "edge-a", &[]).await?;
    let mut clients =
        common::connect_sessions(&reqwest::Client::new(), &edge.base, SESSIONS).await?;
    let sessions: Vec<String> = clients.iter().map(|(s, _)| s.clone()).collect();

    let producer = kafka::producer(&broker.bootstrap())?;
    let stream = common::paced_stream(producer, topic.clone(), sessions, ROUNDS, ROUND_EVERY);
    // Mid-stream, once every replica has published something: each owns partitions.
    for replica in &replicas {
        let mut published = 0.0;
        for _ in 0..200 {
            published = Metrics::scrape(&replica.internal)
                .await?
                .get("ces_ingest_published_total", &[]);
            if published > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            published > 0.0,
            "every replica owns partitions and publishes"
        );
    }
    let doomed = replicas.remove(0);
    doomed.signal("KILL").await?;
    assert!(!stream.is_finished(), "killed mid-stream");
    stream.await??;

    for (session, ws) in &mut clients {
        let events = ws.events(ROUNDS as usize, Duration::from_secs(60)).await?;
        common::assert_numbered(session, &events, ROUNDS);
        let extra = ws.next_json(Duration::from_millis(50)).await?;
        assert!(extra.is_none(), "nothing more for {session}: {extra:?}");
    }
    let dead = kafka::read_to_end(&broker.bootstrap(), &dlq, 0, Duration::from_secs(5)).await?;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    drop(doomed);
    for replica in replicas {
        replica.stop(Duration::from_secs(10)).await?;
    }
    edge.stop().await
}
