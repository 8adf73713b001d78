-- Enqueue one or more jobs atomically: new jobs, and retries of running ones.
-- KEYS: waiting, delayed, seq, wake, active, then per job: job hash, idempotency key (or the
--       job hash again when there is none)
-- ARGV: per job 9 values:
--   id, message, priority, eta_ms (absolute due time, 0: none), delay_ms (due this long
--   after now by Redis' clock, 0: none), idem_ttl_ms (0: no idempotency key), fresh, lease,
--   history
-- `fresh` = 1: a new id the producer just made, so no earlier job can exist (saves a lookup).
-- `lease` = '': a new job; a job with this id that already exists is left alone (created 0).
-- `lease` = a holder token: a retry or reschedule of the running job. Only the current
--   holder may move it (a worker whose lease was reaped meanwhile changes nothing), and it
--   leaves `active` in this same step, so it cannot be lost between failure and requeue.
--   `history` (JSON, or '') records the failed attempt on the job.
-- Whether a job is due is decided by Redis' clock alone (now_ms): a producer or worker with a
-- skewed clock still gets "in 10 s" right.
-- Returns per job: {created (1/0), job id}; with a known idempotency key, the first job's id.
local now = now_ms()
local n = (#KEYS - 5) / 2
-- One INCRBY reserves a FIFO sequence number for every job of this call.
local seq = redis.call('INCRBY', KEYS[3], n) - n
local out = {}
local woken = 0
local HISTORY_KEPT = 5
for i = 0, n - 1 do
  local job = KEYS[6 + i * 2]
  local idem = KEYS[7 + i * 2]
  local a = 1 + i * 9
  local id, msg, prio, eta, delay = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]),
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local idem_ttl, fresh, lease, history = tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7],
    ARGV[a + 8]
  local has_idem = idem_ttl > 0
  seq = seq + 1
  local due = 0
  if eta > 0 then due = eta elseif delay > 0 then due = now + delay end
  local go, retry = true, false
  if lease ~= '' then
    if redis.call('HGET', job, 'lease') == lease then
      retry = true
    else
      go = false  -- stale: the lease was reaped and the job belongs to someone else now
    end
  elseif has_idem then
    local existing = redis.call('GET', idem)
    if existing then
      go = false
      id = existing
    end
  end
  if go and not retry and fresh ~= '1' and redis.call('EXISTS', job) == 1 then
    go = false  -- a job with this id exists already (a hand-back of a job that landed)
  end
  if not go then
    out[#out + 1] = 0
    out[#out + 1] = id
  else
    if has_idem and not retry then
      -- Kept past the due time: a delayed job's key outlives its wait.
      redis.call('SET', idem, id, 'PX', idem_ttl + math.max(0, due - now))
    end
    if retry then
      -- A retry is a new attempt, not a redelivery: the delivery count starts again.
      redis.call('ZREM', KEYS[5], id)
      redis.call('HDEL', job, 'lease', 'consumer', 'leased_at')
      redis.call('HSET', job, 'deliveries', 0)
      redis.call('HINCRBY', job, 'attempt', 1)
      if history ~= '' then
        local past = cjson.decode(redis.call('HGET', job, 'history') or '[]')
        past[#past + 1] = cjson.decode(history)
        while #past > HISTORY_KEPT do table.remove(past, 1) end
        redis.call('HSET', job, 'history', cjson.encode(past))
      end
    end
    if due > now then
      redis.call('ZADD', KEYS[2], due, id)
      if retry then
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'delayed', 'eta', due)
      else
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'delayed', 'eta', due,
          'enq', now)
      end
    else
      local score = waiting_score(prio, seq)
      redis.call('ZADD', KEYS[1], score, id)
      if retry then
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'waiting', 'ready', now,
          'seq', seq)
      else
        -- `ready` (when it became runnable) is `enq` until a move sets it: not stored twice.
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'waiting', 'seq', seq,
          'enq', now)
      end
      woken = woken + 1
    end
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
wake(KEYS[4], woken)
return out
