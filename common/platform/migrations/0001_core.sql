-- Sessions and the request log (reference: request-management-layer.md, integration-guide.md),
-- with tenant ownership on every row and the columns the stream protocol needs.

CREATE TABLE request_sessions (
    id                      BIGSERIAL PRIMARY KEY,
    session_id              UUID NOT NULL UNIQUE,
    tenant_id               TEXT NOT NULL,
    user_id                 TEXT NOT NULL,
    integration_type        TEXT NOT NULL CHECK (integration_type IN
                              ('slack','web','cli','tool','email','sms','webhook','teams','discord','test','generic')),
    status                  TEXT NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active','inactive','expired','archived')),
    channel_id              TEXT,
    thread_id               TEXT,
    external_session_id     TEXT,
    current_agent_id        TEXT,
    llama_stack_session_id  TEXT,
    integration_metadata    JSONB NOT NULL DEFAULT '{}',
    user_context            JSONB NOT NULL DEFAULT '{}',
    conversation_context    JSONB NOT NULL DEFAULT '{}',
    total_requests          INTEGER NOT NULL DEFAULT 0,
    last_request_id         UUID,
    last_request_at         TIMESTAMPTZ,
    expires_at              TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX request_sessions_owner ON request_sessions (tenant_id, user_id, updated_at DESC);
CREATE INDEX request_sessions_active_expiry ON request_sessions (expires_at) WHERE status = 'active';
CREATE UNIQUE INDEX request_sessions_external
    ON request_sessions (tenant_id, user_id, integration_type, external_session_id)
    WHERE external_session_id IS NOT NULL;

CREATE TABLE request_logs (
    id                  BIGSERIAL PRIMARY KEY,
    request_id          UUID NOT NULL UNIQUE,
    session_id          UUID NOT NULL REFERENCES request_sessions (session_id) ON DELETE CASCADE,
    tenant_id           TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    request_type        TEXT NOT NULL,
    request_content     TEXT NOT NULL,
    normalized_request  JSONB NOT NULL,
    agent_id            TEXT,
    feature             TEXT NOT NULL DEFAULT 'default',
    status              TEXT NOT NULL DEFAULT 'queued'
                          CHECK (status IN ('queued','running','completed','failed','cancelled')),
    attempt             INTEGER NOT NULL DEFAULT 1,
    idempotency_key     TEXT,
    body_hash           TEXT,
    stream_entry_id     TEXT,
    lease_expires_at    TIMESTAMPTZ,
    deadline_at         TIMESTAMPTZ NOT NULL,
    processing_time_ms  INTEGER,
    response_content    TEXT,
    response_stream_id  TEXT,
    response_metadata   JSONB NOT NULL DEFAULT '{}',
    error               TEXT,
    correlation_id      TEXT,
    cloudevent_id       TEXT,
    cloudevent_type     TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ
);
CREATE INDEX request_logs_session ON request_logs (session_id, id);
CREATE INDEX request_logs_active ON request_logs (session_id, id) WHERE status IN ('queued','running');
CREATE INDEX request_logs_running_lease ON request_logs (lease_expires_at) WHERE status = 'running';
CREATE INDEX request_logs_deadline ON request_logs (deadline_at) WHERE status IN ('queued','running');
CREATE UNIQUE INDEX request_logs_idempotency
    ON request_logs (tenant_id, user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE api_keys (
    id            BIGSERIAL PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL UNIQUE,
    tenant_id     TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user','tool')),
    scopes        TEXT[] NOT NULL DEFAULT '{}',
    name          TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
