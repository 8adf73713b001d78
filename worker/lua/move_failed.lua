-- Retry failed jobs: move them back to the waiting set with a fresh delivery count.
-- KEYS: failed, waiting, seq, wake
-- ARGV: limit, job key prefix, ids... (no ids: the oldest `limit` failed jobs)
-- Returns the number moved.
local now = now_ms()
local ids
if #ARGV > 2 then
  ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
local moved = 0
for _, id in ipairs(ids) do
  local job = ARGV[2] .. id
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HEXISTS', job, 'msg') == 1 then
    local prio = tonumber(redis.call('HGET', job, 'prio') or '3')
    local seq = redis.call('INCR', KEYS[3])
    local score = waiting_score(prio, seq)
    redis.call('ZADD', KEYS[2], score, id)
    redis.call('HSET', job, 'state', 'waiting', 'ready', now, 'seq', seq, 'deliveries', 0)
    redis.call('HINCRBY', job, 'manual_retries', 1)
    moved = moved + 1
  end
end
wake(KEYS[4], moved)
return moved
