-- #20. Budget overrides per tenant (user_id '') and per user. NULL keeps the BUDGET_* default; 0 is off.
CREATE TABLE budgets (
    tenant_id           TEXT NOT NULL,
    user_id             TEXT NOT NULL DEFAULT '',
    tokens_per_day      BIGINT CHECK (tokens_per_day >= 0),
    tokens_per_month    BIGINT CHECK (tokens_per_month >= 0),
    cost_usd_per_day    NUMERIC(20, 6) CHECK (cost_usd_per_day >= 0),
    cost_usd_per_month  NUMERIC(20, 6) CHECK (cost_usd_per_month >= 0),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
