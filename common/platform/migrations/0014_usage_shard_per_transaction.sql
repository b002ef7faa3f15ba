-- #21. The rollup picked each request's `usage_daily` row by its request id, so a transaction that ended
-- many requests (a worker's batch of endings) updated rows of every shard, one by one in the order the
-- UPDATE met them. Two such transactions (two worker processes ending their batches) waited on each
-- other's rows, and when they had taken them in different orders they deadlocked: Postgres broke the
-- cycle after `deadlock_timeout` (1 s), and the losing batch's endings waited for it, then ran alone.
-- Now a transaction writes all its rollups to one shard that no concurrent transaction holds: its first
-- rollup takes a shard's advisory lock (its connection's own, else the next free one) and the rest of
-- the transaction reuses it. Up to 16 concurrent transactions never share a rollup row; past that, a
-- transaction waits for its connection's shard (whose holder waits on no other rollup). Readers already
-- sum the shards.
--
-- A request that ended while waiting for an approval (cancelled, or failed at its deadline) was not
-- counted as ended; it is now.
CREATE FUNCTION usage_shard() RETURNS SMALLINT LANGUAGE plpgsql AS $$
DECLARE
    held TEXT := current_setting('relaygate.usage_shard', true);
    home INT := pg_backend_pid() % 16;
    shard INT;
BEGIN
    IF held <> '' THEN
        RETURN held::SMALLINT;
    END IF;
    FOR step IN 0..15 LOOP
        shard := (home + step) % 16;
        IF pg_try_advisory_xact_lock(hashtext('relaygate.usage_daily'), shard) THEN
            PERFORM set_config('relaygate.usage_shard', shard::TEXT, true);
            RETURN shard;
        END IF;
    END LOOP;
    PERFORM pg_advisory_xact_lock(hashtext('relaygate.usage_daily'), home);
    PERFORM set_config('relaygate.usage_shard', home::TEXT, true);
    RETURN home;
END $$;

CREATE OR REPLACE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended BOOLEAN := OLD.status NOT IN ('completed', 'failed', 'cancelled')
                     AND NEW.status IN ('completed', 'failed', 'cancelled');
BEGIN
    INSERT INTO usage_daily AS u (tenant_id, day, user_id, agent_id, model, shard, requests, completed, failed,
                                  cancelled, input_tokens, output_tokens, cost_usd)
    VALUES (NEW.tenant_id, (CASE WHEN ended THEN coalesce(NEW.completed_at, now()) ELSE now() END AT TIME ZONE 'UTC')::date,
            NEW.user_id, coalesce(NEW.agent_id, ''), coalesce(NEW.response_metadata ->> 'model', ''), usage_shard(),
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

DROP TRIGGER request_logs_usage ON request_logs;
CREATE TRIGGER request_logs_usage AFTER UPDATE ON request_logs FOR EACH ROW
    WHEN ((OLD.status NOT IN ('completed', 'failed', 'cancelled') AND NEW.status IN ('completed', 'failed', 'cancelled'))
          OR OLD.input_tokens <> NEW.input_tokens OR OLD.output_tokens <> NEW.output_tokens
          OR OLD.cost_usd <> NEW.cost_usd)
    EXECUTE FUNCTION usage_rollup();
