-- Enqueue one or more jobs atomically.
-- KEYS: waiting, delayed, seq, wake, active, then per job: job hash, idempotency key
-- ARGV: idem_ttl, now_ms, then per job 7 values:
--   id, message, priority, eta_ms (0 = now), task, has_idem, fresh
-- `fresh` = 1: a new id the producer just made, so there is no earlier state to look up.
-- `now_ms` is the producer's clock: a delayed job's due time comes from the same clock.
-- (Lease deadlines, which hosts must agree on, use Redis' own TIME.)
-- Returns per job: {created (1/0), job id}. A job already leased (a Huey retry of the
-- running job) is moved out of the active set in the same step, so it cannot be lost
-- between its failure and its requeue.
local idem_ttl = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local n = (#KEYS - 5) / 2
-- One INCRBY reserves a FIFO sequence number for every job of this call.
local seq = redis.call('INCRBY', KEYS[3], n) - n
local out = {}
local woken = 0
for i = 0, n - 1 do
  local job = KEYS[6 + i * 2]
  local idem = KEYS[7 + i * 2]
  local a = 3 + i * 7
  local id, msg, prio, eta, task, has_idem, fresh =
    ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), ARGV[a + 4],
    ARGV[a + 5], ARGV[a + 6]
  local existing = false
  if has_idem == '1' then
    existing = redis.call('GET', idem)
  end
  seq = seq + 1
  if existing then
    out[#out + 1] = 0
    out[#out + 1] = existing
  else
    if has_idem == '1' then
      redis.call('SET', idem, id, 'EX', idem_ttl)
    end
    local state = false
    if fresh ~= '1' then
      state = redis.call('HGET', job, 'state')
      if state == 'active' then
        -- A retry is a new attempt, not a redelivery: restart the delivery count.
        redis.call('ZREM', KEYS[5], id)
        redis.call('HDEL', job, 'lease', 'consumer')
        redis.call('HSET', job, 'deliveries', 0)
        redis.call('HINCRBY', job, 'attempt', 1)
      end
    end
    if eta > now then
      if state then redis.call('ZREM', KEYS[1], id) end
      redis.call('ZADD', KEYS[2], eta, id)
      if state then
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'delayed', 'eta', eta)
      else
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'delayed', 'eta', eta,
          'enq', now, 'task', task)
      end
    else
      local score = waiting_score(prio, seq)
      if state then redis.call('ZREM', KEYS[2], id) end
      redis.call('ZADD', KEYS[1], score, id)
      if state then
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'waiting', 'ready', now,
          'score', score)
      else
        redis.call('HSET', job, 'msg', msg, 'prio', prio, 'state', 'waiting', 'ready', now,
          'score', score, 'enq', now, 'task', task)
      end
      woken = woken + 1
    end
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
wake(KEYS[4], woken)
return out
