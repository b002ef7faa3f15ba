-- KEYS: k budget hashes, then their k soft-threshold flags. ARGV: tokens, cost, soft share, then a flag
-- ttl ms per budget. Adds to the hashes that exist; returns {index, tokens, cost, token limit, cost limit}
-- of each budget this addition took past the soft share for the first time in its period.
local k = #KEYS / 2
local crossed = {}
for i = 1, k do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local t = redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[1])
    local c = tonumber(redis.call('HINCRBYFLOAT', KEYS[i], 'cost', ARGV[2]))
    local tl = tonumber(redis.call('HGET', KEYS[i], 'tl') or '0')
    local cl = tonumber(redis.call('HGET', KEYS[i], 'cl') or '0')
    local share = tonumber(ARGV[3])
    if (tl > 0 and t >= share * tl) or (cl > 0 and c >= share * cl) then
      if redis.call('SET', KEYS[k + i], '1', 'NX', 'PX', ARGV[3 + i]) then
        crossed[#crossed + 1] = {i, tostring(t), tostring(c), tostring(tl), tostring(cl)}
      end
    end
  end
end
return crossed
