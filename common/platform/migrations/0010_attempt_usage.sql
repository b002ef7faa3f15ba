-- #20. What the running attempt has used so far, as its worker's heartbeat last saw it (estimated), so an
-- attempt lost with its worker still counts: whatever ends or requeues it without its worker (the
-- reaper, a deadline) adds this to the request's usage; the worker's own ending adds its measured usage
-- instead. Kept apart from the totals so the usage rollup trigger fires only when usage is added.
ALTER TABLE request_logs
    ADD COLUMN attempt_input_tokens  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN attempt_output_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN attempt_cost_usd      NUMERIC(20, 10) NOT NULL DEFAULT 0;
