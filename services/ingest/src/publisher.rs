//! Publishing events to Redis: atomic function calls of up to [`CALL_MAX`] events each, pipelined across a batch.
//!
//! `ces_publish_batch` (in `ces_runtime::redis::LIBRARY`) runs, for each of its events in order, what
//! `ces_publish` does for one: it drops an event whose id it saw within the dedup window,
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
use ces_runtime::redis::PUBLISH_BATCH_FUNCTION;
use fred::clients::{Client, Pipeline};
use fred::interfaces::ClientLike;
use fred::interfaces::FunctionInterface;
use fred::types::Value;
use fred::types::config::Options;

use crate::Error;
use crate::batch::Publish;

/// Bounds of the per-session state `ces_publish_batch` maintains.
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

    /// Publishes `events` in one pipeline of `ces_publish_batch` calls (see [`calls`]); one outcome per event, in
    /// order.
    pub async fn publish(&self, events: &[&Publish]) -> Vec<Result<Outcome, Error>> {
        // Fail fast while disconnected instead of queueing: a queued command would still run after the caller
        // timed out and retried.
        let options = Options {
            fail_fast: true,
            timeout: Some(self.timeout),
            ..Options::default()
        };
        let pipeline = Pipeline::from(self.client.with_options(&options));
        let epoch = ces_runtime::redis::new_epoch();
        let ms = |d: Duration| Value::Integer(d.as_millis().clamp(1, i64::MAX as u128) as i64);
        let shared = [
            Value::Integer(ces_runtime::now_ms()),
            Value::Integer(self.limits.buffer_max_events as i64),
            ms(self.limits.buffer_max_age),
            ms(self.limits.dedup_window),
            ms(self.limits.state_ttl),
            Value::from(epoch.as_str()),
            Value::from(if self.limits.durable_restarts {
                "1"
            } else {
                "0"
            }),
        ];
        let after = previous_of_session(events);
        let mut session_keys: Vec<SessionKeys> = events
            .iter()
            .map(|ev| SessionKeys::of(&ev.session_id))
            .collect();
        let calls = calls(&session_keys, self.client.is_clustered());
        for call in &calls {
            let mut keys = Vec::with_capacity(call.len() * 4);
            let mut args = Vec::with_capacity(shared.len() + call.len() * 3);
            args.extend(shared.iter().cloned());
            for &i in call {
                let ev = events[i];
                // Each event is in exactly one call: its keys move into it.
                let k = std::mem::take(&mut session_keys[i]);
                keys.extend([k.meta, k.buffer, k.ids, k.channel]);
                args.extend([
                    Value::Bytes(ev.envelope.clone()),
                    Value::from(ev.event_id.as_str()),
                    Value::from(after[i]),
                ]);
            }
            // Queues in memory; cannot fail before `try_all`.
            let queued: Result<(), _> = pipeline.fcall(PUBLISH_BATCH_FUNCTION, keys, args).await;
            if let Err(e) = queued {
                return events
                    .iter()
                    .map(|_| Err(Error::Redis(e.clone())))
                    .collect();
            }
        }
        let mut results: Vec<Option<Result<Outcome, Error>>> =
            events.iter().map(|_| None).collect();
        for (call, reply) in calls.iter().zip(pipeline.try_all::<Value>().await) {
            let failure = match reply {
                Ok(Value::Array(items)) if items.len() == call.len() => {
                    for (&i, item) in call.iter().zip(items) {
                        results[i] = Some(outcome(item));
                    }
                    continue;
                }
                Ok(other) => unexpected(&format!(
                    "{} replies for {} events",
                    other.array_len().unwrap_or(0),
                    call.len()
                )),
                Err(e) => e,
            };
            for &i in call {
                results[i] = Some(Err(Error::Redis(failure.clone())));
            }
        }
        // A result per event, whatever the client returned: a missing one is a failure, never a success.
        let missing = unexpected("pipeline returned fewer results than commands");
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Redis(missing.clone()))))
            .collect()
    }

    /// (Re)loads the function library, e.g. after Redis restarted without persistence.
    pub async fn load_library(&self) -> Result<(), Error> {
        Ok(ces_runtime::redis::load_library(&self.client).await?)
    }
}

/// Most events in one `ces_publish_batch` call. Redis runs a call to its end before anything else, so this bounds
/// how long one call holds it (64 events are well under a millisecond); a batch larger than this is several calls
/// in the same pipeline.
pub const CALL_MAX: usize = 64;

/// The calls a batch of events is published in, as indices into `events`, each call in event order. Every event
/// of a session is in the same call or a later one, in order, so the calls may run as the pipeline sends them. On
/// a Redis Cluster a call holds events of one hash slot only (a function's keys must share one); on a single
/// Redis, consecutive events fill each call.
pub fn calls(events: &[SessionKeys], clustered: bool) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    // The call still being filled, per hash slot (a single Redis has one slot for all).
    let mut open: HashMap<u16, usize> = HashMap::new();
    for (i, keys) in events.iter().enumerate() {
        let slot = if clustered {
            fred::util::redis_keyslot(keys.meta.as_bytes())
        } else {
            0
        };
        match open.get(&slot) {
            Some(&c) if calls[c].len() < CALL_MAX => calls[c].push(i),
            _ => {
                open.insert(slot, calls.len());
                calls.push(vec![i]);
            }
        }
    }
    calls
}

