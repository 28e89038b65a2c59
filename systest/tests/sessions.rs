//! Sessions that survive failures: reconnection buffer, resume, dedup and epochs, on a real broker and Redis.
//! Every test asserts the exact `seq` lists clients receive.

mod common;

use std::time::Duration;

use ces_systest::client::{register, resume_url, ws_url};
use ces_systest::kafka::{self, Record};
use ces_systest::unique;
use common::{Stack, connect, event_json};
use fred::interfaces::{ClientLike, HashesInterface};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn ns(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect()
}

/// Runs the publish function for event `n` of `session` as ingest would, but publishes on a channel nobody
/// reads: the event is in the buffer, its Pub/Sub message is lost. Returns its `seq`.
async fn publish_unseen(redis_url: &str, session: &str, n: u64) -> anyhow::Result<u64> {
    let redis = ces_runtime::redis::builder(redis_url)?.build()?;
    redis.init().await?;
    let id = format!("lost-on-the-wire-{n}");
    let seq = common::publish_direct(&redis, session, &id, n, "nowhere".into()).await?;
    let _ = fred::interfaces::ClientLike::quit(&redis).await;
    Ok(seq)
}

fn numbered(session: &str, range: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    range
        .map(|n| Record::keyed(session, event_json(session, "t", json!({ "n": n }))))
        .collect()
}

