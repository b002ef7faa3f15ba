-- KEYS[1] a budget hash. ARGV: tokens, cost, ttl ms. Sets it only if missing (a concurrent seed wins).
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'tokens', ARGV[1], 'cost', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
