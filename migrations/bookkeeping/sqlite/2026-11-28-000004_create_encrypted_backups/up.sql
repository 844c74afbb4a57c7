-- Encrypted database backups. The encrypted data columns are nullable: a streamed backup
-- lives in a file at `storage_path` (with its own chunk nonces and tags) and only its
-- metadata is recorded here. `master_key_id` names the master key the backup's data key is
-- wrapped under, so that `jarvis retire-key` can refuse to retire a key a recorded backup
-- still needs. Conventions: see the users migration.
CREATE TABLE encrypted_backups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    backup_name TEXT NOT NULL UNIQUE,
    backup_type TEXT NOT NULL,
    storage_path TEXT,
    encrypted_data BLOB,
    data_iv BLOB,
    data_auth_tag BLOB,
    data_data_key BLOB,
    size_bytes BIGINT CHECK (size_bytes >= 0),
    checksum TEXT,
    master_key_id TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(created_at, 20) NOT GLOB '*[^0-9.]*'),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(updated_at, 20) NOT GLOB '*[^0-9.]*')
);

CREATE INDEX idx_encrypted_backups_master_key_id ON encrypted_backups (master_key_id);
