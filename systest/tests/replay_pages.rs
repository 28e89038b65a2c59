//! Replays that do not fit one write: a buffer far larger than what a slow client takes within the write timeout
//! is replayed page by page, each page under its own deadline; and an event whose frame no edge can send is
//! announced lost by its `seq`, live and on resume, instead of failing the socket at every reconnect.

mod common;

use std::time::Duration;

use ces_protocol::frame::EDGE_MAX_WRITE_BUFFER_BYTES;
use ces_systest::Redis;
use ces_systest::client::{WsClient, register, ws_url};
use common::{publish_data, start_edge};
use fred::interfaces::ClientLike as _;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `{"n": n, "pad": "xxx..."}` of about `bytes` bytes.
fn padded(n: u64, bytes: usize) -> String {
    json!({"n": n, "pad": "x".repeat(bytes)}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_the_write_timeout_reaches_a_slow_client_page_by_page()
-> anyhow::Result<()> {
    // 12 MB buffered, read at about 2 MB/s through a 64 KiB receive buffer: the replay takes seconds, each
    // 1 MiB page about half of the 1 s write timeout.
    const EVENTS: u64 = 240;
    const EVENT_BYTES: usize = 50_000;
    let redis = Redis::start().await?;
    let edge = start_edge(
        &redis.url(),
        "edge-pages",
        &[("CES_WS_WRITE_TIMEOUT_MS", "1000".into())],
    )
    .await?;
    let http = reqwest::Client::new();
    let reg = register(&http, &edge.base).await?;
    let session = reg.session_id.as_str();
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    for n in 1..=EVENTS {
        let data = padded(n, EVENT_BYTES);
        publish_data(
            &admin,
            session,
            &format!("page-{n}"),
            &data,
            "nowhere".into(),
        )
        .await?;
    }

    let started = tokio::time::Instant::now();
    let mut ws =
        WsClient::connect_with_receive_buffer(&ws_url(&edge.base, &reg.token), 64 << 10).await?;
    let welcome = ws.next_json(WAIT).await?.expect("welcome");
    assert_eq!(welcome["seq"], EVENTS);
    let mut ns = Vec::new();
    while ns.len() < EVENTS as usize {
        let frame: Value = match ws.next_json(WAIT).await {
            Ok(Some(frame)) => frame,
            other => panic!("after {} events: {other:?}", ns.len()),
        };
        assert_eq!(frame["type"], "event", "{frame}");
        ns.push(frame["data"]["n"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = started.elapsed();
    assert_eq!(
        ns,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(
        took > Duration::from_secs(2),
        "the replay ({took:?}) must outlast the 1 s write timeout for this test to mean anything"
    );
    // Still served: a live event arrives after the replay.
    let channel = ces_protocol::keys::channel(session);
    publish_data(&admin, session, "after", &padded(EVENTS + 1, 10), channel).await?;
    let live = ws.events(1, WAIT).await?;
    assert_eq!(live[0]["seq"], EVENTS + 1);
    let _ = admin.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_any_edge_is_announced_lost_live_and_on_resume() -> anyhow::Result<()>
{
    let redis = Redis::start().await?;
    let edge = start_edge(&redis.url(), "edge-large", &[]).await?;
    let http = reqwest::Client::new();
    let reg = register(&http, &edge.base).await?;
    let session = reg.session_id.as_str();
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    let channel = ces_protocol::keys::channel(session);

    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(
        ws.next_json(WAIT).await?.expect("welcome")["type"],
        "welcome"
    );
    for (n, bytes) in [(1, 10), (2, EDGE_MAX_WRITE_BUFFER_BYTES), (3, 10)] {
        let data = padded(n, bytes);
        publish_data(
            &admin,
            session,
            &format!("large-{n}"),
            &data,
            channel.clone(),
        )
        .await?;
    }
    let lost = json!({"type": "resumed", "ok": false, "replayed": 0, "reason": "too_large",
        "lost": {"from": 2, "to": 2}});
    let expect_stream = |frames: Vec<Value>| {
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(
            (frames[0]["seq"].clone(), frames[0]["data"]["n"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(frames[1], lost, "seq 2 is announced lost, exactly");
        assert_eq!(
            (frames[2]["seq"].clone(), frames[2]["data"]["n"].clone()),
            (json!(3), json!(3))
        );
    };
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(ws.next_json(WAIT).await?.expect("a frame"));
    }
    expect_stream(live);

    // A fresh connection replays the buffer: the same three frames, and the socket stays up.
    ws.close().await;
    let mut again = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(again.next_json(WAIT).await?.expect("welcome")["seq"], 3);
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(again.next_json(WAIT).await?.expect("a frame"));
    }
    expect_stream(replayed);
    publish_data(&admin, session, "large-4", &padded(4, 10), channel).await?;
    assert_eq!(again.events(1, WAIT).await?[0]["seq"], 4);
    let _ = admin.quit().await;
    Ok(())
}
