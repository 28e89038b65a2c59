//! Readiness follows the dependencies: `/readyz` of ingest and of the edge turns 503 when Redis stops and 200 when
//! it returns; ingest's turns 503 when no Kafka broker is reachable. (Waiting for topics: `topics.rs`.) The edge
//! binary serves its probes and metrics on its internal listener (`CES_EDGE_INTERNAL_LISTEN`) and not on its public
//! one.

mod common;

use std::time::Duration;

use ces_systest::{Broker, Redis, kafka, unique};
use common::{start_edge, start_ingest};

async fn readyz(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `/readyz` until it answers `status`; returns the body.
async fn wait_for(base: &str, status: u16) -> anyhow::Result<String> {
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = readyz(base).await;
        if last.0 == status {
            return Ok(last.1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{base}/readyz never answered {status}; last {last:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_redis_is_down_and_recovers_with_it() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let (mut redis, broker) = tokio::try_join!(Redis::start(), Broker::shared())?;
    let topic = unique("ces.events");
    let dlq = unique("ces.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 1), (&dlq, 1)]).await?;
    let ingest = start_ingest(&redis.url(), &broker.bootstrap(), &topic, &dlq, &[]).await?;
    let edge = start_edge(&redis.url(), "edge-a", &[]).await?;
    for base in [&ingest.internal, &edge.internal] {
        assert_eq!(wait_for(base, 200).await?, "ready");
    }

    redis.stop().await?;
    for base in [&ingest.internal, &edge.internal] {
        assert_eq!(wait_for(base, 503).await?, "redis unreachable");
        // Liveness is not readiness: the process is fine.
        let alive = reqwest::get(format!("{base}/healthz")).await?;
        assert_eq!(alive.status(), 200);
    }

    redis.start_again().await?;
    for base in [&ingest.internal, &edge.internal] {
        assert_eq!(wait_for(base, 200).await?, "ready");
    }
    edge.stop().await?;
    ingest.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_not_ready_without_a_reachable_broker() -> anyhow::Result<()> {
    ces_systest::init_logs();
    // This test kills the broker, so it takes one of its own.
    let (redis, mut broker) = tokio::try_join!(Redis::start(), Broker::own())?;
    let topic = unique("ces.events");
    let dlq = unique("ces.dlq");
    kafka::create_topics(&broker.bootstrap(), &[(&topic, 1), (&dlq, 1)]).await?;
    let ingest = start_ingest(
        &redis.url(),
        &broker.bootstrap(),
        &topic,
        &dlq,
        &[("CES_KAFKA_STATS_INTERVAL_MS", "200".to_owned())],
    )
    .await?;
    assert_eq!(wait_for(&ingest.base, 200).await?, "ready");
    broker.kill().await?;
    let why = wait_for(&ingest.base, 503).await?;
    assert!(why.starts_with("kafka unreachable"), "{why}");
    ingest.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_on_and_no_collector_the_edge_still_serves_and_exits_cleanly()
-> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let collector = format!("http://127.0.0.1:{}", ces_systest::free_port());
    let edge = edge_binary(&redis, &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector)]).await?;
    let reg = ces_systest::client::register(&reqwest::Client::new(), &edge.base).await?;
    assert!(!reg.token.is_empty());
    let status = edge.stop(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_binary_answers_probes_and_metrics_on_its_internal_listener_only()
-> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let edge = edge_binary(&redis, &[]).await?;
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = http.get(format!("{}{path}", edge.base)).send().await?;
        assert_eq!(public.status(), 404, "public {path}");
        let internal = http.get(format!("{}{path}", edge.internal)).send().await?;
        assert_eq!(internal.status(), 200, "internal {path}");
    }
    let reg = ces_systest::client::register(&http, &edge.base).await?;
    assert!(!reg.token.is_empty());
    let internal_register = http
        .post(format!("{}/v1/sessions", edge.internal))
        .send()
        .await?;
    assert_eq!(internal_register.status(), 404);
    let metrics = ces_systest::Metrics::scrape(&edge.internal).await?;
    assert_eq!(metrics.get("ces_edge_sessions_registered_total", &[]), 1.0);
    let status = edge.stop(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

/// The `ces-edge` binary against `redis`, open registration, no drain delay, plus `extra`.
async fn edge_binary(
    redis: &Redis,
    extra: &[(&str, String)],
) -> anyhow::Result<ces_systest::Process> {
    let mut env = vec![
        ("CES_TOKEN_SECRET", common::SECRET.to_owned()),
        ("CES_REGISTER_OPEN", "true".to_owned()),
        ("CES_REDIS_URL", redis.url()),
        ("CES_DRAIN_DELAY_MS", "0".to_owned()),
        ("CES_DRAIN_WINDOW_MS", "0".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    ces_systest::Process::start_edge(
        &ces_systest::workspace_binary("ces-edge", "CES_EDGE_BIN")?,
        &env,
    )
    .await
}
