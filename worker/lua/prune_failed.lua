-- Delete failed jobs older than max_age, then the oldest beyond max_count.
-- KEYS: failed
-- ARGV: job key prefix, max_age_ms (0: no age limit), max_count (0: no count limit), limit
-- Returns {removed by age, removed by count}; at most `limit` of each per call.
local prefix, max_age, max_count, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local by_age, by_count = 0, 0
local function drop(ids)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', prefix .. id)
  end
  return #ids
end
if max_age > 0 then
  by_age = drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - max_age,
    'LIMIT', 0, limit))
end
if max_count > 0 then
  local excess = redis.call('ZCARD', KEYS[1]) - max_count
  if excess > 0 then
    by_count = drop(redis.call('ZRANGE', KEYS[1], 0, math.min(excess, limit) - 1))
  end
end
return {by_age, by_count}
