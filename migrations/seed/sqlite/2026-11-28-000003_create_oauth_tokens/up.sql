-- OAuth access and refresh tokens, encrypted. `user_id` is nullable: the original system
-- inserted tokens without an owner. Conventions: see the users migration.
CREATE TABLE oauth_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    encrypted_access_token BLOB NOT NULL,
    access_token_iv BLOB NOT NULL,
    access_token_auth_tag BLOB NOT NULL,
    access_token_data_key BLOB NOT NULL,
    encrypted_refresh_token BLOB,
    refresh_token_iv BLOB,
    refresh_token_auth_tag BLOB,
    refresh_token_data_key BLOB,
    scope TEXT,
    expires_at TIMESTAMP
        CHECK (expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(expires_at, 20) NOT GLOB '*[^0-9.]*'),
    is_active BOOLEAN NOT NULL DEFAULT TRUE CHECK (is_active IN (0, 1)),
    rotation_count INTEGER NOT NULL DEFAULT 0 CHECK (rotation_count >= 0),
    last_rotated_at TIMESTAMP
        CHECK (last_rotated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(last_rotated_at, 20) NOT GLOB '*[^0-9.]*'),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(created_at, 20) NOT GLOB '*[^0-9.]*'),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(updated_at, 20) NOT GLOB '*[^0-9.]*'),
    -- the refresh token's stored form is all four columns or none
    CONSTRAINT oauth_tokens_refresh_token_stored_form CHECK (
        (encrypted_refresh_token IS NULL) = (refresh_token_iv IS NULL)
        AND (encrypted_refresh_token IS NULL) = (refresh_token_auth_tag IS NULL)
        AND (encrypted_refresh_token IS NULL) = (refresh_token_data_key IS NULL)
    )
);

-- the owner's tokens (also serves ON DELETE CASCADE)
CREATE INDEX idx_oauth_tokens_user_id ON oauth_tokens (user_id);
-- active tokens only, by owner and provider
CREATE INDEX idx_active_tokens ON oauth_tokens (user_id, provider) WHERE is_active = TRUE;

-- The monitoring view of the original system. Timestamps are compared as text, which orders
-- correctly because every stored timestamp has the form `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC;
-- enforced by the tables' CHECKs) and "now" is produced in the same form with milliseconds:
-- `strftime('%Y-%m-%d %H:%M:%f', 'now')`. Comparing text keeps the `created_at` index usable.

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
