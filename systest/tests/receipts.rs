//! Delivery receipts (`CES_RECEIPTS_TOPIC`): one `delivered` record per event written to a socket and one `acked`
//! per event acknowledged, on a real broker; and across an edge killed mid-stream, a `delivered` receipt for
//! every event a client got (the edge it resumes on produces what the dead one may not have).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka;
use common::{IsolatedEdge, Stack, follow, start_edge};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Edge settings producing receipts to `topic` on `brokers`.
fn receipts_env(brokers: &str, topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CES_RECEIPTS_TOPIC", topic.to_owned()),
        ("CES_KAFKA_BROKERS", brokers.to_owned()),
    ]
}

/// Every receipt on `topic`, read until `done` holds for them (or `WAIT` passes), then to the end once more.
async fn receipts(
    brokers: &str,
    topic: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let records = kafka::read_to_end(brokers, topic, 0, Duration::from_secs(10)).await?;
        let values: Vec<Value> = records
            .iter()
            .filter_map(|m| kafka::value(m).and_then(|v| serde_json::from_slice(v).ok()))
            .collect();
        if done(&values) || tokio::time::Instant::now() > deadline {
            return Ok(values);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stack without its edges (the test starts its own, producing receipts), the brokers and a receipts topic.
async fn stack_for_receipts() -> anyhow::Result<(Stack, String, String)> {
    let mut stack = Stack::start(4, &[]).await?;
    let brokers = stack.broker.bootstrap();
    let topic = ces_systest::unique("ces.receipts");
    kafka::create_topics(&brokers, &[(&topic, 4)]).await?;
    for e in std::mem::take(&mut stack.edges) {
        e.stop().await?;
    }
    Ok((stack, brokers, topic))
}

fn of_kind<'a>(receipts: &'a [Value], kind: &str) -> Vec<&'a Value> {
    receipts.iter().filter(|r| r["kind"] == kind).collect()
}

