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
//! - [`topics`]: waiting for input topics and creating the dead-letter topic.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod breaker;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod publisher;
pub mod schemas;
pub mod topics;

mod error;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::producer::FutureProducer;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::Config;
pub use error::Error;

use crate::batch::{DeadLetter, InputRecord, Publish};
use crate::breaker::Breaker;
use crate::kafka::IngestConsumer;
use crate::metrics as m;
use crate::publisher::Publisher;
use crate::schemas::SchemaStore;
use ces_runtime::backoff::Backoff;

const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Bound on the synchronous offset commit at shutdown.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// A batch still in flight after this long with the read-ahead full means ingest is saturated: partitions are
/// paused until it catches up.
const SATURATED_AFTER: Duration = Duration::from_secs(5);
/// How often a waiting loop looks at the breakers again.
const TICK: Duration = Duration::from_millis(100);

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
    let schemas = Arc::new(SchemaStore::load(
        config.schema_dir.clone(),
        config.unknown_types,
    )?);
    let cancel = ces_runtime::shutdown::cancel_on(shutdown);

    let state = Arc::new(http::State::default());
    let server = tokio::spawn(http::serve(http, state.clone(), cancel.clone()));
    let reloads = tokio::spawn(schemas::reload_on_hangup(schemas.clone(), cancel.clone()));

    let result = consume(&config, &schemas, &state, &cancel).await;
    cancel.cancel();
    let _ = reloads.await;
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "http server failed"),
        Err(e) => warn!(error = %e, "http server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// What one batch needs besides its records.
struct Sinks<'a> {
    publisher: &'a Publisher,
    producer: &'a FutureProducer,
    dlq_topic: &'a str,
    redis: &'a Breaker,
    kafka: &'a Breaker,
    max_attempts: u32,
    cancel: &'a CancellationToken,
}

async fn consume(
    config: &Config,
    schemas: &SchemaStore,
    state: &http::State,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let Some(publisher) = connect_redis(config, cancel).await? else {
        return Ok(());
    };
    state.set_redis(publisher.client().clone());
    if !topics::ensure(config, state, cancel).await? {
        return Ok(());
    }
    let consumer = Arc::new(kafka::consumer(config, state.kafka_up.clone())?);
    let producer = kafka::producer(config)?;
    let redis = Breaker::new("redis", config.breaker);
    let kafka_breaker = Breaker::new("kafka", config.breaker);
    let sinks = Sinks {
        publisher: &publisher,
        producer: &producer,
        dlq_topic: &config.dlq_topic,
        redis: &redis,
        kafka: &kafka_breaker,
        max_attempts: config.max_attempts,
        cancel,
    };
    ::metrics::gauge!(m::PAUSED_PARTITIONS).set(0.0);
    state.set_consuming();
    info!(topics = ?config.topics, group = %config.group, "consuming");

    // Offsets Redis has every event below, per partition: committed every `commit_interval` (`uncommitted`
    // holds those not sent yet) and all of them at shutdown.
    let mut acknowledged = BTreeMap::new();
    let mut uncommitted = BTreeMap::new();
    let mut last_commit = Instant::now();
    // Records read while the previous batch was in flight: at most one batch, the memory bound of ingest.
    let mut ahead: Vec<InputRecord> = Vec::new();
    let mut paused = false;
    let mut poll_backoff = Backoff::new(RETRY_START, RETRY_MAX);
    loop {
        // Paused partitions deliver nothing: make sure they are flowing before waiting for records.
        if !resume(&consumer, &mut paused, cancel).await {
            break;
        }
        let next = kafka::next_batch(
            &consumer,
            std::mem::take(&mut ahead),
            config.batch_max,
            config.batch_linger,
        );
        tokio::pin!(next);
        // While waiting, offsets acknowledged less than `commit_interval` ago are committed once it has passed,
        // so an idle ingest leaves nothing uncommitted for long. The batch future is kept across that commit:
        // dropping it would drop the records it already took from the consumer.
        let batch = loop {
            let due = last_commit + config.commit_interval;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break None,
                b = &mut next => break Some(b),
                () = tokio::time::sleep_until(due.into()), if !uncommitted.is_empty() => {
                    commit_acknowledged(&consumer, &mut uncommitted, &mut acknowledged);
                    last_commit = Instant::now();
                }
            }
        };
        let Some(batch) = batch else { break };
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
        let plan = batch::plan(
            &batch,
            config.max_record_bytes,
            &schemas.current(),
            OffsetDateTime::now_utc(),
        );
        let work = settle(&batch, plan.dead, &plan.publish, &sinks);
        let settled = drive(
            work,
            &consumer,
            &mut ahead,
            batch.len(),
            config.batch_max,
            &[&redis, &kafka_breaker],
            &mut paused,
        )
        .await;
        if settled.is_err() {
            // Shutdown interrupted a retry: the batch is not fully acknowledged, so it is not committed.
            info!(
                records = batch.len() + ahead.len(),
                "shutdown before the batch was acknowledged; it will be redelivered"
            );
            break;
        }
        uncommitted.extend(plan.commit);
        if last_commit.elapsed() >= config.commit_interval {
            commit_acknowledged(&consumer, &mut uncommitted, &mut acknowledged);
            last_commit = Instant::now();
        }
        ::metrics::gauge!(m::PENDING_RECORDS).set(ahead.len() as f64);
    }
    acknowledged.extend(std::mem::take(&mut uncommitted));
    keep_owned(&consumer, &mut BTreeMap::new(), &mut acknowledged);
    final_commit(consumer, acknowledged).await;
    state.set_not_ready("stopped");
    info!("ingest stopped");
    Ok(())
}

