-- Settings that every process of one database must agree on, by name. Today one:
-- `search-key-fingerprint`, the fingerprint (hex HMAC-SHA256 of a fixed label) of the root
-- search key, recorded by an explicit step (`jarvis init`, `jarvis_models::keys::
-- record_search_key`) and checked at start, so a wrong or regenerated search key is a clear
-- configuration error instead of lookups that silently find nothing. Not secret.
-- Conventions: see the users migration.
CREATE TABLE jarvis_settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND substr(updated_at, 20) NOT GLOB '*[^0-9.]*')
);
