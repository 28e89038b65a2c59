//! The edge's transport under hostile or overwhelming clients: TLS with a self-signed certificate, connections that
//! never finish their TLS handshake or request head, a flood past the connection cap, and a reconnect storm that
//! queues for handshake slots and is shed with 503 `overloaded` and a `Retry-After`. And its two listeners: probes
//! and metrics only on the internal one, which keeps answering `/readyz` (503) while the node drains.

mod common;

use std::time::{Duration, Instant};

use ces_systest::client::{Ending, WsClient, register, ws_url};
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
async fn probes_and_metrics_are_served_on_the_internal_listener_only() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(&url).send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        }
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = get(format!("{}{path}", edge.base)).await?;
        assert_eq!(status, 404, "public {path} answered {status}: {body}");
        assert!(!body.contains("ces_edge_"), "public {path} shows metrics");
    }
    assert_eq!(
        get(format!("{}/healthz", edge.internal)).await?,
        (200, "ok".to_owned())
    );
    assert_eq!(
        get(format!("{}/readyz", edge.internal)).await?,
        (200, "ready".to_owned())
    );
    let (status, metrics) = get(format!("{}/metrics", edge.internal)).await?;
    assert_eq!(status, 200);
    assert!(metrics.contains("ces_edge_"), "{metrics}");
    // And the other way round: clients are not served on the internal listener.
    assert_eq!(
        http.post(format!("{}/v1/sessions", edge.internal))
            .send()
            .await?
            .status(),
        404
    );
    assert_eq!(get(format!("{}/v1/ws", edge.internal)).await?.0, 404);
    register(&http, &edge.base).await?;
    Ok(())
}

#[tokio::test]
async fn readiness_fails_on_the_internal_listener_while_the_draining_node_still_serves()
-> anyhow::Result<()> {
    let mut edge = start(&[("CES_DRAIN_DELAY_MS", "1500"), ("CES_DRAIN_WINDOW_MS", "0")]).await?;
    let http = reqwest::Client::new();
    let reg = register(&http, &edge.base).await?;
    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );
    let late = register(&http, &edge.base).await?;
    let (base, internal) = (edge.base.clone(), edge.internal.clone());
    let stopped = edge.shut_down();
    // Within the drain delay: readiness fails, the public listener still answers (a new socket gets 503
    // `draining`), and the open socket still works.
    let mut readyz = (0, String::new());
    for _ in 0..50 {
        let r = http.get(format!("{internal}/readyz")).send().await?;
        readyz = (r.status().as_u16(), r.text().await?);
        if readyz.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, (503, "draining".to_owned()));
    let refused = http
        .get(ws_url(&base, &late.token).replacen("ws", "http", 1))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<serde_json::Value>().await?["error"],
        "draining"
    );
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    assert_eq!(
        http.get(format!("{internal}/metrics"))
            .send()
            .await?
            .status(),
        200
    );
    // Then the socket closes with 1012, and once the node has stopped neither listener is there.
    assert_eq!(
        ws.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(1012))
    );
    stopped.await??;
    assert!(http.get(format!("{internal}/readyz")).send().await.is_err());
    assert!(http.get(format!("{base}/v1/ws")).send().await.is_err());
    Ok(())
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
    assert!(reqwest::get(format!("{plain}/v1/ws")).await.is_err());
    let untrusting = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        untrusting.is_err(),
        "a self-signed certificate is not trusted by default"
    );
    // Probes and metrics stay plain HTTP on the internal listener: kubelet and Prometheus need no certificate.
    assert!(edge.internal.starts_with("http://"));
    ready_and_counted(&edge.internal, "ces_edge_tls_handshake_failures_total", 2.0).await?;

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
        s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n").await?;
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
    // The open socket still works, and no HTTP connection is left (the scrapes go to the internal listener, which
    // this gauge does not count).
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    let mut open = f64::NAN;
    for _ in 0..50 {
        open = Metrics::scrape(&edge.internal)
            .await?
            .get("ces_edge_http_connections", &[]);
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "no HTTP connection is left open");
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
    let m = Metrics::scrape(&edge.internal).await?;
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
    // A flood of clients does not reach the probes: the internal listener answers while the public one is full.
    ready_and_counted(&edge.internal, "ces_edge_http_connections_shed_total", 1.0).await?;
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        // Any answer from the public listener (401: no token) means it serves again.
        if reqwest::get(format!("{}/v1/ws", edge.base)).await.is_ok() {
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
    let m = Metrics::scrape(&edge.internal).await?;
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

/// The internal listener at `internal` answers `/readyz` with 200 and counts at least `least` in `counter`.
async fn ready_and_counted(internal: &str, counter: &str, least: f64) -> anyhow::Result<()> {
    let status = reqwest::get(format!("{internal}/readyz")).await?.status();
    assert_eq!(status, 200);
    let counted = Metrics::scrape(internal).await?.get(counter, &[]);
    assert!(counted >= least, "{counter} = {counted}");
    Ok(())
}
