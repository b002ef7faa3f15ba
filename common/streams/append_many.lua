-- Many streams in one call: KEYS are the stream keys, then one fence key per stream (common.platform.keys
-- .fence_key; a batch that is not fenced passes its stream key there), then the notice stream (one
-- entry names every stream written, for the hub; trimmed after WINDOW_MS), then keys to read (cancel
-- flags). ARGV: maxlen, ttl, number of streams, dedupe (1/0), then per stream its event count,
-- whether it is fenced (1/0) and 6 values per event; a batch holds the events of one attempt.
-- A fenced batch is refused whole when its request's fence names a newer attempt or `done`;
-- otherwise it raises the fence to its attempt, or to `done` when it carries the `done` event.
-- With dedupe (a retry after a lost reply), events of the stream's last request/attempt up to its
-- last seq are skipped. Returns {last id per stream, value per read, refused (1/0) per stream}.
local n = tonumber(ARGV[3])
local dedupe = ARGV[4] == '1'
local ttl = ARGV[2]
local last, refused, notice = {}, {}, {}
local function send_notice()
  local t = redis.call('TIME')
  local minid = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - WINDOW_MS)
  redis.call('XADD', KEYS[2 * n + 1], 'MINID', '~', minid, '*', unpack(notice))
  notice = {}
end
local i = 5
for k = 1, n do
  local count = tonumber(ARGV[i])
  local fenced = ARGV[i + 1] == '1'
  i = i + 2
  local admit, fence = true, false
  if fenced and count > 0 then
    fence = redis.call('GET', KEYS[n + k])
    if fence == 'done' or (fence and tonumber(fence) > tonumber(ARGV[i + 2])) then admit = false end
  end
  local written = -1
  if admit and dedupe and count > 0 then
    local tail = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
    if #tail > 0 then
      local f = tail[1][2]
      if f[4] == ARGV[i + 1] and f[6] == ARGV[i + 2] then written = tonumber(f[8]) end
    end
  end
  local id, ends = false, false
  local attempt = ARGV[i + 2]
  for _ = 1, count do
    if admit and tonumber(ARGV[i + 3]) > written then
      id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[1], '*',
        'type', ARGV[i], 'request_id', ARGV[i + 1], 'attempt', ARGV[i + 2], 'seq', ARGV[i + 3],
        'ts', ARGV[i + 4], 'data', ARGV[i + 5])
    end
    if ARGV[i] == 'done' then ends = true end
    i = i + 6
  end
  if admit then
    redis.call('EXPIRE', KEYS[k], ttl)
    if fenced and count > 0 then
      if ends then redis.call('SET', KEYS[n + k], 'done', 'EX', ttl)
      elseif fence ~= attempt then redis.call('SET', KEYS[n + k], attempt, 'EX', ttl) end
    end
  end
  last[k] = id
  refused[k] = admit and 0 or 1
  if id then
    notice[#notice + 1] = 'k'
    notice[#notice + 1] = KEYS[k]
    if #notice >= 2000 then send_notice() end  -- unpack's bound on arguments
  end
end
if #notice > 0 then send_notice() end
local values = {}
for j = 2 * n + 2, #KEYS do
  values[j - 2 * n - 1] = redis.call('GET', KEYS[j])
end
return {last, values, refused}
