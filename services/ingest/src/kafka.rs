//! The Kafka side of ingest: the consumer, batching, dead-letter production and offset commits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::batch::{DeadLetter, InputRecord};
use crate::config::Config;
use crate::revocations::Revocations;
use crate::{Error, metrics as m};

/// librdkafka properties ingest sets itself and depends on: commits only after Redis, never automatically.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
];

/// A client configuration for `config.brokers`: ingest's own `settings`, then every passed-through property
/// (which may override a tuning default, never a [`RESERVED_PROPERTIES`] one).
pub fn client_config(config: &Config, settings: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in settings {
        c.set(*k, v);
    }
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c
}

/// Largest dead letter the producer sends (librdkafka allows up to 1e9).
const DLQ_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Logs partition assignment changes and offset commit results, keeps newly assigned partitions paused while
/// ingest is paused, and records revocations, so the engine never commits past records it received before one.
#[derive(Debug, Default)]
pub struct IngestContext {
    paused: Arc<AtomicBool>,
    kafka_up: Arc<AtomicBool>,
    revocations: Mutex<Revocations>,
}

impl IngestContext {
    /// The revocations seen so far. rdkafka serves rebalance events inside the poll that returns messages, on
    /// the caller's task, so the lock is never contended.
    pub fn revocations(&self) -> MutexGuard<'_, Revocations> {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for IngestContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): consumer lag per partition, and whether any
    /// broker connection is up (for `/readyz`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 {
                    continue;
                }
                // A lag of -1 means this replica holds no position for the partition (another replica owns it).
                ::metrics::gauge!(
                    crate::metrics::CONSUMER_LAG,
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag.max(0) as f64);
            }
        }
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.kafka_up.store(up, Ordering::Release);
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(
        &self,
        base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = tpl.count(), "partitions assigned");
                // A partition assigned during an outage must not start fetching into memory.
                if self.paused.load(Ordering::Acquire)
                    && let Err(e) = base.pause(tpl)
                {
                    warn!(error = %e, "cannot pause newly assigned partitions");
                }
            }
            Rebalance::Revoke(tpl) => {
                let generation = self
                    .revocations()
                    .revoke(tpl.elements().iter().map(|e| (e.topic(), e.partition())));
                info!(partitions = tpl.count(), generation, "partitions revoked");
            }
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after a failed rebalance: whatever was received is stale.
                let generation = self.revocations().revoke_all();
                warn!(error = %e, generation, "rebalance failed; the assignment was dropped");
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            warn!(error = %e, "offset commit failed; records will be redelivered");
        }
    }
}

/// How long a fetch waits for [`FETCH_MIN_BYTES`] (overridable with `CES_KAFKA_PROP_FETCH_WAIT_MAX_MS`).
pub const FETCH_WAIT_MS: u64 = 3;
/// What a fetch waits for, at most [`FETCH_WAIT_MS`] (overridable with `CES_KAFKA_PROP_FETCH_MIN_BYTES`).
pub const FETCH_MIN_BYTES: u64 = 256 * 1024;

/// The consumer's own settings (any of which but [`RESERVED_PROPERTIES`] a `CES_KAFKA_PROP_*` overrides).
pub fn consumer_settings(config: &Config) -> Vec<(&'static str, String)> {
    vec![
        // The bound on what librdkafka reads ahead while ingest is busy publishing: past it, fetching stops.
        (
            "queued.max.messages.kbytes",
            config.queue_max_kbytes.to_string(),
        ),
        ("queued.min.messages", (config.batch_max * 2).to_string()),
        // Once the read-ahead is over those thresholds, librdkafka postpones the partition's next fetch by
        // this much (1 s by default): ingest, having drained the queue in a few milliseconds, would then sit
        // idle for the rest of the second, which caps throughput and adds up to a second of latency.
        ("fetch.queue.backoff.ms", "10".into()),
        // A fetch waits up to this long for more records (librdkafka answers as soon as one byte is there by
        // default): at 5,000 records/s that was a fetch every few records, and the consumer's broker thread
        // took a third of ingest's CPU (docs/performance.md). A few milliseconds of latency for whole batches.
        ("fetch.wait.max.ms", FETCH_WAIT_MS.to_string()),
        ("fetch.min.bytes", FETCH_MIN_BYTES.to_string()),
        ("group.id", config.group.clone()),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", config.auto_offset_reset.clone()),
        ("enable.partition.eof", "false".into()),
        (
            "statistics.interval.ms",
            config.stats_interval.as_millis().to_string(),
        ),
    ]
}

