-- Delivery (integration guide: defaults, user overrides, delivery_logs) and Slack installations.

CREATE TABLE integration_default_configs (
    id                   BIGSERIAL PRIMARY KEY,
    integration_type     TEXT NOT NULL UNIQUE CHECK (integration_type IN ('SLACK','EMAIL','WEBHOOK','SMS','TEST')),
    enabled              BOOLEAN NOT NULL DEFAULT true,
    priority             INTEGER NOT NULL DEFAULT 1,
    retry_count          INTEGER NOT NULL DEFAULT 3,
    retry_delay_seconds  INTEGER NOT NULL DEFAULT 60,
    config               JSONB NOT NULL DEFAULT '{}',
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- `enabled` here is the most a default can be: SLACK, EMAIL and TEST are on only while configured.
INSERT INTO integration_default_configs (integration_type, enabled, priority, retry_count, retry_delay_seconds, config)
VALUES
    ('SLACK',   true,  1, 3, 60, '{"thread_replies": false, "mention_user": false, "include_agent_info": true}'),
    ('EMAIL',   true,  2, 3, 60, '{"format": "html", "include_agent_info": true}'),
    ('WEBHOOK', false, 3, 1, 30, '{}'),
    ('SMS',     false, 4, 2, 45, '{}'),
    ('TEST',    true,  5, 1, 10, '{}');

CREATE TABLE user_integration_configs (
    id                   BIGSERIAL PRIMARY KEY,
    tenant_id            TEXT NOT NULL,
    user_id              TEXT NOT NULL,
    integration_type     TEXT NOT NULL CHECK (integration_type IN ('SLACK','EMAIL','WEBHOOK','SMS','TEST')),
    enabled              BOOLEAN NOT NULL DEFAULT true,
    priority             INTEGER NOT NULL DEFAULT 1,
    retry_count          INTEGER NOT NULL DEFAULT 3,
    retry_delay_seconds  INTEGER NOT NULL DEFAULT 60,
    config               JSONB NOT NULL DEFAULT '{}',
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, user_id, integration_type)
);

-- One row per attempt; `delivery_key` names the delivery (request + channel) its attempts share.
CREATE TABLE delivery_logs (
    id                BIGSERIAL PRIMARY KEY,
    delivery_id       UUID NOT NULL UNIQUE,
    delivery_key      TEXT NOT NULL,
    attempt           INTEGER NOT NULL,
    tenant_id         TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    request_id        UUID NOT NULL,
    session_id        UUID NOT NULL,
    integration_type  TEXT NOT NULL CHECK (integration_type IN ('SLACK','EMAIL','WEBHOOK','SMS','TEST')),
    status            TEXT NOT NULL DEFAULT 'PENDING'
                        CHECK (status IN ('SUCCESS','FAILED','PENDING','RETRYING','EXPIRED')),
    error_message     TEXT,
    external_ref      TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (delivery_key, attempt)
);
CREATE INDEX delivery_logs_owner ON delivery_logs (tenant_id, user_id, id DESC);
CREATE INDEX delivery_logs_request ON delivery_logs (request_id);

CREATE TABLE slack_installations (
    team_id         TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    bot_token       TEXT NOT NULL,
    signing_secret  TEXT NOT NULL,
    bot_user_id     TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX slack_installations_tenant ON slack_installations (tenant_id);
