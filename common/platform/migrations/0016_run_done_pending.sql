-- A flow run that became terminal in Postgres, whose closing events (`run.<status>`, `done`) may not be on
-- its stream yet: set with the terminal status, cleared once they are written. A worker that dies in
-- between leaves it set, and any worker's repair (workers/flows.py) writes them; the stream's fence makes
-- that write happen once whoever does it. A constant default: adding it rewrites nothing (Postgres 11+).
ALTER TABLE flow_runs_audit ADD COLUMN done_pending BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX flow_runs_done_pending ON flow_runs_audit (completed_at) WHERE done_pending;
