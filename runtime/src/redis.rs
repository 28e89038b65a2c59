//! Redis client construction shared by the services.
//!
//! Every client reconnects by itself with exponential backoff, and never re-sends a command on its own
//! (`max_command_attempts = 1`): a command whose fate is unknown after a connection loss is reported to the
//! caller, which decides whether it is safe to retry.

use std::time::Duration;

use fred::interfaces::{ClientLike, ClusterInterface as _};
use fred::types::Builder;
use fred::types::config::{Config, ReconnectPolicy};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;

/// Upper bound on any single command, so a dead connection cannot hang a caller.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client builder for `url` with CES's reconnect and timeout policy.
pub fn builder(url: &str) -> Result<Builder, fred::error::Error> {
    builder_with_tls(url, None)
}

/// [`builder`], with TLS configured by `tls` when the URL is `rediss://` (without it, `rediss://` trusts the
/// system's root certificates). Credentials (`user:password@`, Redis ACL) come from the URL.
pub fn builder_with_tls(
    url: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Builder, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    if let (Some(_), Some(tls)) = (&config.tls, tls) {
        config.tls = Some(fred::types::config::TlsConnector::from((*tls).clone()).into());
    }
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.max_command_attempts = 1;
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// Closes `client`, waiting at most `within` for Redis to answer the QUIT. With Redis unreachable, fred would
/// try to reconnect to send it for as long as its connection timeout (10 s), holding up a process's shutdown;
/// past `within` the connection is simply dropped with the client.
pub async fn quit(client: &impl ClientLike, within: Duration) {
    if tokio::time::timeout(within, client.quit()).await.is_err() {
        debug!(
            client = client.id(),
            "redis did not answer QUIT in time; dropping the connection"
        );
    }
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

/// The Redis function library `ces` (Redis >= 7.0, `runtime/src/ces.lua`). Both services load it at start and again whenever Redis
/// answers "Function not found" (a restart without persistence, `FUNCTION FLUSH`); loading is idempotent.
///
/// - `ces_publish(meta, buffer, ids, channel; envelope, event_id, now_ms, max_events, max_age_ms, dedup_ms,
///   state_ttl_ms, epoch_candidate, after_id, durable)`: drops the event if its id was seen within the dedup window
///   (returns 0); refuses it with `CESORDER` if `after_id` is given and not among the session's event ids (the
///   session's previous event in the same pipeline failed, so this one must wait for it); otherwise assigns the
///   next `seq`, appends `seq` and the epoch to the envelope, adds it to the buffer trimmed by count, publishes
///   it with `SPUBLISH` on the session's shard channel, and returns the `seq`. All in one atomic step, so `seq`,
///   buffer and channel always agree; the checks and the buffer append come before `seq` is stored, so a failing
///   call leaves no gap in `seq`, and a buffer that refuses the event takes its id back out of the dedup set. The
///   dedup check and the id's record are one `ZADD NX`. The session's upkeep (trimming the buffer by age,
///   forgetting ids past the window, refreshing TTLs) runs at most every `min(60 s, smallest limit / 4)` per
///   session, with TTLs that much longer than the limits: five commands per event. The highest evicted `seq` and
///   why are remembered either way.
/// - `ces_publish_batch(meta, buffer, ids, channel, ... per event; now_ms, max_events, max_age_ms, dedup_ms,
///   state_ttl_ms, epoch_candidate, durable, then envelope, event_id, after_id per event)`: `ces_publish` for each
///   event in order, in one call; replies with an array of one element per event: its `seq`, 0 for a duplicate,
///   or the error that refused it, as a string. Once an event is refused, the later events of its session in the
///   call are refused with `CESORDER` untried. On a Redis Cluster every key of a call must be in one hash slot.
/// - `ces_resume(meta, buffer; after_seq, epoch_candidate, state_ttl_ms, durable, unpublished_ttl_ms,
///   page_events, page_bytes)`: returns `[epoch, last_seq, evicted_upto, evicted_reason, envelope...]` for one
///   page of the buffered events after `after_seq` (at most `page_events` events and `page_bytes` bytes, at
///   least one event), creating the epoch if the session has none yet. A page whose last event is below
///   `last_seq` was cut short; the caller reads on after it.
///
/// An epoch belongs to the Redis process that started it (its `run_id`, stored as `run` in the session's meta):
/// the first call after a restart, a restore from a snapshot or a replica's promotion finds another process's
/// epoch, whose newest writes may be gone, and starts a new one instead of reusing `seq`s (docs/scaling.md).
/// With `durable` = "1" (`CES_REDIS_DURABLE_RESTARTS`) an epoch survives a restart of a process that loaded an
/// append-only file and was never a promoted replica. The library reads `INFO server`, `INFO persistence` and
/// `INFO replication` once per Redis process, so an ACL user running it needs `+info`.
///
/// The varint encoder mirrors `ces_protocol::envelope::append_trailer`; Lua numbers are doubles, exact up to 2^53.
pub const LIBRARY: &str = include_str!("ces.lua");

/// Name of the publish function in [`LIBRARY`] (one event per call).
pub const PUBLISH_FUNCTION: &str = "ces_publish";
/// Name of the batch publish function in [`LIBRARY`] (several events per call), the one ingest calls.
pub const PUBLISH_BATCH_FUNCTION: &str = "ces_publish_batch";
/// Session state functions in [`LIBRARY`]: claim on connect, release on disconnect, close on DELETE, and
/// admission under the session cap.
pub const CLAIM_FUNCTION: &str = "ces_claim";
/// See [`CLAIM_FUNCTION`].
pub const RELEASE_FUNCTION: &str = "ces_release";
/// See [`CLAIM_FUNCTION`].
pub const CLOSE_FUNCTION: &str = "ces_close";
/// See [`CLAIM_FUNCTION`].
pub const ADMIT_FUNCTION: &str = "ces_admit";
/// See [`CLAIM_FUNCTION`].
pub const TOUCH_FUNCTION: &str = "ces_touch";
/// Name of the resume function in [`LIBRARY`].
pub const RESUME_FUNCTION: &str = "ces_resume";

/// (Re)loads [`LIBRARY`] on every primary: on a single Redis that is the one node; on a Redis Cluster each
/// primary holds its own copy, so a primary that lacks it (promoted, added, restarted empty) is covered by the
/// same call, which callers repeat whenever a publish answers "Function not found".
pub async fn load_library<C: fred::interfaces::FunctionInterface + Sync>(
    client: &C,
) -> Result<(), fred::error::Error> {
    let _: String = client.function_load_cluster(true, LIBRARY).await?;
    Ok(())
}

/// Whether a Redis error says a CES function is not loaded.
pub fn is_function_missing(e: &fred::error::Error) -> bool {
    e.details().contains("Function not found")
}

/// Calls the library's `function` on `key` with `args`, loading [`LIBRARY`] first and calling once more when Redis
/// lost it (a restart without persistence, `FUNCTION FLUSH`).
pub async fn fcall<R: fred::types::FromValue>(
    redis: &fred::clients::Client,
    function: &str,
    key: String,
    args: Vec<fred::types::Value>,
) -> Result<R, fred::error::Error> {
    fcall_keys(redis, function, vec![key], args).await
}

/// [`fcall`] with several keys (all of one session: one hash slot).
pub async fn fcall_keys<R: fred::types::FromValue>(
    redis: &fred::clients::Client,
    function: &str,
    keys: Vec<String>,
    args: Vec<fred::types::Value>,
) -> Result<R, fred::error::Error> {
    use fred::interfaces::FunctionInterface as _;
    match redis
        .fcall::<R, _, _, _>(function, keys.clone(), args.clone())
        .await
    {
        Err(e) if is_function_missing(&e) => {
            load_library(redis).await?;
            redis.fcall(function, keys, args).await
        }
        other => other,
    }
}

/// `d` as a function argument in whole milliseconds, at least 1 (Redis refuses a zero or negative expiry).
pub fn millis(d: Duration) -> fred::types::Value {
    fred::types::Value::Integer(d.as_millis().clamp(1, i64::MAX as u128) as i64)
}

/// A fresh random epoch id (16 hex digits).
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// One field of an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// What a Redis primary says of its memory (`INFO memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// The primary (`host:port`), or `redis` for a single node.
    pub server: String,
    /// `used_memory`.
    pub used: u64,
    /// `maxmemory` (0: no limit).
    pub max: u64,
    /// `maxmemory_policy`.
    pub policy: String,
}

impl Memory {
    fn parse(server: String, info: &str) -> Self {
        let number = |field| {
            info_field(info, field)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            used: number("used_memory"),
            max: number("maxmemory"),
            policy: info_field(info, "maxmemory_policy")
                .unwrap_or("unknown")
                .to_owned(),
            server,
        }
    }
}

/// `INFO memory` of every primary. Read with `INFO`, which managed Redis services allow where `CONFIG GET` is
/// renamed away.
pub async fn memory(client: &fred::clients::Client) -> Result<Vec<Memory>, fred::error::Error> {
    use fred::types::InfoKind;
    let mut answers = Vec::new();
    match client.cached_cluster_state() {
        Some(state) if client.is_clustered() => {
            for server in state.unique_primary_nodes() {
                let info: String = client
                    .with_cluster_node(&server)
                    .info(Some(InfoKind::Memory))
                    .await?;
                answers.push(Memory::parse(server.to_string(), &info));
            }
        }
        _ => {
            let info: String = client.info(Some(InfoKind::Memory)).await?;
            answers.push(Memory::parse("redis".to_owned(), &info));
        }
    }
    Ok(answers)
}

/// The primaries whose `maxmemory-policy` evicts keys: each one may silently drop a session's tombstone (undoing a
/// revocation), its dedup ids (a redelivered event delivered twice) or its numbering.
pub async fn evicting_primaries(
    client: &fred::clients::Client,
) -> Result<Vec<Memory>, fred::error::Error> {
    let mut primaries = memory(client).await?;
    primaries.retain(|m| m.policy != "noeviction");
    Ok(primaries)
}

/// Refuses (with `refuse`, `CES_REDIS_EVICTION=refuse`) or warns about a Redis that may evict keys. A Redis that
/// does not answer `INFO memory` is logged and not checked: the check must not stop a process that could run.
pub async fn check_eviction(
    client: &fred::clients::Client,
    refuse: bool,
) -> Result<(), crate::Error> {
    let evicting = match evicting_primaries(client).await {
        Ok(evicting) => evicting,
        Err(e) => {
            warn!(error = %e, "could not read maxmemory-policy (INFO memory); eviction not checked");
            return Ok(());
        }
    };
    if evicting.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = evicting
        .iter()
        .map(|m| format!("{}: {}", m.server, m.policy))
        .collect();
    let message = format!(
        "maxmemory-policy must be noeviction ({}): an evicted key undoes a revocation, forgets dedup ids or \
         resets a session's numbering. Set `maxmemory-policy noeviction`, or CES_REDIS_EVICTION=warn to run anyway",
        list.join(", ")
    );
    if refuse {
        return Err(crate::Error::RedisUnsafe(message));
    }
    warn!("{message}");
    Ok(())
}

#[cfg(test)]
mod eviction_tests {
    use super::Memory;

    #[test]
    fn memory_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory:4096\r\n\
                    maxmemory_human:4.00K\r\nmaxmemory_policy:allkeys-lru\r\n";
        let m = Memory::parse("a:1".into(), info);
        assert_eq!(
            m,
            Memory {
                server: "a:1".into(),
                used: 1024,
                max: 4096,
                policy: "allkeys-lru".into()
            }
        );
        let empty = Memory::parse("b".into(), "# Memory\r\n");
        assert_eq!(
            (empty.used, empty.max, empty.policy.as_str()),
            (0, 0, "unknown")
        );
    }
}
