//! Metric names of ces-ingest (Prometheus conventions: `_total` counters, `_seconds` histograms), the values of
//! their labels, and [`register`], which exports every family from the start.

use ces_protocol::record::Reason;
use ces_runtime::telemetry::{self, hop};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Records consumed, labelled by `topic`.
pub const RECORDS: &str = "ces_ingest_records_total";
/// Records dead-lettered, labelled by `reason`.
pub const DEAD_LETTERED: &str = "ces_ingest_dead_lettered_total";
/// Events published to Redis.
pub const PUBLISHED: &str = "ces_ingest_published_total";
/// Events dropped because their id was seen within the dedup window.
pub const DUPLICATES: &str = "ces_ingest_duplicates_total";
/// Records per batch.
pub const BATCH_SIZE: &str = "ces_ingest_batch_size";
/// Time to publish one batch to Redis, retries included.
pub const PUBLISH_SECONDS: &str = "ces_ingest_publish_seconds";
/// Transient failures that were retried, labelled by `target` ([`target`]).
pub const RETRIES: &str = "ces_ingest_retries_total";
/// Offset commits Kafka refused (the records will be redelivered).
pub const COMMIT_FAILURES: &str = "ces_ingest_commit_failures_total";
/// 1 while the circuit breaker of a `target` ([`target`]) is open or half-open, else 0.
pub const BREAKER_OPEN: &str = "ces_ingest_breaker_open";
/// Circuit breaker state changes, labelled by `target` and the state entered (`to`: [`state`]).
pub const BREAKER_TRANSITIONS: &str = "ces_ingest_breaker_transitions_total";
/// Partitions currently paused because a dependency is down.
pub const PAUSED_PARTITIONS: &str = "ces_ingest_paused_partitions";
/// Records held in memory: the batch in progress plus the records read ahead of it.
pub const PENDING_RECORDS: &str = "ces_ingest_pending_records";
/// Records whose dead letter Kafka refused `CES_MAX_ATTEMPTS` times (too large even without value, headers and key;
/// invalid; not permitted), labelled by `reason`: skipped, neither delivered nor in the DLQ.
pub const DEAD_LETTERS_SKIPPED: &str = "ces_ingest_dead_letters_skipped_total";
/// Events given up after repeated event-specific Redis failures (then dead-lettered as `processing_failed`).
pub const GIVEN_UP: &str = "ces_ingest_given_up_total";
/// Schema directory reloads, labelled by `result` ([`reload`]).
pub const SCHEMA_RELOADS: &str = "ces_ingest_schema_reloads_total";
/// Event types with a loaded JSON Schema.
pub const SCHEMAS_LOADED: &str = "ces_ingest_schemas_loaded";
/// Records between this replica's position and the partition's end, per `topic` and `partition` (librdkafka
/// statistics; 0 for partitions another replica owns).
pub const CONSUMER_LAG: &str = "ces_ingest_consumer_lag";
/// Dead letters nobody has handled yet (replayed or dismissed with `cesctl`), per DLQ `partition`: the high
/// watermark minus the handled group's committed offset ([`crate::dlq_backlog`]).
pub const DLQ_BACKLOG: &str = "ces_ingest_dlq_backlog";
/// Readings of the DLQ backlog that failed (Kafka unreachable, the handled group's offsets unreadable).
pub const DLQ_BACKLOG_ERRORS: &str = "ces_ingest_dlq_backlog_errors_total";

/// The dependencies behind a circuit breaker: the `target` label of [`RETRIES`], [`BREAKER_OPEN`] and
/// [`BREAKER_TRANSITIONS`].
pub mod target {
    /// Redis, where events are published.
    pub const REDIS: &str = "redis";
    /// Kafka, where dead letters are produced.
    pub const KAFKA: &str = "kafka";
    /// Both.
    pub const ALL: [&str; 2] = [REDIS, KAFKA];
}

