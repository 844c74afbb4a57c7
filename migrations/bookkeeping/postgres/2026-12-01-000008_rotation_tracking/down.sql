DROP TABLE jarvis_jobs;
ALTER TABLE encrypted_backups DROP COLUMN last_rotated_at, DROP COLUMN rotation_count;
