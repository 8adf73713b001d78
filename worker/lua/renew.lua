-- Extend the leases this consumer still holds.
-- KEYS: active
-- ARGV: lease_ms, job key prefix, then pairs of (id, lease)
-- Returns the ids whose lease was lost (reaped and given to another consumer).
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV, 2 do
  local id, lease = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. id, 'lease') == lease then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
