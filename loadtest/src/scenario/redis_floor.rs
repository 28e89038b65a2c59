//! `redis-floor`: the floor of Redis's CPU per event on this machine. `redis-benchmark` publishes --count
//! envelope-sized messages with `SPUBLISH` to --sessions channels named as CES names them, 64 per pipeline (an
//! ingest call carries up to 64 events), while two subscriber connections (as two edges) hold every channel
//! between them and read what Redis delivers. The report is Redis's CPU µs per message over that window: the
//! Pub/Sub part of CES's publish step with nothing else. What CES's function costs beyond it is its dedup,
//! numbering and buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::RedisFloorArgs;
use crate::procfs;
use crate::report::Report;

use super::shell;

/// Subscriber connections, as two edges.
const SUBSCRIBERS: u64 = 2;
/// Commands per pipeline of `redis-benchmark`: as many events as one ingest call carries at most.
const PIPELINE: u64 = 64;
/// A CES envelope without its padding (measured: 244 bytes with the load generator's 64 bytes of padding).
const ENVELOPE_BASE: u64 = 180;

/// The channel of the `i`-th session, the way `redis-benchmark -r` spells `__rand_int__` (12 digits).
fn channel(i: u64) -> String {
    ces_protocol::keys::channel(&format!("{i:012}"))
}

/// The channels of subscriber `s` of [`SUBSCRIBERS`]: every session whose number it is, modulo.
fn channels_of(s: u64, sessions: u64) -> Vec<String> {
    (s..sessions)
        .step_by(SUBSCRIBERS as usize)
        .map(channel)
        .collect()
}

/// `SSUBSCRIBE` of `channels` as one RESP command.
fn ssubscribe(channels: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n$10\r\nSSUBSCRIBE\r\n", channels.len() + 1).into_bytes();
    for c in channels {
        out.extend_from_slice(format!("${}\r\n{c}\r\n", c.len()).as_bytes());
    }
    out
}

/// Runs `redis-floor`: fails when Redis or `redis-benchmark` cannot be reached, or the subscribers did not
/// receive every message.
pub(super) async fn run(a: &RedisFloorArgs) -> anyhow::Result<Report> {
    let c = &a.common;
    let mut report = Report::new("redis-floor");
    let pid = procfs::pid_listening_on(&c.redis)
        .with_context(|| format!("no process listening on {} (--redis)", c.redis))?;
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for s in 0..SUBSCRIBERS {
        let channels = channels_of(s, c.sessions);
        let mut conn = tokio::net::TcpStream::connect(&c.redis).await?;
        conn.write_all(&ssubscribe(&channels)).await?;
        let received = received.clone();
        subscribers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    wait_subscribed(&c.redis, c.sessions).await?;
    let size = ENVELOPE_BASE + c.payload;
    let before = received.load(Ordering::Relaxed);
    eprintln!(
        "[redis-floor] {} channels subscribed by {SUBSCRIBERS} connections; {} SPUBLISH of {size} bytes, {PIPELINE} per pipeline",
        c.sessions, a.count
    );
    let mark = procfs::cpu_mark(&[pid]);
    let started = Instant::now();
    let (redis, count, sessions) = (c.redis.clone(), a.count, c.sessions);
    let rate = tokio::task::spawn_blocking(move || {
        shell::redis_benchmark_spublish(&redis, count, sessions, size as usize, PIPELINE)
    })
    .await??;
    // Every message carries at least its payload to a subscriber: wait until they hold that much.
    let want = before + a.count * size;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            bail!(
                "the subscribers received {} bytes, fewer than the {} of {} messages",
                received.load(Ordering::Relaxed) - before,
                a.count * size,
                a.count
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds_since(&mark, &[pid]);
    for s in subscribers {
        s.abort();
    }
    report.sessions = c.sessions;
    report.duration_s = secs;
    report.produced = a.count;
    report.delivered = a.count;
    report.delivered_per_s = a.count as f64 / secs;
    report.produced_per_s = report.delivered_per_s;
    report.raw_limit_per_s = Some(rate);
    report
        .cpu_percent
        .insert("redis".to_owned(), 100.0 * cpu / secs);
    report
        .cpu_us_per_event
        .insert("redis".to_owned(), cpu * 1e6 / a.count as f64);
    report.notes.push(format!(
        "redis-benchmark -P {PIPELINE} -c 1 -r {} -n {} SPUBLISH ces:{{__rand_int__}}:ch <{size} bytes>",
        c.sessions, a.count
    ));
    Ok(report)
}

/// Waits until Redis counts a subscriber on the last channel of each subscriber connection (they subscribe in
/// order, so every channel before it is subscribed too).
async fn wait_subscribed(redis: &str, sessions: u64) -> anyhow::Result<()> {
    let last: Vec<String> = (0..SUBSCRIBERS)
        .filter_map(|s| channels_of(s, sessions).pop())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut args = vec!["PUBSUB", "SHARDNUMSUB"];
        args.extend(last.iter().map(String::as_str));
        let out = shell::redis_cli(redis, &args)?;
        if shell::every_count_positive(&out) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the subscribers' channels are not subscribed after 10 s: {out}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_named_as_redis_benchmark_spells_them_and_split_between_subscribers() {
        assert_eq!(channel(7), "ces:{000000000007}:ch");
        let (a, b) = (channels_of(0, 5), channels_of(1, 5));
        assert_eq!(a, vec![channel(0), channel(2), channel(4)]);
        assert_eq!(b, vec![channel(1), channel(3)]);
    }

    #[test]
    fn ssubscribe_is_one_resp_array_of_bulk_strings() {
        let cmd = ssubscribe(&["a".to_owned(), "bc".to_owned()]);
        assert_eq!(cmd, b"*3\r\n$10\r\nSSUBSCRIBE\r\n$1\r\na\r\n$2\r\nbc\r\n");
    }
}
