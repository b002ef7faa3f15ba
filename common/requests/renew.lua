-- KEYS: open-stream sets; ARGV: lease ms, then per key: how many ids follow, the ids.
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local at = 2
for i = 1, #KEYS do
  local count = tonumber(ARGV[at])
  for j = 1, count do redis.call('ZADD', KEYS[i], 'XX', until_, ARGV[at + j]) end
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  at = at + count + 1
end
return 1
