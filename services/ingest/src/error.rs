//! The error type of ces-ingest.

/// What can stop ingest or fail one step of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or telemetry could not be set up.
    #[error(transparent)]
    Runtime(#[from] ces_runtime::Error),
    /// Protocol data could not be loaded (the schema directory).
    #[error(transparent)]
    Protocol(#[from] ces_protocol::Error),
    /// Kafka client failure.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client failure.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The HTTP listener failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// Start-up could not complete.
    #[error("start-up: {0}")]
    Startup(String),
    /// Shutdown was requested while a step was waiting to be retried.
    #[error("shutting down")]
    ShuttingDown,
}
