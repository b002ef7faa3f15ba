-- What ArqRedis.enqueue_job does (skip if the job or its result exists, store the job, add
-- it to the queue), in one round trip instead of a WATCH/MULTI exchange of three; then wake
-- one idle worker (the wake list is capped: a burst wakes every worker, not one per job).
-- A job that exists but is neither queued nor running (its queue entry was lost) is queued
-- again, so a sweep's re-enqueue always gets a stuck job moving. WAKE_LAST (the wake list's last
-- index) is filled in by enqueue.py.
if redis.call('EXISTS', KEYS[2]) > 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) > 0 then
  if redis.call('ZSCORE', KEYS[3], ARGV[4]) or redis.call('EXISTS', KEYS[5]) > 0 then return 0 end
else
  redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, WAKE_LAST)
return 1
