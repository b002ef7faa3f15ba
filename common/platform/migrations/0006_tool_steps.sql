-- An agent's tool calls, one row per call (issue 19): written `running` before the call, finished
-- (`ok` / `error`) before the loop goes on. A retried attempt rebuilds the conversation from these rows
-- instead of calling a finished tool again; `step` is the model turn that asked, `position` the call's
-- place in it, `reply` the text the model streamed in that turn. A call needing a person's approval is
-- `awaiting` until `approved` (then it runs) or `denied`.
-- A request parks as `waiting` meanwhile, with no worker; it still heads its session.
CREATE TABLE tool_steps (
    request_id   UUID NOT NULL REFERENCES request_logs (request_id) ON DELETE CASCADE,
    call_id      TEXT NOT NULL,
    step         INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    tool         TEXT NOT NULL,
    arguments    JSONB NOT NULL,
    reply        TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL CHECK (status IN ('running','ok','error','awaiting','approved','denied')),
    output       TEXT,
    error        TEXT,
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (request_id, call_id)
);
CREATE INDEX tool_steps_order ON tool_steps (request_id, step, position);

ALTER TABLE request_logs DROP CONSTRAINT request_logs_status_check;
ALTER TABLE request_logs ADD CONSTRAINT request_logs_status_check
    CHECK (status IN ('queued','running','waiting','completed','failed','cancelled'));
DROP INDEX request_logs_active;
CREATE INDEX request_logs_active ON request_logs (session_id, id) WHERE status IN ('queued','running','waiting');
DROP INDEX request_logs_deadline;
CREATE INDEX request_logs_deadline ON request_logs (deadline_at) WHERE status IN ('queued','running','waiting');
