-- Monitoring views of the original system. Timestamps are compared as text, which orders
-- correctly because every stored timestamp has the form `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC;
-- enforced by the tables' CHECKs) and "now" is produced in the same form with milliseconds:
-- `strftime('%Y-%m-%d %H:%M:%f', 'now')`. Comparing text keeps the `created_at` index usable.

-- Active API keys per service: how many, how many are past their expiry while still active,
-- how often they were rotated, and the oldest key material (by last rotation, else creation;
-- what the 90-day data-key rotation schedule looks at).
CREATE VIEW active_api_keys_summary AS
SELECT
    service_name,
    COUNT(*) AS active_key_count,
    COUNT(*) FILTER (WHERE expires_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')) AS expired_key_count,
    CAST(SUM(rotation_count) AS INTEGER) AS total_rotations,
    MAX(last_rotated_at) AS last_rotated_at,
    MIN(COALESCE(last_rotated_at, created_at)) AS least_recently_rotated_at,
    MAX(created_at) AS newest_created_at
FROM api_keys
WHERE is_active = TRUE
GROUP BY service_name;

-- OAuth tokens per provider: all tokens, active ones, active ones past their expiry, active
-- ones with a refresh token, and rotations.
CREATE VIEW oauth_tokens_summary AS
SELECT
    provider,
    COUNT(*) AS token_count,
    COUNT(*) FILTER (WHERE is_active = TRUE) AS active_token_count,
    COUNT(*) FILTER (
        WHERE is_active = TRUE AND expires_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')
    ) AS expired_token_count,
    COUNT(*) FILTER (
        WHERE is_active = TRUE AND encrypted_refresh_token IS NOT NULL
    ) AS refreshable_token_count,
    CAST(SUM(rotation_count) AS INTEGER) AS total_rotations,
    MAX(last_rotated_at) AS last_rotated_at
FROM oauth_tokens
GROUP BY provider;

-- Encryption operations of the last 24 hours per table and operation: count, errors,
-- average duration (NULL when no row of the group has a duration), latest operation.
CREATE VIEW encryption_audit_summary AS
SELECT
    table_name,
    operation_type,
    COUNT(*) AS operation_count,
    COUNT(*) FILTER (WHERE status = 'error') AS error_count,
    AVG(duration_ms) AS avg_duration_ms,
    MAX(created_at) AS last_operation_at
FROM encryption_audit_log
WHERE created_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '-24 hours')
GROUP BY table_name, operation_type;
