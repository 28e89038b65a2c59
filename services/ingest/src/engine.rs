//! The consume → plan → publish / dead-letter → retry → commit loop: a thin `select!` over the pure values of
//! [`retry`](crate::retry), [`commit`](crate::commit) and [`pause`](crate::pause), which decide; this module
//! only performs what they decide: Kafka and Redis calls, sleeps, breaker updates, metrics and logs.
//!
//! Each iteration takes a batch (bounded by count and linger time), plans it ([`batch::plan`]), publishes its
//! events while producing its dead letters, and hands its offsets to [`Commits`] once the [`Settlement`] says both
//! were acknowledged. While the batch is in flight the consumer keeps being polled ([`drive`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ces_runtime::backoff::Backoff;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::producer::FutureProducer;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::batch::{self, DeadLetter, InputRecord, Publish};
use crate::breaker::Breaker;
use crate::commit::{Commits, Offsets, Partition};
use crate::kafka::{self, IngestConsumer};
use crate::metrics as m;
use crate::pause::{InFlight, Partitions};
use crate::publisher::{self, Publisher};
use crate::retry::{DeadLettering, Delivery, Next, Publishing, Settlement, Verdict};
use crate::schemas::SchemaStore;
use crate::{Config, Error, http, topics};

const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Bound on the synchronous offset commit at shutdown.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting loop looks at the breakers again.
const TICK: Duration = Duration::from_millis(100);

/// What one batch needs besides its records.
struct Sinks<'a> {
    publisher: &'a Publisher,
    producer: &'a FutureProducer,
    dlq_topic: &'a str,
    redis: &'a Breaker,
    kafka: &'a Breaker,
    cancel: &'a CancellationToken,
}

