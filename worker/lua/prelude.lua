-- Prepended to every script but the bare ones (worker/scripts.py BARE): what they share.
-- {{PRIORITY_BAND}} and {{MAX_PRIORITY}} are substituted from worker/queues.py, so the
-- waiting-score formula has one definition for Python and Lua.
local PRIORITY_BAND = {{PRIORITY_BAND}}
local MAX_PRIORITY = {{MAX_PRIORITY}}
-- Wake tokens kept, and the length past which the list is trimmed back (worker/scripts.py).
local WAKE_TOKENS_MAX = {{WAKE_TOKENS_MAX}}
local WAKE_TOKENS_TRIM_AT = {{WAKE_TOKENS_TRIM_AT}}

-- Redis' clock in milliseconds: every host agrees on it, unlike their own clocks.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Waiting-set score: higher priority first (lower band), then FIFO by sequence number.
local function waiting_score(priority, seq)
  return (MAX_PRIORITY - priority) * PRIORITY_BAND + seq
end

-- A job's place in `waiting` from its hash: priority and sequence number (the score itself
-- is not stored: 15 digits per job).
local function job_score(job)
  local meta = redis.call('HMGET', job, 'prio', 'seq')
  return waiting_score(tonumber(meta[1] or '3'), tonumber(meta[2] or '0'))
end

-- Wake `n` idle consumers blocked on the queue's wake list (at most 64 tokens per call,
-- the list kept under WAKE_TOKENS_TRIM_AT).
local function wake(wake_key, n)
  if n <= 0 then return end
  local tokens = {}
  for t = 1, math.min(n, 64) do tokens[t] = 1 end
  if redis.call('RPUSH', wake_key, unpack(tokens)) > WAKE_TOKENS_TRIM_AT then
    redis.call('LTRIM', wake_key, -WAKE_TOKENS_MAX, -1)
  end
end

