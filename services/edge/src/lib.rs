//! CES edge: registers sessions, signs their tokens and delivers their events over WebSockets.
//!
//! Each node holds one Redis connection for commands and one for Pub/Sub. A socket subscribes the node to its
//! session's channel (confirmed before the welcome frame), and the [`hub`] routes every published envelope to
//! the socket's bounded queue. See docs/architecture.md for the data path and docs/protocol.md for the contract.
//!
//! The node listens twice: the public listener ([`app`]) serves clients (`/v1/sessions*`, `/v1/ws`, with TLS when
//! configured), and the internal one ([`internal_app`]) serves `/healthz`, `/readyz` and `/metrics` in plain HTTP
//! to the load balancer's and kubelet's probes and to Prometheus, and the operators' admin API (`/v1/admin/*`), so
//! an internet-facing node shows neither its metrics nor its state to clients.
//!
//! # Layout
//! - [`config`]: `CES_*` configuration.
//! - [`api`]: HTTP handlers (`/v1/sessions`, `/v1/ws`, probes, metrics).
//! - [`admin`]: the admin API on the internal listener (sessions, revocation, nodes), behind `CES_ADMIN_TOKENS`.
//! - [`labels`]: session labels in the registration body, checked and read back.
//! - [`nodes`]: each node's heartbeat in Redis (`ces:nodes`), and reading everyone's.
//! - [`demo`]: the demo page at `/demo/`, when `CES_DEMO_DIR` is set.
//! - [`hub`]: local connections, the subscription task and the dispatch task.
//! - [`subscriptions`]: the hub's subscription table (reference counts, what to SUBSCRIBE/UNSUBSCRIBE), pure.
//! - [`queue`]: a connection's bounded queue of live events, which costs nothing while idle.
//! - [`register_auth`]: who may register (API keys, upstream JWT).
//! - [`resume`]: reading the reconnection buffer and deciding what a (re)connecting client is sent.
//! - [`serve`]: the accept loop (TLS, PROXY protocol, header timeout, connection caps, graceful stop).
//! - [`proxy_protocol`]: the client address a TCP load balancer puts before a connection.
//! - [`session`]: session state in Redis (claim, release, close, admission); sending node control messages.
//! - [`ws`]: one WebSocket connection: a thin loop over the pure state machine [`ws::machine`], with the session's
//!   Redis state behind [`ws::SessionStore`].

pub mod admin;
pub mod api;
pub mod client_addr;
pub mod config;
pub mod demo;
pub mod hub;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod nodes;
pub mod proxy_protocol;
pub mod pubsub;
pub mod queue;
pub mod receipts;
pub mod register_auth;
pub mod resume;
pub mod serve;
pub mod session;
pub mod subscriptions;
pub mod ws;

mod error;

use std::future::{Future, IntoFuture as _};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use fred::clients::{Client, SubscriberClient};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
pub use error::Error;

use crate::hub::Hub;

/// Pub/Sub messages buffered in fred between the subscriber connection and the pump, which only moves them into
/// the dispatch task's queue (bounded in bytes, `CES_PUBSUB_BUFFER_BYTES`); overflowing either drops messages
/// (counted in `ces_edge_subscriber_lagged_total`), which clients recover from their buffer.
const PUBSUB_BUFFER: usize = 4_096;

/// Longest the edge waits at start for its first subscription before it serves anyway (not ready until then).
const FIRST_SUBSCRIBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest the edge waits for Redis to answer QUIT at the end of a shutdown.
const QUIT_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest the internal listener takes to finish its last requests once the node has stopped.
const INTERNAL_STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Accept queue of the internal listener: a few probes and a scraper connect to it, never a storm of clients.
pub const INTERNAL_LISTEN_BACKLOG: u32 = 128;

/// How often the node reads Redis's memory for `ces_redis_used_memory_bytes`.
const REDIS_MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct AppState {
    /// The node's configuration.
    pub config: Config,
    /// Command connection.
    pub redis: Client,
    /// Local connections and subscriptions.
    pub hub: Arc<Hub>,
    /// Fires when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks socket tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Prometheus registry.
    pub metrics: PrometheusHandle,
    /// Admission limits.
    pub limits: limits::Limits,
    /// Slots for WebSocket handshakes in progress (`CES_WS_MAX_PENDING_HANDSHAKES`).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Delivery receipts, when `CES_RECEIPTS_TOPIC` is set.
    pub receipts: Option<receipts::Receipts>,
}

