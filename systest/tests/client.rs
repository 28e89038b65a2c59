//! The Rust client (`ces-client`) against real edges behind a real HAProxy: the edge holding its session is killed
//! mid-stream, the client reconnects through the load balancer to the other one and resumes, and the app sees
//! exactly `seq` 1..n: nothing lost, nothing twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ces_client::{Options, Update};
use ces_systest::Redis;
use ces_systest::client::register;
use ces_systest::haproxy::Haproxy;
use common::{IsolatedEdge, publish_direct};
use fred::interfaces::ClientLike as _;

const EVENTS: u64 = 100;

/// A fresh client of `url` whose token source always gives `token`.
fn options(url: &str, token: &str) -> Options {
    let token = token.to_owned();
    Options {
        url: url.to_owned(),
        get_token: Arc::new(move || {
            let token = token.clone();
            Box::pin(async move { Ok(ces_client::Token::new(token)) })
        }),
        resume_from: None,
        silence_limit: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resumes_through_the_load_balancer_after_its_edge_is_killed()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let mut edges = [
        IsolatedEdge::start(&redis.url(), "edge-a").await?,
        IsolatedEdge::start(&redis.url(), "edge-b").await?,
    ];
    let backends: Vec<&str> = edges
        .iter()
        .map(|e| e.base.trim_start_matches("http://"))
        .collect();
    let proxy = Haproxy::start(&backends).await?;
    let reg = register(&reqwest::Client::new(), &proxy.base).await?;
    let options = options(&proxy.base, &reg.token);
    let (tx, mut updates) = tokio::sync::mpsc::channel(1024);
    let stop = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn(ces_client::run(options, tx, stop.clone()));
    let node = match tokio::time::timeout(Duration::from_secs(10), updates.recv()).await? {
        Some(Update::Connected { node }) => node,
        other => panic!("expected a welcome first: {other:?}"),
    };

    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    let channel = ces_protocol::keys::channel(&reg.session_id);
    let mut seen = Vec::new();
    let mut gaps = Vec::new();
    let mut reconnected_to = None;
    for n in 1..=EVENTS {
        publish_direct(
            &admin,
            &reg.session_id,
            &format!("client-{n}"),
            n,
            channel.clone(),
        )
        .await?;
        if n == EVENTS / 2 {
            // Published to the buffer; the edge holding the socket dies with events possibly in flight.
            let holder = edges
                .iter()
                .position(|e| e.node == node)
                .expect("the holder");
            edges[holder].kill();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < EVENTS as usize {
        match tokio::time::timeout_at(deadline, updates.recv()).await? {
            Some(Update::Event(e)) => {
                assert_eq!(e.data["n"], e.seq, "{e:?}");
                seen.push(e.seq);
            }
            Some(Update::Gap(g)) => gaps.push(g),
            Some(Update::Connected { node: n }) => reconnected_to = Some(n),
            Some(Update::Disconnected { retry, .. }) => assert!(retry, "an edge kill is retried"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(gaps.is_empty(), "nothing reported lost: {gaps:?}");
    let other = reconnected_to.expect("reconnected");
    assert_ne!(other, node, "resumed on the other edge");
    stop.cancel();
    client.await?;
    let _ = admin.quit().await;
    Ok(())
}

/// The client acknowledges what the app got, coalesced: after 10 events and a pause, the session's `last_ack` in
/// Redis (stored by the edge when the socket ends) is 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_acknowledges_the_highest_event_delivered() -> anyhow::Result<()> {
    use fred::interfaces::HashesInterface as _;
    let redis = Redis::start().await?;
    let edge = common::start_edge(&redis.url(), "edge-a", &[]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let options = options(&edge.base, &reg.token);
    let (tx, mut updates) = tokio::sync::mpsc::channel(64);
    let stop = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn(ces_client::run(options, tx, stop.clone()));
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), updates.recv()).await?,
        Some(Update::Connected { .. })
    ));
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    let channel = ces_protocol::keys::channel(&reg.session_id);
    for n in 1..=10 {
        publish_direct(
            &admin,
            &reg.session_id,
            &format!("ack-{n}"),
            n,
            channel.clone(),
        )
        .await?;
    }
    let mut last = 0;
    while last < 10 {
        if let Some(Update::Event(e)) =
            tokio::time::timeout(Duration::from_secs(10), updates.recv()).await?
        {
            last = e.seq;
        }
    }
    // One ack interval for the coalesced ack to go out, then the client stops and the edge stores it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.cancel();
    client.await?;
    let key = ces_protocol::keys::SessionId::parse(&reg.session_id)?.session_key();
    let mut stored: Option<u64> = None;
    for _ in 0..50 {
        stored = admin.hget(&key, "last_ack").await?;
        if stored == Some(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored,
        Some(10),
        "the highest delivered seq was acknowledged"
    );
    let _ = admin.quit().await;
    edge.stop().await
}
