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
