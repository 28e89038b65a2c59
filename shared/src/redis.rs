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

/// The Redis function library `ces` (Redis >= 7.0). Both services load it at start and again whenever Redis
/// answers "Function not found" (a restart without persistence, `FUNCTION FLUSH`); loading is idempotent.
///
/// - `ces_publish(meta, buffer, ids, channel; envelope, event_id, now_ms, max_events, max_age_ms, dedup_ms,
///   state_ttl_ms, epoch_candidate[, after_id])`: drops the event if its id was seen within the dedup window
///   (returns 0); refuses it with `CESORDER` if `after_id` is given and not among the session's event ids (the
///   session's previous event in the same pipeline failed, so this one must wait for it); otherwise assigns the
///   next `seq`, appends `seq` and the epoch to the envelope, adds it to the buffer, trims the buffer by count and
///   by age (remembering the highest evicted `seq` and why), publishes it, and returns the `seq`. All in one
///   atomic step, so `seq`, buffer and channel always agree; the checks and the buffer append come before `seq`
///   is stored, so a failing call leaves no gap in `seq`.
/// - `ces_resume(meta, buffer; after_seq, epoch_candidate, state_ttl_ms)`: returns `[epoch, last_seq,
///   evicted_upto, evicted_reason, envelope...]` for every buffered event after `after_seq`, creating the epoch
///   if the session has none yet.
///
/// The varint encoder mirrors `crate::envelope::append_trailer`; Lua numbers are doubles, exact up to 2^53.
pub const LIBRARY: &str = r#"#!lua name=ces

local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

-- A session without state starts a new epoch. A buffer left from a lost state (meta evicted under memory
-- pressure) belongs to the old epoch and goes with it: its entries would otherwise be replayed as the new
-- epoch's, and its ids would block the new epoch's numbering.
local function ensure_epoch(meta, buf, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('DEL', buf)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'evicted', 0)
  end
  return epoch
end

-- Integers as decimal text: Lua's tostring switches to exponent notation above 1e14.
local function int(n)
  return string.format('%d', n)
end

local function note_eviction(meta, upto, reason)
  local evicted = tonumber(redis.call('HGET', meta, 'evicted') or '0')
  if upto > evicted then
    redis.call('HSET', meta, 'evicted', int(upto), 'evicted_reason', reason)
  end
end

