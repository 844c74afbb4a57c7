-- Third-party API keys, encrypted and searchable through `key_hash`. `key_hash` is nullable
-- because rows written by the earlier implementation may lack a hash of the current scheme
-- (`jarvis rotate --legacy` adds it). Conventions: see the users migration.
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_name TEXT NOT NULL,
    encrypted_key BLOB NOT NULL,
    key_iv BLOB NOT NULL,
    key_auth_tag BLOB NOT NULL,
    key_data_key BLOB NOT NULL,
    key_hash BLOB,
    -- plaintext JSON, as in the original system
    metadata TEXT CHECK (json_valid(metadata)),
    is_active BOOLEAN NOT NULL DEFAULT TRUE CHECK (is_active IN (0, 1)),
    rotation_count INTEGER NOT NULL DEFAULT 0 CHECK (rotation_count >= 0),
    last_rotated_at TIMESTAMP
        CHECK (last_rotated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(last_rotated_at, 20) NOT GLOB '*[^0-9.]*'),
    expires_at TIMESTAMP
        CHECK (expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(expires_at, 20) NOT GLOB '*[^0-9.]*'),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(created_at, 20) NOT GLOB '*[^0-9.]*'),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(updated_at, 20) NOT GLOB '*[^0-9.]*')
);

CREATE INDEX idx_api_keys_hash ON api_keys (key_hash);
CREATE INDEX idx_api_keys_service_name ON api_keys (service_name);

-- The monitoring view of the original system. Timestamps are compared as text, which orders
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
