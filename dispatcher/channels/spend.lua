-- INCR the minute's counter, expiring with its window: one atomic step shared by every dispatcher.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end
return n
