#!lua name=ces
-- CES's Redis functions: publishing an event (seq, buffer, dedup, sharded Pub/Sub in one atomic step), resuming a
-- session from its buffer, and session state (claim, release, touch, close, admission). Loaded by both services
-- as `ces_runtime::redis::LIBRARY`; its contract is documented there.

local function varint(n)
  -- One and two bytes (below 16,384: every epoch's length, and most seqs) without a table to build and join.
  if n < 128 then
    return string.char(n)
  elseif n < 16384 then
    return string.char(n % 128 + 128, math.floor(n / 128))
  end
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

-- The run id of this Redis process, read once per process: it changes with every start (a restart, a restore
-- from a snapshot) and differs on a promoted replica, which is exactly when a session's state may have gone back.
local this_run = nil
local function run_id()
  if not this_run then
    this_run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  end
  return this_run
end

-- Whether this process's data set holds every write acknowledged before it started, as far as Redis shows it:
-- it loaded an append-only file (`aof_enabled:1`), and it was never a replica promoted to primary (an empty
-- `master_replid2`). Read once per process, like the run id.
local this_kept = nil
local function restart_kept_writes()
  if this_kept == nil then
    local persistence = redis.call('INFO', 'persistence')
    local replication = redis.call('INFO', 'replication')
    this_kept = string.find(persistence, 'aof_enabled:1', 1, true) ~= nil
      and string.find(replication, 'master_replid2:' .. string.rep('0', 40), 1, true) ~= nil
  end
  return this_kept
end

-- An epoch is valid on the Redis process that started it (`run`). State written by another process (the
-- primary before a failover, this node before a restart) may have lost its newest writes to asynchronous
-- replication or an older snapshot, and continuing its numbering would hand out a `seq` a client already saw
-- for another event: such a session starts a new epoch, which clients are told about (`epoch_changed`). The
-- one exception is `durable` ('1', CES_REDIS_DURABLE_RESTARTS: the operator runs Redis with `appendfsync
-- always` and no failover) on a process that loaded an append-only file and was never promoted.
local function epoch_valid(epoch, run, durable)
  if not epoch then
    return false
  end
  return run == run_id() or (durable == '1' and restart_kept_writes())
end

-- A session without a valid epoch starts a new one. A buffer left from a lost state (meta evicted under memory
-- pressure, or an epoch of another Redis process) belongs to the old epoch and goes with it: its entries would
-- otherwise be replayed as the new epoch's, and its ids would block the new epoch's numbering.
local function ensure_epoch(meta, buf, candidate, durable)
  local state = redis.call('HMGET', meta, 'epoch', 'run')
  local epoch = state[1]
  if not epoch_valid(epoch, state[2], durable) then
    epoch = candidate
    redis.call('DEL', buf)
    redis.call('HSET', meta, 'epoch', epoch, 'run', run_id(), 'seq', 0, 'evicted', 0)
    redis.call('HDEL', meta, 'evicted_reason', 'due')
  elseif state[2] ~= run_id() then
    redis.call('HSET', meta, 'run', run_id())
  end
  return epoch
end

-- Integers as decimal text: Lua's tostring switches to exponent notation above 1e14.
local function int(n)
  return string.format('%d', n)
end

-- The upkeep interval: at most GATE_MAX_MS, and at most 1/GATE_SHARE of the smallest limit, so nothing outlives
-- its limit by more than that share.
local GATE_MAX_MS = 60000
local GATE_SHARE = 4

-- Upkeep that does not need to happen on every publish: expiring old buffer entries, forgetting ids past the
-- dedup window, and refreshing the three TTLs. It runs when the session's `due` time has passed (at most every
-- `gate` ms, and always for a session without state), which takes five commands off the per-event path. Every
-- key still lives at least its limit after the session's last event: the TTLs are set `gate` longer than the
-- limits, and each key that lost its TTL (expired, then re-created by this call) gets it back in this call,
-- because `gate` is below every limit, so `due` has passed whenever a key could have expired.
local function upkeep(buf, ids, now, max_age, window, gate, evicted)
  local reason = nil
  local oldest = redis.call('XRANGE', buf, '-', '+', 'COUNT', 1)[1]
  if oldest and tonumber(oldest[2][4]) < now - max_age then
    -- Entries are in seq order and so in time order: read from the oldest until the first one to keep.
    local expired_upto, from = nil, '-'
    repeat
      local entries = redis.call('XRANGE', buf, from, '+', 'COUNT', 64)
      local more = #entries == 64
      for _, entry in ipairs(entries) do
        if tonumber(entry[2][4]) < now - max_age then
          expired_upto = tonumber(string.match(entry[1], '^(%d+)'))
          from = '(' .. entry[1]
        else
          more = false
          break
        end
      end
    until not more
    redis.call('XTRIM', buf, 'MINID', int(expired_upto + 1) .. '-0')
    if expired_upto > evicted then
      evicted, reason = expired_upto, 'expired'
    end
  end
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', int(now - window))
  redis.call('PEXPIRE', ids, window + gate)
  redis.call('PEXPIRE', buf, max_age + gate)
  return evicted, reason
