//! An edge holding the most not-yet-upgraded connections the node admits, each with a request head as large as
//! the node accepts and never finished: memory stays within a stated bound, because the head buffer is capped
//! (`CES_HTTP_MAX_HEADER_BYTES`) instead of hyper's default of about 408 KiB per connection.

use std::net::Ipv4Addr;
use std::time::Duration;

use ces_systest::{Process, Redis, workspace_binary};
use tokio::io::AsyncWriteExt as _;

/// Connections held: the default `CES_HTTP_MAX_CONNECTIONS` of 10,000 (the metrics are scraped on the internal
/// listener, which that cap does not count).
const CONNECTIONS: usize = 10_000;
/// The default `CES_HTTP_MAX_HEADER_BYTES`.
const MAX_HEAD: usize = 16 * 1024;
/// The bound this test holds the edge to: RSS growth per held connection.
const BOUND_PER_CONNECTION: u64 = 32 * 1024;

/// The default `CES_HTTP_MAX_HEADERS`.
const MAX_HEADERS: usize = 64;

/// A request head of just under `MAX_HEAD` bytes in just under `MAX_HEADERS` fields, without the blank line that
/// would end it.
fn unfinished_head() -> Vec<u8> {
    let mut head = b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\n".to_vec();
    let fields = MAX_HEADERS - 2;
    let each = (MAX_HEAD - 512 - head.len()) / fields;
    for n in 0..fields {
        let name = format!("X-Padding-{n:02}: ");
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice("p".repeat(each - name.len() - 2).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_maximal_unfinished_heads_stay_within_the_memory_bound() -> anyhow::Result<()>
{
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let edge = Process::start_edge(
        &workspace_binary("ces-edge", "CES_EDGE_BIN")?,
        &[
            (
                "CES_TOKEN_SECRET",
                "header-flood-secret-0123456789abcdef".to_owned(),
            ),
            ("CES_REDIS_URL", redis.url()),
            ("CES_REGISTER_OPEN", "true".to_owned()),
            ("CES_NODE_ID", "edge-flood".to_owned()),
            // Held for the whole measurement.
            ("CES_HTTP_HEADER_TIMEOUT_MS", "60000".to_owned()),
            ("CES_LOG", "error".to_owned()),
        ],
    )
    .await?;
    let addr: std::net::SocketAddr = edge.base.trim_start_matches("http://").parse()?;
    let before = edge.rss_bytes()?;
    let head = unfinished_head();
    assert!(head.len() < MAX_HEAD && head.len() > MAX_HEAD - 1024);

    // From many addresses, as a botnet would: each address stays within its per-address share (64).
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let source = Ipv4Addr::new(127, 1, (i / 50 / 250) as u8, (i / 50 % 250 + 1) as u8);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let mut stream = socket.connect(addr).await?;
        stream.write_all(&head).await?;
        held.push(stream);
    }
    // Let the edge read what was sent.
    let mut after = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = edge.rss_bytes()?;
        if now <= after {
            break;
        }
        after = now;
    }
    let growth = after.saturating_sub(before);
    let per_connection = growth / CONNECTIONS as u64;
    eprintln!(
        "RSS {before} -> {after} bytes: {per_connection} B per held connection (bound {BOUND_PER_CONNECTION})"
    );
    assert!(
        per_connection <= BOUND_PER_CONNECTION,
        "{per_connection} B per connection over the bound of {BOUND_PER_CONNECTION}"
    );
    // Every one of them is held, and the node still answers its scraper.
    let metrics = ces_systest::Metrics::scrape(&edge.internal).await?;
    assert_eq!(metrics.get("ces_edge_http_connections", &[]), 10_000.0);

    // A larger head is refused as soon as it passes the cap, not buffered (hyper's default buffer takes ~408 KiB):
    // the connection ends long before the 60 s head deadline.
    drop(held.pop());
    // Its slot is free once the edge has seen it go.
    let mut free = false;
    for _ in 0..100 {
        let metrics = ces_systest::Metrics::scrape(&edge.internal).await?;
        if metrics.get("ces_edge_http_connections", &[]) < 10_000.0 {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(free, "a dropped connection gives its slot back");
    let mut big = tokio::net::TcpStream::connect(addr).await?;
    let mut head = b"GET /v1/ws HTTP/1.1\r\nHost: edge\r\nX-Big: ".to_vec();
    head.extend_from_slice(&[b'b'; 64 * 1024]);
    let _ = big.write_all(&head).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut big, &mut answer),
    )
    .await
    .expect("a head over the cap ends the connection");
    // Answered 431, or reset before the answer could be read (the edge closes with the rest of the head unread).
    assert!(
        answer.is_empty() || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
    Ok(())
}
