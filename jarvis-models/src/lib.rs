//! Schema, models, repositories and jobs of jarvis-crypt: the tables of the original system
//! (users, API keys, OAuth tokens, encrypted backups, the encryption audit log) on
//! PostgreSQL and SQLite.
//!
//! - [`schema`]: the diesel `table!` definitions of every table and view, one for both
//!   backends (its docs explain the column types, row ids and views).
//! - [`migrations`]: the diesel migrations, embedded in two sets (the bookkeeping tables any
//!   application needs, `migrations/bookkeeping`; the seed's tables, `migrations/seed`), with
//!   functions that apply, revert and list them; [`migrations::Backend`] chooses the backend
//!   from a database URL.

pub mod audit;
pub mod backup;
pub mod db;
mod described;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod migrations;
pub mod models;
pub mod schema;
pub mod store;
pub mod verify;

pub use audit::DbAudit;
pub use db::Database;
pub use error::ModelError;
pub use models::{ApiKey, EncryptedBackup, OAuthToken, User};
pub use store::{BackupKeys, NewApiKey, NewBackup, NewOAuthToken, Store};
