-- Flow runs (reference: ingress-api.md): the flow registry, the run audit trail with its
-- per-task state and status history, webhook configurations and their delivery ids.

CREATE TABLE flows (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    flow_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT[] NOT NULL DEFAULT '{}',
    definition  JSONB NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ,
    UNIQUE (tenant_id, flow_id, version)
);
CREATE INDEX flows_tags ON flows USING gin (tags);

CREATE TABLE flow_runs_audit (
    id               SERIAL PRIMARY KEY,
    run_id           VARCHAR(255) UNIQUE NOT NULL,
    correlation_id   VARCHAR(255) NOT NULL,
    flow_id          VARCHAR(255) NOT NULL,
    tenant_id        VARCHAR(255) NOT NULL,
    user_id          VARCHAR(255) NOT NULL,
    request_id       VARCHAR(255),
    input_data       JSONB NOT NULL,
    flow_definition  JSONB,
    status           VARCHAR(50) DEFAULT 'PENDING',
    created_at       TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at       TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    output_data      JSONB,
    error_message    TEXT,
    -- relaygate: where the definition came from, what the policies changed, how it is run.
    flow_version     TEXT,
    definition_source TEXT NOT NULL DEFAULT 'request',
    policy_changes   JSONB NOT NULL DEFAULT '[]',
    trigger          JSONB NOT NULL DEFAULT '{}',
    session_id       UUID NOT NULL,
    feature          TEXT NOT NULL DEFAULT 'default',
    attempt          INTEGER NOT NULL DEFAULT 1,
    version          BIGINT NOT NULL DEFAULT 1,
    lease_expires_at TIMESTAMPTZ,
    started_at       TIMESTAMPTZ,
    completed_at     TIMESTAMPTZ
);
CREATE UNIQUE INDEX flow_runs_idempotency ON flow_runs_audit (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX flow_runs_tenant ON flow_runs_audit (tenant_id, id DESC);
CREATE INDEX flow_runs_lease ON flow_runs_audit (lease_expires_at) WHERE status = 'RUNNING';

CREATE TABLE flow_run_tasks (
    run_id       VARCHAR(255) NOT NULL REFERENCES flow_runs_audit (run_id) ON DELETE CASCADE,
    task_id      TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running','completed','failed')),
    tries        INTEGER NOT NULL DEFAULT 0,
    output       JSONB,
    error        TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, task_id)
);

CREATE TABLE flow_run_status_history (
    id        BIGSERIAL PRIMARY KEY,
    run_id    VARCHAR(255) NOT NULL REFERENCES flow_runs_audit (run_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    status    TEXT NOT NULL,
    detail    TEXT,
    at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX flow_run_status_history_run ON flow_run_status_history (run_id, id);

CREATE TABLE webhook_configs (
    id             SERIAL PRIMARY KEY,
    webhook_id     VARCHAR(255) UNIQUE NOT NULL,
    flow_id        VARCHAR(255) NOT NULL,
    tenant_id      VARCHAR(255) NOT NULL,
    user_id        VARCHAR(255) NOT NULL,
    webhook_config JSONB,
    enabled        BOOLEAN DEFAULT true,
    created_at     TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at     TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    -- The Standard Webhooks signing secret; never returned after creation.
    secret         TEXT NOT NULL
);
CREATE INDEX webhook_configs_tenant ON webhook_configs (tenant_id, id);

CREATE TABLE webhook_deliveries (
    webhook_id  VARCHAR(255) NOT NULL REFERENCES webhook_configs (webhook_id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL,
    run_id      VARCHAR(255) NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, delivery_id)
);