redis.register_function('ces_publish', function(keys, args)
  local meta, buf, ids, ch = keys[1], keys[2], keys[3], keys[4]
  local now = tonumber(args[3])
  local max_events = tonumber(args[4])
  local max_age = tonumber(args[5])
  local window = tonumber(args[6])
  local ttl = tonumber(args[7])
  local seen = redis.call('ZSCORE', ids, args[2])
  if seen and tonumber(seen) > now - window then
    return 0
  end
  if args[9] and args[9] ~= '' and not redis.call('ZSCORE', ids, args[9]) then
    return redis.error_reply('CESORDER the previous event of this session in the batch is not published yet')
  end
  local epoch = ensure_epoch(meta, buf, args[8])
  local seq = tonumber(redis.call('HGET', meta, 'seq') or '0') + 1
  local env = args[1] .. '\8' .. varint(seq) .. 'Z' .. varint(#epoch) .. epoch
  redis.call('XADD', buf, int(seq) .. '-0', 'e', env, 't', int(now))
  redis.call('HSET', meta, 'seq', int(seq))
  if seq > max_events then
    redis.call('XTRIM', buf, 'MINID', int(seq - max_events + 1) .. '-0')
    note_eviction(meta, seq - max_events, 'buffer_overflow')
  end
  -- The oldest entry alone decides whether anything expired: reading 32 entries (envelopes included) on every
  -- publish cost more than the rest of this function together.
  local oldest = redis.call('XRANGE', buf, '-', '+', 'COUNT', 1)[1]
  if oldest and tonumber(oldest[2][4]) < now - max_age then
    local expired_upto = nil
    for _, entry in ipairs(redis.call('XRANGE', buf, '-', '+', 'COUNT', 32)) do
      if tonumber(entry[2][4]) < now - max_age then
        expired_upto = tonumber(string.match(entry[1], '^(%d+)'))
      else
        break
      end
    end
    redis.call('XTRIM', buf, 'MINID', int(expired_upto + 1) .. '-0')
    note_eviction(meta, expired_upto, 'expired')
  end
  redis.call('ZADD', ids, int(now), args[2])
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', int(now - window))
  redis.call('PEXPIRE', ids, window)
  redis.call('PEXPIRE', buf, max_age)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PUBLISH', ch, env)
  return seq
end)

-- Session state (hash ces:{s}:session). A connection claims the session: the previous holder is returned so
-- its node can be told to close it (takeover); a closed session cannot be claimed.
redis.register_function('ces_claim', function(keys, args)
  local prev = redis.call('HMGET', keys[1], 'conn', 'status')
  if prev[2] == 'closed' then
    return { '', 'closed' }
  end
  redis.call('HSET', keys[1], 'conn', args[1], 'node', args[2], 'status', 'connected', 'last_seen_ms', args[3])
  redis.call('PEXPIRE', keys[1], args[4])
  return { prev[1] or '', prev[2] or '' }
end)

-- A connection ends: the session becomes disconnected, unless a newer connection holds it already.
redis.register_function('ces_release', function(keys, args)
  if redis.call('HGET', keys[1], 'conn') == args[1] then
    redis.call('HSET', keys[1], 'status', 'disconnected', 'last_seen_ms', args[2])
    if args[4] ~= '' then
      redis.call('HSET', keys[1], 'last_ack', args[4])
    end
    redis.call('HDEL', keys[1], 'conn')
    redis.call('PEXPIRE', keys[1], args[3])
    return 1
  end
  return 0
end)

-- A connected session's heartbeat (and its client's last ack, if any): refreshes it if this connection still
-- holds it, and says 'closed' or 'taken' otherwise, so a socket that missed its control message still closes.
redis.register_function('ces_touch', function(keys, args)
  local state = redis.call('HMGET', keys[1], 'conn', 'status')
  if state[2] == 'closed' then
    return 'closed'
  end
  if state[1] ~= args[1] then
    return 'taken'
  end
  redis.call('HSET', keys[1], 'last_seen_ms', args[2])
  if args[4] ~= '' then
    redis.call('HSET', keys[1], 'last_ack', args[4])
  end
  redis.call('PEXPIRE', keys[1], args[3])
  return 'ok'
end)

-- The session is closed for good (DELETE): returns the connection that held it, if any.
redis.register_function('ces_close', function(keys, args)
  local conn = redis.call('HGET', keys[1], 'conn') or ''
  redis.call('HSET', keys[1], 'status', 'closed', 'closed_at_ms', args[1])
  redis.call('HDEL', keys[1], 'conn')
  redis.call('PEXPIRE', keys[1], args[2])
  return conn
end)

-- Registration under a node-wide cap: KEYS[1] is the set of live sessions scored by expiry.
redis.register_function('ces_admit', function(keys, args)
  local now, cap = tonumber(args[2]), tonumber(args[4])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', int(now))
  if redis.call('ZCARD', keys[1]) >= cap then
    return 0
  end
  redis.call('ZADD', keys[1], args[3], args[1])
  return 1
end)

redis.register_function('ces_resume', function(keys, args)
  local meta, buf = keys[1], keys[2]
  local epoch = ensure_epoch(meta, buf, args[2])
  -- A session that is read is alive: its numbering must not expire under a connected client.
  redis.call('PEXPIRE', meta, args[3])
  local m = redis.call('HMGET', meta, 'seq', 'evicted', 'evicted_reason')
  local out = { epoch, tonumber(m[1] or '0'), tonumber(m[2] or '0'), m[3] or '' }
  for _, entry in ipairs(redis.call('XRANGE', buf, '(' .. args[1] .. '-0', '+')) do
    out[#out + 1] = entry[2][2]
  end
  return out
end)
"#;

/// Name of the publish function in [`LIBRARY`].
pub const PUBLISH_FUNCTION: &str = "ces_publish";
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

/// (Re)loads [`LIBRARY`].
pub async fn load_library<C: fred::interfaces::FunctionInterface + Sync>(
    client: &C,
) -> Result<(), fred::error::Error> {
    let _: String = client.function_load(true, LIBRARY).await?;
    Ok(())
}

/// Whether a Redis error says a CES function is not loaded.
pub fn is_function_missing(e: &fred::error::Error) -> bool {
    e.details().contains("Function not found")
}

/// A fresh random epoch id (16 hex digits).
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