/// The node's listening sockets, bound by the caller (`main.rs` from the configuration, a test on port 0).
#[derive(Debug)]
pub struct Listeners {
    /// Clients: registration and WebSockets ([`app`]), with TLS when configured. The one a load balancer
    /// exposes.
    pub public: TcpListener,
    /// Probes and metrics ([`internal_app`]), plain HTTP; reachable from the cluster's network only.
    pub internal: TcpListener,
}

/// The public router: everything clients call, and nothing else (probes and metrics answer 404 here); with
/// `CES_DEMO_DIR`, also the demo page under `/demo`.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    let demo = match &state.config.demo {
        Some(page) => page.routes(),
        None => Router::new(),
    };
    Router::new()
        .route("/v1/sessions", post(api::register))
        .route("/v1/sessions/{id}", delete(api::delete_session))
        .route("/v1/sessions/{id}/refresh", post(api::refresh))
        .route("/v1/ws", get(api::websocket))
        .merge(demo)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The internal router: `/healthz`, `/readyz`, `/metrics` and the admin API ([`admin::ROUTES`]).
pub fn internal_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(admin::router(state.clone()))
        .with_state(state)
}

/// Runs an edge node on `listeners` until `shutdown` completes, then closes every socket with 1012 and waits up to
/// the configured grace period for them. The internal listener answers until the end: `/readyz` fails (503
/// `draining`) from the moment shutdown starts while the public listener still serves, so the load balancer sees
/// it before anything closes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Listeners {
        public: listener,
        internal,
    } = listeners;
    let cancel = ces_runtime::shutdown::cancel_on(shutdown);

    let common = config.common.clone();
    let Some(redis) =
        ces_runtime::redis::connect("commands", || common.redis_builder()?.build(), &cancel)
            .await?
    else {
        return Ok(());
    };
    ces_runtime::redis::check_eviction(&redis, config.common.redis_refuse_eviction).await?;
    let make_subscriber = || {
        common
            .redis_builder()?
            .with_performance_config(|p| p.broadcast_channel_capacity = PUBSUB_BUFFER)
            .build_subscriber_client()
    };
    let Some(subscriber): Option<SubscriberClient> =
        ces_runtime::redis::connect("subscriber", make_subscriber, &cancel).await?
    else {
        return Ok(());
    };
    let hub = Hub::start(
        subscriber.clone(),
        hub::QueueLimits {
            capacity: config.queue_capacity,
            bytes: config.queue_bytes,
            node_bytes: config.queue_budget_bytes,
        },
        config.pubsub_buffer_bytes,
        &config.node_id,
    );
    // Takeovers and closes for sockets held here arrive on this node's control channel, subscribed (and kept
    // subscribed, with every session channel) by the keeper; `/readyz` fails until it is.
    tokio::spawn(pubsub::keep_receiving(
        Arc::downgrade(&hub),
        subscriber.clone(),
        redis.clone(),
        ces_protocol::keys::node_channel(&config.node_id),
    ));
    if !pubsub::first_subscribed(&hub, FIRST_SUBSCRIBE_WITHIN).await {
        warn!("not subscribed yet; serving, not ready until the subscription is in place");
    }
    let grace = config.shutdown_grace;
    let tracker = TaskTracker::new();
    let (receipts, receipts_task) = match &config.receipts {
        Some(settings) => {
            let terms = resume::StateTerms {
                ttl: config.state_ttl,
                durable_restarts: config.common.redis_durable_restarts,
                unpublished_ttl: config.session_ttl,
            };
            let (handle, task) = receipts::start(settings, &config.node_id, redis.clone(), terms)
                .map_err(|e| Error::Receipts(e.to_string()))?;
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let config_rates = config.rates;
    let max_pending_handshakes = config.max_pending_handshakes;
    let metrics = ces_runtime::telemetry::metrics_handle();
    crate::metrics::register();
    let state = Arc::new(AppState {
        config,
        redis: redis.clone(),
        hub,
        shutdown: cancel.clone(),
        tracker: tracker.clone(),
        metrics,
        limits: limits::Limits::new(config_rates),
        handshakes: Arc::new(tokio::sync::Semaphore::new(max_pending_handshakes)),
        receipts,
    });
    // Redis memory for the alert that fires before writes are refused (maxmemory with noeviction).
    tokio::spawn({
        let redis = redis.clone();
        let stop = cancel.clone();
        async move {
            let mut every = tokio::time::interval(REDIS_MEMORY_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                match ces_runtime::redis::memory(&redis).await {
                    Ok(primaries) => {
                        for m in primaries {
                            let server = m.server;
                            let (used, max) = (m.used as f64, m.max as f64);
                            ::metrics::gauge!(crate::metrics::REDIS_USED_MEMORY, "server" => server.clone())
                                .set(used);
                            ::metrics::gauge!(crate::metrics::REDIS_MAX_MEMORY, "server" => server)
                                .set(max);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "INFO memory failed"),
                }
            }
        }
    });
    // The per-IP maps keep only recently seen clients.
    tokio::spawn({
        let state = Arc::downgrade(&state);
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                match state.upgrade() {
                    Some(s) => s.limits.forget_idle(),
                    None => break,
                }
            }
        }
    });
    // Liveness for the admin API's node list: beats until the end of a graceful stop, then leaves.
    let beat_stop = CancellationToken::new();
    let beating = tokio::spawn(nodes::keep_beating(
        redis.clone(),
        state.hub.clone(),
        state.config.node_id.clone(),
        state.config.node_heartbeat,
        cancel.clone(),
        beat_stop.clone(),
    ));
    if state.config.register_auth.is_open() {
        warn!(
            "registration is open (CES_REGISTER_OPEN=true): anyone who reaches this node can register sessions; \
             set CES_REGISTER_API_KEYS or a JWT key for a deployment"
        );
    }
    let drain_delay = state.config.drain_delay;
    let serving = state.config.serving.clone();
    info!(
        addr = %listener.local_addr()?,
        internal = %internal.local_addr()?,
        node = %state.config.node_id,
        tls = serving.tls.is_some(),
        "edge listening"
    );
    // Probes and metrics: not internet-facing, so axum's own server (no TLS, no connection limits) is enough.
    // It stops last, once the sockets are gone, so `/readyz` answers 503 and `/metrics` shows the drain until then.
    let internal_stop = CancellationToken::new();
    let mut internal_server = tokio::spawn(
        axum::serve(internal, internal_app(state.clone()))
            .with_graceful_shutdown(internal_stop.clone().cancelled_owned())
            .into_future(),
    );
    // Keep accepting (answering new sockets with 503 `draining`; registrations only touch Redis and are still
    // served) until the load balancer has seen `/readyz` fail, then stop.
    let stop_accepting = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        let stop_accepting = stop_accepting.clone();
        async move {
            cancel.cancelled().await;
            tokio::time::sleep(drain_delay).await;
            stop_accepting.cancel();
        }
    });
    let connections = serve::serve(listener, app(state), serving, stop_accepting).await;

    tracker.close();
    let everything = async {
        tracker.wait().await;
        connections.wait().await;
    };
    if tokio::time::timeout(grace, everything).await.is_err() {
        warn!(
            sockets = tracker.len(),
            http_connections = connections.len(),
            "grace period over; dropping what is still open"
        );
    }
    // Every socket is gone: what they wrote gets its receipts before the node stops.
    if let Some(task) = receipts_task {
        task.finish().await;
    }
    // The heartbeat stops and the node leaves `ces:nodes` while the internal listener finishes, within the same
    // bound.
    beat_stop.cancel();
    internal_stop.cancel();
    let (left, internal_stopped) = tokio::join!(
        tokio::time::timeout(INTERNAL_STOP_WITHIN, beating),
        tokio::time::timeout(INTERNAL_STOP_WITHIN, &mut internal_server)
    );
    if left.is_err() {
        warn!(
            "could not leave ces:nodes in time; the node shows as not alive after three heartbeats"
        );
    }
    match internal_stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "internal listener failed"),
        Ok(Err(e)) => warn!(error = %e, "internal listener task failed"),
        Err(_) => {
            // A scraper or probe still holding its connection open: the node does not wait for it.
            internal_server.abort();
        }
    }
    // Bounded: with Redis gone (a whole stack stopping at once) QUIT would wait out fred's reconnect attempts.
    tokio::join!(
        ces_runtime::redis::quit(&subscriber, QUIT_WITHIN),
        ces_runtime::redis::quit(&redis, QUIT_WITHIN)
    );
    info!("edge stopped");
    Ok(())
}
