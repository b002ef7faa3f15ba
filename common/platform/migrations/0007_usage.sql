-- #20. What each request used (the total of its attempts), and a daily rollup per tenant, user,
-- agent and model that the usage API and the budgets read instead of scanning request_logs.
ALTER TABLE request_logs
    ADD COLUMN input_tokens    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN output_tokens   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd        NUMERIC(20, 10) NOT NULL DEFAULT 0,
    ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE usage_daily (
    tenant_id      TEXT NOT NULL,
    day            DATE NOT NULL,  -- UTC
    user_id        TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    model          TEXT NOT NULL,
    requests       BIGINT NOT NULL DEFAULT 0,  -- ended requests, counted once, on the day they ended
    completed      BIGINT NOT NULL DEFAULT 0,
    failed         BIGINT NOT NULL DEFAULT 0,
    cancelled      BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    cost_usd       NUMERIC(20, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, user_id, agent_id, model)
);

-- Kept by a trigger, so every way a request ends (a worker, a cancel, a deadline, the reaper) and
-- every attempt's usage lands in the rollup in the same statement as the row change.
CREATE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended BOOLEAN := OLD.status IN ('queued', 'running') AND NEW.status IN ('completed', 'failed', 'cancelled');
BEGIN
    INSERT INTO usage_daily AS u (tenant_id, day, user_id, agent_id, model, requests, completed, failed, cancelled,
                                  input_tokens, output_tokens, cost_usd)
    VALUES (NEW.tenant_id, (CASE WHEN ended THEN coalesce(NEW.completed_at, now()) ELSE now() END AT TIME ZONE 'UTC')::date,
            NEW.user_id, coalesce(NEW.agent_id, ''), coalesce(NEW.response_metadata ->> 'model', ''),
            ended::int, (ended AND NEW.status = 'completed')::int, (ended AND NEW.status = 'failed')::int,
            (ended AND NEW.status = 'cancelled')::int, NEW.input_tokens - OLD.input_tokens,
            NEW.output_tokens - OLD.output_tokens, NEW.cost_usd - OLD.cost_usd)
    ON CONFLICT (tenant_id, day, user_id, agent_id, model) DO UPDATE
       SET requests = u.requests + EXCLUDED.requests, completed = u.completed + EXCLUDED.completed,
           failed = u.failed + EXCLUDED.failed, cancelled = u.cancelled + EXCLUDED.cancelled,
           input_tokens = u.input_tokens + EXCLUDED.input_tokens,
           output_tokens = u.output_tokens + EXCLUDED.output_tokens, cost_usd = u.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END $$;

CREATE TRIGGER request_logs_usage AFTER UPDATE ON request_logs FOR EACH ROW
    WHEN ((OLD.status IN ('queued', 'running') AND NEW.status IN ('completed', 'failed', 'cancelled'))
          OR OLD.input_tokens <> NEW.input_tokens OR OLD.output_tokens <> NEW.output_tokens
          OR OLD.cost_usd <> NEW.cost_usd)
    EXECUTE FUNCTION usage_rollup();
