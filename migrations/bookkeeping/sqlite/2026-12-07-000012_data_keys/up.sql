-- The key vault: the wrapped data keys that values reference by id (a 20-byte reference in
-- `<field>_data_key`: magic EC 4A 4B, version 02, the 16-byte id) instead of holding the
-- wrapped key themselves. `wrapped` is the inline envelope (provider, master key, payload);
-- the provider binds the id into the wrap, so a row cannot serve under another id.
-- Append-only: no job deletes a row. A key replaced by `rotate --reencrypt` is revoked once
-- no value references it (`wrapped` erased, `revoked_at` set, the id kept so nothing can
-- reference it again). `rotate --to-key` re-wraps rows in place (`rewrapped_at`).
-- Conventions: see the users migration.
CREATE TABLE jarvis_data_keys (
    id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    purpose TEXT NOT NULL,
    wrapped BLOB,
    master_key_id TEXT,
    created_at TIMESTAMP NOT NULL,
    rewrapped_at TIMESTAMP,
    revoked_at TIMESTAMP,
    CHECK ((wrapped IS NULL) = (revoked_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
) WITHOUT ROWID;
-- key usage and `rotate --to-key`: the live keys under one master key
CREATE INDEX idx_jarvis_data_keys_master_key ON jarvis_data_keys (master_key_id);
