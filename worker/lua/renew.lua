-- Extend the leases this consumer is still working on.
-- KEYS: active
-- ARGV: lease_ms, job key prefix, then pairs of (id, token)
-- Returns {now_ms, lost ids...}: Redis' clock (workers measure their own clock's offset
-- with it) and the ids whose lease was lost (reaped and given to another consumer).
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local out = {now}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. id, 'lease') == token then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    out[#out + 1] = id
  end
end
return out
