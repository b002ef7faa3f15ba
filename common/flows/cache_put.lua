-- Write the cached document only when it is newer than what the cache holds.
local current = redis.call('GET', KEYS[1])
if current then
  local held = tonumber(string.match(current, '^(%d+)\n'))
  if held and held >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. ARGV[2], 'EX', ARGV[3])
return 1
