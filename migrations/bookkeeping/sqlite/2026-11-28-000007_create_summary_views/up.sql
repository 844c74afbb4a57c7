-- The monitoring view of the original system. Timestamps are compared as text, which orders
-- correctly because every stored timestamp has the form `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC;
-- enforced by the tables' CHECKs) and "now" is produced in the same form with milliseconds:
-- `strftime('%Y-%m-%d %H:%M:%f', 'now')`. Comparing text keeps the `created_at` index usable.

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
