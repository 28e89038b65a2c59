//! CES ingest: moves customer events from Kafka to Redis without losing or reordering them.
//!
//! Each loop iteration takes a batch of records (bounded by count and linger time), plans it ([`batch`]: valid
//! events to publish, bad records to dead-letter, judged by the JSON Schemas of [`schemas`]), publishes the
//! events to Redis with one pipelined Redis function call per event ([`publisher`]) while producing the dead
//! letters ([`kafka`]), and only when both are acknowledged commits the batch's offsets. While a batch is in
//! flight the consumer keeps being polled: it reads ahead at most one batch, and when a [`breaker`] opens it
//! pauses every partition, so an outage costs neither memory nor group membership. Transient failures (Redis or
//! Kafka unavailable) are retried with backoff and never turn an event into a dead letter; a record is
//! dead-lettered only for a permanent reason. See docs/ingest.md for the design and its invariants.
//!
//! # Layout
//! - [`config`]: `CES_*` configuration.
//! - [`batch`]: pure planning of a batch, including dead-letter headers.
//! - [`schemas`]: the JSON Schema set, reloaded on SIGHUP.
//! - [`publisher`]: the Redis publish function, pipelining, and which Redis errors are the event's own.
//! - [`breaker`]: circuit breakers for Redis and Kafka.
//! - [`kafka`]: consumer, batching, pause/resume, dead-letter producer, commits.
//! - `engine`: the loop (consume, plan, publish and dead-letter, retry, commit); it only performs what these
//!   pure values decide:
//!   - [`retry`]: what to send again after a failure, what to give up, when a batch may be committed;
//!   - [`commit`]: which offsets are committed, and when;
//!   - [`pause`]: when partitions are paused and the consumer polled;
//!   - [`revocations`]: which held records and settled offsets a partition revocation made stale.
//! - [`topics`]: waiting for input topics and creating the dead-letter topic.
//! - `dlq_backlog`: the dead letters not yet handled, read in the background for `ces_ingest_dlq_backlog`.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod breaker;
pub mod commit;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pause;
pub mod publisher;
pub mod retry;
pub mod revocations;
pub mod schemas;
pub mod topics;

mod dlq_backlog;
mod engine;
mod error;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::warn;

pub use config::Config;
pub use error::Error;

use crate::schemas::SchemaStore;

/// Runs ingest until `shutdown` completes: serves `http` and moves records from Kafka to Redis.
///
/// Fails at once if the schema directory does not load. On shutdown the batch in progress finishes (or, if it
/// is waiting to retry, is abandoned uncommitted), the offsets of every acknowledged batch are committed
/// synchronously, and the function returns.
pub async fn run(
    config: Config,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // The recorder first, so the schema count set while loading is kept.
    let _ = ces_runtime::telemetry::metrics_handle();
    metrics::register(&config.topics);
    let schemas = Arc::new(SchemaStore::load(
        config.schema_dir.clone(),
        config.unknown_types,
    )?);
    let cancel = ces_runtime::shutdown::cancel_on(shutdown);

    let state = Arc::new(http::State::default());
    let server = tokio::spawn(http::serve(http, state.clone(), cancel.clone()));
    let reloads = tokio::spawn(schemas::reload_on_hangup(schemas.clone(), cancel.clone()));
    let backlog = tokio::spawn(dlq_backlog::run(config.clone(), cancel.clone()));

    let result = engine::consume(&config, &schemas, &state, &cancel).await;
    cancel.cancel();
    let _ = reloads.await;
    let _ = backlog.await;
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "http server failed"),
        Err(e) => warn!(error = %e, "http server task failed"),
        Ok(Ok(())) => {}
    }
    result
}
