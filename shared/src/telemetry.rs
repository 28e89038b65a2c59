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

/// Installs the process-wide Prometheus recorder once and returns its handle; later calls return the same handle,
/// so several services started in one test process share one registry.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle still renders our registry.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
