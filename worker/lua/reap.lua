-- Return jobs whose lease expired (their worker died or hung) to the queue; a job delivered
-- max_deliveries times already goes to the failed set as 'abandoned' instead.
-- KEYS: active, waiting, failed, wake
-- ARGV: max_deliveries, limit, job key prefix
-- Returns {requeued, abandoned}.
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local requeued, abandoned = 0, 0
for _, id in ipairs(expired) do
  local job = ARGV[3] .. id
  redis.call('ZREM', KEYS[1], id)
  local meta = redis.call('HMGET', job, 'deliveries', 'msg', 'consumer')
  if meta[2] then
    if tonumber(meta[1] or '0') >= tonumber(ARGV[1]) then
      redis.call('HSET', job, 'state', 'failed', 'reason', 'abandoned',
        'error_type', 'LeaseExpired',
        'error', 'lease expired ' .. (meta[1] or '0') .. ' times (last holder ' ..
          (meta[3] or '?') .. '); the worker died or hung while running it',
        'traceback', '', 'attempts', meta[1] or '0', 'last_failed', now)
      redis.call('HSETNX', job, 'first_failed', now)
      redis.call('HDEL', job, 'lease')  -- when it last started and where stay
      redis.call('ZADD', KEYS[3], now, id)
      abandoned = abandoned + 1
    else
      redis.call('ZADD', KEYS[2], job_score(job), id)
      redis.call('HSET', job, 'state', 'waiting', 'ready', now, 'redelivered', 1)
      redis.call('HDEL', job, 'lease', 'consumer', 'leased_at')
      requeued = requeued + 1
    end
  end
end
wake(KEYS[4], requeued)
return {requeued, abandoned}
