//! Attacks on an internet-facing edge, each through the real parts an attacker would meet (HAProxy, TCP, HTTP):
//! every test here failed before its defence existed.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;

use ces_systest::Redis;
use ces_systest::haproxy::Haproxy;

/// An HTTP client whose connections come from `ip` (another address of the loopback network): a host of its own.
fn host(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()
        .expect("client")
}

/// HAProxy adds the client's address as a header line of its own, after whatever the client sent: a client that
/// writes its own `X-Forwarded-For` must not get a budget per invented address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_through_haproxy_gets_one_budget_per_real_host() -> anyhow::Result<()>
{
    let redis = Redis::start().await?;
    let budget = 20;
    let edge = common::start_edge(
        &redis.url(),
        "edge-a",
        &[
            ("CES_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ("CES_LIMIT_REGISTRATIONS_PER_MIN", budget.to_string()),
        ],
    )
    .await?;
    let proxy = Haproxy::start(&[edge.base.trim_start_matches("http://")]).await?;
    let attacker = host([127, 0, 0, 2]);
    let (mut created, mut limited) = (0, 0);
    for _ in 0..500 {
        let spoofed: [u8; 4] = rand::random();
        let response = attacker
            .post(format!("{}/v1/sessions", proxy.base))
            .header("x-forwarded-for", IpAddr::from(spoofed).to_string())
            .send()
            .await?;
        match response.status().as_u16() {
            201 => created += 1,
            429 => {
                let retry: u64 = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a 429 says when to come back");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                limited += 1;
            }
            other => panic!("unexpected status {other}: {}", response.text().await?),
        }
    }
    assert!(
        (1..=budget).contains(&created),
        "{created} registrations succeeded from one host; its budget is {budget}"
    );
    assert_eq!(created + limited, 500);
    // Another host keeps its own budget, spoofing or not.
    let neighbour = host([127, 0, 0, 3]);
    let response = neighbour
        .post(format!("{}/v1/sessions", proxy.base))
        .header("x-forwarded-for", "127.0.0.2")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    edge.stop().await
}

/// A raw TCP connection from `ip` to the edge at `base`, or `None` when the edge closed it at once (over its
/// address's share).
async fn raw_connection(ip: [u8; 4], base: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((Ipv4Addr::from(ip), 0).into())?;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse()?;
    Ok(socket.connect(addr).await?)
}

/// Reads until the edge closes the connection (or `limit` passes); returns what it sent and when it closed.
async fn until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    use tokio::io::AsyncReadExt as _;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

/// One host holds connections with bodies trickled a byte at a time and with idle keep-alives, more than its share:
/// the excess is closed at accept, the rest when their deadlines pass, and meanwhile another host registers,
/// connects and receives its events from the same node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_idle_keep_alives_from_one_host_lock_nobody_out() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let share = 40;
    let (request_deadline, head_deadline) = (Duration::from_secs(2), Duration::from_millis(1500));
    let edge = common::start_edge(
        &redis.url(),
        "edge-a",
        &[
            ("CES_HTTP_MAX_CONNECTIONS", "100".to_owned()),
            ("CES_HTTP_MAX_CONNECTIONS_PER_IP", share.to_string()),
            (
                "CES_HTTP_REQUEST_TIMEOUT_MS",
                request_deadline.as_millis().to_string(),
            ),
            (
                "CES_HTTP_HEADER_TIMEOUT_MS",
                head_deadline.as_millis().to_string(),
            ),
            ("CES_WS_ADMISSION_WAIT_MS", "1000".to_owned()),
        ],
    )
    .await?;
    let attacker = [127, 0, 0, 2];
    let started = Instant::now();
    // Trickled bodies: a head announcing 100 kB, then one byte every 100 ms, for as long as the edge lets it.
    let mut trickles = Vec::new();
    for _ in 0..share / 2 {
        let mut stream = raw_connection(attacker, &edge.base).await?;
        let head = "POST /v1/sessions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
                    Content-Length: 100000\r\n\r\n{";
        stream.write_all(head.as_bytes()).await?;
        let (mut read, mut write) = stream.into_split();
        let feeder = tokio::spawn(async move {
            while write.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        trickles.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut got)).await;
            feeder.abort();
            (got, started.elapsed())
        }));
    }
    // Idle keep-alives: one request answered (401: a socket without a token), then silence.
    let mut idle = Vec::new();
    for _ in 0..share / 2 {
        let mut stream = raw_connection(attacker, &edge.base).await?;
        stream
            .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await?;
        idle.push(tokio::spawn(async move {
            until_closed(&mut stream, Duration::from_secs(20)).await
        }));
    }
    // Past the share, as many again as the node has slots: each closed at accept, its request never answered.
    for _ in 0..100 {
        let mut extra = raw_connection(attacker, &edge.base).await?;
        let _ = extra
            .write_all(b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await;
        let (got, closed) = until_closed(&mut extra, Duration::from_secs(5)).await;
        assert!(
            got.is_empty() && closed.is_some(),
            "a connection over the share is closed unanswered, got {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // Another host, meanwhile: registers, connects and receives.
    let http = reqwest::Client::new();
    let registered = ces_systest::client::register(&http, &edge.base).await?;
    let mut ws = ces_systest::client::WsClient::connect(&ces_systest::client::ws_url(
        &edge.base,
        &registered.token,
    ))
    .await?;
    let welcome = ws
        .next_json(Duration::from_secs(10))
        .await?
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&admin).await?;
    ces_runtime::redis::load_library(&admin).await?;
    let channel = ces_protocol::keys::channel(&registered.session_id);
    common::publish_direct(&admin, &registered.session_id, "abuse-1", 1, channel).await?;
    let events = ws.events(1, Duration::from_secs(10)).await?;
    assert_eq!(events[0]["data"]["n"], 1);

    for trickle in trickles {
        let (answer, at) = trickle.await?;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a trickled body is answered 408, got {answer:?}"
        );
        // Generous: the deadline is 2 s, the assertion is that it is enforced at all.
        assert!(at < request_deadline * 4, "closed after {at:?}");
    }
    for idle in idle {
        let (answer, closed) = idle.await?;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"));
        let closed = closed.expect("an idle keep-alive is closed by the head deadline");
        assert!(closed < head_deadline * 4, "closed after {closed:?}");
    }
    ws.close().await;
    edge.stop().await
}