/// Connects to Redis and Kafka, then moves records until `cancel`; commits the acknowledged offsets on the way
/// out. Returns `Ok` when cancelled, also while still connecting.
pub(crate) async fn consume(
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
    let redis = Breaker::new(m::target::REDIS, config.breaker);
    let kafka_breaker = Breaker::new(m::target::KAFKA, config.breaker);
    let sinks = Sinks {
        publisher: &publisher,
        producer: &producer,
        dlq_topic: &config.dlq_topic,
        redis: &redis,
        kafka: &kafka_breaker,
        cancel,
    };
    ::metrics::gauge!(m::PAUSED_PARTITIONS).set(0.0);
    state.set_consuming();
    info!(topics = ?config.topics, group = %config.group, "consuming");

    let mut commits = Commits::new(config.commit_interval, Instant::now());
    // Records read while the previous batch was in flight: at most one batch, the memory bound of ingest.
    let mut ahead: Vec<InputRecord> = Vec::new();
    let mut partitions = Partitions::default();
    let mut poll_backoff = Backoff::new(RETRY_START, RETRY_MAX);
    loop {
        // Paused partitions deliver nothing: make sure they are flowing before waiting for records.
        if !resume(&consumer, &mut partitions, cancel).await {
            break;
        }
        drop_stale(&consumer, &mut ahead);
        let next = kafka::next_batch(
            &consumer,
            std::mem::take(&mut ahead),
            config.batch_max,
            config.batch_linger,
        );
        tokio::pin!(next);
        // The idle flush: the batch future is kept across that commit, since dropping it would drop the records
        // it already took from the consumer.
        let batch = loop {
            let due = commits.due_at();
            tokio::select! {
                biased;
                () = cancel.cancelled() => break None,
                b = &mut next => break Some(b),
                () = tokio::time::sleep_until(due.into()), if commits.has_uncommitted() => {
                    commit_async(&consumer, &mut commits);
                }
            }
        };
        let Some(batch) = batch else { break };
        let mut batch = match batch {
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
        // A rebalance while the batch was being filled (inside `recv`) revokes what was received before it.
        if drop_stale(&consumer, &mut batch) && batch.is_empty() {
            continue;
        }
        // The oldest generation in the batch decides whether its offsets may still be committed.
        let received = batch.iter().map(|r| r.received).min().unwrap_or_default();
        ::metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        kafka::count_records(&batch);
        let plan = batch::plan(
            &batch,
            config.max_record_bytes,
            config.max_header_bytes,
            &schemas.current(),
            OffsetDateTime::now_utc(),
        );
        let mut settlement = Settlement::new(
            plan.commit,
            plan.publish.len(),
            plan.dead.len(),
            config.max_attempts,
        );
        let work = settle(&batch, plan.dead, &plan.publish, &mut settlement, &sinks);
        let in_flight = InFlight::new(Instant::now(), config.batch_max);
        let settled = drive(
            work,
            &consumer,
            &mut ahead,
            batch.len(),
            in_flight,
            &[&redis, &kafka_breaker],
            &mut partitions,
        )
        .await;
        let Some(offsets) = settled.ok().and_then(|()| settlement.into_commit()) else {
            // Shutdown interrupted a retry: the batch is not fully acknowledged, so it is not committed.
            info!(
                records = batch.len() + ahead.len(),
                "shutdown before the batch was acknowledged; it will be redelivered"
            );
            break;
        };
        commits.acknowledge(offsets, received);
        if commits.is_due(Instant::now()) {
            commit_async(&consumer, &mut commits);
        }
        ::metrics::gauge!(m::PENDING_RECORDS).set(ahead.len() as f64);
    }
    let last = commits.into_final(owned(&consumer).as_ref(), &consumer.context().revocations());
    final_commit(consumer, last).await;
    state.set_not_ready("stopped");
    info!("ingest stopped");
    Ok(())
}

/// Sends the commit [`Commits`] hands out now, asynchronously.
fn commit_async(consumer: &IngestConsumer, commits: &mut Commits) {
    let offsets = commits.commit(
        owned(consumer).as_ref(),
        &consumer.context().revocations(),
        Instant::now(),
    );
    kafka::commit(consumer, &offsets, CommitMode::Async);
}

/// Drops the records of `held` whose partition was revoked after they were received: the consumer delivers them
/// again from the committed offset if the partition comes back, or the new owner does ([`crate::revocations`]).
/// Returns whether any was dropped.
fn drop_stale(consumer: &IngestConsumer, held: &mut Vec<InputRecord>) -> bool {
    let before = held.len();
    {
        let revoked = consumer.context().revocations();
        held.retain(|r| !revoked.is_stale(&r.topic, r.partition, r.received));
    }
    let dropped = before - held.len();
    if dropped > 0 {
        info!(
            records = dropped,
            "dropped records received before their partition was revoked; they will be delivered again"
        );
    }
    dropped > 0
}

/// The partitions this replica owns now; `None` if the assignment cannot be read.
fn owned(consumer: &IngestConsumer) -> Option<HashSet<Partition>> {
    match consumer.assignment() {
        Ok(tpl) => Some(
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
        ),
        Err(e) => {
            warn!(error = %e, "cannot read the assignment; skipping this commit");
            None
        }
    }
}

/// Resumes paused partitions, retrying until librdkafka accepts; `false` if cancelled first.
async fn resume(
    consumer: &IngestConsumer,
    partitions: &mut Partitions,
    cancel: &CancellationToken,
) -> bool {
    loop {
        pause(consumer, false, partitions);
        if !partitions.is_paused() {
            return true;
        }
        if !sleep_or_cancel(TICK, cancel).await {
            return false;
        }
    }
}

/// Commits `offsets` synchronously, within [`FINAL_COMMIT_TIMEOUT`], then lets go of the consumer.
///
/// With the brokers gone, librdkafka's synchronous commit and its close both wait for a coordinator that never
/// answers; neither may hold up the process exit. An offset not committed is only a redelivery, which event ids
/// make harmless.
async fn final_commit(consumer: Arc<IngestConsumer>, offsets: Offsets) {
    // A plain thread, not `spawn_blocking`: the runtime waits for its blocking tasks when it shuts down, and
    // this one may never return.
    let (done, committed) = tokio::sync::oneshot::channel();
    let committing = consumer.clone();
    std::thread::spawn(move || {
        kafka::commit(&committing, &offsets, CommitMode::Sync);
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

/// Runs `work` (one batch) to completion while polling the consumer as [`InFlight`] decides: records are read
/// ahead, and every partition is paused while a breaker is tripped or ingest is saturated, so the consumer stays
/// in its group through an outage of any length without fetching anything.
async fn drive(
    work: impl Future<Output = Result<(), Error>>,
    consumer: &IngestConsumer,
    ahead: &mut Vec<InputRecord>,
    in_flight: usize,
    mut flight: InFlight,
    breakers: &[&Breaker],
    partitions: &mut Partitions,
) -> Result<(), Error> {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tripped = breakers.iter().any(|b| b.is_tripped());
        let want = flight.want_paused(ahead.len(), tripped, Instant::now());
        pause(consumer, want, partitions);
        ::metrics::gauge!(m::PENDING_RECORDS).set((in_flight + ahead.len()) as f64);
        let poll = flight.may_poll(ahead.len(), partitions.is_paused());
        tokio::select! {
            biased;
            r = &mut work => return r,
            m = consumer.recv(), if poll => match m {
                Ok(msg) => ahead.push(kafka::to_input(consumer, &msg)),
                Err(e) => {
                    warn!(error = %e, "consumer error while a batch is in flight");
                    flight.on_consumer_error();
                }
            },
            _ = tick.tick() => flight.on_tick(),
        }
    }
}

/// Pauses every partition when `want`, resumes them when not; a failure is retried at the next call.
fn pause(consumer: &IngestConsumer, want: bool, partitions: &mut Partitions) {
    let Some(want) = partitions.change(want) else {
        return;
    };
    match kafka::set_paused(consumer, want) {
        Ok(count) => {
            partitions.changed(want);
            ::metrics::gauge!(m::PAUSED_PARTITIONS).set(count as f64);
            info!(
                partitions = count,
                paused = want,
                "partitions paused or resumed"
            );
        }
        Err(e) => warn!(error = %e, "cannot pause or resume partitions; retrying"),
    }
}

/// Settles one batch: dead letters produced and events published (those Redis keeps rejecting dead-lettered
/// too), recording each acknowledgement in `settlement`. `Err` only when shutdown interrupted it.
async fn settle(
    batch: &[InputRecord],
    dead: Vec<DeadLetter>,
    publish: &[Publish],
    settlement: &mut Settlement,
    sinks: &Sinks<'_>,
) -> Result<(), Error> {
    let (publishing, dead_letters) = settlement.parts();
    let (dead, published) = tokio::join!(
        dead_letter_all(sinks, dead_letters, dead),
        publish_all(sinks, publishing, publish),
    );
    dead?;
    published?;
    if !settlement.given_up().is_empty() {
        let now = OffsetDateTime::now_utc();
        let letters = settlement
            .given_up()
            .iter()
            .map(|g| batch::given_up(&batch[publish[g.event].record], g.attempts, &g.error, now))
            .collect();
        dead_letter_all(sinks, settlement.parts().1, letters).await?;
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
        ces_runtime::redis::check_eviction(&client, config.common.redis_refuse_eviction).await?;
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

/// Publishes every event as `publishing` decides, until Redis acknowledged or gave up each one.
async fn publish_all(
    sinks: &Sinks<'_>,
    publishing: &mut Publishing,
    events: &[Publish],
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !publishing.is_done() {
        if !wait_permitted(sinks.redis, sinks.cancel).await {
            return Err(Error::ShuttingDown);
        }
        let pending: Vec<&Publish> = events[publishing.pending()].iter().collect();
        let call = Instant::now();
        let results = sinks.publisher.publish(&pending).await;
        let call_seconds = call.elapsed().as_secs_f64();
        let answer = publishing.on_results(results);
        count_outcomes(events, &answer.first_seen, call_seconds);
        if answer.verdict.redis_answered() {
            sinks.redis.on_success();
        } else {
            sinks.redis.on_error();
        }
        match &answer.verdict {
            Verdict::Acknowledged => {}
            Verdict::GaveUp {
                event,
                attempts,
                error,
            } => {
                let event = &events[*event];
                error!(
                    session_id = %event.session_id,
                    event_id = %event.event_id,
                    attempts,
                    error = %error,
                    "redis keeps rejecting the event; dead-lettering it"
                );
                ::metrics::counter!(m::GIVEN_UP).increment(1);
            }
            Verdict::Rejected {
                event,
                attempts,
                error,
            } => {
                let event = &events[*event];
                warn!(session_id = %event.session_id, attempts, error = %error, "redis rejected an event; retrying");
            }
            Verdict::Outage { error } => {
                ::metrics::counter!(m::RETRIES, "target" => m::target::REDIS).increment(1);
                if publisher::is_function_missing(error)
                    && let Err(e) = sinks.publisher.load_library().await
                {
                    warn!(error = %e, "reloading the redis function library failed");
                }
                warn!(pending = publishing.pending().len(), error = %error, "redis publish failed; retrying");
            }
        }
        match answer.verdict.next(publishing) {
            Next::Done => break,
            Next::Now => backoff.reset(),
            Next::AfterBackoff => {
                if !sleep_or_cancel(backoff.next_delay(), sinks.cancel).await {
                    return Err(Error::ShuttingDown);
                }
            }
        }
    }
    ::metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(())
}

/// Counts what Redis did with the events it answered for the first time; a published event's first two hops
/// are timed here (docs/observability.md), so each hop histogram observes every published event exactly once.
fn count_outcomes(
    events: &[Publish],
    first_seen: &[(usize, publisher::Outcome)],
    call_seconds: f64,
) {
    use ces_runtime::telemetry::{hop, hop_histogram, seconds_between};
    // Looked up once per batch: a lookup costs more than the observation.
    let kafka_to_ingest = hop_histogram(hop::KAFKA_TO_INGEST);
    let (mut published, mut duplicates) = (0u64, 0u64);
    for &(index, outcome) in first_seen {
        let event = &events[index];
        match outcome {
            publisher::Outcome::Published(_) => {
                published += 1;
                if event.produced_at_ms > 0 {
                    kafka_to_ingest
                        .record(seconds_between(event.produced_at_ms, event.ingested_at_ms));
                }
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
    // Every published event of the batch waited the same call.
    hop_histogram(hop::INGEST_TO_REDIS).record_many(call_seconds, published as usize);
    ::metrics::counter!(m::PUBLISHED).increment(published);
    ::metrics::counter!(m::DUPLICATES).increment(duplicates);
}

/// Produces every dead letter as `dead_letters` decides: an outage is retried through the Kafka breaker until it
/// ends; a letter Kafka keeps refusing is skipped after `CES_MAX_ATTEMPTS` refusals, logged and counted, so it
/// cannot hold up its partition.
async fn dead_letter_all(
    sinks: &Sinks<'_>,
    dead_letters: &mut DeadLettering,
    letters: Vec<DeadLetter>,
) -> Result<(), Error> {
    let mut pending: Vec<(usize, DeadLetter)> =
        dead_letters.admit(letters.len()).zip(letters).collect();
    let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
    while !pending.is_empty() {
        if !wait_permitted(sinks.kafka, sinks.cancel).await {
            return Err(Error::ShuttingDown);
        }
        let (ids, letters): (Vec<usize>, Vec<DeadLetter>) = pending.into_iter().unzip();
        let results = kafka::send_dead_letters(sinks.producer, sinks.dlq_topic, letters).await;
        let delivery = |result: &Result<(), Error>| match result {
            Ok(()) => Delivery::Acknowledged,
            Err(e) if kafka::is_refusal(e) => Delivery::Refused,
            Err(_) => Delivery::Failed,
        };
        let sent = dead_letters.on_sent(
            ids.iter()
                .zip(&results)
                .map(|(&id, (_, r))| (id, delivery(r))),
        );
        let mut results: Vec<(usize, DeadLetter, Result<(), Error>)> = ids
            .into_iter()
            .zip(results)
            .map(|(id, (d, r))| (id, d, r))
            .collect();
        for skipped in &sent.skipped {
            if let Some((_, d, Err(e))) = results.iter().find(|(id, _, _)| *id == skipped.letter) {
                let (topic, partition, offset) = &d.source;
                error!(
                    topic,
                    partition,
                    offset,
                    reason = d.reason.as_str(),
                    attempts = skipped.attempts,
                    error = %e,
                    "kafka keeps refusing the dead letter; skipping the record (the original is still at its source)"
                );
                ::metrics::counter!(m::DEAD_LETTERS_SKIPPED, "reason" => d.reason.as_str())
                    .increment(1);
            }
        }
        if sent.kafka_answered {
            sinks.kafka.on_success();
        } else {
            sinks.kafka.on_error();
            ::metrics::counter!(m::RETRIES, "target" => m::target::KAFKA).increment(1);
        }
        results.retain(|(id, _, _)| sent.retry.contains(id));
        if let Some((_, d, Err(e))) = results.first() {
            let (topic, partition, offset) = &d.source;
            error!(pending = results.len(), topic, partition, offset, error = %e, "dead-letter produce failed; retrying");
        }
        pending = results.into_iter().map(|(id, d, _)| (id, d)).collect();
        if !pending.is_empty() && !sleep_or_cancel(backoff.next_delay(), sinks.cancel).await {
            return Err(Error::ShuttingDown);
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
