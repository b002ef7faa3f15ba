-- #8. A tool reads, cancels and streams the requests it created for a user.
ALTER TABLE request_logs ADD COLUMN created_by TEXT;

-- What a tool may do is an explicit scope now, not its kind: existing tool keys keep acting for users.
UPDATE api_keys SET scopes = array_append(scopes, 'act-as-user')
 WHERE kind = 'tool' AND NOT ('act-as-user' = ANY (scopes));

-- A named (external) session is unique among active ones only: once ended or expired, the
-- name starts a new session (the compat POST /stream keeps working for that chat).
DROP INDEX request_sessions_external;
CREATE UNIQUE INDEX request_sessions_external
    ON request_sessions (tenant_id, user_id, integration_type, external_session_id)
    WHERE external_session_id IS NOT NULL AND status = 'active';
