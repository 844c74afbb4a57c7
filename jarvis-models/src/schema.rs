//! The diesel schema of the seed's tables and views (users, API keys, OAuth tokens and their
//! summary views), one definition for both backends, with the bookkeeping tables of
//! [`jarvis_db::schema`] re-exported so that every table of a seed database is named here.
//!
//! Hand-written to match the migrations (`migrations/seed/{postgres,sqlite}`); the test
//! `tests/it/migrations.rs` compares it with the live catalogue of both migrated databases
//! (column names, SQL types, nullability) and fails when they drift apart. The column types,
//! row ids and views follow the rules of [`jarvis_db::schema`].
//!
//! # Tables in the migrating state
//!
//! `users` still holds the plaintext `email` of existing deployments next to its nullable
//! encrypted columns (DESIGN.md, "Tables being migrated"). SQLite enforces the
//! `oauth_tokens.user_id` foreign key (`ON DELETE CASCADE`) only on connections that run
//! `PRAGMA foreign_keys = ON`.

pub use jarvis_db::schema::{
    encrypted_backups, encryption_audit_log, encryption_audit_summary, jarvis_data_keys,
    jarvis_job_progress, jarvis_jobs, jarvis_keys, jarvis_settings,
};

diesel::table! {
    /// Users. The email is in the migrating state: plaintext `email` for rows not yet
    /// encrypted, else the four encrypted columns (all or none, CHECKed) and `email_hash`.
    users (id) {
        /// Row id (sequence `users_id_seq` on PostgreSQL).
        id -> BigInt,
        /// Plaintext email of a row not yet encrypted; cleared when written encrypted.
        email -> Nullable<Text>,
        /// AES-256-GCM ciphertext of the email, tag not included.
        encrypted_email -> Nullable<Binary>,
        /// Nonce of `encrypted_email`.
        email_iv -> Nullable<Binary>,
        /// GCM tag of `encrypted_email`.
        email_auth_tag -> Nullable<Binary>,
        /// Wrapped data key of `encrypted_email`.
        email_data_key -> Nullable<Binary>,
        /// Search hash of the normalized email (indexed, not unique).
        email_hash -> Nullable<Binary>,
        /// Creation time (UTC).
        created_at -> Timestamp,
        /// Last update time (UTC); set by the writer.
        updated_at -> Timestamp,
        /// How often the email was re-encrypted or its data key re-wrapped (`jarvis rotate`).
        rotation_count -> Integer,
        /// Time of the last rotation (UTC).
        last_rotated_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Third-party API keys, encrypted, searchable through `key_hash`.
    api_keys (id) {
        /// Row id (sequence `api_keys_id_seq` on PostgreSQL).
        id -> BigInt,
        /// The service the key belongs to (plaintext).
        service_name -> Text,
        /// AES-256-GCM ciphertext of the key, tag not included.
        encrypted_key -> Binary,
        /// Nonce of `encrypted_key`.
        key_iv -> Binary,
        /// GCM tag of `encrypted_key`.
        key_auth_tag -> Binary,
        /// Wrapped data key of `encrypted_key`.
        key_data_key -> Binary,
        /// Search hash of the key (indexed); NULL on legacy rows without one.
        key_hash -> Nullable<Binary>,
        /// Plaintext JSON metadata.
        metadata -> Nullable<Json>,
        /// Whether the key is in use.
        is_active -> Bool,
        /// How often the key was re-encrypted.
        rotation_count -> Integer,
        /// Time of the last rotation (UTC).
        last_rotated_at -> Nullable<Timestamp>,
        /// Expiry time (UTC).
        expires_at -> Nullable<Timestamp>,
        /// Creation time (UTC).
        created_at -> Timestamp,
        /// Last update time (UTC); set by the writer.
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// OAuth access and refresh tokens, encrypted.
    oauth_tokens (id) {
        /// Row id (sequence `oauth_tokens_id_seq` on PostgreSQL).
        id -> BigInt,
        /// Owning user (`users.id`, `ON DELETE CASCADE`); NULL for tokens without an owner.
        user_id -> Nullable<BigInt>,
        /// The OAuth provider (plaintext).
        provider -> Text,
        /// AES-256-GCM ciphertext of the access token, tag not included.
        encrypted_access_token -> Binary,
        /// Nonce of `encrypted_access_token`.
        access_token_iv -> Binary,
        /// GCM tag of `encrypted_access_token`.
        access_token_auth_tag -> Binary,
        /// Wrapped data key of `encrypted_access_token`.
        access_token_data_key -> Binary,
        /// AES-256-GCM ciphertext of the refresh token (all four refresh columns or none).
        encrypted_refresh_token -> Nullable<Binary>,
        /// Nonce of `encrypted_refresh_token`.
        refresh_token_iv -> Nullable<Binary>,
        /// GCM tag of `encrypted_refresh_token`.
        refresh_token_auth_tag -> Nullable<Binary>,
        /// Wrapped data key of `encrypted_refresh_token`.
        refresh_token_data_key -> Nullable<Binary>,
        /// Granted scope (plaintext).
        scope -> Nullable<Text>,
        /// Expiry time of the access token (UTC).
        expires_at -> Nullable<Timestamp>,
        /// Whether the token is in use (partial index on active tokens).
        is_active -> Bool,
        /// How often the tokens were replaced or re-encrypted.
        rotation_count -> Integer,
        /// Time of the last rotation (UTC).
        last_rotated_at -> Nullable<Timestamp>,
        /// Creation time (UTC).
        created_at -> Timestamp,
        /// Last update time (UTC); set by the writer.
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// View: active API keys per service. Read-only; `service_name` is its row key.
    active_api_keys_summary (service_name) {
        /// The service.
        service_name -> Text,
        /// Number of active keys.
        active_key_count -> BigInt,
        /// Number of active keys past their expiry.
        expired_key_count -> BigInt,
        /// Sum of the active keys' rotation counts.
        total_rotations -> BigInt,
        /// Latest rotation of an active key.
        last_rotated_at -> Nullable<Timestamp>,
        /// Oldest key material: the least recent of each key's last rotation, else creation.
        least_recently_rotated_at -> Timestamp,
        /// Creation time of the newest active key.
        newest_created_at -> Timestamp,
    }
}

diesel::table! {
    /// View: OAuth tokens per provider. Read-only; `provider` is its row key.
    oauth_tokens_summary (provider) {
        /// The provider.
        provider -> Text,
        /// Number of tokens, active or not.
        token_count -> BigInt,
        /// Number of active tokens.
        active_token_count -> BigInt,
        /// Number of active tokens past their expiry.
        expired_token_count -> BigInt,
        /// Number of active tokens with a refresh token.
        refreshable_token_count -> BigInt,
        /// Sum of the tokens' rotation counts.
        total_rotations -> BigInt,
        /// Latest rotation of a token.
        last_rotated_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(oauth_tokens -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    api_keys,
    oauth_tokens,
    active_api_keys_summary,
    oauth_tokens_summary,
);

// The seed's tables and the bookkeeping tables in one query, as before the split.
jarvis_db::allow_bookkeeping_tables_in_same_query!(
    users,
    api_keys,
    oauth_tokens,
    active_api_keys_summary,
    oauth_tokens_summary,
);

#[cfg(test)]
mod tests {
    use diesel::pg::expression::extensions::OnlyDsl;
    use diesel::prelude::*;
    use diesel::query_builder::QueryFragment;

    use super::*;

    fn sql<Q: QueryFragment<diesel::pg::Pg>>(query: &Q) -> String {
        diesel::debug_query::<diesel::pg::Pg, _>(query).to_string()
    }

    /// A seed table joins a bookkeeping table of jarvis-db, as when both were declared in
    /// one `allow_tables_to_appear_in_same_query!`, in its plain and its `ONLY` form.
    #[test]
    fn seed_tables_appear_in_one_query_with_the_bookkeeping_tables() {
        use encryption_audit_log as log;
        let joined = users::table
            .inner_join(log::table.on(log::table_name.eq("users")))
            .select((users::id, log::operation_type));
        assert!(sql(&joined).contains("INNER JOIN \"encryption_audit_log\""));

        let only = users::table
            .only()
            .inner_join(encrypted_backups::table.on(encrypted_backups::id.eq(users::id)))
            .select(users::id);
        assert!(
            sql(&only).contains("( ONLY \"users\" INNER JOIN"),
            "{}",
            sql(&only)
        );

        let reversed = encrypted_backups::table
            .only()
            .inner_join(api_keys::table.on(api_keys::id.eq(encrypted_backups::id)))
            .select(api_keys::id);
        assert!(sql(&reversed).contains("( ONLY \"encrypted_backups\" INNER JOIN"));
    }
}
