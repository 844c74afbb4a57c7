-- The master keys that a backup's rows need, recorded with the backup: its manifest's
-- `master_key_ids` as a JSON array of strings (`<id>#v<N>` for a local key, the key ARN for
-- AWS KMS), for backups in a file and in the row alike. `master_key_id` stays the key of the
-- stream's own data key. `jarvis retire-key` refuses a key that either names. NULL for a
-- backup recorded before this migration: its file's manifest says, or nothing does (one
-- stored in its row), which `retire-key` treats as unreadable. Conventions: see the users
-- migration.
ALTER TABLE encrypted_backups ADD COLUMN rows_master_key_ids TEXT
    CHECK (rows_master_key_ids IS NULL OR (json_valid(rows_master_key_ids) AND json_type(rows_master_key_ids) = 'array'));
