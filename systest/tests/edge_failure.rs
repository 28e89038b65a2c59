//! An edge dies mid-stream: every client resumes on the other edge and ends with every event exactly once.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, resume_url, ws_url};
use ces_systest::kafka::{self, Record};
use common::{IsolatedEdge, Stack, event_json};
use serde_json::{Value, json};

const SESSIONS: usize = 200;
const EVENTS: u64 = 10;

/// What one client saw.
struct Seen {
    seqs: Vec<u64>,
    ns: Vec<u64>,
    resumed: Vec<Value>,
}

/// Follows a session until it has `EVENTS` events, reconnecting (to the other edge, with its position) whenever
/// the socket ends.
async fn follow(bases: [String; 2], mut edge: usize, token: String) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        seqs: Vec::new(),
        ns: Vec::new(),
        resumed: Vec::new(),
    };
    let mut epoch: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let url = match &epoch {
            None => ws_url(&bases[edge], &token),
            Some(e) => resume_url(
                &bases[edge],
                &token,
                seen.seqs.last().copied().unwrap_or(0),
                e,
            ),
        };
        let Ok(mut ws) = WsClient::connect(&url).await else {
            edge = 1 - edge;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            match ws.next_json(Duration::from_secs(10)).await {
                Ok(Some(frame)) => match frame["type"].as_str() {
                    Some("welcome") => epoch = frame["epoch"].as_str().map(str::to_owned),
                    Some("resumed") => seen.resumed.push(frame),
                    Some("event") => {
                        seen.seqs.push(frame["seq"].as_u64().unwrap());
                        seen.ns.push(frame["data"]["n"].as_u64().unwrap());
                        if seen.seqs.len() as u64 >= EVENTS {
                            return Ok(seen);
                        }
                    }
                    _ => {}
                },
                Ok(None) => anyhow::bail!("stalled after {:?}", seen.seqs),
                Err(_) => {
                    edge = 1 - edge;
                    break;
                }
            }
        }
    }
    anyhow::bail!("gave up after {:?}", seen.seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_edge_resume_on_the_other_with_every_event_once() -> anyhow::Result<()>
{
    let stack = Stack::start(4, &[]).await?;
    let mut doomed = IsolatedEdge::start(&stack.redis.url(), "edge-doomed").await?;
    let survivor = stack.edges[1].base.clone();
    let bases = [doomed.base.clone(), survivor];

    let mut sessions = Vec::with_capacity(SESSIONS);
    let mut followers = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let reg = register(&stack.http, &bases[1]).await?;
        followers.push(tokio::spawn(follow(
            bases.clone(),
            i % 2,
            reg.token.clone(),
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
            assert!(
                !seen.resumed.is_empty(),
                "session {session} resumed on the survivor"
            );
        }
        for r in &seen.resumed {
            assert_eq!(r["ok"], true, "session {session}: {r}");
        }
    }
    stack.stop().await
}
