//! Ingest's operational HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

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
#[derive(Debug, Default)]
pub struct State {
    redis: OnceLock<Client>,
    consuming: AtomicBool,
    metrics: OnceLock<PrometheusHandle>,
}

impl State {
    pub(crate) fn set_redis(&self, client: Client) {
        let _ = self.redis.set(client);
    }

    pub(crate) fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Release);
    }
}

/// The router.
pub fn app(state: Arc<State>) -> Router {
    let _ = state.metrics.set(ces_shared::telemetry::metrics_handle());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> (StatusCode, &'static str) {
    let Some(redis) = state.redis.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis not connected");
    };
    // Bounded well below a load balancer's check timeout, whatever the command timeout is.
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        redis.ping::<String>(None),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable");
    }
    if !state.consuming.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not consuming");
    }
    (StatusCode::OK, "ready")
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
