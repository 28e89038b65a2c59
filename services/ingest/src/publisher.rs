//! Publishing events to Redis: one atomic function call per event, pipelined across a batch.
//!
//! The Redis function `ces_publish` (library `ces`, see [`LIBRARY`]) increments the session's sequence counter, appends the new `seq` to the
//! envelope and publishes it on the session channel, all atomically, so two ingest replicas can never hand out the
//! same `seq` or publish out of `seq` order for one session.
//!
//! Redis runs a pipeline's commands in order on one connection; if the connection breaks, a prefix ran and the
//! rest did not (or we cannot know for the command in flight). [`Publisher::publish`] therefore reports a result
//! per event, and the caller retries from the first failure on, in order. The client never re-sends a command by itself
//! (see `ces_shared::redis`), so a non-idempotent call is never repeated behind our back.

use std::time::Duration;

use fred::clients::Client;
use fred::clients::Pipeline;
use fred::interfaces::{ClientLike, FunctionInterface};
use fred::types::Value;
use fred::types::config::Options;

use crate::Error;
use crate::batch::Publish;

/// Name of the publish function in [`LIBRARY`].
pub const PUBLISH_FUNCTION: &str = "ces_publish";

/// The Redis function library (Redis >= 7.0). Functions, unlike `EVAL` scripts, are persisted and replicated
/// with the data; after a restart without persistence ingest loads the library again.
///
/// `ces_publish`: KEYS[1] = sequence counter, KEYS[2] = channel (same hash tag); ARGV[1] = envelope without
/// `seq`, ARGV[2] = idle TTL of the counter in milliseconds. Returns the assigned `seq`.
///
/// The varint loop mirrors `ces_shared::envelope::append_seq`; Lua numbers are doubles, exact up to 2^53.
pub const LIBRARY: &str = r#"#!lua name=ces
redis.register_function('ces_publish', function(keys, args)
  local seq = redis.call('INCR', keys[1])
  redis.call('PEXPIRE', keys[1], args[2])
  local n = seq
  local tail = { '\8' }
  while n >= 128 do
    tail[#tail + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  tail[#tail + 1] = string.char(n)
  redis.call('PUBLISH', keys[2], args[1] .. table.concat(tail))
  return seq
end)
"#;

/// Publishes batches of events to Redis.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    idle_ttl_ms: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("idle_ttl_ms", &self.idle_ttl_ms)
            .finish()
    }
}

impl Publisher {
    /// Wraps a connected client and loads the function library.
    pub async fn new(client: Client, idle_ttl: Duration) -> Result<Self, Error> {
        let publisher = Self {
            client,
            idle_ttl_ms: idle_ttl.as_millis().max(1) as u64,
        };
        publisher.load_library().await?;
        Ok(publisher)
    }

    /// The Redis client, for readiness checks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `ces_publish` for every event in one pipeline; one result (the assigned `seq`) per event, in order.
    pub async fn publish(&self, events: &[&Publish]) -> Vec<Result<u64, Error>> {
        // Fail fast while disconnected instead of queueing: a queued command would still run after the caller
        // timed out and retried, so the batch would execute twice.
        let options = Options {
            fail_fast: true,
            ..Options::default()
        };
        let pipeline = Pipeline::from(self.client.with_options(&options));
        for ev in events {
            let keys = vec![
                ces_shared::keys::seq_key(&ev.session_id),
                ces_shared::keys::channel(&ev.session_id),
            ];
            let args: Vec<Value> = vec![
                Value::Bytes(ev.envelope.clone().into()),
                Value::Integer(self.idle_ttl_ms as i64),
            ];
            // Queues in memory; cannot fail before `try_all`.
            let queued: Result<(), _> = pipeline.fcall(PUBLISH_FUNCTION, keys, args).await;
            if let Err(e) = queued {
                return events
                    .iter()
                    .map(|_| Err(Error::Redis(e.clone())))
                    .collect();
            }
        }
        pipeline
            .try_all::<u64>()
            .await
            .into_iter()
            .map(|r| r.map_err(Error::Redis))
            .collect()
    }

    /// (Re)loads the function library, e.g. after Redis restarted without persistence.
    pub async fn load_library(&self) -> Result<(), Error> {
        let _: String = self.client.function_load(true, LIBRARY).await?;
        Ok(())
    }
}

/// Whether a Redis error says the publish function is not loaded.
pub fn is_function_missing(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.details().contains("Function not found"))
}