/// HAProxy in TCP mode (a load balancer that forwards connections, not requests) names each client with the PROXY
/// protocol, v2 and v1: the per-address budget follows the real hosts, a WebSocket works through it, and a
/// connection from the proxy's address without a header is closed unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_each_client_behind_a_tcp_load_balancer() -> anyhow::Result<()> {
    use ces_systest::client::{WsClient, ws_url};
    use tokio::io::AsyncWriteExt as _;
    let redis = Redis::start().await?;
    let budget = 5;
    let edge = common::start_edge(
        &redis.url(),
        "edge-a",
        &[
            ("CES_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ("CES_PROXY_PROTOCOL", "true".to_owned()),
            ("CES_LIMIT_REGISTRATIONS_PER_MIN", budget.to_string()),
        ],
    )
    .await?;
    let backend = edge.base.trim_start_matches("http://");
    for (version, (first, second)) in [
        (2, ([127, 0, 0, 2], [127, 0, 0, 3])),
        (1, ([127, 0, 0, 4], [127, 0, 0, 5])),
    ] {
        let proxy = Haproxy::start_tcp_with_proxy_protocol(&[backend], version).await?;
        let register_from = |ip: [u8; 4]| {
            let url = format!("{}/v1/sessions", proxy.base);
            async move { anyhow::Ok(host(ip).post(url).send().await?) }
        };
        let mut statuses = Vec::new();
        for _ in 0..budget + 3 {
            statuses.push(register_from(first).await?.status().as_u16());
        }
        assert_eq!(
            statuses,
            [vec![201; budget], vec![429; 3]].concat(),
            "v{version}: one host, one budget, although every connection comes from the proxy"
        );
        let response = register_from(second).await?;
        assert_eq!(
            response.status().as_u16(),
            201,
            "v{version}: another host has its own"
        );
        let reg: ces_systest::client::Registered = response.json().await?;
        let mut ws = WsClient::connect(&ws_url(&proxy.base, &reg.token)).await?;
        let welcome = ws
            .next_json(Duration::from_secs(10))
            .await?
            .expect("welcome");
        assert_eq!(welcome["type"], "welcome", "v{version}");
        ws.close().await;
    }
    // Straight from the proxy's address, without a header: closed, nothing answered.
    let mut bare = raw_connection([127, 0, 0, 1], &edge.base).await?;
    bare.write_all(b"POST /v1/sessions HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n")
        .await?;
    let (answer, closed) = until_closed(&mut bare, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "closed");
    assert!(
        answer.is_empty(),
        "unanswered: {}",
        String::from_utf8_lossy(&answer)
    );
    edge.stop().await
}