/// 1,000 events to 100 sessions, half of whose clients acknowledge: exactly 1,000 `delivered` receipts, one per
/// event, and exactly the 500 `acked` ones of the acknowledging half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_written_and_acknowledged_gets_exactly_its_receipt() -> anyhow::Result<()> {
    const SESSIONS: usize = 100;
    const EVENTS: u64 = 10;
    let (stack, brokers, topic) = stack_for_receipts().await?;
    let edge = start_edge(
        &stack.redis.url(),
        "edge-r",
        &receipts_env(&brokers, &topic),
    )
    .await?;
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let reg = register(&stack.http, &edge.base).await?;
        let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
        ws.next_json(WAIT).await?.expect("welcome");
        clients.push((reg.session_id, ws));
    }
    let sessions: Vec<String> = clients.iter().map(|(s, _)| s.clone()).collect();
    let producer = kafka::producer(&brokers)?;
    for n in 1..=EVENTS {
        kafka::produce(&producer, &stack.topic, &common::round(&sessions, n)).await?;
    }
    // (session, event id) of every event each client got; the even-numbered clients acknowledge theirs.
    let mut got = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for (i, (session, ws)) in clients.iter_mut().enumerate() {
        let events = ws.events(EVENTS as usize, WAIT).await?;
        common::assert_numbered(session, &events, EVENTS);
        for e in &events {
            let id = (
                session.clone(),
                e["id"].as_str().unwrap_or_default().to_owned(),
            );
            if i % 2 == 0 {
                acked.insert(id.clone());
            }
            got.insert(id);
        }
        if i % 2 == 0 {
            ws.send_text(&format!(r#"{{"type":"ack","seq":{EVENTS}}}"#))
                .await?;
        }
    }
    let all = receipts(&brokers, &topic, |r| {
        of_kind(r, "delivered").len() >= got.len() && of_kind(r, "acked").len() >= acked.len()
    })
    .await?;
    let ids = |kind: &str| -> Vec<(String, String)> {
        of_kind(&all, kind)
            .iter()
            .map(|r| {
                (
                    r["session_id"].as_str().unwrap_or_default().to_owned(),
                    r["event_id"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let delivered = ids("delivered");
    assert_eq!(delivered.len(), 1000, "one delivered receipt per event");
    assert_eq!(delivered.iter().cloned().collect::<BTreeSet<_>>(), got);
    let acks = ids("acked");
    assert_eq!(acks.len(), 500, "one acked receipt per acknowledged event");
    assert_eq!(acks.iter().cloned().collect::<BTreeSet<_>>(), acked);
    assert_eq!(all.len(), 1500, "nothing else: {:?}", of_kind(&all, "lost"));
    for r in &all {
        assert_eq!(r["node"], "edge-r", "{r}");
        assert!(
            r["seq"].as_u64().is_some_and(|s| (1..=EVENTS).contains(&s)),
            "{r}"
        );
        assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    for (_, ws) in clients {
        ws.close().await;
    }
    edge.stop().await?;
    stack.stop().await
}

/// An edge killed mid-stream with receipts in flight: every event any client got has a `delivered` receipt
/// (duplicates allowed), produced by the dead edge before it died or by the survivor when the client resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_stream_loses_no_receipt_of_a_delivered_event() -> anyhow::Result<()> {
    const SESSIONS: usize = 20;
    const EVENTS: u64 = 30;
    let (stack, brokers, topic) = stack_for_receipts().await?;
    let env = receipts_env(&brokers, &topic);
    // The doomed edge holds its receipts a second before sending them (librdkafka's linger): the kill always
    // takes some with it.
    let mut doomed_env = env.clone();
    doomed_env.push(("CES_KAFKA_PROP_LINGER_MS", "1000".into()));
    let mut doomed =
        IsolatedEdge::start_with(&stack.redis.url(), "edge-doomed", &doomed_env).await?;
    let survivor = IsolatedEdge::start_with(&stack.redis.url(), "edge-survivor", &env).await?;
    let live: common::LiveEdges = std::sync::Arc::new(std::sync::Mutex::new(vec![
        doomed.base.clone(),
        survivor.base.clone(),
    ]));
    let mut sessions = Vec::new();
    let mut followers = Vec::new();
    for _ in 0..SESSIONS {
        let reg = register(&stack.http, &survivor.base).await?;
        // Every one starts on the doomed edge.
        followers.push(tokio::spawn(follow(live.clone(), 0, reg.token, EVENTS)));
        sessions.push(reg.session_id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = kafka::producer(&brokers)?;
    for n in 1..=EVENTS {
        kafka::produce(&producer, &stack.topic, &common::round(&sessions, n)).await?;
        if n == 10 {
            live.lock().expect("edges").remove(0);
            doomed.kill();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (session, seq) of every event each client got.
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for (session, follower) in sessions.iter().zip(followers) {
        let seen = follower.await??;
        assert_eq!(seen.seqs, (1..=EVENTS).collect::<Vec<_>>(), "{session}");
        assert!(!seen.closes.is_empty(), "{session} moved to the survivor");
        got.insert(session.clone(), seen.seqs);
    }
    let covered = |receipts: &[Value]| -> BTreeSet<(String, u64)> {
        of_kind(receipts, "delivered")
            .iter()
            .map(|r| {
                (
                    r["session_id"].as_str().unwrap_or_default().to_owned(),
                    r["seq"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let wanted: BTreeSet<(String, u64)> = got
        .iter()
        .flat_map(|(s, seqs)| seqs.iter().map(move |q| (s.clone(), *q)))
        .collect();
    let all = receipts(&brokers, &topic, |r| covered(r).is_superset(&wanted)).await?;
    let have = covered(&all);
    let missing: Vec<_> = wanted.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "delivered events without a receipt: {missing:?}"
    );
    // The survivor produced receipts for events the doomed edge wrote (the first ten rounds): the catch-up.
    let caught_up = of_kind(&all, "delivered")
        .iter()
        .filter(|r| r["node"] == "edge-survivor" && r["seq"].as_u64().is_some_and(|s| s <= 10))
        .count();
    assert!(
        caught_up > 0,
        "the survivor caught up on receipts the doomed edge held"
    );
    drop(survivor);
    stack.stop().await
}
