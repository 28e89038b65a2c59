//! Publishing events to Redis: one atomic function call per event, pipelined across a batch.
//!
//! `ces_publish` (in `ces_runtime::redis::LIBRARY`) drops an event whose id it saw within the dedup window,
//! otherwise assigns the session's next `seq`, appends the event to the session's reconnection buffer, trims the
//! buffer, and publishes it on the session channel, all atomically. So two ingest replicas can never hand out the
//! same `seq`, publish out of `seq` order, or deliver one event twice.
//!
//! Redis runs a pipeline's commands in order on one connection; if the connection breaks, a prefix ran and the
//! rest did not (or we cannot know for the command in flight). [`Publisher::publish`] therefore reports a result
//! per event, and the caller retries from the first failure on, in order: events that did run are then dropped
//! as duplicates by their id. Commands are sent fail-fast, never queued while disconnected, and the client never
//! re-sends a command by itself (see `ces_runtime::redis`).

use std::collections::HashMap;
use std::time::Duration;

use ces_protocol::keys::SessionKeys;
use ces_runtime::redis::PUBLISH_FUNCTION;
use fred::clients::{Client, Pipeline};
use fred::interfaces::ClientLike;
use fred::interfaces::FunctionInterface;
use fred::types::Value;
use fred::types::config::Options;

use crate::Error;
use crate::batch::Publish;

/// Bounds of the per-session state `ces_publish` maintains.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most events kept in a session's reconnection buffer.
    pub buffer_max_events: u64,
    /// Oldest event kept in a session's reconnection buffer.
    pub buffer_max_age: Duration,
    /// How long an event id is remembered to drop duplicates.
    pub dedup_window: Duration,
    /// A session's epoch and `seq` survive this long without events.
    pub state_ttl: Duration,
    /// Redis restarts lose no acknowledged write (`CES_REDIS_DURABLE_RESTARTS`): an epoch survives a restart of
    /// the process that holds it.
    pub durable_restarts: bool,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Published with this `seq`.
    Published(u64),
    /// Its id was seen within the dedup window; nothing was published.
    Duplicate,
}

/// Publishes batches of events to Redis.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    limits: Limits,
    timeout: Duration,
}

impl Publisher {
    /// Wraps a connected client and loads the function library. `timeout` bounds each publish call: a
    /// command sent just as Redis died is not answered, and waiting longer only delays the breaker.
    pub async fn new(client: Client, limits: Limits, timeout: Duration) -> Result<Self, Error> {
        ces_runtime::redis::load_library(&client).await?;
        Ok(Self {
            client,
            limits,
            timeout,
        })
    }

    /// The Redis client, for readiness checks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `ces_publish` for every event in one pipeline; one outcome per event, in order.
    pub async fn publish(&self, events: &[&Publish]) -> Vec<Result<Outcome, Error>> {
        // Fail fast while disconnected instead of queueing: a queued command would still run after the caller
        // timed out and retried.
        let options = Options {
            fail_fast: true,
            timeout: Some(self.timeout),
            ..Options::default()
        };
        let pipeline = Pipeline::from(self.client.with_options(&options));
        let now = ces_runtime::now_ms();
        let epoch = ces_runtime::redis::new_epoch();
        let ms = |d: Duration| Value::Integer(d.as_millis().clamp(1, i64::MAX as u128) as i64);
        // Each event names its session's previous event in this pipeline: Redis runs the pipeline to the end
        // even after a command fails, and an event must never be published before an earlier one of its
        // session that failed (say, with BUSY) and will be retried.
        let mut previous: HashMap<&str, &str> = HashMap::new();
        for ev in events {
            let k = SessionKeys::of(&ev.session_id);
            let keys = vec![k.meta, k.buffer, k.ids, k.channel];
            let after = previous
                .insert(ev.session_id.as_str(), ev.event_id.as_str())
                .unwrap_or_default();
            let args: Vec<Value> = vec![
                Value::Bytes(ev.envelope.clone().into()),
                Value::from(ev.event_id.as_str()),
                Value::Integer(now),
                Value::Integer(self.limits.buffer_max_events as i64),
                ms(self.limits.buffer_max_age),
                ms(self.limits.dedup_window),
                ms(self.limits.state_ttl),
                Value::from(epoch.as_str()),
                Value::from(after),
                Value::from(if self.limits.durable_restarts {
                    "1"
                } else {
                    "0"
                }),
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
        let mut results: Vec<Result<Outcome, Error>> = pipeline
            .try_all::<u64>()
            .await
            .into_iter()
            .map(|r| match r {
                Ok(0) => Ok(Outcome::Duplicate),
                Ok(seq) => Ok(Outcome::Published(seq)),
                Err(e) => Err(Error::Redis(e)),
            })
            .collect();
        // A result per event, whatever the client returned: a missing one is a failure, never a success.
        if results.len() < events.len() {
            let missing = fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "pipeline returned fewer results than commands",
            );
            results.resize_with(events.len(), || Err(Error::Redis(missing.clone())));
        }
        results
    }

    /// (Re)loads the function library, e.g. after Redis restarted without persistence.
    pub async fn load_library(&self) -> Result<(), Error> {
        Ok(ces_runtime::redis::load_library(&self.client).await?)
    }
}

/// Whether a Redis error says the publish function is not loaded.
pub fn is_function_missing(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if ces_runtime::redis::is_function_missing(r))
}

/// Whether Redis rejected this event for a reason of its own: `WRONGTYPE`, a key of this session that another
/// program wrote with the wrong type. Such an event is retried a few times and then dead-lettered as
/// `processing_failed`. Everything else counts as an outage and is retried for as long as it takes, including
/// errors raised inside the function (a bug or a version mismatch would fail every event alike, and must stall
/// ingest with an open breaker rather than dead-letter good events) and `CESORDER` (the event waits for the
/// failed event before it).
pub fn is_event_error(e: &Error) -> bool {
    let Error::Redis(r) = e else {
        return false;
    };
    *r.kind() == fred::error::ErrorKind::InvalidArgument && r.details().starts_with("WRONGTYPE")
}

#[cfg(test)]
mod tests {
    use fred::error::{Error as RedisError, ErrorKind};

    use super::*;

    fn redis(kind: ErrorKind, details: &str) -> Error {
        Error::Redis(RedisError::new(kind, details.to_owned()))
    }

    #[test]
    fn only_wrongtype_is_an_event_error_everything_else_an_outage() {
        let event = [redis(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value script: ces_publish",
        )];
        for e in &event {
            assert!(is_event_error(e), "{e}");
        }
        let outage = [
            redis(ErrorKind::IO, "Connection reset by peer"),
            redis(ErrorKind::Timeout, "Request timed out."),
            redis(ErrorKind::Canceled, "Canceled."),
            redis(
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            redis(
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'. script: ces_publish",
            ),
            redis(ErrorKind::Unknown, "ERR Function not found"),
            redis(ErrorKind::Unknown, "ERR something new"),
            redis(
                ErrorKind::Unknown,
                "ERR user_function:12: attempt to compare nil",
            ),
            redis(ErrorKind::InvalidArgument, "Invalid argument(s)"),
            redis(
                ErrorKind::Unknown,
                "CESORDER the previous event of this session",
            ),
        ];
        for e in &outage {
            assert!(!is_event_error(e), "{e}");
        }
    }
}