/// Commits `uncommitted` asynchronously (the partitions this replica still owns) and moves it into `acknowledged`,
/// so the final synchronous commit covers every partition this replica acknowledged.
fn commit_acknowledged(
    consumer: &IngestConsumer,
    uncommitted: &mut BTreeMap<(String, i32), i64>,
    acknowledged: &mut BTreeMap<(String, i32), i64>,
) {
    keep_owned(consumer, uncommitted, acknowledged);
    kafka::commit(consumer, uncommitted, CommitMode::Async);
    acknowledged.append(uncommitted);
}

/// Keeps only the offsets of partitions this replica owns now: a late commit for a partition that moved to
/// another replica could move that replica's position back. Records read ahead are kept whatever their
/// partition: dropping them could lose records fetched after a partition came back to this replica, while
/// publishing them is harmless (the next owner's copies are dropped as duplicates).
fn keep_owned(
    consumer: &IngestConsumer,
    commit: &mut BTreeMap<(String, i32), i64>,
    acknowledged: &mut BTreeMap<(String, i32), i64>,
) {
    let owned: HashSet<(String, i32)> = match consumer.assignment() {
        Ok(tpl) => tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect(),
        // Not knowing, commit nothing: a skipped commit is a redelivery, never a loss.
        Err(e) => {
            warn!(error = %e, "cannot read the assignment; skipping this commit");
            HashSet::new()
        }
    };
    commit.retain(|tp, _| owned.contains(tp));
    acknowledged.retain(|tp, _| owned.contains(tp));
}

/// Resumes paused partitions, retrying until librdkafka accepts; `false` if cancelled first.
async fn resume(consumer: &IngestConsumer, paused: &mut bool, cancel: &CancellationToken) -> bool {
    loop {
        pause(consumer, false, paused);
        if !*paused {
            return true;
        }
        if !sleep_or_cancel(TICK, cancel).await {
            return false;
        }
    }
}

/// Commits every acknowledged offset synchronously, within [`FINAL_COMMIT_TIMEOUT`], then lets go of the consumer.
///
/// With the brokers gone, librdkafka's synchronous commit and its close both wait for a coordinator that never
/// answers; neither may hold up the process exit. An offset not committed is only a redelivery, which event ids
/// make harmless.
async fn final_commit(consumer: Arc<IngestConsumer>, acknowledged: BTreeMap<(String, i32), i64>) {
    // A plain thread, not `spawn_blocking`: the runtime waits for its blocking tasks when it shuts down, and
    // this one may never return.
    let (done, committed) = tokio::sync::oneshot::channel();
    let committing = consumer.clone();
    std::thread::spawn(move || {
        kafka::commit(&committing, &acknowledged, CommitMode::Sync);
        let _ = done.send(());
    });
    if tokio::time::timeout(FINAL_COMMIT_TIMEOUT, committed)
        .await
        .is_err()
    {
        warn!(
            timeout = ?FINAL_COMMIT_TIMEOUT,
            "final offset commit did not finish; those records will be redelivered and deduplicated"
        );
    }
    // Leaving the group (close) happens when the last reference drops; do it off the runtime, unawaited.
    std::thread::spawn(move || drop(consumer));
}

