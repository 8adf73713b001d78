-- A page of one state's jobs with the hash fields a listing shows, in one call: the admin's
-- job lists (a failed-jobs page of 50 used to be two round trips and 52 commands).
-- KEYS: the state's sorted set
-- ARGV: job key prefix, first index, last index, newest first (1/0), then the field names
-- Returns {total, id, score, {fields...}, id, score, {fields...}, ...}
local total = redis.call('ZCARD', KEYS[1])
local page
if ARGV[4] == '1' then
  page = redis.call('ZREVRANGE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES')
else
  page = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES')
end
local fields = {unpack(ARGV, 5)}
local out = {total}
for i = 1, #page, 2 do
  out[#out + 1] = page[i]
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. page[i], unpack(fields))
end
return out
