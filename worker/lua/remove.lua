-- Remove jobs that are not running: from the given state's set (ARGV[1]) or, when the
-- state is '', from whichever of waiting, delayed, failed holds them.
-- KEYS: waiting, delayed, failed
-- ARGV: state, limit, job key prefix, ids... (no ids: the first `limit` of that state)
-- Returns the number removed.
local sets = {waiting = KEYS[1], delayed = KEYS[2], failed = KEYS[3]}
local removed = 0
local function drop(set, id)
  if redis.call('ZREM', set, id) == 1 then
    redis.call('DEL', ARGV[3] .. id)
    removed = removed + 1
    return true
  end
  return false
end
if #ARGV > 3 then
  for i = 4, #ARGV do
    if ARGV[1] ~= '' then
      drop(sets[ARGV[1]], ARGV[i])
    else
      local _ = drop(KEYS[1], ARGV[i]) or drop(KEYS[2], ARGV[i]) or drop(KEYS[3], ARGV[i])
    end
  end
else
  local set = sets[ARGV[1]]
  for _, id in ipairs(redis.call('ZRANGE', set, 0, tonumber(ARGV[2]) - 1)) do
    drop(set, id)
  end
end
return removed
