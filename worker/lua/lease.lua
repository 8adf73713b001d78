-- Lease up to N waiting jobs: pop by priority then FIFO, record the lease in the active set
-- (scored by its deadline), count the delivery.
-- KEYS: waiting, active, paused
-- ARGV: count, lease_ms, consumer, job key prefix
-- Returns {-1} when the queue is paused, else a flat list of
-- {id, message, deliveries, ready_ms, enqueued_ms} per leased job.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {-1}
end
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
if #popped == 0 then
  return {}
end
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local deadline = now + tonumber(ARGV[2])
local out = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local job = ARGV[4] .. id
  local msg = redis.call('HGET', job, 'msg')
  if msg then
    local deliveries = redis.call('HINCRBY', job, 'deliveries', 1)
    local lease = ARGV[3] .. '/' .. deliveries
    redis.call('HSET', job, 'state', 'active', 'consumer', ARGV[3], 'lease', lease,
      'leased_at', now)
    redis.call('ZADD', KEYS[2], deadline, id)
    local meta = redis.call('HMGET', job, 'ready', 'enq')
    out[#out + 1] = id
    out[#out + 1] = msg
    out[#out + 1] = deliveries
    out[#out + 1] = meta[1] or now
    out[#out + 1] = meta[2] or now
  end
end
return out
