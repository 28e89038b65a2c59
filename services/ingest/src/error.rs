//! The error type of ces-ingest.

/// What can stop ingest or fail one step of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or another shared-helper failure.
    #[error(transparent)]
    Shared(#[from] ces_shared::Error),
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

impl Error {
    /// Whether retrying the same step later can succeed. Transient failures are retried with backoff and never
    /// dead-letter a record; permanent ones (bad input) are dead-lettered and committed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::Redis(_) => true,
            Error::Shared(_) | Error::Http(_) | Error::Startup(_) | Error::ShuttingDown => false,
        }
    }
}
