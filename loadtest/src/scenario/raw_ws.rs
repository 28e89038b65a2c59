//! `raw-ws`: the raw limit of WebSocket push on this machine. A tokio-tungstenite server in this process pushes
//! event-sized frames flat out, written as the edge writes them, over C loopback connections to readers in this
//! process too; the report is the rate the readers received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt as _, StreamExt as _};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::cli::Common;
use crate::clients;
use crate::procfs;
use crate::report::Report;

/// Frame the raw push sends: the size of a CES event frame with the same padding.
fn raw_frame(payload: usize) -> String {
    format!(
        r#"{{"type":"event","seq":1,"id":"ev_0123456789abcdef0123456789abcdef","event":"load.tick","data":{{"n":1,"t":{},"p":"{}"}}}}"#,
        crate::now_micros(),
        "x".repeat(payload)
    )
}

/// Runs `raw-ws`: fails when the file-descriptor limit is too low for both ends of every connection, or not every
/// connection opens.
pub(super) async fn run(c: &Common) -> anyhow::Result<Report> {
    let mut report = Report::new("raw-ws");
    let conns = c.connections();
    // Both ends of every connection live in this process.
    if let Some(limit) = procfs::open_files_limit()
        && 2 * conns + 64 > limit
    {
        bail!(
            "raw-ws holds both ends of each connection: {conns} connections need {} file descriptors, the limit \
             is {limit} (ulimit -n)",
            2 * conns + 64
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let go = CancellationToken::new();
    let frame = Utf8Bytes::from(raw_frame(c.payload as usize));
    let server = tokio::spawn(serve(listener, frame, go.clone(), stop.clone()));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency as usize));
    let connected = Arc::new(AtomicU64::new(0));
    for i in 0..conns {
        let (received, stop, gate, connected) = (
            received.clone(),
            stop.clone(),
            gate.clone(),
            connected.clone(),
        );
        let per_source = c.per_source;
        readers.spawn(async move {
            let ws = {
                let _permit = gate.acquire().await;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::new(
                    clients::source_addr(i, per_source),
                    0,
                ))?;
                let stream = socket.connect(addr).await?;
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    format!("ws://{addr}/"),
                    stream,
                    Some(clients::ws_config()),
                )
                .await?;
                ws
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let (_, mut read) = ws.split();
            loop {
                tokio::select! {
                    msg = read.next() => match msg {
                        Some(Ok(_)) => { received.fetch_add(1, Ordering::Relaxed); }
                        _ => break,
                    },
                    () = stop.cancelled() => break,
                }
            }
            anyhow::Ok(())
        });
    }
    let until = Instant::now() + Duration::from_secs(60 + conns / 200);
    while connected.load(Ordering::Relaxed) < conns {
        if Instant::now() > until {
            stop.cancel();
            bail!(
                "only {} of {conns} raw connections opened",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[raw-ws] {conns} connections open; pushing for {} s",
        c.duration
    );
    go.cancel();
    let start = Instant::now();
    let base = received.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = base;
    while start.elapsed() < Duration::from_secs(c.duration) {
        tick.tick().await;
        let now = received.load(Ordering::Relaxed);
        eprintln!(
            "[raw-ws {:>3.0}s] +{}/s",
            start.elapsed().as_secs_f64(),
            now - last
        );
        last = now;
    }
    let total = received.load(Ordering::Relaxed) - base;
    let secs = start.elapsed().as_secs_f64();
    stop.cancel();
    readers.shutdown().await;
    let _ = server.await;
    report.sessions = conns;
    report.connections = conns;
    report.duration_s = secs;
    report.delivered = total;
    report.delivered_per_s = total as f64 / secs;
    report.raw_limit_per_s = Some(report.delivered_per_s);
    Ok(report)
}

/// The raw server: accepts WebSocket connections on `listener` until `stop`, and pushes `frame` over each from
/// `go` until `stop`.
async fn serve(
    listener: tokio::net::TcpListener,
    frame: Utf8Bytes,
    go: CancellationToken,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors: wait instead of spinning.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            () = stop.cancelled() => break,
        };
        conns.spawn(push(stream, frame.clone(), go.clone(), stop.clone()));
    }
    conns.shutdown().await;
}

/// One connection of the raw server: the handshake, then `frame` flat out from `go` until `stop` or an error.
async fn push(
    stream: tokio::net::TcpStream,
    frame: Utf8Bytes,
    go: CancellationToken,
    stop: CancellationToken,
) {
    let config = clients::ws_config().write_buffer_size(16 * 1024);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    go.cancelled().await;
    // As the edge writes: up to 64 frames fed, then one flush.
    while !stop.is_cancelled() {
        for _ in 0..64 {
            if ws.feed(Message::Text(frame.clone())).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_are_the_size_of_event_frames() {
        let f = raw_frame(64);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "event");
        assert!(f.len() > 64 + 100);
    }
}
