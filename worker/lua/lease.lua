-- Settle this consumer's finished jobs, then lease the next ones: one round trip per job on a
-- busy queue (less with batches), where plain Huey spends three.
--
-- Settling: ack (done: delete), requeue (back to waiting, e.g. interrupted by shutdown),
-- unstart (leased but never started: back without counting a delivery) or fail (into the
-- failed set with the error). Only the lease holder settles: if the reaper already gave the
-- job to someone else, the stale holder's settlement changes nothing.
-- Leasing: pop by priority then FIFO into the active set scored by the lease deadline (Redis'
-- clock, which every host shares), with holder and delivery count. Nothing while paused.
--
-- KEYS: waiting, active, failed, wake, paused
-- ARGV: job key prefix, lease count (0: settle only), lease_ms, consumer,
--       then groups of 8: op, id, lease, reason, error_type, error, traceback, attempts
-- Returns {settled, status, leases...}: status -1 paused, else the number leased, each as
-- id, message, deliveries, ready_ms, enqueued_ms.
local now = now_ms()
local prefix = ARGV[1]
local settled, woken = 0, 0
for i = 5, #ARGV, 8 do
  local op, id, lease = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job = prefix .. id
  if redis.call('HGET', job, 'lease') == lease then
    redis.call('ZREM', KEYS[2], id)
    settled = settled + 1
    if op == 'ack' then
      redis.call('DEL', job)
    elseif op == 'requeue' or op == 'unstart' then
      local score = tonumber(redis.call('HGET', job, 'score') or '0')
      if op == 'unstart' then redis.call('HINCRBY', job, 'deliveries', -1) end
      redis.call('ZADD', KEYS[1], score, id)
      redis.call('HSET', job, 'state', 'waiting', 'ready', now)
      redis.call('HDEL', job, 'lease', 'consumer')
      woken = woken + 1
    else
      redis.call('HSET', job, 'state', 'failed', 'reason', ARGV[i + 3],
        'error_type', ARGV[i + 4], 'error', ARGV[i + 5], 'traceback', ARGV[i + 6],
        'attempts', ARGV[i + 7], 'last_failed', now)
      redis.call('HSETNX', job, 'first_failed', now)
      redis.call('HDEL', job, 'lease', 'consumer')
      redis.call('ZADD', KEYS[3], now, id)
    end
  end
end
wake(KEYS[4], woken)

local count = tonumber(ARGV[2])
if count == 0 then
  return {settled, 0}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {settled, -1}
end
local popped = redis.call('ZPOPMIN', KEYS[1], count)
if #popped == 0 then
  -- Nothing waits, so every wake token left is stale (its job was taken): drop them, or
  -- idle workers would each wake for nothing once per token after a busy spell.
  redis.call('DEL', KEYS[4])
  return {settled, 0}
end
local out = {settled, 0}
local deadline = now + tonumber(ARGV[3])
local consumer = ARGV[4]
for i = 1, #popped, 2 do
  local id = popped[i]
  local job = prefix .. id
  local meta = redis.call('HMGET', job, 'msg', 'ready', 'enq')
  if meta[1] then
    local deliveries = redis.call('HINCRBY', job, 'deliveries', 1)
    redis.call('HSET', job, 'state', 'active', 'consumer', consumer,
      'lease', consumer .. '/' .. deliveries, 'leased_at', now)
    redis.call('ZADD', KEYS[2], deadline, id)
    out[#out + 1] = id
    out[#out + 1] = meta[1]
    out[#out + 1] = deliveries
    out[#out + 1] = meta[2] or now
    out[#out + 1] = meta[3] or now
    out[2] = out[2] + 1
  end
end
return out
