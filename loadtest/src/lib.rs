//! `ces-loadtest`: drives a running CES stack on loopback and reports what it measured.
//!
//! A run registers sessions over REST, holds one WebSocket per session, produces JSON records to Kafka whose
//! `data` carries a per-session counter `n` and the producer's clock `t` (µs), and checks every received event:
//! lost, duplicated and out-of-order by `n`, latency from `t` to the moment the frame was read.
//!
//! - [`cli`]: the command line (every scenario is bounded in count and time).
//! - [`scenario`]: `throughput`, `idle`, `hold`, `storm`, `ingest`, `raw-ws`, `redis-floor`, `broker`, `produce`; and
//!   `worker`, the process a run starts for each share of its sockets when it has more than one process may hold.
//! - [`broker`]: a bare Kafka consumer for the `broker` scenario (the raw limit of latency), and the broker's
//!   own settings for every report of a scenario that goes through Kafka.
//! - [`clients`]: registration and the per-session WebSocket task (resume on reconnect, several source addresses).
//! - [`producer`]: paced or flat-out Kafka producer with per-session acknowledgement counts.
//! - [`stats`]: hdrhistogram recorder, overall and per second.
//! - [`report`]: the JSON report, the one-screen summary and the SVG plots.
//! - [`procfs`]: RSS, CPU and run-queue wait of the stack's processes, found by their listening port.

pub mod broker;
pub mod cli;
pub mod clients;
pub mod procfs;
pub mod producer;
pub mod report;
pub mod scenario;
pub mod stats;

/// Microseconds since the Unix epoch: the clock the producer stamps into every record and the client compares.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