end

-- What every event of one call shares: the time, the limits, the upkeep interval, the epoch a new session gets.
local function publish_params(now, max_events, max_age, window, ttl, epoch_candidate, durable)
  local p = {
    at = now,
    now = tonumber(now),
    max_events = tonumber(max_events),
    max_age = tonumber(max_age),
    window = tonumber(window),
    ttl = tonumber(ttl),
    epoch_candidate = epoch_candidate,
    durable = durable,
  }
  p.gate = math.max(1, math.floor(math.min(GATE_MAX_MS, p.max_age / GATE_SHARE, p.window / GATE_SHARE,
    p.ttl / GATE_SHARE)))
  return p
end

-- Publishes one event (see ces_publish); returns its seq, 0 for a duplicate, or an error reply.
local function publish_one(meta, buf, ids, ch, envelope, id, after, p)
  local at, now, window, gate = p.at, p.now, p.window, p.gate
  if after and after ~= '' and not redis.call('ZSCORE', ids, after) then
    return redis.error_reply('CESORDER the previous event of this session in the batch is not published yet')
  end
  -- Read before the first write: a session key of the wrong type fails the call here, with nothing written.
  local state = redis.call('HMGET', meta, 'epoch', 'seq', 'evicted', 'due', 'run')
  -- The dedup check and the id's record in one command. An id recorded longer ago than the window (upkeep has
  -- not forgotten it yet) is a new event: its time is moved forward.
  if redis.call('ZADD', ids, 'NX', at, id) == 0 then
    if tonumber(redis.call('ZSCORE', ids, id)) > now - window then
      return 0
    end
    redis.call('ZADD', ids, at, id)
  end
  -- `evicted` is read as a number only where an eviction may move it, and `update` (the meta fields besides
  -- `seq`) made only when there is one: most events need neither, and each costs the Lua VM more than a command.
  local epoch, seq, evicted_text, due = state[1], 0, '0', 0
  local update = nil
  if epoch_valid(epoch, state[5], p.durable) then
    seq, evicted_text, due = tonumber(state[2] or '0'), state[3] or '0', tonumber(state[4] or '0')
    if state[5] ~= run_id() then
      update = { 'run', run_id() }
    end
  else
    -- A session without a valid epoch starts a new one (see ensure_epoch).
    epoch = p.epoch_candidate
    redis.call('DEL', buf)
    redis.call('HDEL', meta, 'evicted_reason')
    update = { 'epoch', epoch, 'run', run_id(), 'evicted', 0 }
  end
  seq = seq + 1
  local seq_text = int(seq)
  local env = envelope .. '\8' .. varint(seq) .. 'Z' .. varint(#epoch) .. epoch
  local reason, evicted = nil, nil
  local added
  if seq > p.max_events then
    -- Trimmed by count in the same command; a session's buffer holds max_events entries at most.
    added = redis.pcall('XADD', buf, 'MINID', int(seq - p.max_events + 1) .. '-0', seq_text .. '-0', 'e', env, 't', at)
    evicted = tonumber(evicted_text)
    if seq - p.max_events > evicted then
      evicted, reason = seq - p.max_events, 'buffer_overflow'
    end
  else
    added = redis.pcall('XADD', buf, seq_text .. '-0', 'e', env, 't', at)
  end
  if type(added) == 'table' and added.err then
    -- The buffer refused the event (a key of the wrong type): it was not published, so its id is not seen.
    redis.call('ZREM', ids, id)
    return added
  end
  local upkept = now >= due
  if upkept then
    local expired_reason
    evicted, expired_reason = upkeep(buf, ids, now, p.max_age, window, gate, evicted or tonumber(evicted_text))
    reason = expired_reason or reason
    update = update or {}
    update[#update + 1] = 'due'
    update[#update + 1] = int(now + gate)
  end
  if reason then
    update = update or {}
    update[#update + 1] = 'evicted'
    update[#update + 1] = int(evicted)
    update[#update + 1] = 'evicted_reason'
    update[#update + 1] = reason
  end
  -- The checks and the buffer append above come before `seq` is stored: a failing call leaves no gap.
  if update then
    redis.call('HSET', meta, 'seq', seq_text, unpack(update))
  else
    redis.call('HSET', meta, 'seq', seq_text)
  end
  if upkept then
    redis.call('PEXPIRE', meta, p.ttl + gate)
  end
  redis.call('SPUBLISH', ch, env)
  return seq
end

redis.register_function('ces_publish', function(keys, args)
  local p = publish_params(args[3], args[4], args[5], args[6], args[7], args[8], args[10])
  return publish_one(keys[1], keys[2], keys[3], keys[4], args[1], args[2], args[9], p)
end)

-- Several events in one call: keys are (meta, buffer, ids, channel) per event, args the shared parameters then
-- (envelope, event_id, after_id) per event. Each event is published exactly as by ces_publish, in order; the
-- reply has one element per event: its seq, 0 for a duplicate, or the error that refused it as a string. After
-- an event failed, the later events of its session in the call are refused with CESORDER without being tried.
redis.register_function('ces_publish_batch', function(keys, args)
  local p = publish_params(args[1], args[2], args[3], args[4], args[5], args[6], args[7])
  local out, failed = {}, {}
  for i = 0, #keys / 4 - 1 do
    local k, a = i * 4, 8 + i * 3
    local meta = keys[k + 1]
    local ok, r
    if failed[meta] then
      ok, r = true, { err = 'CESORDER an earlier event of this session in the call failed' }
    else
      ok, r = pcall(publish_one, meta, keys[k + 2], keys[k + 3], keys[k + 4], args[a], args[a + 1], args[a + 2], p)
    end
    if ok and type(r) == 'number' then
      out[i + 1] = r
    else
      failed[meta] = true
      -- redis.call raises its error as a table; a fault of this code raises a string.
      out[i + 1] = type(r) == 'table' and (r.err or 'ERR unknown') or tostring(r)
    end
  end
  return out
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
  -- The numbering of a session nothing was published to yet lives as long as the session (see ces_resume).
  if keys[2] then
    local seq = redis.call('HGET', keys[2], 'seq')
    if (not seq or seq == '0') and redis.call('PTTL', keys[2]) < tonumber(args[3]) then
      redis.call('PEXPIRE', keys[2], args[3])
    end
  end
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
  local epoch = ensure_epoch(meta, buf, args[2], args[4])
  local m = redis.call('HMGET', meta, 'seq', 'evicted', 'evicted_reason')
  -- A session that is read is alive: its numbering must not expire under a connected client. Never shortened:
  -- ces_publish sets a TTL up to its upkeep interval longer, and that one counts from the last event. A session
  -- nothing was published to yet holds only its epoch: it lives as long as the session itself (args[5], kept up
  -- by ces_touch), not the whole state TTL, so connects cannot fill Redis with numbering of sessions long gone.
  local ttl = tonumber(args[3])
  if (not m[1] or m[1] == '0') and args[5] then
    ttl = tonumber(args[5])
  end
  if redis.call('PTTL', meta) < ttl then
    redis.call('PEXPIRE', meta, ttl)
  end
  local out = { epoch, tonumber(m[1] or '0'), tonumber(m[2] or '0'), m[3] or '' }
  -- One page: at most args[6] events and args[7] bytes of envelopes, but always the first event, so each read
  -- makes progress. The caller reads on after the page's last event (without args[6], the whole buffer).
  local range
  if args[6] then
    range = redis.call('XRANGE', buf, '(' .. args[1] .. '-0', '+', 'COUNT', args[6])
  else
    range = redis.call('XRANGE', buf, '(' .. args[1] .. '-0', '+')
  end
  local budget = tonumber(args[7] or '0')
  local bytes = 0
  for i, entry in ipairs(range) do
    local env = entry[2][2]
    bytes = bytes + #env
    if budget > 0 and i > 1 and bytes > budget then
      break
    end
    out[#out + 1] = env
  end
  return out
end)
