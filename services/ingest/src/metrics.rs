//! Metric names of ces-ingest (Prometheus conventions: `_total` counters, `_seconds` histograms).

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
/// Transient failures that were retried, labelled by `target` (`redis` or `kafka`).
pub const RETRIES: &str = "ces_ingest_retries_total";
/// Offset commits Kafka refused (the records will be redelivered).
pub const COMMIT_FAILURES: &str = "ces_ingest_commit_failures_total";
/// 1 while the circuit breaker of a `target` (`redis` or `kafka`) is open or half-open, else 0.
pub const BREAKER_OPEN: &str = "ces_ingest_breaker_open";
/// Circuit breaker state changes, labelled by `target` and the state entered (`to`: open, half_open, closed).
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
/// Schema directory reloads, labelled by `result` (`ok` or `error`).
pub const SCHEMA_RELOADS: &str = "ces_ingest_schema_reloads_total";
/// Event types with a loaded JSON Schema.
pub const SCHEMAS_LOADED: &str = "ces_ingest_schemas_loaded";
/// Records between this replica's position and the partition's end, per `topic` and `partition` (librdkafka
/// statistics; 0 for partitions another replica owns).
pub const CONSUMER_LAG: &str = "ces_ingest_consumer_lag";
