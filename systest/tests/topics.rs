//! Topic readiness: ingest waits for its input topics (and says so on `/readyz`), creates the dead-letter topic
//! itself, and starts consuming as soon as the input topic appears.

use std::collections::HashMap;
use std::time::Duration;

use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Redis, unique};
use tokio::net::TcpListener;

async fn readyz(base: &str) -> anyhow::Result<(u16, String)> {
    let r = reqwest::get(format!("{base}/readyz")).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_waits_for_its_topics_and_creates_the_dead_letter_topic() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let bootstrap = broker.bootstrap();
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    let env: HashMap<&'static str, String> = [
        ("CES_REDIS_URL", redis.url()),
        ("CES_KAFKA_BROKERS", bootstrap.clone()),
        ("CES_KAFKA_TOPICS", topic.clone()),
        ("CES_DLQ_TOPIC", dlq.clone()),
        ("CES_DLQ_PARTITIONS", "2".to_owned()),
        ("CES_KAFKA_GROUP", unique("ingest")),
    ]
    .into_iter()
    .collect();
    let config = ces_ingest::Config::from_source(&env)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ingest = tokio::spawn(ces_ingest::run(config, listener, async move {
        let _ = stopped.await;
    }));

    // Not ready, and saying why, while the input topic is missing; the DLQ topic is made meanwhile.
    let expected = format!("waiting for topics: {topic}");
    let mut last = None;
    for _ in 0..100 {
        last = readyz(&base).await.ok();
        if last
            .as_ref()
            .is_some_and(|(status, body)| *status == 503 && *body == expected)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        Some((503, expected)),
        "readyz names only the missing input topic"
    );
    assert_eq!(
        kafka::partitions(&bootstrap, &dlq).await?,
        Some(2),
        "dlq created"
    );
    assert_eq!(kafka::partitions(&bootstrap, &topic).await?, None);

    kafka::create_topics(&bootstrap, &[(&topic, 1)]).await?;
    let mut ready = false;
    for _ in 0..200 {
        if readyz(&base).await?.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "ready once the topic exists: {:?}",
        readyz(&base).await?
    );

    // And it consumes: a bad record lands in the topic ingest created.
    let producer = kafka::producer(&bootstrap)?;
    kafka::produce(&producer, &topic, &[Record::keyed("k", "nope")]).await?;
    let dead = kafka::read_to_end(&bootstrap, &dlq, 1, Duration::from_secs(30)).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        kafka::header(&dead[0], "ces-dlq-reason").as_deref(),
        Some("invalid_json")
    );

    let _ = stop.send(());
    ingest.await??;
    Ok(())
}
