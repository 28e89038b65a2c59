//! An edge dies mid-stream: every client resumes on the other edge and ends with every event exactly once.

mod common;

use std::time::Duration;

use ces_systest::client::register;
use ces_systest::kafka::{self, Record};
use common::{IsolatedEdge, Stack, event_json, follow};
use serde_json::json;

const SESSIONS: usize = 200;
const EVENTS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_edge_resume_on_the_other_with_every_event_once() -> anyhow::Result<()>
{
    let stack = Stack::start(4, &[]).await?;
    let mut doomed = IsolatedEdge::start(&stack.redis.url(), "edge-doomed").await?;
    let survivor = stack.edges[1].base.clone();
    let bases = [doomed.base.clone(), survivor];
    let live: common::LiveEdges = std::sync::Arc::new(std::sync::Mutex::new(bases.to_vec()));

    let mut sessions = Vec::with_capacity(SESSIONS);
    let mut followers = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let reg = register(&stack.http, &bases[1]).await?;
        followers.push(tokio::spawn(follow(
            live.clone(),
            i % 2,
            reg.token.clone(),
            EVENTS,
        )));
        sessions.push((reg.session_id, i % 2 == 0));
    }
    // Let every follower connect before the stream starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let producer = kafka::producer(&stack.broker.bootstrap())?;
    for n in 1..=EVENTS {
        let round: Vec<Record> = sessions
            .iter()
            .map(|(s, _)| Record::keyed(s, event_json(s, "t", json!({ "n": n }))))
            .collect();
        kafka::produce(&producer, &stack.topic, &round).await?;
        if n == 4 {
            doomed.kill();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let expected: Vec<u64> = (1..=EVENTS).collect();
    for ((session, was_on_doomed), follower) in sessions.iter().zip(followers) {
        let seen = follower.await??;
        assert_eq!(
            seen.seqs, expected,
            "session {session}: seq exactly once, in order"
        );
        assert_eq!(seen.ns, expected, "session {session}: production order");
        if *was_on_doomed {
            // Moved to the survivor (with a `resumed` frame when it had an event to resume from: a client that
            // got nothing yet starts afresh, as the client SDKs do).
            assert!(
                !seen.closes.is_empty(),
                "session {session} moved to the survivor"
            );
        }
        for r in &seen.resumed {
            assert_eq!(r["ok"], true, "session {session}: {r}");
        }
    }
    stack.stop().await
}
