-- Enqueue one new job that is due now: what `enqueue.lua` does for the commonest call (a
-- fresh id, no delay, no idempotency key, not a retry) with none of its branches.
-- Every EVALSHA pays for the keys and arguments Redis parses and for the Lua it runs, the
-- prelude's function definitions included, so this script takes 4 keys and 3 arguments
-- instead of 7 and 9 and runs without the prelude (docs/benchmarks.md, "enqueue"): the
-- waiting score, Redis' clock and the wake token are written out here as the prelude's
-- waiting_score, now_ms and wake compute them. tests/test_storage_contract.py checks that
-- a job enqueued here and one enqueued by enqueue.lua are alike in every field.
-- KEYS: waiting, seq, wake, job hash
-- ARGV: id, message, priority
-- Returns {1, id}, as enqueue.lua does for one created job.
local seq = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[4], 'msg', ARGV[2], 'prio', ARGV[3], 'state', 'waiting', 'seq', seq,
  'enq', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('ZADD', KEYS[1], ({{MAX_PRIORITY}} - tonumber(ARGV[3])) * {{PRIORITY_BAND}} + seq,
  ARGV[1])
-- One token per job; the list trimmed as the prelude's wake() trims it.
if redis.call('RPUSH', KEYS[3], 1) > {{WAKE_TOKENS_TRIM_AT}} then
  redis.call('LTRIM', KEYS[3], -{{WAKE_TOKENS_MAX}}, -1)
end
return {1, ARGV[1]}