/// The ingest consumer type.
pub type IngestConsumer = StreamConsumer<IngestContext>;

/// Creates the consumer and subscribes it to the input topics. Offsets are never committed automatically: ingest
/// commits explicitly after Redis has every event of a batch.
pub fn consumer(config: &Config, kafka_up: Arc<AtomicBool>) -> Result<IngestConsumer, Error> {
    let consumer: IngestConsumer = client_config(config, &consumer_settings(config))
        .create_with_context(IngestContext {
            paused: Arc::default(),
            kafka_up,
            revocations: Mutex::default(),
        })?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Pauses or resumes every assigned partition; returns how many are paused. While paused the consumer is still
/// polled, so it keeps its group membership, but fetches nothing.
pub fn set_paused(consumer: &IngestConsumer, paused: bool) -> Result<usize, Error> {
    consumer.context().paused.store(paused, Ordering::Release);
    let assignment = consumer.assignment()?;
    if paused {
        consumer.pause(&assignment)?;
        Ok(assignment.count())
    } else {
        consumer.resume(&assignment)?;
        Ok(0)
    }
}

/// Creates the dead-letter producer ([`producer_settings`]).
pub fn producer(config: &Config) -> Result<FutureProducer, Error> {
    Ok(client_config(config, &producer_settings()).create()?)
}

/// The dead-letter producer's own settings. `acks=all` so a dead letter is durable before its offset is
/// committed.
pub fn producer_settings() -> Vec<(&'static str, String)> {
    vec![
        ("acks", "all".into()),
        // A produce that times out after the broker wrote it is retried without a second copy.
        ("enable.idempotence", "true".into()),
        ("linger.ms", "5".into()),
        ("message.timeout.ms", "30000".into()),
        // A `too_large` record is by definition big; the producer must accept anything the broker
        // delivered. Larger than the DLQ topic's own limit, the dead letter goes without its value, headers
        // or key (see `send_dead_letters`).
        ("message.max.bytes", DLQ_MAX_MESSAGE_BYTES.to_string()),
        // The topic's limit applies to the compressed batch: a record that arrived compressed within the input
        // topic's limit usually fits the DLQ topic's whole once compressed again, headers and all. lz4 costs
        // little CPU, and dead letters are few.
        ("compression.type", "lz4".into()),
    ]
}

/// Detaches a message just returned by `consumer` from the client, stamped with the current revocation
/// generation.
pub fn to_input(consumer: &IngestConsumer, msg: &BorrowedMessage<'_>) -> InputRecord {
    // rdkafka panics on a header name that is not UTF-8 (the protocol requires UTF-8, but a raw client can send
    // anything). Such a record must be dead-lettered, not crash every replica that reads its partition.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        msg.headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default()
    }));
    let (headers, headers_unreadable) = match read {
        Ok(headers) => (headers, false),
        Err(_) => {
            warn!(
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                "unreadable headers"
            );
            (Vec::new(), true)
        }
    };
    InputRecord {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers,
        headers_unreadable,
        received: consumer.context().revocations().generation(),
    }
}

/// Counts the records of a batch in `ces_ingest_records_total`, per topic: once per batch and topic, since a
/// counter looked up by its label for every record cost more than the rest of the record's bookkeeping (a label
/// string, a registry search, a handle).
pub fn count_records(batch: &[InputRecord]) {
    let mut per_topic: Vec<(&str, u64)> = Vec::new();
    for r in batch {
        match per_topic.iter_mut().find(|(t, _)| *t == r.topic) {
            Some((_, n)) => *n += 1,
            None => per_topic.push((&r.topic, 1)),
        }
    }
    for (topic, n) in per_topic {
        metrics::counter!(m::RECORDS, "topic" => topic.to_owned()).increment(n);
    }
}