/// Waits until Redis has assigned `seq` for `session` (ingest is done with everything produced so far).
async fn wait_for_seq(redis_url: &str, session: &str, seq: u64) -> anyhow::Result<()> {
    let client = ces_runtime::redis::builder(redis_url)?.build()?;
    client.init().await?;
    let meta = ces_protocol::keys::SessionKeys::of(session).meta;
    for _ in 0..600 {
        let current: Option<u64> = client.hget(&meta, "seq").await?;
        if current.unwrap_or(0) >= seq {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("seq {seq} of {session} not reached")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_overflow_names_exactly_the_evicted_range_and_replays_the_rest() -> anyhow::Result<()>
{
    let stack = Stack::start(1, &[("CES_BUFFER_MAX_EVENTS", "5".into())]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;

    let (mut ws, welcome) = connect(&ws_url(edge, &reg.token)).await?;
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(welcome["seq"], 0);
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=2)).await?;
    assert_eq!(seqs(&ws.events(2, WAIT).await?), [1, 2]);
    ws.close().await;

    // 10 more while disconnected: seq 3..=12; a 5-event buffer keeps 8..=12.
    kafka::produce(&producer, &stack.topic, &numbered(s, 3..=12)).await?;
    wait_for_seq(&stack.redis.url(), s, 12).await?;

    let (mut ws, welcome) =
        connect(&resume_url(&stack.edges[1].base, &reg.token, 2, &epoch)).await?;
    assert_eq!(
        (welcome["epoch"].as_str(), welcome["seq"].as_u64()),
        (Some(epoch.as_str()), Some(12))
    );
    let resumed = ws
        .next_json(Duration::from_secs(5))
        .await?
        .expect("resumed");
    assert_eq!(
        resumed,
        json!({"type":"resumed","ok":false,"replayed":5,"reason":"buffer_overflow","lost":{"from":3,"to":7}})
    );
    let replayed = ws.events(5, WAIT).await?;
    assert_eq!(seqs(&replayed), [8, 9, 10, 11, 12]);
    assert_eq!(ns(&replayed), [8, 9, 10, 11, 12]);
    // Then live, without a gap.
    kafka::produce(&producer, &stack.topic, &numbered(s, 13..=13)).await?;
    assert_eq!(seqs(&ws.events(1, WAIT).await?), [13]);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resume_replays_exactly_what_was_missed() -> anyhow::Result<()> {
    let stack = Stack::start(2, &[]).await?;
    let reg = register(&stack.http, &stack.edges[0].base).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let (mut ws, welcome) = connect(&ws_url(&stack.edges[0].base, &reg.token)).await?;
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=4)).await?;
    assert_eq!(seqs(&ws.events(4, WAIT).await?), [1, 2, 3, 4]);
    ws.close().await;
    kafka::produce(&producer, &stack.topic, &numbered(s, 5..=9)).await?;
    wait_for_seq(&stack.redis.url(), s, 9).await?;

    let (mut ws, _) = connect(&resume_url(&stack.edges[1].base, &reg.token, 4, &epoch)).await?;
    let resumed = ws
        .next_json(Duration::from_secs(5))
        .await?
        .expect("resumed");
    assert_eq!(resumed, json!({"type":"resumed","ok":true,"replayed":5}));
    kafka::produce(&producer, &stack.topic, &numbered(s, 10..=11)).await?;
    let events = ws.events(7, WAIT).await?;
    assert_eq!(seqs(&events), [5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(ns(&events), [5, 6, 7, 8, 9, 10, 11]);
    assert!(
        ws.next_json(Duration::from_millis(300)).await?.is_none(),
        "nothing after 11"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_event_ids_and_replayed_records_are_delivered_once() -> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let (mut ws, _) = connect(&ws_url(edge, &reg.token)).await?;
    let producer = kafka::producer(&stack.broker.bootstrap())?;

    let with_id = |id: &str, n: u64| {
        Record::keyed(
            s,
            serde_json::to_vec(&json!({"session_id": s, "type": "t", "data": {"n": n}, "id": id}))
                .unwrap(),
        )
    };
    let same_business_event = Record::keyed(s, event_json(s, "t", json!({ "n": 2, "k": "v" })));
    let reordered_keys = Record::keyed(
        s,
        r#"{"data":{"k":"v","n":2},"type":"t","session_id":"SID"}"#.replace("SID", s),
    );
    let records = vec![
        with_id("order-1", 1),
        with_id("order-1", 1),   // producer retry: same id
        with_id("order-1", 100), // same id, other data: still the same event for the producer
        same_business_event.clone(),
        reordered_keys,      // same business fields, different bytes
        same_business_event, // the same record replayed
    ];
    kafka::produce(&producer, &stack.topic, &records).await?;
    // A sentinel shows the pipeline went past every duplicate.
    kafka::produce(&producer, &stack.topic, &[with_id("sentinel", 3)]).await?;
    let events = ws.events(3, WAIT).await?;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(ns(&events), [1, 2, 3]);
    assert_eq!(events[0]["id"], "order-1");
    assert!(ws.next_json(Duration::from_millis(300)).await?.is_none());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_before_its_commit_redelivers_without_duplicates() -> anyhow::Result<()> {
    let group = unique("group");
    let env = [("CES_KAFKA_GROUP", group.clone())];
    let mut stack = Stack::start(2, &env).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let (mut ws, _) = connect(&ws_url(edge, &reg.token)).await?;
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=20)).await?;
    assert_eq!(
        seqs(&ws.events(20, WAIT).await?),
        (1..=20).collect::<Vec<_>>()
    );

    // Redis has every event. Kill ingest without a graceful stop, and make sure Kafka has no commit for any
    // of them: the restarted replica gets the whole batch again.
    stack.ingest.take().expect("ingest").abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    kafka::rewind_group(&stack.broker.bootstrap(), &group, &stack.topic).await?;
    stack.ingest = Some(stack.start_ingest(&env).await?);

    kafka::produce(&producer, &stack.topic, &numbered(s, 21..=21)).await?;
    let events = ws.events(1, WAIT).await?;
    assert_eq!(
        seqs(&events),
        [21],
        "redelivered events must not reach the client again"
    );
    assert_eq!(ns(&events), [21]);
    assert!(ws.next_json(Duration::from_millis(300)).await?.is_none());
    // And they really were redelivered: the restarted replica dropped all 20 as duplicates (nextest runs each
    // test in its own process, so the counter is this test's alone).
    let base = &stack.ingest.as_ref().expect("ingest").internal;
    let metrics = ces_systest::Metrics::scrape(base).await?;
    assert_eq!(metrics.get("ces_ingest_duplicates_total", &[]), 20.0);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_is_an_epoch_change() -> anyhow::Result<()> {
    let mut stack = Stack::start(1, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let (mut ws, welcome) = connect(&ws_url(edge, &reg.token)).await?;
    let old_epoch = welcome["epoch"].as_str().unwrap().to_owned();
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=3)).await?;
    assert_eq!(seqs(&ws.events(3, WAIT).await?), [1, 2, 3]);
    ws.close().await;

    stack.redis.restart().await?;
    ces_systest::wait_ready(&stack.edges[1].internal).await?;

    let (mut ws, welcome) =
        connect(&resume_url(&stack.edges[1].base, &reg.token, 3, &old_epoch)).await?;
    let new_epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    let resumed = ws
        .next_json(Duration::from_secs(5))
        .await?
        .expect("resumed");
    assert_eq!(
        resumed,
        json!({"type":"resumed","ok":false,"replayed":0,"reason":"epoch_changed","lost":{"from":4,"to":null},"epoch":new_epoch})
    );
    // The client continues with new events, numbered from 1 in the new epoch.
    kafka::produce(&producer, &stack.topic, &numbered(s, 4..=5)).await?;
    let events = ws.events(2, WAIT).await?;
    assert_eq!(seqs(&events), [1, 2]);
    assert_eq!(ns(&events), [4, 5]);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_on_another_edge_takes_over() -> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let (a, b) = (&stack.edges[0].base, &stack.edges[1].base);
    let reg = register(&stack.http, a).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let (mut old, welcome) = connect(&ws_url(a, &reg.token)).await?;
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=3)).await?;
    assert_eq!(seqs(&old.events(3, WAIT).await?), [1, 2, 3]);

    // The client processed up to 2 when it moved.
    let (mut new, _) = connect(&resume_url(b, &reg.token, 2, &epoch)).await?;
    assert_eq!(
        old.ending(Duration::from_secs(1)).await,
        Some(ces_systest::client::Ending::Closed(4009))
    );
    let resumed = new
        .next_json(Duration::from_secs(5))
        .await?
        .expect("resumed");
    assert_eq!(resumed, json!({"type":"resumed","ok":true,"replayed":1}));
    kafka::produce(&producer, &stack.topic, &numbered(s, 4..=5)).await?;
    let events = new.events(3, WAIT).await?;
    assert_eq!(seqs(&events), [3, 4, 5]);
    assert_eq!(ns(&events), [3, 4, 5]);

    // The session records who holds it.
    let redis = ces_runtime::redis::builder(&stack.redis.url())?.build()?;
    redis.init().await?;
    let (status, node): (String, String) = redis
        .hmget(format!("ces:{{{s}}}:session"), vec!["status", "node"])
        .await?;
    assert_eq!((status.as_str(), node.as_str()), ("connected", "edge-b"));
    new.send_text(r#"{"type":"ack","seq":5}"#).await?;
    new.close().await;
    let mut state = (String::new(), 0u64);
    for _ in 0..100 {
        let (status, ack): (String, Option<u64>) = redis
            .hmget(format!("ces:{{{s}}}:session"), vec!["status", "last_ack"])
            .await?;
        state = (status, ack.unwrap_or(0));
        if state.0 == "disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, ("disconnected".to_owned(), 5));
    stack.stop().await
}

/// Replicas of one image share a host name pattern and, in containers, a pid: ids derived from those alone would
/// share a control channel, and a takeover's close would reach the newer socket instead of the older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_without_a_node_id_pick_their_own_and_a_takeover_closes_only_the_older()
-> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let redis_url = stack.redis.url();
    let (first, second) = tokio::try_join!(
        common::start_edge_unnamed(&redis_url),
        common::start_edge_unnamed(&redis_url)
    )?;
    let reg = register(&stack.http, &first.base).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let (mut old, old_welcome) = connect(&ws_url(&first.base, &reg.token)).await?;
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=2)).await?;
    assert_eq!(seqs(&old.events(2, WAIT).await?), [1, 2]);
    let epoch = old_welcome["epoch"].as_str().unwrap().to_owned();

    let (mut new, new_welcome) = connect(&resume_url(&second.base, &reg.token, 2, &epoch)).await?;
    let (old_node, new_node) = (
        old_welcome["node"].as_str().unwrap(),
        new_welcome["node"].as_str().unwrap(),
    );
    assert_ne!(old_node, new_node, "each edge picked its own id");
    assert_eq!(
        old.ending(Duration::from_secs(2)).await,
        Some(ces_systest::client::Ending::Closed(4009)),
        "the older socket is closed as taken over"
    );
    assert_eq!(
        new.next_json(Duration::from_secs(5))
            .await?
            .expect("resumed"),
        json!({"type":"resumed","ok":true,"replayed":0})
    );
    kafka::produce(&producer, &stack.topic, &numbered(s, 3..=4)).await?;
    assert_eq!(
        seqs(&new.events(2, WAIT).await?),
        [3, 4],
        "the newer socket stays open and gets the rest"
    );
    new.close().await;
    first.stop().await?;
    second.stop().await?;
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_closes_it_on_every_edge_and_refuses_it_after() -> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let (a, b) = (&stack.edges[0].base, &stack.edges[1].base);
    let reg = register(&stack.http, a).await?;
    let other = register(&stack.http, a).await?;
    let (mut ws, _) = connect(&ws_url(a, &reg.token)).await?;
    let url = format!("{b}/v1/sessions/{}", reg.session_id);

    let unauthenticated = stack.http.delete(&url).send().await?;
    assert_eq!(unauthenticated.status(), 401);
    let wrong_session = stack
        .http
        .delete(&url)
        .bearer_auth(&other.token)
        .send()
        .await?;
    assert_eq!(wrong_session.status(), 403);
    let deleted = stack
        .http
        .delete(&url)
        .bearer_auth(&reg.token)
        .send()
        .await?;
    assert_eq!(deleted.status(), 204);

    assert_eq!(
        ws.ending(Duration::from_secs(1)).await,
        Some(ces_systest::client::Ending::Closed(4003))
    );
    for edge in [a, b] {
        let status = ces_systest::client::handshake_status(&ws_url(edge, &reg.token)).await?;
        assert_eq!(status, Some(401), "a closed session is refused on {edge}");
    }
    // The other session is untouched.
    let (_ws, welcome) = connect(&ws_url(b, &other.token)).await?;
    assert_eq!(welcome["session_id"], other.session_id.as_str());
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gap_is_filled_from_the_buffer_and_an_epoch_change_is_announced()
-> anyhow::Result<()> {
    let mut stack = Stack::start(1, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    let (mut ws, welcome) = connect(&ws_url(edge, &reg.token)).await?;
    let old_epoch = welcome["epoch"].as_str().unwrap().to_owned();
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=1)).await?;
    assert_eq!(seqs(&ws.events(1, WAIT).await?), [1]);

    // Event 2 reaches the buffer but its Pub/Sub message is lost (published on a channel nobody reads).
    let seq = publish_unseen(&stack.redis.url(), s, 2).await?;
    assert_eq!(seq, 2);
    // Event 3 arrives live; the edge notices the gap and replays 2 first, with no `resumed` frame.
    kafka::produce(&producer, &stack.topic, &numbered(s, 3..=3)).await?;
    let frames: Vec<Value> = {
        let mut out = Vec::new();
        while out.len() < 2 {
            out.push(ws.next_json(WAIT).await?.expect("frame"));
        }
        out
    };
    assert_eq!(
        frames
            .iter()
            .map(|f| f["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["event", "event"]
    );
    assert_eq!(seqs(&frames), [2, 3]);
    assert_eq!(ns(&frames), [2, 3]);

    // Redis loses everything while the socket stays open. As soon as the edge's Pub/Sub connection is back it
    // compares every socket with its buffer: the epoch change is announced in-band before any new event.
    stack.redis.restart().await?;
    let mut resumed = ws.next_json(WAIT).await?.expect("resumed");
    let epoch = resumed
        .as_object_mut()
        .and_then(|f| f.remove("epoch"))
        .expect("the notice names the new epoch");
    assert_ne!(epoch.as_str(), Some(old_epoch.as_str()));
    assert_eq!(
        resumed,
        json!({"type":"resumed","ok":false,"replayed":0,"reason":"epoch_changed","lost":{"from":4,"to":null}})
    );
    kafka::produce(&producer, &stack.topic, &numbered(s, 4..=4)).await?;
    let events = ws.events(1, WAIT).await?;
    assert_eq!((seqs(&events), ns(&events)), (vec![1], vec![4]));
    stack.stop().await
}

/// The edge's Pub/Sub connection drops while an event is published (here: the event's message is lost and the
/// connection is killed). Once it is back, every socket catches up from its buffer at once, without waiting for
/// the session's next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_missed_while_the_subscriber_reconnected_arrives_without_a_next_event()
-> anyhow::Result<()> {
    let stack = Stack::start(1, &[]).await?;
    let edge = &stack.edges[0].base;
    let reg = register(&stack.http, edge).await?;
    let s = reg.session_id.as_str();
    let (mut ws, _) = connect(&ws_url(edge, &reg.token)).await?;
    let producer = kafka::producer(&stack.broker.bootstrap())?;
    kafka::produce(&producer, &stack.topic, &numbered(s, 1..=1)).await?;
    assert_eq!(seqs(&ws.events(1, WAIT).await?), [1]);

    assert_eq!(publish_unseen(&stack.redis.url(), s, 2).await?, 2);
    assert!(
        ws.next_json(Duration::from_millis(300)).await?.is_none(),
        "lost on the wire"
    );
    let redis = ces_runtime::redis::builder(&stack.redis.url())?.build()?;
    redis.init().await?;
    let killed: u64 = fred::interfaces::ClientLike::custom(
        &redis,
        fred::types::CustomCommand::new_static("CLIENT", None, false),
        vec!["KILL", "TYPE", "pubsub"],
    )
    .await?;
    assert!(killed >= 2, "both edges' subscribers killed, got {killed}");

    let frames = ws.events(1, WAIT).await?;
    assert_eq!((seqs(&frames), ns(&frames)), (vec![2], vec![2]));
    assert!(
        ws.next_json(Duration::from_millis(300)).await?.is_none(),
        "no resumed frame"
    );
    stack.stop().await
}
