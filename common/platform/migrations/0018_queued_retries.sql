-- A reaper requeues a lost attempt's row (queued, or PENDING for a flow run, with the next attempt),
-- commits, then queues its job; one that dies in between leaves a retried row with no job. Every
-- reaper pass looks for such rows a few seconds old (workers/maintenance.py, workers/flows.py) instead
-- of leaving them to the stalled sweep (every 10 s, for rows 10 s old). Keyed on id, which no update
-- changes, so heartbeats stay HOT. The second index also spares the flow runs' stalled sweep a scan
-- of every run ever made.
CREATE INDEX request_logs_queued_retry ON request_logs (id) WHERE status = 'queued' AND attempt > 1;
CREATE INDEX flow_runs_pending ON flow_runs_audit (id) WHERE status = 'PENDING';
