//! The original system as one jarvis application: the schema, models and repositories of its
//! tables (users, API keys, OAuth tokens) on PostgreSQL and SQLite, on top of [`jarvis_db`],
//! the generic database side (connections, audit sink, bookkeeping tables, jobs, verify,
//! backups), whose modules are re-exported here under the names they had before the split.
//!
//! - [`schema`]: the diesel `table!` definitions of the seed's tables and views, with the
//!   bookkeeping tables of [`jarvis_db::schema`] re-exported.
//! - [`models`]: `User`, `ApiKey`, `OAuthToken` (and the bookkeeping `EncryptedBackup`);
//!   [`models::seed_tables`] lists their descriptions, which the jobs run over.
//! - [`store`]: the repositories, one file per table.
//! - [`migrations`]: the seed's migrations ([`migrations::SEED`]) beside the bookkeeping set,
//!   and the functions that apply both; [`migrations::Backend`] chooses the backend from a
//!   database URL.
//! - [`jobs`] and [`verify`]: the jobs of [`jarvis_db`] over the seed's tables.

pub mod jobs;
pub mod migrations;
pub mod models;
pub mod schema;
pub mod store;
pub mod verify;

pub use jarvis_db::{audit, error, keys, vault};
pub use jarvis_db::{insert_all, with_conn};

/// Pooled connections to PostgreSQL or SQLite ([`jarvis_db::db`]), and [`migrate`](db::migrate)
/// over both of this crate's migration sets.
pub mod db {
    pub use jarvis_db::db::*;

    use crate::error::ModelError;
    use crate::migrations::MigrationStatus;

    /// Applies pending migrations of both sets (bookkeeping and the seed's) to the database
    /// of `url`.
    pub async fn migrate(url: &str) -> Result<MigrationStatus, ModelError> {
        crate::migrations::run_pending_migrations(url).await?;
        Ok(crate::migrations::migration_status(url).await?)
    }
}

pub use audit::DbAudit;
pub use db::Database;
pub use error::ModelError;
pub use models::{ApiKey, EncryptedBackup, OAuthToken, User};
pub use store::{BackupKeys, NewApiKey, NewBackup, NewOAuthToken, Store};
pub use vault::DbKeyVault;
