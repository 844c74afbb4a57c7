//! The lifecycle jobs of [`jarvis_db::jobs`] (re-exported here) over the seed's tables,
//! through a [`Store`]: [`encrypt_existing()`] and [`rotate()`] take the store (its database
//! and encryptor) and run over [`seed_tables`](crate::models::seed_tables).

use crate::Store;

/// `jarvis encrypt-existing` over the seed's models:
/// [`jarvis_db::jobs::encrypt_existing`](mod@jarvis_db::jobs::encrypt_existing) re-exported, with [`encrypt_existing()`](fn@encrypt_existing) over the seed's tables.
pub mod encrypt_existing {
    pub use jarvis_db::jobs::encrypt_existing::*;

    use super::Store;
    use crate::error::ModelError;

    /// The `(table, plaintext column)` pairs of the seed's models in the migrating state,
    /// which [`encrypt_existing()`](fn@encrypt_existing) migrates.
    pub const SUPPORTED: &[(&str, &str)] = &[("users", "email")];

    /// Encrypts the pending plaintext of `options.table`.`options.column`, a column of the
    /// seed's models ([`SUPPORTED`]); see [`jarvis_db::jobs::encrypt_existing()`].
    pub async fn encrypt_existing(
        store: &Store,
        options: &EncryptExistingOptions,
        progress: &(dyn Fn(super::Progress) + Sync),
    ) -> Result<EncryptExistingReport, ModelError> {
        jarvis_db::jobs::encrypt_existing(
            store.database(),
            store.encryptor(),
            &crate::models::seed_tables(),
            options,
            progress,
        )
        .await
    }
}

/// `jarvis rotate` over the seed's models: [`jarvis_db::jobs::rotate`](mod@jarvis_db::jobs::rotate) re-exported, with
/// [`rotate()`](fn@rotate) over the seed's tables.
pub mod rotate {
    pub use jarvis_db::jobs::rotate::*;

    use super::Store;
    use crate::error::ModelError;

    /// The seed's tables, which [`rotate()`](fn@rotate) does in this order.
    pub const TABLES: [&str; 4] = ["users", "api_keys", "oauth_tokens", "encrypted_backups"];

    /// Rotates the pending rows of the seed's tables ([`TABLES`]); see
    /// [`jarvis_db::jobs::rotate()`].
    pub async fn rotate(
        store: &Store,
        options: &RotateOptions,
        progress: &(dyn Fn(super::Progress) + Sync),
    ) -> Result<RotateReport, ModelError> {
        jarvis_db::jobs::rotate(
            store.database(),
            store.encryptor(),
            &crate::models::seed_tables(),
            options,
            progress,
        )
        .await
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The seed's tables are described in the order of [`TABLES`], with
        /// `users.email_hash` as the one search column of `users`.
        #[test]
        fn seed_tables_are_described() {
            let tables = crate::models::seed_tables();
            let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, TABLES);
            let hashes = |i: usize| -> Vec<&str> {
                tables[i]
                    .fields
                    .iter()
                    .filter_map(|f| f.search.as_ref().map(|s| s.column))
                    .collect()
            };
            assert_eq!(hashes(0), ["email_hash"]);
            assert!(hashes(2).is_empty());
        }
    }
}

pub use encrypt_existing::{
    EncryptExistingOptions, EncryptExistingReport, encrypt_existing, migrating_columns,
};
pub use jarvis_db::jobs::Progress;
pub use rotate::{RotateMode, RotateOptions, RotateReport, TableReport, rotate};
