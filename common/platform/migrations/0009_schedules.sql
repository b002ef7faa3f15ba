-- #20. Scheduled runs: a cron line in a time zone that sends `content` as the user. A worker fires a
-- tick by taking a short claim on the row, sending the request with an idempotency key naming the
-- tick (a second sender of the same tick gets the same request), then moving next_run_at on.
CREATE TABLE schedules (
    id               BIGSERIAL PRIMARY KEY,
    schedule_id      UUID NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    cron             TEXT NOT NULL,
    timezone         TEXT NOT NULL,
    agent_id         TEXT,
    content          TEXT NOT NULL,
    session_id       UUID,
    deliver          BOOLEAN NOT NULL DEFAULT false,
    slack_target     JSONB,  -- made by the Slack slash command: replies go to that channel, as they are written
    enabled          BOOLEAN NOT NULL DEFAULT true,
    next_run_at      TIMESTAMPTZ NOT NULL,
    claimed_until    TIMESTAMPTZ,
    last_run_at      TIMESTAMPTZ,
    last_request_id  UUID,
    last_status      TEXT,
    last_error       TEXT,
    runs             INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;
CREATE INDEX schedules_owner ON schedules (tenant_id, user_id, id);
