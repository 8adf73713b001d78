-- Settle leased jobs in one call: acknowledge (done), return to the queue (requeue), or
-- park in the failed set (fail). A lease is settled only by its holder: if the reaper has
-- already given the job to someone else, the stale holder's call changes nothing.
-- KEYS: active, waiting, failed, wake
-- ARGV: job key prefix, then groups of 9:
--   op (ack|requeue|unstart|fail), id, lease, reason, error_type, error, traceback, attempts, now_ms
-- 'unstart' is requeue for a job leased but never started: its delivery is not counted.
-- Returns the number of jobs settled.
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local settled = 0
local woken = 0
for i = 2, #ARGV, 9 do
  local op, id, lease = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job = ARGV[1] .. id
  if redis.call('HGET', job, 'lease') == lease then
    redis.call('ZREM', KEYS[1], id)
    settled = settled + 1
    if op == 'ack' then
      redis.call('DEL', job)
    elseif op == 'requeue' or op == 'unstart' then
      local score = tonumber(redis.call('HGET', job, 'score') or '0')
      if op == 'unstart' then redis.call('HINCRBY', job, 'deliveries', -1) end
      redis.call('ZADD', KEYS[2], score, id)
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
for _ = 1, math.min(woken, 64) do redis.call('RPUSH', KEYS[4], 1) end
return settled
