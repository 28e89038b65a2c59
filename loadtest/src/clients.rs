//! The client side of a run: sessions registered over REST, one task per session holding its WebSocket,
//! checking every event by the producer's counter and resuming (on another edge if need be) after a disconnect,
//! the way a production client SDK does.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use ces_client::stream::{Position, Tracker as Stream, Verdict};

use crate::stats::{Recorder, Seen, Tracker};

/// Most latency samples a socket task keeps before handing them to the [`Recorder`].
const SAMPLE_BATCH: usize = 64;
/// Longest a socket task keeps samples before handing them over.
const SAMPLE_FLUSH: Duration = Duration::from_millis(200);

/// A registered session (sent to worker processes as JSON, see `scenario::spread`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Its token.
    pub token: String,
    /// Index of the target it registered at, and first connects to.
    pub target: usize,
}

/// An HTTP base URL resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` as given.
    pub base: String,
    /// Its address.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `http://host:port`.
    pub fn parse(base: &str) -> anyhow::Result<Self> {
        let hostport = base
            .strip_prefix("http://")
            .with_context(|| format!("target {base:?} must be http://host:port"))?
            .trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()
            .with_context(|| format!("resolve {hostport}"))?
            .next()
            .with_context(|| format!("{hostport} has no address"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            addr,
        })
    }
}

#[derive(Deserialize)]
struct Registered {
    session_id: String,
    token: String,
}

/// Registers `count` sessions, spread over `targets` in turn, `concurrency` at a time. Refusals with
/// `Retry-After` (429, 503) are retried after the delay they ask for, until `deadline`.
pub async fn register_all(
    targets: &[Target],
    count: u64,
    concurrency: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Session>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let until = Instant::now() + deadline;
    let done = AtomicU64::new(0);
    let progress = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("[register] {}/{count}", done.load(Ordering::Relaxed));
        }
    };
    let work = futures::stream::iter(0..count)
        .map(|i| {
            let (http, done) = (&http, &done);
            async move {
                let target = (i % targets.len() as u64) as usize;
                let s = register_one(http, &targets[target].base, until).await?;
                done.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(Session {
                    id: s.session_id,
                    token: s.token,
                    target,
                })
            }
        })
        .buffered(concurrency)
        .try_collect::<Vec<_>>();
    tokio::select! {
        sessions = work => sessions,
        () = progress => unreachable!("the progress loop never ends"),
    }
}

async fn register_one(
    http: &reqwest::Client,
    base: &str,
    until: Instant,
) -> anyhow::Result<Registered> {
    loop {
        let resp = http
            .post(format!("{base}/v1/sessions"))
            .send()
            .await
            .with_context(|| format!("POST {base}/v1/sessions"))?;
        let status = resp.status().as_u16();
        if status == 201 {
            return Ok(resp.json().await?);
        }
        let retry = retry_after(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
        );
        let body = resp.text().await.unwrap_or_default();
        if !(status == 429 || status == 503) || Instant::now() + retry > until {
            let hint = if status == 429 {
                " (raise CES_LIMIT_REGISTRATIONS_PER_MIN on the edges for load tests, e.g. \
                 CES_LIMIT_REGISTRATIONS_PER_MIN=1000000 CES_LIMIT_CONNECTS_PER_MIN=1000000 make up)"
            } else {
                ""
            };
            bail!("POST {base}/v1/sessions answered {status}: {body}{hint}");
        }
        tokio::time::sleep(retry).await;
    }
}

/// The delay a `Retry-After` of whole seconds asks for, plus up to half a second of jitter; 1 s if absent.
fn retry_after(value: Option<&str>) -> Duration {
    let secs = value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.min(30)) + Duration::from_millis(rand::random_range(0..500))
}

/// Counters every socket task updates, read by the progress line and the report.
#[derive(Debug, Default)]
pub struct Shared {
    /// Latencies.
    pub recorder: Recorder,
    /// Sockets currently welcomed.
    pub connected: AtomicU64,
    /// Distinct events received.
    pub delivered: AtomicU64,
    /// Events received twice.
    pub duplicated: AtomicU64,
    /// Events received after a later one.
    pub out_of_order: AtomicU64,
    /// Frames that were not CES frames of this load test.
    pub unparsed: AtomicU64,
    /// Sockets that dropped while the run wanted them open.
    pub disconnects: AtomicU64,
    /// Handshakes refused with an HTTP status (429, 503) or failed at the TCP level.
    pub refused: AtomicU64,
    /// `resumed` frames with `ok: true`.
    pub resumed_ok: AtomicU64,
    /// `resumed` frames with `ok: false` (the server named a loss).
    pub resumed_lost: AtomicU64,
    /// When each resume after a disconnect completed.
    pub resumes: Mutex<Vec<Instant>>,
}

/// How one socket task ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What it received, by `n`.
    pub tracker: Tracker,
    /// Whether it ever got a welcome.
    pub welcomed: bool,
}

