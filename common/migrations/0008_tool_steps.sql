-- An agent's tool calls, one row per call (issue 19): written `running` before the call, finished
-- (`ok` / `error`) before the loop goes on. A retried attempt rebuilds the conversation from these rows
-- instead of calling a finished tool again; `step` is the model turn that asked, `position` the call's
-- place in it, `reply` the text the model streamed in that turn.
CREATE TABLE tool_steps (
    request_id   UUID NOT NULL REFERENCES request_logs (request_id) ON DELETE CASCADE,
    call_id      TEXT NOT NULL,
    step         INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    tool         TEXT NOT NULL,
    arguments    JSONB NOT NULL,
    reply        TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL CHECK (status IN ('running','ok','error')),
    output       TEXT,
    error        TEXT,
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (request_id, call_id)
);
CREATE INDEX tool_steps_order ON tool_steps (request_id, step, position);
