-- Bookkeeping of `jarvis rotate`.
--
-- encrypted_backups gets the rotation columns that the seed's tables have (users since this
-- migration, which now lives in the seed's `create_users`): `rotate --older-than` selects by
-- them, and a re-encryption job marks the rows it has done with them.
--
-- jarvis_jobs records each run of a job that must know, when it is rerun after an
-- interruption, when the interrupted run started (`rotate --reencrypt`: a row is done when
-- its `last_rotated_at` is after the start of the run). Conventions: see the users migration.
ALTER TABLE encrypted_backups ADD COLUMN rotation_count INTEGER NOT NULL DEFAULT 0 CHECK (rotation_count >= 0);
ALTER TABLE encrypted_backups ADD COLUMN last_rotated_at TIMESTAMP
    CHECK (last_rotated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(last_rotated_at, 20) NOT GLOB '*[^0-9.]*');

CREATE TABLE jarvis_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- the job and its parameters, e.g. `rotate-reencrypt` and `table=users;to=...`
    kind TEXT NOT NULL,
    parameters TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL
        CHECK (started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(started_at, 20) NOT GLOB '*[^0-9.]*'),
    -- NULL while the job is unfinished: a rerun with the same parameters resumes it
    finished_at TIMESTAMP
        CHECK (finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(finished_at, 20) NOT GLOB '*[^0-9.]*')
);
CREATE INDEX idx_jarvis_jobs_unfinished ON jarvis_jobs (kind, parameters) WHERE finished_at IS NULL;