/// Runs `work` (one batch) to completion while polling the consumer: records are read ahead up to `max_ahead`,
/// and every partition is paused while a breaker is tripped, so the consumer stays in its group through an
/// outage of any length without fetching anything.
async fn drive(
    work: impl Future<Output = Result<(), Error>>,
    consumer: &IngestConsumer,
    ahead: &mut Vec<InputRecord>,
    in_flight: usize,
    max_ahead: usize,
    breakers: &[&Breaker],
    paused: &mut bool,
) -> Result<(), Error> {
    tokio::pin!(work);
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consumer_failing = false;
    loop {
        // Saturated: the read-ahead is full and the batch is slow. Pausing lets polling go on (rebalances are
        // served, the group membership kept) without reading more.
        let saturated = ahead.len() >= max_ahead && started.elapsed() >= SATURATED_AFTER;
        pause(
            consumer,
            saturated || breakers.iter().any(|b| b.is_tripped()),
            paused,
        );
        ::metrics::gauge!(m::PENDING_RECORDS).set((in_flight + ahead.len()) as f64);
        // Paused partitions deliver nothing, but polling must go on: it is what keeps the group membership.
        let poll = !consumer_failing && (*paused || ahead.len() < max_ahead);
        tokio::select! {
            biased;
            r = &mut work => return r,
            m = consumer.recv(), if poll => match m {
                Ok(msg) => ahead.push(kafka::to_input(&msg)),
                Err(e) => {
                    // Back off until the next tick rather than spin on a failing broker.
                    warn!(error = %e, "consumer error while a batch is in flight");
                    consumer_failing = true;
                }
            },
            _ = tick.tick() => consumer_failing = false,
        }
    }
}

/// Pauses every partition when `want`, resumes them when not; a failure is retried at the next call.
fn pause(consumer: &IngestConsumer, want: bool, paused: &mut bool) {
    if want == *paused {
        return;
    }
    match kafka::set_paused(consumer, want) {
        Ok(partitions) => {
            *paused = want;
            ::metrics::gauge!(m::PAUSED_PARTITIONS).set(partitions as f64);
            info!(partitions, paused = want, "partitions paused or resumed");
        }
        Err(e) => warn!(error = %e, "cannot pause or resume partitions; retrying"),
    }
}

/// Settles one batch: dead letters produced and events published (those Redis keeps rejecting dead-lettered
/// too). `Err` only when shutdown interrupted it.
async fn settle(
    batch: &[InputRecord],
    dead: Vec<DeadLetter>,
    publish: &[Publish],
    sinks: &Sinks<'_>,
) -> Result<(), Error> {
    let (dead, given_up) = tokio::join!(dead_letter_all(sinks, dead), publish_all(sinks, publish),);
    dead?;
    let given_up = given_up?;
    if !given_up.is_empty() {
        let now = OffsetDateTime::now_utc();
        let letters = given_up
            .iter()
            .map(|g| batch::given_up(&batch[g.record], g.attempts, &g.error, now))
            .collect();
        dead_letter_all(sinks, letters).await?;
    }
    Ok(())
}

