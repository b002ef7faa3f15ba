-- A terminal row whose closing events (and `done`) are not yet confirmed on its stream. The worker
-- or gateway that ends a request commits the row first, writes the stream, then clears the flag;
-- if it dies in between, the workers' ending sweep writes them from the row (common/requests/ending.py).
ALTER TABLE request_logs ADD COLUMN done_pending BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX request_logs_done_pending ON request_logs (completed_at) WHERE done_pending;
