//! Ingest stops on SIGTERM even when the brokers are already gone (a whole stack stopped at once, or a broker
//! outage during a rollout): the final commit is bounded and leaving the group does not hold up the exit.

mod common;

use std::time::{Duration, Instant};

use ces_systest::kafka::{self, Record};
use ces_systest::{Broker, Redis, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_with_the_broker_gone() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let bootstrap = broker.bootstrap();
    let topic = unique("ces.events");
    let dlq = format!("{topic}.dlq");
    kafka::create_topics(&bootstrap, &[(&topic, 1), (&dlq, 1)]).await?;
    let ingest = common::ingest_process(&redis.url(), &bootstrap, &topic, &dlq, &[]).await?;
    // Something to commit at shutdown.
    let producer = kafka::producer(&bootstrap)?;
    kafka::produce(&producer, &topic, &[Record::keyed("k", "not json")]).await?;
    kafka::read_to_end(&bootstrap, &dlq, 1, Duration::from_secs(30)).await?;

    drop(producer);
    drop(broker);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let status = ingest.stop(Duration::from_secs(20)).await?;
    assert!(status.success(), "{status}");
    // The final commit gives up after 5 s; nothing else may wait on the dead broker.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}