/// The `i`-th source address: 127.0.0.1 for the first `per_source` connections, then 127.0.0.2, ...
pub fn source_addr(i: u64, per_source: u64) -> IpAddr {
    let k = (i / per_source.max(1)) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 0)) + k.min(0xff_fffe),
    ))
}

/// Client buffers as small as the edge's: a load test of 100k sockets must not be limited by its own memory.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
}

/// Opens a WebSocket from `source` to `target`, with a resume position if given.
///
/// Not `ces_client::run`: a load test of 100,000 sockets binds each to one of many source addresses (one
/// address has too few ports), keeps its buffers as small as the edge's, and moves between edges itself; it takes
/// the client's position rules ([`Stream`]) and URL instead, so it resumes exactly as an app's client does.
async fn connect(
    target: &Target,
    source: IpAddr,
    token: &str,
    position: Option<&Position>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, Refusal> {
    let socket = TcpSocket::new_v4().map_err(Refusal::io)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(Refusal::io)?;
    let stream = socket.connect(target.addr).await.map_err(Refusal::io)?;
    stream.set_nodelay(true).map_err(Refusal::io)?;
    let url = ces_client::connection::url_for(&format!("http://{}", target.addr), token, position);
    match tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(Refusal {
            status: Some(resp.status().as_u16()),
            retry: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|v| retry_after(Some(v))),
            message: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(e) => Err(Refusal {
            status: None,
            retry: None,
            message: e.to_string(),
        }),
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
struct Refusal {
    status: Option<u16>,
    retry: Option<Duration>,
    message: String,
}

impl Refusal {
    fn io(e: std::io::Error) -> Self {
        Self {
            status: None,
            retry: None,
            message: e.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    seq: u64,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    lost: Option<ces_protocol::frame::Lost>,
}

#[derive(Deserialize)]
struct Data {
    n: u64,
    t: u64,
}

/// One session's socket, from the first connect until `stop`: reconnects with its position after any drop,
/// moving to another target ([`other_target`]); honours `Retry-After`; the first connect may be gated by `gate`.
pub async fn socket_task(
    session: Session,
    index: u64,
    targets: Arc<[Target]>,
    per_source: u64,
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) -> Outcome {
    let mut out = Outcome::default();
    let source = source_addr(index, per_source);
    let mut target = session.target;
    // The position to resume from, as the client SDK keeps it; `epoch` is the current connection's.
    let mut stream = Stream::new(None);
    let mut epoch = String::new();
    let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(SAMPLE_BATCH);
    let mut last_flush = Instant::now();
    let mut permit = Some(gate.acquire_owned().await);
    let mut failures = 0u32;
    let mut dropped_at: Option<Instant> = None;
    while !stop.is_cancelled() {
        let position = stream.resume_from().cloned();
        let attempt = tokio::select! {
            attempt = connect(&targets[target], source, &session.token, position.as_ref()) => attempt,
            () = stop.cancelled() => break,
        };
        let mut ws = match attempt {
            Ok(ws) => ws,
            Err(refusal) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                // A socket that was up and dropped meets dead nodes as it moves: expected, and counted.
                if (failures == 1 && !out.welcomed) || failures.is_multiple_of(20) {
                    tracing_line(&session, &refusal);
                }
                // A dead or draining node: try another. A busy one says when to come back.
                target = other_target(target, targets.len(), rand::random());
                let wait = refusal
                    .retry
                    .unwrap_or_else(|| backoff(rounds(failures, targets.len())));
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        failures = 0;
        let mut welcomed = false;
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                () = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    break;
                }
            };
            let Some(Ok(msg)) = msg else { break };
            let Message::Text(text) = msg else { continue };
            let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                shared.unparsed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match frame.kind.as_ref() {
                "event" => {
                    let received = Instant::now();
                    let Some(data) = frame.data else {
                        shared.unparsed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    // A `seq` seen before is the server sending an event twice; a skipped one is counted lost
                    // at the end by `n`, where every loss shows whatever its cause.
                    if stream.on_event(&epoch, frame.seq) == Verdict::Repeat {
                        shared.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match out.tracker.observe(data.n) {
                        Seen::Duplicate => {
                            shared.duplicated.fetch_add(1, Ordering::Relaxed);
                        }
                        seen => {
                            if seen == Seen::Late {
                                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            samples.push((received, crate::now_micros().saturating_sub(data.t)));
                        }
                    }
                    if samples.len() >= SAMPLE_BATCH || last_flush.elapsed() >= SAMPLE_FLUSH {
                        shared.recorder.record(&samples);
                        samples.clear();
                        last_flush = Instant::now();
                    }
                }
                "welcome" => {
                    if let Some(e) = frame.epoch {
                        epoch = e.into_owned();
                    }
                    welcomed = true;
                    out.welcomed = true;
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    permit = None;
                }
                "resumed" => {
                    if let Some(e) = &frame.epoch {
                        epoch = e.to_string();
                    }
                    // A named loss is counted below; the position moves past it (or to the new epoch).
                    stream.on_resumed(
                        frame.ok == Some(true),
                        frame.lost.as_ref(),
                        frame.reason.as_deref(),
                        frame.epoch.as_deref(),
                    );
                    if frame.ok == Some(true) {
                        shared.resumed_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.resumed_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    if dropped_at.take().is_some() {
                        shared
                            .resumes
                            .lock()
                            .expect("resumes lock")
                            .push(Instant::now());
                    }
                }
                _ => {}
            }
        }
        if welcomed {
            shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        if stop.is_cancelled() {
            break;
        }
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
        dropped_at.get_or_insert_with(Instant::now);
        target = other_target(target, targets.len(), rand::random());
        // Jitter, as a client SDK does, so a node's sockets do not all come back in the same millisecond.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..250))).await;
    }
    drop(permit);
    if !samples.is_empty() {
        shared.recorder.record(&samples);
    }
    out
}

/// A target other than `current`, picked by `random` among the other `len - 1` (`current` itself when it is the
/// only one). A client SDK given a list of nodes does this: when several nodes die at once, their sessions spread
/// over the survivors instead of all moving to the next node in the list, which would then hold two nodes' share.
pub fn other_target(current: usize, len: usize, random: u64) -> usize {
    if len <= 1 {
        return 0;
    }
    let step = 1 + (random % (len as u64 - 1)) as usize;
    (current + step) % len
}

/// How many times over a client has tried as many targets as there are others, before its `failures`-th failure
/// in a row: 0 until it has failed on `len - 1` of them. The backoff grows by rounds, not by attempts: when several
/// nodes die at once, a client that picks two dead ones in a row has learned nothing about the live ones yet.
fn rounds(failures: u32, len: usize) -> u32 {
    let others = u32::try_from(len.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .max(1);
    failures.saturating_sub(1) / others
}

/// Exponential backoff from 50-100 ms (round 0) to 1-2 s, with jitter.
fn backoff(rounds: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << rounds.min(5)).min(2000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

fn tracing_line(session: &Session, refusal: &Refusal) {
    if refusal.status.is_some_and(|s| s == 503) {
        return; // overloaded / draining: expected in a storm, counted in `refused`
    }
    eprintln!(
        "[connect] session {}: {} {}",
        session.id,
        refusal.status.map(|s| s.to_string()).unwrap_or_default(),
        refusal.message.trim()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_move_on_every_per_source_connections() {
        assert_eq!(source_addr(0, 20_000).to_string(), "127.0.0.1");
        assert_eq!(source_addr(19_999, 20_000).to_string(), "127.0.0.1");
        assert_eq!(source_addr(20_000, 20_000).to_string(), "127.0.0.2");
        assert_eq!(source_addr(300, 1).to_string(), "127.0.1.45");
    }

    #[test]
    fn another_target_is_never_the_current_one_and_reaches_every_other() {
        assert_eq!(other_target(0, 1, 7), 0);
        assert_eq!(other_target(0, 2, 0), 1);
        assert_eq!(other_target(1, 2, u64::MAX), 0);
        for current in 0..6 {
            let reached: std::collections::BTreeSet<usize> =
                (0..5).map(|r| other_target(current, 6, r)).collect();
            let others: std::collections::BTreeSet<usize> =
                (0..6).filter(|&t| t != current).collect();
            assert_eq!(reached, others, "from {current}");
        }
    }

    #[test]
    fn the_backoff_grows_once_every_other_target_was_tried() {
        assert_eq!(
            (1..=11).map(|f| rounds(f, 6)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2]
        );
        assert_eq!((1..=3).map(|f| rounds(f, 2)).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rounds(4, 1), 3, "one target: every failure is a round");
        let first = backoff(0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        assert!(backoff(9) >= Duration::from_secs(1) && backoff(9) <= Duration::from_secs(2));
    }

    #[test]
    fn frames_parse_borrowed() {
        let f: Frame<'_> = serde_json::from_str(
            r#"{"type":"event","seq":3,"id":"ev_1","event":"load.tick","data":{"n":2,"t":5,"p":"xx"}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "event");
        assert_eq!(f.seq, 3);
        assert_eq!(f.data.map(|d| (d.n, d.t)), Some((2, 5)));
        let w: Frame<'_> = serde_json::from_str(
            r#"{"type":"welcome","session_id":"s","node":"a","epoch":"e1","seq":0}"#,
        )
        .unwrap();
        assert_eq!(w.epoch.as_deref(), Some("e1"));
    }

    #[test]
    fn retry_after_is_honoured_with_jitter() {
        let d = retry_after(Some("3"));
        assert!(d >= Duration::from_secs(3) && d < Duration::from_millis(3500));
        assert!(retry_after(None) >= Duration::from_secs(1));
    }
}
