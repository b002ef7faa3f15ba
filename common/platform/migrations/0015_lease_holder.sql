-- A running attempt records which worker process holds it: that process's presence key
-- (workers/presence.py: a session advisory lock Postgres drops when the process's connection closes, and
-- a Redis key it refreshes every heartbeat). A reaper that finds a running attempt unrenewed for two
-- heartbeats and its holder present in neither store requeues it at once rather than at its lease's end
-- (common/requests/lifecycle.py, reap_expired). Nullable, no default and no index: adding it rewrites
-- nothing, and a claim already rewrites the row.
ALTER TABLE request_logs ADD COLUMN lease_holder integer;
