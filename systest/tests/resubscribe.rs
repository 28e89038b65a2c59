//! The edge never gives up re-subscribing, and says so while it cannot receive: Redis drops the node's
//! subscriptions and refuses new ones (the ACL user loses its channel permissions) for longer than any bounded
//! retry would wait. `/readyz` answers 503 `not receiving` the whole time; once the permission is back the node
//! subscribes again by itself, becomes ready, and the client gets the event published meanwhile from the buffer,
//! then live events again.

mod common;

use std::time::Duration;

use ces_systest::Redis;
use ces_systest::client::{WsClient, register, ws_url};
use common::start_edge;
use fred::clients::Client;
use fred::interfaces::ClientLike as _;
use fred::types::{ClusterHash, CustomCommand, Value};

const PASSWORD: &str = "resubscribe-test-password";

/// Runs `ACL SETUSER ces <rules>` as the default (administrative) user.
async fn set_user(admin: &Client, rules: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["SETUSER", "ces"];
    args.extend_from_slice(rules);
    let _: Value = admin
        .custom(
            CustomCommand::new_static("ACL", ClusterHash::Random, false),
            args,
        )
        .await?;
    Ok(())
}

/// Publishes event `n` of `session` the way ingest does, as the administrative user.
async fn publish(admin: &Client, session: &str, n: u64) -> anyhow::Result<u64> {
    let channel = ces_protocol::keys::channel(session);
    common::publish_direct(admin, session, &format!("resubscribe-{n}"), n, channel).await
}

/// Polls `/readyz` until it answers `status`, for up to `within`; returns the body.
async fn readyz_becomes(base: &str, status: u16, within: Duration) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let until = tokio::time::Instant::now() + within;
    loop {
        let r = http.get(format!("{base}/readyz")).send().await?;
        let got = r.status().as_u16();
        let body = r.text().await?;
        if got == status {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "/readyz still {got} {body:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refused_its_subscriptions_is_not_ready_and_subscribes_again_by_itself()
-> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    ces_runtime::redis::load_library(&admin).await?;
    let ces_user = [
        "on",
        ">resubscribe-test-password",
        "~ces:*",
        "&ces:*",
        "+@all",
        "-@dangerous",
        "+info",
    ];
    set_user(&admin, &ces_user).await?;
    let url = redis
        .url()
        .replace("redis://", &format!("redis://ces:{PASSWORD}@"));
    let edge = start_edge(&url, "edge-acl", &[]).await?;
    readyz_becomes(&edge.internal, 200, Duration::from_secs(5)).await?;
    let http = reqwest::Client::new();
    let reg = register(&http, &edge.base).await?;
    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );

    // Redis drops the node's subscriptions and refuses new ones.
    set_user(&admin, &["resetchannels"]).await?;
    let revoked = tokio::time::Instant::now();
    let body = readyz_becomes(&edge.internal, 503, Duration::from_secs(5)).await?;
    assert_eq!(body, "not receiving");
    assert_eq!(publish(&admin, &reg.session_id, 1).await?, 1);
    // Longer than a bounded retry (10 tries, backoff up to 2 s) would have kept trying.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(revoked.elapsed())).await;
    assert_eq!(
        readyz_becomes(&edge.internal, 503, Duration::ZERO).await?,
        "not receiving"
    );
    assert!(
        ws.next_json(Duration::from_millis(100)).await?.is_none(),
        "nothing can arrive while the node is not subscribed"
    );

    // The permission is back: the node subscribes again by itself and catches the socket up.
    set_user(&admin, &["&ces:*"]).await?;
    readyz_becomes(&edge.internal, 200, Duration::from_secs(5)).await?;
    let caught_up = ws.events(1, Duration::from_secs(5)).await?;
    assert_eq!(caught_up[0]["seq"], 1);
    assert_eq!(caught_up[0]["data"]["n"], 1);
    assert_eq!(publish(&admin, &reg.session_id, 2).await?, 2);
    let live = ws.events(1, Duration::from_secs(5)).await?;
    assert_eq!(
        (live[0]["seq"].as_u64(), live[0]["data"]["n"].as_u64()),
        (Some(2), Some(2))
    );
    ws.close().await;
    edge.stop().await
}
