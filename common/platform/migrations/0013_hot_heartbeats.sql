-- #21. A heartbeat moves each running row's lease forward every second. With lease_expires_at in an
-- index, Postgres could not update the row in place (a HOT update): every beat wrote a new entry into
-- every index of request_logs, the most costly statement a worker runs per request. The reaper finds
-- lapsed leases among the running rows instead (few: at most every worker's running attempts), and
-- pages keep room for a row's next version, so beats stay on the page.
DROP INDEX request_logs_running_lease;
CREATE INDEX request_logs_running ON request_logs (id) WHERE status = 'running';
ALTER TABLE request_logs SET (fillfactor = 80);