/// The breaker states a transition enters: [`BREAKER_TRANSITIONS`]'s `to` label.
pub mod state {
    /// Calls are refused.
    pub const OPEN: &str = "open";
    /// One probe may go.
    pub const HALF_OPEN: &str = "half_open";
    /// Calls flow.
    pub const CLOSED: &str = "closed";
    /// All three.
    pub const ALL: [&str; 3] = [OPEN, HALF_OPEN, CLOSED];
}

/// The outcomes of a schema reload: [`SCHEMA_RELOADS`]'s `result` label.
pub mod reload {
    /// The new set is in use.
    pub const OK: &str = "ok";
    /// The directory did not load; the previous set stays.
    pub const ERROR: &str = "error";
    /// Both.
    pub const ALL: [&str; 2] = [OK, ERROR];
}

/// Exports every family of ingest at zero (counters and gauges), or with no observation (histograms), before
/// anything happens: an idle replica shows 0, not "no data". Labelled families get a series for every label value
/// known in advance (the input `topics`, every dead-letter reason, breaker target and state, reload outcome);
/// those whose values are found at run time appear with their first reading: [`CONSUMER_LAG`] with librdkafka's
/// first statistics (per assigned partition), [`DLQ_BACKLOG`] with the first reading of the DLQ, made at start.
/// Gauges are incremented by 0, not set, so a second ingest in the same process (tests) leaves the values alone.
pub fn register(topics: &[String]) {
    let counters = [
        (PUBLISHED, "events published to Redis"),
        (
            DUPLICATES,
            "events dropped as duplicates within the dedup window",
        ),
        (
            GIVEN_UP,
            "events Redis kept rejecting, dead-lettered as processing_failed",
        ),
        (COMMIT_FAILURES, "offset commits Kafka refused"),
        (
            DLQ_BACKLOG_ERRORS,
            "readings of the DLQ backlog that failed",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        counter!(name).increment(0);
    }
    describe_counter!(RECORDS, "records read from Kafka, by topic");
    for topic in topics {
        counter!(RECORDS, "topic" => topic.clone()).increment(0);
    }
    describe_counter!(DEAD_LETTERED, "records written to the DLQ, by reason");
    describe_counter!(
        DEAD_LETTERS_SKIPPED,
        "records whose dead letter Kafka kept refusing, by reason"
    );
    for reason in Reason::ALL {
        counter!(DEAD_LETTERED, "reason" => reason.as_str()).increment(0);
        counter!(DEAD_LETTERS_SKIPPED, "reason" => reason.as_str()).increment(0);
    }
    describe_counter!(RETRIES, "transient failures retried, by target");
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the breaker of target is open or half-open"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "breaker state changes, by target and state entered"
    );
    for target in target::ALL {
        counter!(RETRIES, "target" => target).increment(0);
        gauge!(BREAKER_OPEN, "target" => target).increment(0.0);
        for to in state::ALL {
            counter!(BREAKER_TRANSITIONS, "target" => target, "to" => to).increment(0);
        }
    }
    describe_counter!(SCHEMA_RELOADS, "schema reloads, by result");
    for result in reload::ALL {
        counter!(SCHEMA_RELOADS, "result" => result).increment(0);
    }
    let gauges = [
        (
            PAUSED_PARTITIONS,
            "partitions paused because a breaker is open",
        ),
        (PENDING_RECORDS, "records held in memory"),
        (SCHEMAS_LOADED, "event types with a JSON Schema"),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
        gauge!(name).increment(0.0);
    }
    describe_gauge!(
        CONSUMER_LAG,
        "records between this replica's position and the partition's end"
    );
    describe_gauge!(
        DLQ_BACKLOG,
        "dead letters not yet replayed or dismissed, by DLQ partition"
    );
    describe_histogram!(BATCH_SIZE, "records per batch");
    describe_histogram!(
        PUBLISH_SECONDS,
        "time to publish one batch, retries included"
    );
    // Creating the handles registers the series; nothing is recorded.
    let _ = histogram!(BATCH_SIZE);
    let _ = histogram!(PUBLISH_SECONDS);
    telemetry::register_latency(&hop::INGEST, false);
}
