//! Logging and metrics initialisation, shared by every binary.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::Error;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
    /// Text when stderr is a terminal, JSON otherwise (containers).
    Auto,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "auto" => Ok(Self::Auto),
            other => Err(format!("expected text, json or auto, got {other:?}")),
        }
    }
}

/// Installs the global `tracing` subscriber. `filter` uses `RUST_LOG` syntax (e.g. `info,ces_edge=debug`).
pub fn init_tracing(filter: &str, format: LogFormat) -> Result<(), Error> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| Error::Telemetry(format!("log filter: {e}")))?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colour only on a terminal, so log files stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| Error::Telemetry(e.to_string()))
}

/// Logging and, when an OTLP endpoint is configured, trace export of a service binary. Dropping it flushes the
/// spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Installs the log subscriber ([`init_tracing`]) and the trace exporter ([`crate::otel::init_from_env`]) of
/// `service`.
pub fn init(service: &'static str, log: &str, format: LogFormat) -> Result<Telemetry, Error> {
    init_tracing(log, format)?;
    let traces = crate::otel::init_from_env(service)?;
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry { traces })
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Per-hop latency of live events, labelled by `hop` (see [`hop`]); docs/observability.md says where each hop starts
/// and ends.
pub const HOP_LATENCY: &str = "ces_hop_latency_seconds";
/// Kafka record timestamp to the frame flushed to the client's socket.
pub const E2E_LATENCY: &str = "ces_e2e_latency_seconds";

/// The values of [`HOP_LATENCY`]'s `hop` label.
pub mod hop {
    /// Record timestamp → ingest has read and validated the record.
    pub const KAFKA_TO_INGEST: &str = "kafka_to_ingest";
    /// The publishing Redis call, start → acknowledged.
    pub const INGEST_TO_REDIS: &str = "ingest_to_redis";
    /// Ingest's hand-off → the edge's dispatch task has the event.
    pub const REDIS_TO_EDGE: &str = "redis_to_edge";
    /// Dispatch → the frame is flushed to the socket.
    pub const EDGE_TO_SOCKET: &str = "edge_to_socket";
    /// The hops ingest times.
    pub const INGEST: [&str; 2] = [KAFKA_TO_INGEST, INGEST_TO_REDIS];
    /// The hops the edge times.
    pub const EDGE: [&str; 2] = [REDIS_TO_EDGE, EDGE_TO_SOCKET];
}

/// Describes the latency histograms and creates the series of `hops` (and of [`E2E_LATENCY`] with `e2e`) before
/// their first observation: the exporter prints a created histogram with every bucket at 0, so the families are
/// on `/metrics` from the start.
pub fn register_latency(hops: &[&'static str], e2e: bool) {
    metrics::describe_histogram!(HOP_LATENCY, "per-hop latency of live events, by hop");
    for &hop in hops {
        // Creating the handle registers the series; nothing is recorded.
        let _ = metrics::histogram!(HOP_LATENCY, "hop" => hop);
    }
    if e2e {
        metrics::describe_histogram!(
            E2E_LATENCY,
            "Kafka record timestamp to the frame flushed to the socket"
        );
        let _ = metrics::histogram!(E2E_LATENCY);
    }
}

/// The histogram of `hop`, to look up once (per batch, or per process) rather than once per event.
pub fn hop_histogram(hop: &'static str) -> metrics::Histogram {
    metrics::histogram!(HOP_LATENCY, "hop" => hop)
}

/// Seconds from `from_ms` to `to_ms` (wall-clock milliseconds since the Unix epoch, possibly of two hosts): never
/// negative, since a clock behind by a few milliseconds must not produce impossible latencies.
pub fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    (to_ms.saturating_sub(from_ms)).max(0) as f64 / 1000.0
}

/// Bucket bounds of every `_seconds` histogram: 0.5 ms to 60 s, so quantiles aggregate across replicas.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of ingest's batch size histogram.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle; later calls return the same handle,
/// so several services started in one test process share one registry. Histograms are Prometheus histograms
/// (buckets), not summaries, so they can be aggregated across replicas.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::Matcher;
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("ces_ingest_batch_size".into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle still renders our registry.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_never_negative() {
        assert_eq!(seconds_between(1_000, 1_250), 0.25);
        assert_eq!(seconds_between(1_250, 1_000), 0.0);
        assert_eq!(
            seconds_between(i64::MIN, i64::MAX),
            i64::MAX as f64 / 1000.0
        );
    }
}
