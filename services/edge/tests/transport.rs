//! The edge's transport under hostile or overwhelming clients: TLS with a self-signed certificate, connections that
//! never finish their TLS handshake or request head, a flood past the connection cap, and a reconnect storm that
//! queues for handshake slots and is shed with 503 `overloaded` and a `Retry-After`.

mod common;

use std::time::{Duration, Instant};

use ces_systest::client::{WsClient, register, ws_url};
use ces_systest::tls::TestCert;
use ces_systest::{Metrics, Redis};
use common::{start, start_with};
use fred::interfaces::ClientLike as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (EOF or reset); `false` if it is still open after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn addr(base: &str) -> String {
    base.split("://").nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn wss_end_to_end_with_a_self_signed_certificate() -> anyhow::Result<()> {
    let cert = TestCert::new()?;
    let edge = start_with(&[], Some(&cert)).await?;
    assert!(edge.base.starts_with("https://"));

    let reg = cert.register(&edge.base).await?;
    let url = ws_url(&edge.base, &reg.token);
    assert!(url.starts_with("wss://"), "{url}");
    let mut ws = WsClient::connect_tls(&url, cert.ws_connector()).await?;
    let welcome = ws
        .next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );

    // Plain HTTP to the TLS port, and a client that does not trust the certificate: no answer, no upgrade.
    let plain = format!("http://{}", addr(&edge.base));
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    let untrusting = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        untrusting.is_err(),
        "a self-signed certificate is not trusted by default"
    );
    let m = cert.metrics(&edge.base).await?;
    assert!(m.get("ces_edge_tls_handshake_failures_total", &[]) >= 2.0);

    ws.close().await;
    Ok(())
}

#[tokio::test]
async fn silent_and_slow_connections_are_cut_at_the_header_timeout() -> anyhow::Result<()> {
    // Every connection here comes from 127.0.0.1: the per-address share is tested in systest `abuse`.
    let edge = start(&[
        ("CES_HTTP_HEADER_TIMEOUT_MS", "500"),
        ("CES_HTTP_MAX_CONNECTIONS_PER_IP", "1000"),
    ])
    .await?;
    let target = addr(&edge.base);
    let http = reqwest::Client::new();

    // 40 connections that never send a byte, 40 that send half a request head and then trickle.
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(&target).await?);
        let mut s = TcpStream::connect(&target).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(s);
    }
    for s in &mut slow {
        s.write_all(b"X-Slow: 1\r\n").await?;
    }
    // Meanwhile a well-behaved client is served.
    let reg = register(&http, &edge.base).await?;
    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );

    let started = Instant::now();
    for s in silent.iter_mut().chain(slow.iter_mut()) {
        assert!(
            closed_by_server(s, Duration::from_secs(5)).await,
            "a connection without a complete request head is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The open socket still works, and no HTTP connection is left but the scrape's own.
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    let mut open = f64::NAN;
    for _ in 0..50 {
        open = Metrics::scrape(&edge.base)
            .await?
            .get("ces_edge_http_connections", &[]);
        if open == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 1.0, "only the scrape's own connection is open");
    Ok(())
}

#[tokio::test]
async fn tls_handshakes_that_never_finish_are_cut_at_the_header_timeout() -> anyhow::Result<()> {
    let cert = TestCert::new()?;
    let edge = start_with(&[("CES_HTTP_HEADER_TIMEOUT_MS", "500")], Some(&cert)).await?;
    let target = addr(&edge.base);
    let mut flood = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(&target).await?;
        if i % 2 == 0 {
            // The first bytes of a ClientHello, then nothing.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
        }
        flood.push(s);
    }
    // A well-behaved client is served meanwhile.
    cert.register(&edge.base).await?;
    for s in &mut flood {
        assert!(closed_by_server(s, Duration::from_secs(5)).await);
    }
    let m = cert.metrics(&edge.base).await?;
    assert!(m.get("ces_edge_tls_handshake_failures_total", &[]) >= 40.0);
    Ok(())
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_accept_and_the_node_recovers() -> anyhow::Result<()>
{
    let edge = start(&[
        ("CES_HTTP_MAX_CONNECTIONS", "20"),
        ("CES_HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await?;
    let target = addr(&edge.base);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&target).await?);
    }
    // Give the accept loop time to take all 20 slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&target).await?;
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)).await,
        "the 21st connection is closed at once"
    );
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if let Ok(m) = Metrics::scrape(&edge.base).await {
            assert!(m.get("ces_edge_http_connections_shed_total", &[]) >= 1.0);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "served again once the flood is gone");
    Ok(())
}

#[tokio::test]
async fn a_reconnect_storm_waits_for_handshake_slots_and_the_excess_gets_503_with_retry_after()
-> anyhow::Result<()> {
    let edge = start(&[
        ("CES_WS_MAX_PENDING_HANDSHAKES", "2"),
        ("CES_WS_ADMISSION_WAIT_MS", "300"),
    ])
    .await?;
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for _ in 0..8 {
        urls.push(ws_url(
            &edge.base,
            &register(&http, &edge.base).await?.token,
        ));
    }
    // Redis stalls for 2 s: the first two handshakes hold both slots while they wait for it.
    let admin = pause_redis(&edge.redis, Duration::from_millis(2000)).await?;
    let early: Vec<_> = urls[..2]
        .iter()
        .map(|u| {
            let u = u.clone();
            tokio::spawn(async move { WsClient::connect(&u).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The rest of the storm waits 300 ms for a slot, then is shed with a spread-out Retry-After.
    let storm = urls[2..].iter().map(|url| {
        http.get(url.replacen("ws", "http", 1))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    });
    let mut shed = 0;
    for resp in futures::future::join_all(storm).await {
        let resp = resp?;
        assert_eq!(resp.status(), 503);
        let retry: u32 = resp.headers()["retry-after"].to_str()?.parse()?;
        assert!((1..=5).contains(&retry), "Retry-After {retry}");
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(body["error"], "overloaded");
        shed += 1;
    }
    assert_eq!(shed, 6);
    // Once Redis answers, the two queued handshakes complete, and the shed clients get in on their retry.
    for task in early {
        let mut ws = task.await??;
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
            "welcome"
        );
    }
    for url in &urls[2..] {
        let mut ws = WsClient::connect(url).await?;
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
            "welcome"
        );
    }
    let m = Metrics::scrape(&edge.base).await?;
    assert_eq!(m.get("ces_edge_handshakes_shed_total", &[]), 6.0);
    assert_eq!(m.get("ces_edge_pending_handshakes", &[]), 0.0);
    drop(admin);
    Ok(())
}

/// `CLIENT PAUSE` for `how_long`: every client's commands wait.
async fn pause_redis(redis: &Redis, how_long: Duration) -> anyhow::Result<fred::clients::Client> {
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    admin.init().await?;
    let _: String = admin
        .custom(
            fred::cmd!("CLIENT"),
            vec![
                "PAUSE".to_owned(),
                how_long.as_millis().to_string(),
                "ALL".to_owned(),
            ],
        )
        .await?;
    Ok(admin)
}
