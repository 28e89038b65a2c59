//! A rolling restart of both edges during a paced stream: SIGTERM-style drain of one edge (readyz fails, sockets
//! closed with 1012 spread over the drain window), wait, restart it, then the other. Every client resumes on the
//! other edge and ends with every event exactly once, in order.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ces_systest::client::register;
use ces_systest::kafka;
use common::{LiveEdges, Stack, follow, start_edge};

const SESSIONS: usize = 200;
const ROUNDS: u64 = 30;
const DRAIN: [(&str, &str); 2] = [
    ("CES_DRAIN_DELAY_MS", "200"),
    ("CES_DRAIN_WINDOW_MS", "1500"),
];

fn drain_env() -> Vec<(&'static str, String)> {
    DRAIN.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_both_edges_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start(4, &[]).await?;
    // Edges that drain like production ones (the stack's default edges close at once).
    for e in std::mem::take(&mut stack.edges) {
        e.stop().await?;
    }
    let redis_url = stack.redis.url();
    let mut edges = vec![
        start_edge(&redis_url, "edge-a", &drain_env()).await?,
        start_edge(&redis_url, "edge-b", &drain_env()).await?,
    ];
    let live: LiveEdges = Arc::new(Mutex::new(edges.iter().map(|e| e.base.clone()).collect()));

    let mut sessions = Vec::with_capacity(SESSIONS);
    let mut followers = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let reg = register(&stack.http, &edges[i % 2].base).await?;
        followers.push(tokio::spawn(follow(
            live.clone(),
            i % 2,
            reg.token.clone(),
            ROUNDS,
        )));
        sessions.push(reg.session_id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stream = common::paced_stream(
        kafka::producer(&stack.broker.bootstrap())?,
        stack.topic.clone(),
        sessions.clone(),
        ROUNDS,
        Duration::from_millis(200),
    );

    // Roll: drain and stop one edge (the load balancer takes it out when /readyz fails), start its replacement,
    // then the same for the other.
    for (i, name) in [(0usize, "edge-a2"), (1, "edge-b2")] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let old = edges.remove(i);
        let (old_base, old_internal) = (old.base.clone(), old.internal.clone());
        let stopping = tokio::spawn(old.stop());
        // Readiness fails first, so the balancer stops sending clients there.
        let mut saw_draining = false;
        for _ in 0..20 {
            let r = reqwest::get(format!("{old_internal}/readyz")).await;
            if r.as_ref().is_ok_and(|r| r.status() == 503) {
                saw_draining = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(saw_draining, "{old_internal} failed /readyz while draining");
        live.lock().unwrap().retain(|b| *b != old_base);
        stopping.await??;
        let replacement = start_edge(&redis_url, name, &drain_env()).await?;
        live.lock().unwrap().push(replacement.base.clone());
        edges.insert(i, replacement);
    }
    stream.await??;

    let expected: Vec<u64> = (1..=ROUNDS).collect();
    let mut restarted = 0;
    let mut first_roll = Vec::new();
    for (i, (session, follower)) in sessions.iter().zip(followers).enumerate() {
        let seen = follower.await??;
        if i % 2 == 0 {
            first_roll.push(seen.closed_at[0]);
        }
        assert_eq!(
            seen.seqs, expected,
            "session {session}: seq exactly once, in order"
        );
        assert_eq!(seen.ns, expected, "session {session}: production order");
        for r in &seen.resumed {
            assert_eq!(r["ok"], true, "session {session}: {r}");
        }
        assert!(
            seen.closes.iter().all(|c| *c == Some(1012)),
            "session {session}: only 1012 closes, got {:?}",
            seen.closes
        );
        restarted += usize::from(!seen.closes.is_empty());
    }
    // Every session was on one of the two edges, and both were restarted.
    assert_eq!(restarted, SESSIONS, "every client was moved by the roll");
    // The first edge's 100 sockets were closed over its drain window, not at once.
    let spread = *first_roll.iter().max().unwrap() - *first_roll.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(750) && spread <= Duration::from_millis(3000),
        "closes of the first edge spread over {spread:?} (window 1.5 s)"
    );
    stack.edges = edges;
    stack.stop().await
}
