-- One row per audited operation (DESIGN.md, "Audit"); bulk operations write one row per
-- batch, with the record ids and their count in `context`. No row ever holds plaintext or
-- key material. Conventions: see the users migration.
--   record_id    text: the row key of a single-record event, NULL for a batch
--   duration_ms  REAL milliseconds (sub-millisecond resolution: a cached-key encryption takes
--                microseconds); AVG over it is REAL too
--   context      TEXT holding JSON (plaintext metadata only)
CREATE TABLE encryption_audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_type TEXT NOT NULL,
    table_name TEXT NOT NULL,
    record_id TEXT,
    column_name TEXT,
    key_id TEXT,
    status TEXT NOT NULL CONSTRAINT encryption_audit_log_status CHECK (status IN ('success', 'error')),
    error_kind TEXT,
    duration_ms REAL CHECK (duration_ms >= 0),
    context TEXT CHECK (json_valid(context)),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(created_at, 20) NOT GLOB '*[^0-9.]*'),
    -- only failed operations carry an error kind
    CONSTRAINT encryption_audit_log_error_kind CHECK (status = 'error' OR error_kind IS NULL)
);

CREATE INDEX idx_encryption_audit_log_created_at ON encryption_audit_log (created_at);
CREATE INDEX idx_encryption_audit_log_table_name ON encryption_audit_log (table_name, created_at);
