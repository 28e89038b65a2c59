//! The TypeScript client at scale through the load balancer: 20 apps in Node, two edges behind HAProxy, events
//! through Kafka and ingest, and the edge holding half of the apps killed mid-stream. Every app sees exactly
//! `seq` 1..100. (Each failure for one app, with the Rust client too, is in `client_faults.rs`.)

mod common;

use std::time::Duration;

use ces_systest::apps::{Apps, Kind, Seen, Tokens};
use ces_systest::client::register;
use ces_systest::haproxy::Haproxy;
use ces_systest::kafka;
use common::{IsolatedEdge, Stack};

const CLIENTS: usize = 20;
const EVENTS: u64 = 100;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_js_clients_see_exactly_1_to_100_when_the_edge_holding_half_is_killed()
-> anyhow::Result<()> {
    let mut stack = Stack::start(4, &[]).await?;
    for e in std::mem::take(&mut stack.edges) {
        e.stop().await?;
    }
    let mut edges = [
        IsolatedEdge::start(&stack.redis.url(), "edge-a").await?,
        IsolatedEdge::start(&stack.redis.url(), "edge-b").await?,
    ];
    let backends: Vec<&str> = edges
        .iter()
        .map(|e| e.base.trim_start_matches("http://"))
        .collect();
    let lb = Haproxy::start(&backends).await?;
    let tokens = Tokens::start().await?;
    let (mut names, mut sessions) = (Vec::new(), Vec::new());
    for i in 0..CLIENTS {
        let reg = register(&stack.http, &lb.base).await?;
        let name = format!("app-{i}");
        tokens.fixed(&name, &reg.token);
        names.push(name);
        sessions.push(reg.session_id);
    }
    let apps = Apps::start(Kind::Js, &lb.base, &names, &tokens, Duration::from_secs(30)).await?;
    let node_of = |apps: &Apps, name: &str| {
        apps.seen(name).into_iter().rev().find_map(|s| match s {
            Seen::Open { node } => Some(node),
            _ => None,
        })
    };
    apps.wait_until("every app connected", WAIT, |seen| {
        names.iter().all(|n| {
            seen.get(n)
                .is_some_and(|s| s.iter().any(|x| matches!(x, Seen::Open { .. })))
        })
    })
    .await?;

    let producer = kafka::producer(&stack.broker.bootstrap())?;
    for n in 1..=EVENTS / 2 {
        kafka::produce(&producer, &stack.topic, &common::round(&sessions, n)).await?;
    }
    apps.wait_until("50 events each", WAIT, |seen| {
        names.iter().all(|n| {
            seen.get(n)
                .is_some_and(|s| ces_systest::apps::events_of(s).len() >= 50)
        })
    })
    .await?;
    let on_a: Vec<&String> = names
        .iter()
        .filter(|n| node_of(&apps, n).as_deref() == Some("edge-a"))
        .collect();
    assert!(
        (CLIENTS / 4..=CLIENTS * 3 / 4).contains(&on_a.len()),
        "the load balancer spread the apps: {} on edge-a",
        on_a.len()
    );
    edges[0].kill();
    for n in EVENTS / 2 + 1..=EVENTS {
        kafka::produce(&producer, &stack.topic, &common::round(&sessions, n)).await?;
    }
    apps.wait_until("100 events each", WAIT, |seen| {
        names.iter().all(|n| {
            seen.get(n)
                .is_some_and(|s| ces_systest::apps::events_of(s).len() >= EVENTS as usize)
        })
    })
    .await?;
    for name in &names {
        assert_eq!(
            apps.seqs(name),
            (1..=EVENTS).collect::<Vec<_>>(),
            "{name}: every event once, in order"
        );
        let gaps: Vec<Seen> = apps
            .seen(name)
            .into_iter()
            .filter(|s| matches!(s, Seen::Gap { .. }))
            .collect();
        assert!(gaps.is_empty(), "{name}: nothing reported lost: {gaps:?}");
    }
    for name in on_a {
        assert_eq!(
            node_of(&apps, name).as_deref(),
            Some("edge-b"),
            "{name} resumed on the other edge"
        );
    }
    apps.stop().await?;
    stack.stop().await
}
