-- KEYS: m budget hashes, n rate keys, then the running set. ARGV: m, then (token limit, cost limit) per
-- budget, then n, (interval ms) per rate key, running cap, request id, deadline ms. Returns {0} when
-- admitted; {-1, j} when budget j has no hash yet (seed it, then ask again); {-2, j, kind (0 tokens,
-- 1 cost), used} when budget j is spent; else {index of the limit refused (n + 1 = running), retry ms,
-- members of the running set...}. Nothing is consumed on refusal. WINDOW_MS is filled in by limits.py.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = tonumber(ARGV[1])
for j = 1, m do
  if redis.call('EXISTS', KEYS[j]) == 0 then return {-1, j} end
end
for j = 1, m do
  local tl, cl = tonumber(ARGV[2 * j]), tonumber(ARGV[2 * j + 1])
  redis.call('HSET', KEYS[j], 'tl', ARGV[2 * j], 'cl', ARGV[2 * j + 1])
  local used = redis.call('HMGET', KEYS[j], 'tokens', 'cost')
  if tl > 0 and tonumber(used[1] or '0') >= tl then return {-2, j, 0, used[1] or '0'} end
  if cl > 0 and tonumber(used[2] or '0') >= cl then return {-2, j, 1, used[2] or '0'} end
end
local a = 2 * m + 1
local n = tonumber(ARGV[a + 1])
local window = WINDOW_MS
local tats = {}
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[m + i]) or '0')
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[a + 1 + i])
  if new - now > window then return {i, new - now - window} end
  tats[i] = new
end
local cap = tonumber(ARGV[a + n + 2])
if cap > 0 then
  local key = KEYS[m + n + 1]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= cap then
    local refused = {n + 1, 1000}
    for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do refused[#refused + 1] = member end
    return refused
  end
  local ttl = tonumber(ARGV[a + n + 4])
  redis.call('ZADD', key, now + ttl, ARGV[a + n + 3])
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
for i = 1, n do redis.call('SET', KEYS[m + i], tats[i], 'PX', tats[i] - now) end
return {0}
