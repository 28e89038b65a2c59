//! `broker`: the raw limit of latency. Produce at `--rate` and read the records back with a bare Kafka consumer on
//! the same broker, nothing of CES in between; reports producer → consumer latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cli::BrokerArgs;
use crate::report::Report;

use super::producing::Producing;

/// Runs `broker`.
pub(super) async fn run(b: &BrokerArgs) -> anyhow::Result<Report> {
    let c = &b.common;
    let mut report = Report::new("broker");
    let consumer = {
        let (brokers, topic) = (c.brokers.clone(), c.topic.clone());
        let fetch = crate::broker::Fetch {
            wait_ms: b.fetch_wait_ms,
            min_bytes: b.fetch_min_bytes,
        };
        tokio::task::spawn_blocking(move || crate::broker::subscribe(&brokers, &topic, fetch))
            .await??
    };
    let recorder = Arc::new(crate::stats::Recorder::new());
    let running = crate::broker::spawn(consumer, recorder.clone());
    let sessions: Vec<String> = (0..c.sessions).map(|i| format!("lt-broker-{i}")).collect();
    let producing = Producing::start(c, &sessions, None, c.rate);
    let started = producing.started;
    let produced = tokio::task::spawn_blocking(move || producing.wait()).await??;
    let produce_secs = started.elapsed().as_secs_f64();
    let acked = produced.acked_total();
    let deadline = Instant::now() + Duration::from_secs(c.settle);
    while running.consumed.records.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_secs = started.elapsed().as_secs_f64();
    let consumed = running.stop()?;
    let records = consumed.records.load(Ordering::Relaxed);
    report.sessions = c.sessions;
    report.rate_target = c.rate;
    report.duration_s = c.duration as f64;
    report.produced = acked;
    report.produce_errors = produced.errors.load(Ordering::Relaxed);
    report.delivered = records;
    report.lost = acked.saturating_sub(records);
    report.produced_per_s = acked as f64 / produce_secs.max(1e-3);
    report.delivered_per_s = records as f64 / read_secs.max(1e-3);
    report.latency = recorder.quantiles();
    report.seconds = recorder.seconds();
    report.cdf = recorder.cdf();
    report.notes.push(format!(
        "a bare consumer (fetch.wait.max.ms={}, fetch.min.bytes={}) read {records} records from {}; {} without a producer clock",
        b.fetch_wait_ms,
        b.fetch_min_bytes,
        c.topic,
        consumed.unparsed.load(Ordering::Relaxed)
    ));
    Ok(report)
}
