//! Ingest's operational HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::get;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the probes report on.
#[derive(Debug)]
pub struct State {
    redis: OnceLock<Client>,
    /// Why ingest is not consuming (starting, waiting for topics, stopped); `None` while it consumes.
    not_ready: Mutex<Option<String>>,
    metrics: OnceLock<PrometheusHandle>,
    /// Whether librdkafka's last statistics saw any broker up (refreshed every `CES_KAFKA_STATS_INTERVAL_MS`).
    pub(crate) kafka_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            redis: OnceLock::new(),
            not_ready: Mutex::new(Some("starting".into())),
            metrics: OnceLock::new(),
            kafka_up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
}

impl State {
    pub(crate) fn set_redis(&self, client: Client) {
        let _ = self.redis.set(client);
    }

    pub(crate) fn set_not_ready(&self, why: impl Into<String>) {
        *self.lock() = Some(why.into());
    }

    pub(crate) fn set_consuming(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.not_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The router.
pub fn app(state: Arc<State>) -> Router {
    let _ = state.metrics.set(ces_runtime::telemetry::metrics_handle());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> (StatusCode, String) {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    let Some(redis) = state.redis.get() else {
        return unavailable("redis not connected");
    };
    // Bounded well below a load balancer's check timeout, whatever the command timeout is.
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        redis.ping::<String>(None),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return unavailable("redis unreachable");
    }
    if let Some(why) = state.lock().clone() {
        return unavailable(&why);
    }
    if !state.kafka_up.load(std::sync::atomic::Ordering::Acquire) {
        return unavailable("kafka unreachable: no broker connection is up");
    }
    (StatusCode::OK, "ready".to_owned())
}

async fn render_metrics(AxumState(state): AxumState<Arc<State>>) -> String {
    state
        .metrics
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
