DROP TABLE jarvis_jobs;
ALTER TABLE encrypted_backups DROP COLUMN last_rotated_at;
ALTER TABLE encrypted_backups DROP COLUMN rotation_count;