async fn connect_redis(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<Option<Publisher>, Error> {
    let make = || config.common.redis_builder()?.build();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while let Some(client) = ces_runtime::redis::connect("publisher", make, cancel).await? {
        match Publisher::new(client.clone(), config.limits, config.redis_timeout).await {
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

/// An event Redis kept rejecting for a reason of its own.
struct GivenUp {
    record: usize,
    attempts: u32,
    error: String,
}

/// Publishes every event, retrying the failed suffix in order until Redis has acknowledged all of them.
///
/// An outage (see [`publisher::is_event_error`]) is retried for as long as it lasts, through the breaker; an
/// event Redis rejects for a reason of its own is retried `max_attempts` times, then given up and returned.
async fn publish_all(sinks: &Sinks<'_>, events: &[Publish]) -> Result<Vec<GivenUp>, Error> {
    let mut given_up = Vec::new();
    if events.is_empty() {
        return Ok(given_up);
    }
    let started = Instant::now();
    let mut pending: Vec<&Publish> = events.iter().collect();
    let mut attempts: HashMap<usize, u32> = HashMap::new();
    // Events whose outcome is already counted: after a failure the ones behind it run again and come back as
    // duplicates of themselves, which must not count twice.
    let mut counted: HashSet<usize> = HashSet::new();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !pending.is_empty() {
        if !wait_permitted(sinks.redis, sinks.cancel).await {
            return Err(Error::ShuttingDown);
        }
        let call = Instant::now();
        let results = sinks.publisher.publish(&pending).await;
        let call_seconds = call.elapsed().as_secs_f64();
        let first_failed = results
            .iter()
            .position(Result::is_err)
            .unwrap_or(results.len());
        count_outcomes(&pending, &results, call_seconds, &mut counted);
        let Some(error) = results.into_iter().nth(first_failed).and_then(Result::err) else {
            sinks.redis.on_success();
            break;
        };
        // Retry from the first failure on, including events after it that did run: per-session order needs the
        // failed event to go first, and the ones that ran are then dropped as duplicates by their id.
        pending.drain(..first_failed);
        if publisher::is_event_error(&error) {
            // Redis answered: it is up, so this is not an outage and must not trip the breaker.
            sinks.redis.on_success();
            let event = pending[0];
            let tries = attempts.entry(event.record).or_insert(0);
            *tries += 1;
            if *tries >= sinks.max_attempts {
                error!(
                    session_id = %event.session_id,
                    event_id = %event.event_id,
                    attempts = *tries,
                    error = %error,
                    "redis keeps rejecting the event; dead-lettering it"
                );
                ::metrics::counter!(m::GIVEN_UP).increment(1);
                given_up.push(GivenUp {
                    record: event.record,
                    attempts: *tries,
                    error: error.to_string(),
                });
                pending.remove(0);
                // The next event's trouble is its own; it starts from the shortest delay.
                backoff.reset();
                continue;
            }
            warn!(session_id = %event.session_id, attempts = *tries, error = %error, "redis rejected an event; retrying");
        } else {
            sinks.redis.on_error();
            ::metrics::counter!(m::RETRIES, "target" => "redis").increment(1);
            if publisher::is_function_missing(&error)
                && let Err(e) = sinks.publisher.load_library().await
            {
                warn!(error = %e, "reloading the redis function library failed");
            }
            warn!(pending = pending.len(), error = %error, "redis publish failed; retrying");
        }
        if !sleep_or_cancel(backoff.next_delay(), sinks.cancel).await {
            return Err(Error::ShuttingDown);
        }
    }
    ::metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(given_up)
}

/// Counts what Redis did with each event, once per event; a published event's first two hops are timed here
/// (docs/observability.md), so each hop histogram observes every published event exactly once.
fn count_outcomes(
    events: &[&Publish],
    results: &[Result<publisher::Outcome, Error>],
    call_seconds: f64,
    counted: &mut HashSet<usize>,
) {
    use ces_runtime::telemetry::{hop, observe_hop, seconds_between};
    let (mut published, mut duplicates) = (0u64, 0u64);
    for (event, result) in events.iter().zip(results) {
        let Ok(outcome) = result else { continue };
        if !counted.insert(event.record) {
            continue;
        }
        match outcome {
            publisher::Outcome::Published(_) => {
                published += 1;
                if event.produced_at_ms > 0 {
                    observe_hop(
                        hop::KAFKA_TO_INGEST,
                        seconds_between(event.produced_at_ms, event.ingested_at_ms),
                    );
                }
                observe_hop(hop::INGEST_TO_REDIS, call_seconds);
                event.span.end(Vec::new);
            }
            publisher::Outcome::Duplicate => {
                duplicates += 1;
                event
                    .span
                    .end(|| vec![ces_runtime::otel::KeyValue::new("ces.duplicate", true)]);
            }
        }
    }
    ::metrics::counter!(m::PUBLISHED).increment(published);
    ::metrics::counter!(m::DUPLICATES).increment(duplicates);
}

/// Produces every dead letter, retrying the failed ones through the Kafka breaker until all are acknowledged.
async fn dead_letter_all(sinks: &Sinks<'_>, mut dead: Vec<DeadLetter>) -> Result<(), Error> {
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !dead.is_empty() {
        if !wait_permitted(sinks.kafka, sinks.cancel).await {
            return Err(Error::ShuttingDown);
        }
        let (failed, error) = kafka::send_dead_letters(sinks.producer, sinks.dlq_topic, dead).await;
        dead = failed;
        match error {
            None => sinks.kafka.on_success(),
            Some(e) => {
                sinks.kafka.on_error();
                ::metrics::counter!(m::RETRIES, "target" => "kafka").increment(1);
                error!(pending = dead.len(), error = %e, "dead-letter produce failed; retrying");
                if !sleep_or_cancel(backoff.next_delay(), sinks.cancel).await {
                    return Err(Error::ShuttingDown);
                }
            }
        }
    }
    Ok(())
}

/// Waits until `breaker` lets a call through; `false` if cancelled first.
async fn wait_permitted(breaker: &Breaker, cancel: &CancellationToken) -> bool {
    while !breaker.is_call_permitted() {
        if !sleep_or_cancel(TICK, cancel).await {
            return false;
        }
    }
    true
}

/// Sleeps for `d`; `false` if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
