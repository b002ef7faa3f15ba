-- Deliveries survive a lost job or enqueue (dispatcher/repair.py). Constant defaults and new NULL columns:
-- adding them rewrites nothing. Each partial index holds only rows that still await something.
--
-- A completed request whose reply a channel may want: set by the ending statement itself, cleared by
-- the dispatcher once it has queued one attempt per channel. Set a few seconds after the ending, it
-- means the enqueue was lost (the worker died after its commit, or Redis was down).
ALTER TABLE request_logs ADD COLUMN delivery_pending BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX request_logs_delivery_pending ON request_logs (completed_at) WHERE delivery_pending;
-- When a RETRYING attempt's next attempt is due; cleared when that attempt opens its row.
ALTER TABLE delivery_logs ADD COLUMN retry_at TIMESTAMPTZ;
-- A Slack thread followed while its reply is written (dispatcher/channels/slack.py `follow`): its job
-- may run for minutes, handing on to continuations, and is not a DELIVER job the sweep could rerun.
ALTER TABLE delivery_logs ADD COLUMN follows BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX delivery_logs_retry_due ON delivery_logs (retry_at) WHERE retry_at IS NOT NULL;
CREATE INDEX delivery_logs_pending ON delivery_logs (updated_at) WHERE status = 'PENDING';
