-- One queue's counts in one call (the admin overview, `clarity status`, the doctor): the
-- waiting jobs of each named priority, then all waiting, delayed, active and failed ones,
-- whether the queue is paused, how many leases have expired by Redis' clock, and the
-- workers' heartbeats. One call per queue keeps each call in its queue's cluster slot; the
-- overview used to send 57 commands, whose packing and parsing was most of its CPU.
-- KEYS: waiting, delayed, active, failed, paused, workers
-- ARGV: the named priorities' waiting-score bands: low1, high1, low2, high2, ...
-- Returns {per band count..., waiting, delayed, active, failed, paused, expired, workers}
-- with `workers` the heartbeat hash as a flat {name, value, ...} list.
local out = {}
for b = 1, #ARGV, 2 do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[1], ARGV[b], '(' .. ARGV[b + 1])
end
out[#out + 1] = redis.call('ZCARD', KEYS[1])
out[#out + 1] = redis.call('ZCARD', KEYS[2])
out[#out + 1] = redis.call('ZCARD', KEYS[3])
out[#out + 1] = redis.call('ZCARD', KEYS[4])
out[#out + 1] = redis.call('EXISTS', KEYS[5])
out[#out + 1] = redis.call('ZCOUNT', KEYS[3], '-inf', now_ms())
out[#out + 1] = redis.call('HGETALL', KEYS[6])
return out
