-- The monitoring view of the original system. "Now" is `NOW() AT TIME ZONE 'UTC'` because the
-- timestamp columns hold UTC without a time zone: comparing them with `NOW()` directly would
-- shift the window by the session's UTC offset.

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
WHERE created_at > (NOW() AT TIME ZONE 'UTC') - INTERVAL '24 hours'
GROUP BY table_name, operation_type;