/// For each event, the id of its session's previous event in `events`, or "" for the first. `ces_publish_batch`
/// refuses an event whose previous one is not published yet (`CESORDER`): Redis runs a pipeline to the end even
/// after a command fails, and an event must never be published before an earlier one of its session that failed
/// (say, with BUSY) and will be retried.
fn previous_of_session<'a>(events: &[&'a Publish]) -> Vec<&'a str> {
    let mut previous: HashMap<&str, &str> = HashMap::new();
    events
        .iter()
        .map(|ev| {
            previous
                .insert(ev.session_id.as_str(), ev.event_id.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// One element of a `ces_publish_batch` reply: the event's `seq`, 0 for a duplicate, or the error that refused it.
fn outcome(item: Value) -> Result<Outcome, Error> {
    match item {
        Value::Integer(n) => match u64::try_from(n) {
            Ok(0) => Ok(Outcome::Duplicate),
            Ok(seq) => Ok(Outcome::Published(seq)),
            Err(_) => Err(Error::Redis(unexpected(&format!("a negative seq {n}")))),
        },
        Value::String(message) => Err(Error::Redis(refused(&message))),
        Value::Bytes(message) => Err(Error::Redis(refused(&String::from_utf8_lossy(&message)))),
        other => Err(Error::Redis(unexpected(&format!(
            "unexpected reply {other:?}"
        )))),
    }
}

/// A refusal reported inside a reply, typed as fred types the same error as a reply of its own: `WRONGTYPE` is an
/// invalid argument, anything else unknown.
fn refused(message: &str) -> fred::error::Error {
    let kind = if message.starts_with("WRONGTYPE") {
        fred::error::ErrorKind::InvalidArgument
    } else {
        fred::error::ErrorKind::Unknown
    };
    fred::error::Error::new(kind, message.to_owned())
}

fn unexpected(what: &str) -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::Unknown, what.to_owned())
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

    fn event(session: &str, id: &str) -> Publish {
        Publish {
            record: 0,
            session_id: session.to_owned(),
            event_id: id.to_owned(),
            envelope: bytes::Bytes::new(),
            produced_at_ms: 0,
            ingested_at_ms: 0,
            span: Default::default(),
        }
    }

    fn slot(session: &str) -> u16 {
        fred::util::redis_keyslot(SessionKeys::of(session).meta.as_bytes())
    }

    #[test]
    fn a_single_redis_takes_consecutive_events_in_calls_of_at_most_call_max() {
        let events: Vec<Publish> = (0..2 * CALL_MAX + 2)
            .map(|i| event(&format!("s{}", i % 7), &format!("e{i}")))
            .collect();
        let keys: Vec<SessionKeys> = events
            .iter()
            .map(|e| SessionKeys::of(&e.session_id))
            .collect();
        let calls = calls(&keys, false);
        let expected: Vec<Vec<usize>> = vec![
            (0..CALL_MAX).collect(),
            (CALL_MAX..2 * CALL_MAX).collect(),
            (2 * CALL_MAX..2 * CALL_MAX + 2).collect(),
        ];
        assert_eq!(calls, expected);
        assert!(super::calls(&[], false).is_empty());
    }

    #[test]
    fn a_cluster_call_holds_one_hash_slot_in_event_order() {
        let (a, b) = ("alpha", "bravo");
        assert_ne!(slot(a), slot(b));
        let events: Vec<Publish> = (0..CALL_MAX + 3)
            .map(|i| event(if i == 1 || i == 5 { b } else { a }, &format!("e{i}")))
            .collect();
        let keys: Vec<SessionKeys> = events
            .iter()
            .map(|e| SessionKeys::of(&e.session_id))
            .collect();
        let calls = calls(&keys, true);
        for call in &calls {
            assert!(call.len() <= CALL_MAX);
            assert!(
                call.windows(2).all(|w| w[0] < w[1]),
                "event order: {call:?}"
            );
            let slots: std::collections::HashSet<u16> =
                call.iter().map(|&i| slot(&events[i].session_id)).collect();
            assert_eq!(slots.len(), 1, "one slot per call: {call:?}");
        }
        // Every event exactly once; a's CALL_MAX + 1 events in two calls, the later one after the first.
        let mut all: Vec<usize> = calls.concat();
        all.sort_unstable();
        assert_eq!(all, (0..events.len()).collect::<Vec<_>>());
        let first_a = calls.iter().position(|c| c.contains(&0)).unwrap();
        let last_a = calls
            .iter()
            .position(|c| c.contains(&(CALL_MAX + 2)))
            .unwrap();
        assert!(last_a > first_a, "{calls:?}");
        assert_eq!(calls.len(), 3, "{calls:?}");
    }

    #[test]
    fn each_event_names_its_sessions_previous_event_in_the_batch() {
        let events = [
            event("a", "1"),
            event("b", "2"),
            event("a", "3"),
            event("a", "4"),
            event("b", "5"),
        ];
        let refs: Vec<&Publish> = events.iter().collect();
        assert_eq!(previous_of_session(&refs), ["", "", "1", "3", "2"]);
    }

    #[test]
    fn each_reply_element_is_a_seq_a_duplicate_or_the_error_that_refused_the_event() {
        assert_eq!(outcome(Value::Integer(0)).unwrap(), Outcome::Duplicate);
        assert_eq!(outcome(Value::Integer(7)).unwrap(), Outcome::Published(7));
        let wrongtype = outcome(Value::String(
            "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
        ))
        .unwrap_err();
        assert!(is_event_error(&wrongtype), "{wrongtype}");
        let order = outcome(Value::Bytes("CESORDER an earlier event".into())).unwrap_err();
        assert!(!is_event_error(&order), "{order}");
        assert!(order.to_string().contains("CESORDER"), "{order}");
        for odd in [Value::Integer(-1), Value::Null, Value::Array(vec![])] {
            let e = outcome(odd.clone()).unwrap_err();
            assert!(!is_event_error(&e), "{odd:?}: {e}");
        }
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
