-- Settle this consumer's finished jobs, then lease the next one for the calling thread: one
-- round trip per job on a busy queue, where plain Huey spends three.
--
-- Settling, only by the lease holder (a settlement whose token is no longer the job's lease,
-- because the reaper gave the job to someone else, changes nothing):
--   ack      done: the job is deleted
--   release  back to `waiting` at once, the delivery not charged (a shutdown interrupted it,
--            or it was never started)
--   return   back to `waiting` at once, the delivery charged (the job path broke mid-way);
--            past max_deliveries, to `failed` as `abandoned` instead (as the reaper does)
--   fail     into `failed` with reason, error, traceback and attempts
-- Leasing: pop by priority then FIFO into `active`, scored by the lease deadline on Redis'
-- clock (which every host shares), with holder, a token that never repeats (consumer/leases)
-- and the delivery counted: the caller starts it at once. Nothing while paused.
--
-- KEYS: waiting, active, failed, wake, paused
-- ARGV: job key prefix, want (1: lease one, 0: settle only), lease_ms, consumer,
--       max_deliveries, then groups of 8: op, id, token, reason, error_type, error,
--       traceback, attempts
-- Returns {settled, status, [id, message, deliveries, ready_ms, enqueued_ms, token, prio]}:
-- status -1 paused, else the number leased (0 or 1).
local now = now_ms()
local prefix = ARGV[1]
local settled, woken = 0, 0
local max_deliveries = tonumber(ARGV[5])
for i = 6, #ARGV, 8 do
  local op, id, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local reason, error_type, err = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local job = prefix .. id
  if redis.call('HGET', job, 'lease') == token then
    redis.call('ZREM', KEYS[2], id)
    settled = settled + 1
    if op == 'return' and tonumber(redis.call('HGET', job, 'deliveries') or '0')
        >= max_deliveries then
      op, reason, error_type = 'fail', 'abandoned', 'WorkerError'
      err = 'the worker could not finish or settle it ' .. max_deliveries ..
        ' times (see the worker logs)'
    end
    if op == 'ack' then
      redis.call('DEL', job)
    elseif op == 'release' or op == 'return' then
      if op == 'release' then redis.call('HINCRBY', job, 'deliveries', -1) end
      redis.call('ZADD', KEYS[1], job_score(job), id)
      redis.call('HSET', job, 'state', 'waiting', 'ready', now)
      redis.call('HDEL', job, 'lease', 'consumer', 'leased_at')
      woken = woken + 1
    else
      redis.call('HSET', job, 'state', 'failed', 'reason', reason, 'error_type', error_type,
        'error', err, 'traceback', ARGV[i + 6], 'attempts', ARGV[i + 7], 'last_failed', now)
      redis.call('HSETNX', job, 'first_failed', now)
      -- Only the lease goes: when it last started and where stay for the job page.
      redis.call('HDEL', job, 'lease')
      redis.call('ZADD', KEYS[3], now, id)
    end
  end
end
wake(KEYS[4], woken)

if ARGV[2] == '0' then
  return {settled, 0}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {settled, -1}
end
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then
  -- Nothing waits, so every wake token left is stale (its job was taken): drop them, or
  -- idle workers would each wake for nothing once per token after a busy spell.
  redis.call('DEL', KEYS[4])
  return {settled, 0}
end
local id = popped[1]
local job = prefix .. id
local meta = redis.call('HMGET', job, 'msg', 'ready', 'enq', 'prio', 'leases', 'deliveries')
if not meta[1] then
  return {settled, 0}  -- a set member without its hash: nothing to run
end
local consumer = ARGV[4]
-- Counted here rather than with HINCRBY: every redis.call costs a few microseconds, and
-- this script runs once per job.
local leases = tonumber(meta[5] or '0') + 1
local deliveries = tonumber(meta[6] or '0') + 1
local token = consumer .. '/' .. leases
redis.call('HSET', job, 'state', 'active', 'consumer', consumer, 'lease', token,
  'leased_at', now, 'leases', leases, 'deliveries', deliveries)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
return {settled, 1, id, meta[1], deliveries, meta[2] or meta[3] or now, meta[3] or now, token,
  meta[4] or 3}
