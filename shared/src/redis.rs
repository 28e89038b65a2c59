//! Redis client construction shared by the services.
//!
//! Every client reconnects by itself with exponential backoff, and never re-sends a command on its own
//! (`max_command_attempts = 1`): a command whose fate is unknown after a connection loss is reported to the
//! caller, which decides whether it is safe to retry.

use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::{Config, ReconnectPolicy};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;

/// Upper bound on any single command, so a dead connection cannot hang a caller.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client builder for `url` with CES's reconnect and timeout policy.
pub fn builder(url: &str) -> Result<Builder, fred::error::Error> {
    let mut builder = Builder::from_config(Config::from_url(url)?);
    builder
        .with_connection_config(|c| {
            c.max_command_attempts = 1;
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// Builds a client with `make` and connects it, retrying with backoff until it connects (`Some`) or `cancel`
/// fires (`None`). A configuration error (bad URL) is returned at once: retrying cannot fix it.
pub async fn connect<C, F>(
    what: &str,
    make: F,
    cancel: &CancellationToken,
) -> Result<Option<C>, fred::error::Error>
where
    C: ClientLike,
    F: Fn() -> Result<C, fred::error::Error>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let client = make()?;
        match client.init().await {
            Ok(_) => return Ok(Some(client)),
            Err(e) => {
                let _ = client.quit().await;
                warn!(client = what, error = %e, "redis unavailable; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(None),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
