-- How many running jobs' leases have expired (not reaped yet), by Redis' clock.
-- KEYS: active
return redis.call('ZCOUNT', KEYS[1], '-inf', now_ms())
