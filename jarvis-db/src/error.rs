//! The error of the models and repositories.

use jarvis_crypt::ErrorKind;

use crate::migrations::MigrationError;

/// What went wrong in a repository call. Messages name tables and operations, never values
/// or connection URLs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Encryption, decryption or the key provider failed.
    #[error(transparent)]
    Crypto(#[from] jarvis_crypt::Error),
    /// The database refused or failed a query.
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    /// No connection could be had.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The row does not exist.
    #[error("{table} {id} not found")]
    NotFound {
        /// The table.
        table: &'static str,
        /// The row id.
        id: i64,
    },
    /// Migrations failed.
    #[error(transparent)]
    Migration(#[from] MigrationError),
}

impl ModelError {
    /// The kind recorded in audit rows.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Crypto(e) => e.kind().as_str(),
            ModelError::Database(diesel::result::Error::NotFound) | ModelError::NotFound { .. } => {
                "not_found"
            }
            ModelError::Database(_) => "database",
            ModelError::Pool(_) => "connection",
            ModelError::Migration(_) => "migration",
        }
    }

    /// The crypto error's kind, if this is one.
    pub fn crypto_kind(&self) -> Option<ErrorKind> {
        match self {
            ModelError::Crypto(e) => Some(e.kind()),
            _ => None,
        }
    }
}
