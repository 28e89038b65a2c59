//! `ingest`: produce `--count` records (or find them already produced) and time how fast ingest consumes them,
//! from its record counter, beside Redis's own time per FCALL and the pipelined `redis-benchmark PUBLISH` rate on
//! the same Redis.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cli::IngestArgs;
use crate::report::Report;

use super::producing::{self, Producing};
use super::prometheus::scrape;
use super::shell;

const INGEST_RECORDS: &str = "ces_ingest_records_total";

/// Runs `ingest`: fails when ingest's metrics do not answer or it has not consumed every record within 600 s.
pub(super) async fn run(i: &IngestArgs) -> anyhow::Result<Report> {
    let c = &i.common;
    let mut report = Report::new("ingest");
    let http = reqwest::Client::new();
    let baseline = if i.prefilled {
        0.0
    } else {
        scrape(&http, &i.common.ingest_metrics, INGEST_RECORDS).await?
    };
    let target = baseline + i.count as f64;
    // Redis's own time per publish function call, over this run: where ingest's rate goes.
    if let Err(e) = shell::redis_cli(&i.common.redis, &["CONFIG", "RESETSTAT"]) {
        report.notes.push(format!("redis-cli not run: {e:#}"));
    }
    let producing = (!i.prefilled)
        .then(|| Producing::start(c, &producing::ingest_sessions(c), Some(i.count), 0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64)> = None;
    let mut last_print = Instant::now();
    let done = loop {
        let now_count = scrape(&http, &i.common.ingest_metrics, INGEST_RECORDS).await?;
        let now = Instant::now();
        if first.is_none() && now_count > baseline {
            first = Some((now, now_count));
        }
        if now_count >= target {
            break now;
        }
        if now > deadline {
            bail!(
                "ingest consumed {} of {} records within 600 s",
                now_count - baseline,
                i.count
            );
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[ingest] {:.0}/{} records consumed",
                now_count - baseline,
                i.count
            );
            last_print = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(p) = producing {
        let stats = tokio::task::spawn_blocking(move || p.wait()).await??;
        report.produced = stats.acked_total();
        report.produce_errors = stats.errors.load(Ordering::Relaxed);
        report.notes.push(
            "records were produced while ingest consumed them: the rate is the slower of the two"
                .into(),
        );
    } else {
        report.produced = i.count;
    }
    let (t0, c0) = first.context("ingest never moved")?;
    let secs = done.duration_since(t0).as_secs_f64().max(1e-3);
    let rate = (target - c0) / secs;
    report.sessions = c.sessions;
    report.duration_s = secs;
    report.delivered = i.count;
    report.delivered_per_s = rate;
    report.notes.push(format!(
        "ingest consumed {:.0} records in {secs:.2} s after its counter first moved",
        target - c0
    ));
    if let Ok(stats) = shell::redis_cli(&i.common.redis, &["INFO", "commandstats"])
        && let Some((calls, usec)) = shell::parse_fcall_stats(&stats)
        && calls > 0
    {
        // Ingest publishes several events per call: the cost that compares across versions is per event.
        let per_event = usec / (i.count as f64).max(1.0);
        report.redis_usec_per_fcall = Some(usec / calls as f64);
        report.redis_usec_per_event = Some(per_event);
        report.notes.push(format!(
            "redis: {calls} FCALL for {} events, {per_event:.2} us per event (INFO commandstats)",
            i.count
        ));
    }
    match shell::redis_benchmark_publish(&i.common.redis, 150 + c.payload as usize) {
        Ok(raw) => {
            report.raw_limit_per_s = Some(raw);
            report.ratio_to_raw = Some(rate / raw);
        }
        Err(e) => report.notes.push(format!("redis-benchmark not run: {e:#}")),
    }
    Ok(report)
}
