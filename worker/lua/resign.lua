-- Replace job messages with their re-signed form, unless they changed meanwhile.
-- KEYS: job hashes
-- ARGV: per job: the message read, its re-signed form
-- Returns the number replaced.
local n = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'msg') == ARGV[i * 2 - 1] then
    redis.call('HSET', KEYS[i], 'msg', ARGV[i * 2])
    n = n + 1
  end
end
return n
