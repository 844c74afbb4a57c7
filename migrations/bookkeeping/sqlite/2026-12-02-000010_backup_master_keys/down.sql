ALTER TABLE encrypted_backups DROP COLUMN rows_master_key_ids;
