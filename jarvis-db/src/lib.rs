//! The database side of jarvis-crypt for any diesel application: what the key lifecycle
//! needs around an application's own `#[derive(Encrypted)]` models, on PostgreSQL and SQLite
//! through diesel-async.
//!
//! # Layers
//!
//! - [`jarvis_crypt`] is the runtime: envelope encryption, key providers, the data-key cache,
//!   search hashes, the derive's descriptions of each model. It touches no database beyond
//!   its column types.
//! - **This crate** is the generic database side: connections and pools ([`db`]), the audit
//!   sink ([`audit`]), the bookkeeping tables every application's database needs
//!   ([`schema`], [`migrations::BOOKKEEPING`], the stored search key of [`keys`], the
//!   backup records of [`backups`]), the lifecycle jobs over any described table ([`jobs`]:
//!   encrypt existing plaintext, rotate), [`verify`] and key usage, and the backup engine
//!   ([`backup`]: dump, restore, SQLite snapshot), and schema help: the migration of a new
//!   encrypted field ([`generate`]) and the registered tables against the live catalogue
//!   ([`catalogue`]). It knows no application's tables: every
//!   job takes the [`TableDescription`](jarvis_crypt::TableDescription)s of the models it
//!   runs over, and builds its SQL from them alone.
//! - `jarvis-models` is one application on top: the original system's schema, models and
//!   repositories, registered like any other.
//! - `jarvis-cli` is the operations binary any application builds (`Jarvis::new()
//!   .model::<M>()...main()`): argument parsing and printing over this crate, no SQL and no
//!   child process of its own.
//!
//! The operations of an application's ops binary, called directly:
//!
//! ```
//! use std::sync::Arc;
//! use jarvis_db::{Database, jobs, verify};
//!
//! # async fn run(url: &str, encryptor: &jarvis_crypt::Encryptor,
//! #     tables: &[&'static jarvis_crypt::TableDescription],
//! #     audit: Arc<dyn jarvis_crypt::AuditSink>) -> Result<(), jarvis_db::ModelError> {
//! let db = Database::connect(url, 4).await?;
//! // Every `migrating_from` column of `patients.ssn` encrypted, in verified batches.
//! let options = jobs::EncryptExistingOptions::new("patients", "ssn", audit.clone());
//! jobs::encrypt_existing(&db, encryptor, tables, &options, &|p| eprintln!("{p:?}")).await?;
//! // Fresh data keys for every value.
//! let reencrypt = jobs::RotateOptions::new(jobs::RotateMode::Reencrypt, audit);
//! jobs::rotate(&db, encryptor, tables, &reencrypt, &|_| {}).await?;
//! // Every value decrypted, counted by master key and form.
//! let report = verify::verify_tables(&db, encryptor, tables, None, None).await?;
//! assert!(report.is_clean());
//! // What still needs a master key (what `retire-key` checks).
//! let usage = verify::key_usage_in(&db, tables, "alias/jarvis-old").await?;
//! assert!(usage.is_unused());
//! # Ok(()) }
//! ```

pub mod audit;
pub mod backup;
pub mod backups;
pub mod catalogue;
pub mod db;
mod described;
pub mod error;
pub mod generate;
pub mod jobs;
pub mod keys;
pub mod migrations;
pub mod models;
pub mod repo;
pub mod schema;
pub mod vault;
pub mod verify;

pub use audit::DbAudit;
pub use backups::{BackupKeys, Backups, NewBackup};
pub use db::Database;
pub use error::ModelError;
pub use models::EncryptedBackup;
pub use vault::DbKeyVault;

#[doc(hidden)]
pub mod __private {
    pub use diesel;
}
