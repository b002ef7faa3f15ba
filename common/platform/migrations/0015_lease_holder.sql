-- A running request, or flow run, records which worker process holds it: that process's presence key
-- (common/platform/presence.py: a session advisory lock Postgres drops when the process's connection
-- closes, and a Redis key it refreshes every heartbeat). A reaper that finds a running attempt unrenewed
-- for two heartbeats and its holder present in neither store requeues it at once rather than at its
-- lease's end. Nullable, no default and no index: adding them rewrites nothing, and a claim already
-- rewrites the row.
ALTER TABLE request_logs ADD COLUMN lease_holder integer;
ALTER TABLE flow_runs_audit ADD COLUMN lease_holder integer;
