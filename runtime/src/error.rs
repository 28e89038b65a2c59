//! The error type of `ces-runtime`.

use ces_protocol::ConfigErrors;

/// Everything that can go wrong setting a process up. None of these are retryable: they describe bad
/// configuration, which retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more configuration variables are missing or invalid; every problem is listed.
    #[error("invalid configuration:\n{0}")]
    Config(ConfigErrors),
    /// Telemetry could not be initialised.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// Redis is set up in a way that breaks CES's guarantees (it may evict keys).
    #[error("redis: {0}")]
    RedisUnsafe(String),
}
