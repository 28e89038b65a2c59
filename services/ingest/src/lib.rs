//! CES ingest: moves customer events from Kafka to Redis without losing or reordering them.
//!
//! Each loop iteration takes a batch of records (bounded by count and linger time), plans it ([`batch`]: valid
//! events to publish, bad records to dead-letter), publishes the events to Redis with one pipelined Redis function call
//! per event ([`publisher`]) while producing the dead letters ([`kafka`]), and only when both are acknowledged
//! commits the batch's offsets. Transient failures (Redis or Kafka unavailable) are retried with backoff and never
//! turn an event into a dead letter; a record is dead-lettered only for a permanent reason. See
//! docs/architecture.md for the invariants.
//!
//! # Layout
//! - [`config`]: `CES_*` configuration.
//! - [`batch`]: pure planning of a batch, including dead-letter headers.
//! - [`publisher`]: the Redis publish function and pipelining.
//! - [`kafka`]: consumer, batching, dead-letter producer, commits.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod publisher;

mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::producer::FutureProducer;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::Config;
pub use error::Error;

use crate::batch::{DeadLetter, Publish};
use crate::metrics as m;
use crate::publisher::Publisher;
use ces_shared::backoff::Backoff;

const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs ingest until `shutdown` completes: serves `http` and moves records from Kafka to Redis.
///
/// On shutdown the batch in progress finishes (or, if it is waiting to retry, is abandoned uncommitted), the
/// offsets of every acknowledged batch are committed synchronously, and the function returns.
pub async fn run(
    config: Config,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let cancel = ces_shared::shutdown::cancel_on(shutdown);

    let state = Arc::new(http::State::default());
    let server = tokio::spawn(http::serve(http, state.clone(), cancel.clone()));

    let result = consume(&config, &state, &cancel).await;
    cancel.cancel();
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "http server failed"),
        Err(e) => warn!(error = %e, "http server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

async fn consume(
    config: &Config,
    state: &http::State,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let Some(publisher) = connect_redis(config, cancel).await? else {
        return Ok(());
    };
    state.set_redis(publisher.client().clone());
    let consumer = kafka::consumer(config)?;
    let producer = kafka::producer(config)?;
    state.set_consuming(true);
    info!(topics = ?config.topics, group = %config.group, "consuming");

    let mut acknowledged = std::collections::BTreeMap::new();
    let mut poll_backoff = Backoff::new(RETRY_START, RETRY_MAX);
    loop {
        let batch = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            b = kafka::next_batch(&consumer, config.batch_max, config.batch_linger) => b,
        };
        let batch = match batch {
            Ok(b) => {
                poll_backoff.reset();
                b
            }
            Err(e) => {
                warn!(error = %e, "consumer error");
                sleep_or_cancel(poll_backoff.next_delay(), cancel).await;
                continue;
            }
        };
        ::metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        let plan = batch::plan(&batch, config.max_record_bytes, OffsetDateTime::now_utc());
        let (dead, published) = tokio::join!(
            dead_letter_all(&producer, &config.dlq_topic, plan.dead, cancel),
            publish_all(&publisher, &plan.publish, cancel),
        );
        if dead.is_err() || published.is_err() {
            // Shutdown interrupted a retry: the batch is not fully acknowledged, so it is not committed.
            info!(
                records = batch.len(),
                "shutdown before the batch was acknowledged; it will be redelivered"
            );
            break;
        }
        kafka::commit(&consumer, &plan.commit, CommitMode::Async);
        // Merge, so the final synchronous commit covers every partition this replica acknowledged.
        acknowledged.extend(plan.commit);
    }
    kafka::commit(&consumer, &acknowledged, CommitMode::Sync);
    state.set_consuming(false);
    info!("ingest stopped");
    Ok(())
}

async fn connect_redis(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<Option<Publisher>, Error> {
    let make = || ces_shared::redis::builder(&config.common.redis_url)?.build();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while let Some(client) = ces_shared::redis::connect("publisher", make, cancel).await? {
        match Publisher::new(client.clone(), config.limits).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => {
                // fred clients are not closed by drop; quit so each attempt does not leak a connection.
                let _ = fred::interfaces::ClientLike::quit(&client).await;
                warn!(error = %e, "loading the redis function library failed; retrying");
                if !sleep_or_cancel(backoff.next_delay(), cancel).await {
                    break;
                }
            }
        }
    }
    Ok(None)
}

/// Publishes every event, retrying the failed suffix in order until Redis has acknowledged all of them.
async fn publish_all(
    publisher: &Publisher,
    events: &[Publish],
    cancel: &CancellationToken,
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut pending: Vec<&Publish> = events.iter().collect();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !pending.is_empty() {
        let results = publisher.publish(&pending).await;
        let first_failed = results
            .iter()
            .position(Result::is_err)
            .unwrap_or(results.len());
        count_outcomes(&results[..first_failed]);
        if first_failed == results.len() {
            break;
        }
        // Retry from the first failure on, including events after it that did run: per-session order needs the
        // failed event to go first, and the ones that ran are then dropped as duplicates by their id.
        let error = results.into_iter().nth(first_failed).and_then(Result::err);
        pending.drain(..first_failed);
        ::metrics::counter!(m::RETRIES, "target" => "redis").increment(1);
        if let Some(e) = &error {
            if publisher::is_function_missing(e)
                && let Err(e) = publisher.load_library().await
            {
                warn!(error = %e, "reloading the redis function library failed");
            }
            warn!(pending = pending.len(), error = %e, "redis publish failed; retrying");
        }
        if !sleep_or_cancel(backoff.next_delay(), cancel).await {
            return Err(Error::ShuttingDown);
        }
    }
    ::metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(())
}

fn count_outcomes(results: &[Result<publisher::Outcome, Error>]) {
    let duplicates = results
        .iter()
        .filter(|r| matches!(r, Ok(publisher::Outcome::Duplicate)))
        .count();
    ::metrics::counter!(m::PUBLISHED).increment((results.len() - duplicates) as u64);
    ::metrics::counter!(m::DUPLICATES).increment(duplicates as u64);
}

/// Produces every dead letter, retrying the failed ones until Kafka has acknowledged all of them.
async fn dead_letter_all(
    producer: &FutureProducer,
    topic: &str,
    mut dead: Vec<DeadLetter>,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !dead.is_empty() {
        let (failed, error) = kafka::send_dead_letters(producer, topic, dead).await;
        dead = failed;
        if let Some(e) = error {
            ::metrics::counter!(m::RETRIES, "target" => "kafka").increment(1);
            error!(pending = dead.len(), error = %e, "dead-letter produce failed; retrying");
            if !sleep_or_cancel(backoff.next_delay(), cancel).await {
                return Err(Error::ShuttingDown);
            }
        }
    }
    Ok(())
}

/// Sleeps for `d`; `false` if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
