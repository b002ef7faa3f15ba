-- XADD every event, then refresh the TTL, as one atomic step (a script also runs on a cluster,
-- where MULTI pipelines do not). KEYS[1] the stream, KEYS[2] its notice stream (common.platform.keys
-- .notify_key: the hub reads it to know which streams to read), KEYS[3] (optional) its bucket's intake
-- set; ARGV: maxlen, ttl, the intake member, then 6 values per event. With an intake set, the announced
-- request is noted there in the same step: it is never on a stream without a way to find it again.
-- Notices older than WINDOW_MS are trimmed (common.streams.hub says why a reader loses none unseen).
local ids = {}
for i = 4, #ARGV, 6 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'type', ARGV[i], 'request_id', ARGV[i + 1], 'attempt', ARGV[i + 2], 'seq', ARGV[i + 3],
    'ts', ARGV[i + 4], 'data', ARGV[i + 5])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ids > 0 then
  redis.call('XADD', KEYS[2], 'MINID', '~', string.format('%.0f', now - WINDOW_MS), '*', 'k', KEYS[1])
end
if #KEYS > 2 then
  redis.call('ZADD', KEYS[3], now, ARGV[3])
end
return ids
