-- Move delayed jobs to the waiting set: all that are due (ARGV[3] == '') or the given ids
-- ("run now"), at their own priority, behind the jobs already waiting at that priority.
-- KEYS: delayed, waiting, seq, wake
-- ARGV: limit, job key prefix, ids...
-- Returns the number promoted.
local now = now_ms()
local ids
if #ARGV > 2 then
  ids = {}
  for i = 3, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
end
for _, id in ipairs(ids) do
  local job = ARGV[2] .. id
  local prio = tonumber(redis.call('HGET', job, 'prio') or '3')
  local seq = redis.call('INCR', KEYS[3])
  local score = waiting_score(prio, seq)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], score, id)
  redis.call('HSET', job, 'state', 'waiting', 'ready', now, 'seq', seq)
end
wake(KEYS[4], #ids)
return #ids
