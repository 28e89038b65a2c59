//! `raw-ws`: the raw limit of WebSocket push on this machine. A tokio-tungstenite server in this process pushes
//! event-sized frames, written as the edge writes them, over C loopback connections to readers in this process
//! too: flat out (`--rate 0`, the report is the rate the readers received), or at --rate frames per second spread
//! evenly over the connections (the floor of the edges' CPU per delivered event: the report is the server's CPU
//! per frame). The server runs on a runtime of its own, on threads named [`SERVER_THREADS`], so its CPU is
//! measured apart from the readers'.

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

/// The name of the raw server's threads (at most 15 bytes: the kernel's limit for a thread name).
const SERVER_THREADS: &str = "raw-ws-server";
/// The raw server's worker threads: as many as an edge has on this machine's two cores.
const SERVER_WORKERS: usize = 2;

/// When each connection of a paced push writes: every `period`, the k-th connection accepted starting `k / rate`
/// seconds after the start, so that the connections together write `rate` frames per second, evenly spread.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pace {
    rate: u64,
    period: Duration,
}

impl Pace {
    /// `None` for flat out (`rate` 0).
    fn new(rate: u64, connections: u64) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate,
            period: nanos(u128::from(connections.max(1)) * 1_000_000_000 / u128::from(rate)),
        })
    }

    /// When the `k`-th connection writes its first frame, after the start.
    fn offset(&self, k: u64) -> Duration {
        let period = self.period.as_nanos().max(1);
        nanos(u128::from(k) * 1_000_000_000 / u128::from(self.rate) % period)
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A runtime of its own, shut down without waiting when dropped: a runtime dropped the plain way inside another
/// one's task panics, which any early return of [`run`] would do.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

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
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let go = CancellationToken::new();
    let frame = Utf8Bytes::from(raw_frame(c.payload as usize));
    let pace = Pace::new(c.rate, conns);
    let server_runtime = Background(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_WORKERS)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()?,
    ));
    let server =
        server_runtime
            .handle()
            .spawn(serve(listener, frame, pace, go.clone(), stop.clone()));
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
        "[raw-ws] {conns} connections open; pushing {} for {} s",
        pace.map_or("flat out".to_owned(), |p| format!("{}/s", p.rate)),
        c.duration
    );
    go.cancel();
    let start = Instant::now();
    let base = received.load(Ordering::Relaxed);
    let (server_cpu, all_cpu) = (
        procfs::own_threads_cpu_seconds(SERVER_THREADS),
        procfs::own_cpu_seconds(),
    );
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
    let server_cpu = procfs::own_threads_cpu_seconds(SERVER_THREADS) - server_cpu;
    let readers_cpu = procfs::own_cpu_seconds() - all_cpu - server_cpu;
    stop.cancel();
    readers.shutdown().await;
    let _ = server.await;
    drop(server_runtime);
    report.sessions = conns;
    report.connections = conns;
    report.rate_target = c.rate;
    report.duration_s = secs;
    report.delivered = total;
    report.delivered_per_s = total as f64 / secs;
    report.raw_limit_per_s = Some(report.delivered_per_s);
    for (name, cpu) in [("ws_server", server_cpu), ("ws_readers", readers_cpu)] {
        report
            .cpu_percent
            .insert(name.to_owned(), 100.0 * cpu / secs);
        if total > 0 {
            report
                .cpu_us_per_event
                .insert(name.to_owned(), cpu * 1e6 / total as f64);
        }
    }
    Ok(report)
}

/// The raw server: accepts WebSocket connections on `listener` until `stop`, and pushes `frame` over each from
/// `go` until `stop`, as `pace` says.
async fn serve(
    listener: std::net::TcpListener,
    frame: Utf8Bytes,
    pace: Option<Pace>,
    go: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut conns = JoinSet::new();
    let mut accepted = 0u64;
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                // Out of file descriptors: wait instead of spinning.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            () = stop.cancelled() => break,
        };
        let when = pace.map(|p| (p.offset(accepted), p.period));
        accepted += 1;
        conns.spawn(push(stream, frame.clone(), when, go.clone(), stop.clone()));
    }
    conns.shutdown().await;
}

/// One connection of the raw server: the handshake, then `frame` from `go` until `stop` or an error. Flat out
/// (`when` is `None`): up to 64 frames fed, then one flush, as the edge writes a burst. Paced (`when` is the first
/// write after `go` and the period): one frame and its flush at a time, as the edge writes a socket's one event.
async fn push(
    stream: tokio::net::TcpStream,
    frame: Utf8Bytes,
    when: Option<(Duration, Duration)>,
    go: CancellationToken,
    stop: CancellationToken,
) {
    let config = clients::ws_config().write_buffer_size(16 * 1024);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    go.cancelled().await;
    if let Some((offset, period)) = when {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break,
            }
            if ws.send(Message::Text(frame.clone())).await.is_err() {
                return;
            }
        }
    } else {
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

    #[test]
    fn a_paced_push_spreads_the_rate_evenly_over_the_connections() {
        assert_eq!(Pace::new(0, 2000), None, "rate 0 is flat out");
        let p = Pace::new(5000, 2000).unwrap();
        // Each of 2,000 connections writes 2.5 frames per second: every 400 ms.
        assert_eq!(p.period, Duration::from_millis(400));
        assert_eq!(p.offset(0), Duration::ZERO);
        assert_eq!(p.offset(1), Duration::from_micros(200));
        assert_eq!(p.offset(1999), Duration::from_micros(399_800));
        // A connection past the first 2,000 (a reconnect) falls back into the same period.
        assert_eq!(p.offset(2001), Duration::from_micros(200));
        // Fewer connections than frames per second: each writes more often.
        assert_eq!(
            Pace::new(1000, 10).unwrap().period,
            Duration::from_millis(10)
        );
    }
}
