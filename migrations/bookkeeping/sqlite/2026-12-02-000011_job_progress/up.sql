-- The progress of a resumable job run (`rotate --reencrypt`, `rotate --rehash`): the ids of
-- the rows each committed batch did, as ranges of consecutive ids, per table. A batch inserts
-- its ranges in its own transaction, so a row counts as done by a run exactly when the batch
-- that rewrote it committed, whatever the application writes into the data tables meanwhile
-- (their `last_rotated_at` and `rotation_count` stay the application's bookkeeping).
-- Ranges of one run never overlap (a row done again, after the application rewrote it
-- under another master key, is in a range already); a finished run's ranges are deleted. Conventions: see the users migration.
CREATE TABLE jarvis_job_progress (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jarvis_jobs (id) ON DELETE CASCADE,
    table_name TEXT NOT NULL,
    first_id BIGINT NOT NULL,
    last_id BIGINT NOT NULL,
    CHECK (first_id <= last_id)
);
-- "is row `id` done": the range with the greatest `first_id <= id`, one index probe
CREATE INDEX idx_jarvis_job_progress_ranges ON jarvis_job_progress (job_id, table_name, first_id);
