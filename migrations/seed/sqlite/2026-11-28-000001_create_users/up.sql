-- Users, in the "migrating" state of DESIGN.md: existing deployments arrive with plaintext
-- emails in `email`; the encrypted columns are nullable until `jarvis encrypt-existing` has
-- filled them, after which a later migration drops `email` and makes them NOT NULL.
--
-- Conventions shared by every SQLite migration of jarvis-models (see jarvis-models/src/schema.rs):
--   * `id INTEGER PRIMARY KEY AUTOINCREMENT`: an alias of the 64-bit rowid (declared `BigInt`
--     in schema.rs), never reused after a delete. Plain SQL inserts may omit `id`. A row's key
--     can be known before its first write by reserving ids in a write transaction from
--     `sqlite_sequence` (its `seq` is the largest id ever handed out for the table; new ids
--     are greater) and inserting them explicitly; SQLite raises `seq` to any larger explicit
--     id by itself.
--   * Timestamps are `TIMESTAMP` holding UTC as text in diesel's form
--     `YYYY-MM-DD HH:MM:SS[.ffffff]` (what diesel writes for `Timestamp`, and what
--     `CURRENT_TIMESTAMP` gives). A CHECK enforces that form, because the views compare
--     timestamps as text: another form (`T` separator, `Z` suffix, offset, Unix time) would
--     compare wrongly.
--   * Booleans are `BOOLEAN` holding 0 or 1; binary columns are `BLOB`; JSON is `TEXT`
--     holding JSON (`json_valid`). `TEXT` on purpose: a declared type `JSON` would have
--     NUMERIC affinity and turn a JSON text such as `5` into an integer.
--   * Foreign keys are declared; SQLite enforces them only on connections that run
--     `PRAGMA foreign_keys = ON`.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- plaintext email of rows not yet encrypted (cleared when the row is written encrypted)
    email TEXT,
    encrypted_email BLOB,
    email_iv BLOB,
    email_auth_tag BLOB,
    email_data_key BLOB,
    -- search hash of the normalized email (blind index); not unique: it may be truncated
    email_hash BLOB,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(created_at, 20) NOT GLOB '*[^0-9.]*'),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(updated_at, 20) NOT GLOB '*[^0-9.]*'),
    -- how often the email was re-encrypted or its data key re-wrapped, and when last
    rotation_count INTEGER NOT NULL DEFAULT 0 CHECK (rotation_count >= 0),
    last_rotated_at TIMESTAMP
        CHECK (last_rotated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(last_rotated_at, 20) NOT GLOB '*[^0-9.]*'),
    -- the stored form of the email is all four columns or none
    CONSTRAINT users_email_stored_form CHECK (
        (encrypted_email IS NULL) = (email_iv IS NULL)
        AND (encrypted_email IS NULL) = (email_auth_tag IS NULL)
        AND (encrypted_email IS NULL) = (email_data_key IS NULL)
    )
);

CREATE INDEX idx_users_email_hash ON users (email_hash);
