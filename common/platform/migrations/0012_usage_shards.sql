-- #21. Every ending of one user's requests updated the same rollup row and held its lock until commit,
-- so a user's concurrent endings queued one behind another (500 replies ending together: ~0.65 s from
-- a reply's last token to its `done`). Each (tenant, day, user, agent, model) now has up to 16 rows,
-- picked by the request id (every attempt of a request adds to the same one); readers sum them.
ALTER TABLE usage_daily ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey;
ALTER TABLE usage_daily ADD PRIMARY KEY (tenant_id, day, user_id, agent_id, model, shard);

CREATE OR REPLACE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended BOOLEAN := OLD.status IN ('queued', 'running') AND NEW.status IN ('completed', 'failed', 'cancelled');
BEGIN
    INSERT INTO usage_daily AS u (tenant_id, day, user_id, agent_id, model, shard, requests, completed, failed,
                                  cancelled, input_tokens, output_tokens, cost_usd)
    VALUES (NEW.tenant_id, (CASE WHEN ended THEN coalesce(NEW.completed_at, now()) ELSE now() END AT TIME ZONE 'UTC')::date,
            NEW.user_id, coalesce(NEW.agent_id, ''), coalesce(NEW.response_metadata ->> 'model', ''),
            get_byte(uuid_send(NEW.request_id), 15) % 16,
            ended::int, (ended AND NEW.status = 'completed')::int, (ended AND NEW.status = 'failed')::int,
            (ended AND NEW.status = 'cancelled')::int, NEW.input_tokens - OLD.input_tokens,
            NEW.output_tokens - OLD.output_tokens, NEW.cost_usd - OLD.cost_usd)
    ON CONFLICT (tenant_id, day, user_id, agent_id, model, shard) DO UPDATE
       SET requests = u.requests + EXCLUDED.requests, completed = u.completed + EXCLUDED.completed,
           failed = u.failed + EXCLUDED.failed, cancelled = u.cancelled + EXCLUDED.cancelled,
           input_tokens = u.input_tokens + EXCLUDED.input_tokens,
           output_tokens = u.output_tokens + EXCLUDED.output_tokens, cost_usd = u.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END $$;