/// Waits for the next record, then collects more until `max` records or `linger` after it. A batch that starts
/// with records read ahead (while the previous batch was in flight) does not linger: those records have waited
/// already, so it takes only what is ready now. Under load batches form from the read-ahead; `linger` gathers a
/// burst that arrives at an idle ingest.
pub async fn next_batch(
    consumer: &IngestConsumer,
    mut batch: Vec<InputRecord>,
    max: usize,
    linger: Duration,
) -> Result<Vec<InputRecord>, Error> {
    let linger = if batch.is_empty() {
        let first = consumer.recv().await?;
        batch.push(to_input(consumer, &first));
        linger
    } else {
        Duration::ZERO
    };
    // A deadline already passed still polls `recv` once per record (the timeout polls its future first), so
    // whatever is ready is taken either way.
    let deadline = Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_elapsed) => break,
            Ok(Ok(msg)) => batch.push(to_input(consumer, &msg)),
            Ok(Err(e)) => {
                // Keep what we have; the error is reported on the next call if it persists.
                warn!(error = %e, "consumer error while filling a batch");
                break;
            }
        }
    }
    Ok(batch)
}

/// Produces dead letters; each comes back with its result, in order.
///
/// A letter the DLQ topic refuses as too large is sent again alone (batched with others, their size may have
/// been the trouble), then without its value, its own headers and its key in turn ([`DeadLetter::omit_next`])
/// until it fits or nothing is left to drop. Only the `ces-dlq-*` headers are never dropped.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    dead: Vec<DeadLetter>,
) -> Vec<(DeadLetter, Result<(), Error>)> {
    let results = futures::future::join_all(dead.iter().map(|d| send(producer, topic, d))).await;
    let mut out = Vec::with_capacity(dead.len());
    for (mut d, mut result) in dead.into_iter().zip(results) {
        if is_too_large(&result) {
            result = send(producer, topic, &d).await;
            while is_too_large(&result) {
                let Some((part, bytes)) = d.omit_next() else {
                    break;
                };
                let (source_topic, partition, offset) = &d.source;
                warn!(
                    topic = source_topic,
                    partition,
                    offset,
                    reason = d.reason.as_str(),
                    omitted = part.header(),
                    bytes,
                    "dead letter too large for the DLQ topic; sending it without a part"
                );
                result = send(producer, topic, &d).await;
            }
        }
        if result.is_ok() {
            metrics::counter!(m::DEAD_LETTERED, "reason" => d.reason.as_str()).increment(1);
        }
        out.push((d, result));
    }
    out
}

/// Produces one dead letter.
async fn send(producer: &FutureProducer, topic: &str, d: &DeadLetter) -> Result<(), Error> {
    let mut headers = OwnedHeaders::new_with_capacity(d.headers.len());
    for (k, v) in &d.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(k) = &d.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &d.value {
        record = record.payload(v.as_slice());
    }
    match producer.send(record, Timeout::Never).await {
        Ok(_) => Ok(()),
        Err((e, _)) => Err(Error::Kafka(e)),
    }
}

fn is_too_large(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::Kafka(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge))
}

/// Whether a produce error is Kafka refusing this record for good: sending the same bytes again cannot succeed
/// (too large for the topic, a record or timestamp the broker deems invalid, a topic policy, no permission to
/// write the topic). Anything else, unknown errors included, counts as Kafka or the way to it failing for a
/// while: retried for as long as it lasts, as an outage, never given up.
pub fn is_refusal(error: &Error) -> bool {
    use RDKafkaErrorCode as C;
    let Error::Kafka(e) = error else {
        return false;
    };
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidRecord
                | C::InvalidTimestamp
                | C::UnsupportedForMessageFormat
                | C::PolicyViolation
                | C::InvalidTopic
                | C::InvalidRequiredAcks
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::BadMessage
                | C::InvalidArgument
        )
    )
}

