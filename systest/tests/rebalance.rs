//! A second ingest replica joins the consumer group mid-stream and later leaves: partitions move twice, and
//! every client still gets every event exactly once, in order.

mod common;

use std::time::Duration;

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::kafka;
use ces_systest::unique;
use common::Stack;

const SESSIONS: usize = 40;
const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joining_and_leaving_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let group = unique("group");
    let env = [("CES_KAFKA_GROUP", group.clone())];
    let stack = Stack::start(4, &env).await?;
    let mut clients = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let edge = &stack.edges[i % 2].base;
        let reg = register(&stack.http, edge).await?;
        let mut ws = WsClient::connect(&ws_url(edge, &reg.token)).await?;
        ws.next_json(Duration::from_secs(5))
            .await?
            .expect("welcome");
        clients.push((reg.session_id, ws));
    }

    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let sessions: Vec<String> = clients.iter().map(|(s, _)| s.clone()).collect();
    let mut second = None;
    for n in 1..=ROUNDS {
        kafka::produce(&producer, &stack.topic, &common::round(&sessions, n)).await?;
        if n == 5 {
            second = Some(stack.start_ingest(&env).await?);
            // Wait until the group really has both replicas.
            let mut members = 0;
            for _ in 0..100 {
                members = kafka::group_members(&stack.broker.bootstrap(), &group).await?;
                if members == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(members, 2, "the second replica joined the group");
        }
        if n == 14 {
            second.take().expect("second replica").stop().await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (session, ws) in &mut clients {
        let events = ws.events(ROUNDS as usize, Duration::from_secs(60)).await?;
        common::assert_numbered(session, &events, ROUNDS);
    }
    for (session, ws) in &mut clients {
        assert!(
            ws.next_json(Duration::from_millis(20)).await?.is_none(),
            "session {session}: extra frame"
        );
    }
    stack.stop().await
}