/// Commits `offsets` (next offset per topic-partition). A refused commit is logged and counted, not fatal: the
/// records are redelivered to whoever owns the partition, and deterministic event ids make that harmless.
pub fn commit(consumer: &IngestConsumer, offsets: &BTreeMap<(String, i32), i64>, mode: CommitMode) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((topic, partition), next) in offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            warn!(topic, partition, error = %e, "cannot build commit");
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        metrics::counter!(m::COMMIT_FAILURES).increment(1);
        warn!(error = %e, "offset commit refused; records will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;

    use super::*;

    fn produce(code: RDKafkaErrorCode) -> Error {
        Error::Kafka(KafkaError::MessageProduction(code))
    }

    #[test]
    fn kafka_refusing_the_record_is_told_from_kafka_failing() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidMessageSize,
            C::MessageBatchTooLarge,
            C::InvalidRecord,
            C::InvalidTimestamp,
            C::UnsupportedForMessageFormat,
            C::PolicyViolation,
            C::InvalidTopic,
            C::InvalidRequiredAcks,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::BadMessage,
            C::InvalidArgument,
        ] {
            assert!(is_refusal(&produce(code)), "{code:?} is a refusal");
        }
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::QueueFull,
            C::Fatal,
            C::InvalidMessage,
            C::Unknown,
        ] {
            assert!(!is_refusal(&produce(code)), "{code:?} is an outage");
        }
        assert!(!is_refusal(&Error::Kafka(KafkaError::Canceled)));
        assert!(!is_refusal(&Error::ShuttingDown));
    }

    /// The value `settings` give property `k`.
    fn setting<'a>(settings: &'a [(&str, String)], k: &str) -> Option<&'a str> {
        settings
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn dead_letters_are_durable_idempotent_and_compressed() {
        let settings = producer_settings();
        let get = |k: &str| setting(&settings, k);
        assert_eq!(get("acks"), Some("all"));
        assert_eq!(get("enable.idempotence"), Some("true"));
        assert_eq!(get("compression.type"), Some("lz4"));
        assert_eq!(get("message.max.bytes"), Some("67108864"));
    }

    #[test]
    fn fetches_wait_for_whole_batches_and_a_property_overrides_the_default() {
        let defaults =
            Config::from_source(&std::collections::HashMap::<&'static str, String>::new()).unwrap();
        let settings = consumer_settings(&defaults);
        let get = |k: &str| setting(&settings, k);
        assert_eq!(get("fetch.wait.max.ms"), Some("3"));
        assert_eq!(get("fetch.min.bytes"), Some("262144"));
        assert_eq!(get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(get("enable.auto.commit"), Some("false"));
        assert_eq!(get("enable.auto.offset.store"), Some("false"));
        let tuned = Config::from_source(&std::collections::HashMap::from([(
            "CES_KAFKA_PROP_FETCH_MIN_BYTES",
            "1".to_owned(),
        )]))
        .unwrap();
        let client = client_config(&tuned, &consumer_settings(&tuned));
        assert_eq!(client.get("fetch.min.bytes"), Some("1"));
        assert_eq!(client.get("fetch.wait.max.ms"), Some("3"));
    }

    #[test]
    fn records_are_counted_once_per_topic_of_a_batch() {
        let record = |topic: &str| InputRecord {
            topic: topic.to_owned(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
            headers_unreadable: false,
            received: 0,
        };
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let batch = [record("a"), record("b"), record("a"), record("a")];
        metrics::with_local_recorder(&recorder, || {
            count_records(&batch);
            count_records(&[]);
            count_records(&batch[..1]);
        });
        let text = handle.render();
        assert!(
            text.contains(r#"ces_ingest_records_total{topic="a"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ces_ingest_records_total{topic="b"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn only_a_size_refusal_makes_a_letter_shed_parts() {
        assert!(is_too_large(&Err(produce(
            RDKafkaErrorCode::MessageSizeTooLarge
        ))));
        assert!(!is_too_large(&Err(produce(
            RDKafkaErrorCode::InvalidRecord
        ))));
        assert!(!is_too_large(&Err(Error::ShuttingDown)));
        assert!(!is_too_large(&Ok(())));
    }
}
