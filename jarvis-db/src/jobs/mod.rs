//! Long-running jobs over any application's encrypted tables, written as library functions
//! that the operations commands call: safe to interrupt, resumable, observable through a
//! progress callback and audit events, and able to run as several workers.
//!
//! - [`encrypt_existing()`]: encrypt the plaintext column of a field in the migrating state
//!   (`encrypt-existing`).
//! - [`rotate()`]: re-encrypt values, re-wrap data keys under another master key, upgrade
//!   legacy rows, or recompute search hashes under a new search key (`rotate`).
//!
//! Both take the database, the encryptor and the descriptions of the tables to work on
//! ([`EncryptedTable::table`] of each model); they read and write only the described
//! columns.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use jarvis_crypt::{Encrypted, EncryptedTable, Encryptor, LocalKeyProvider, NoAudit};
//! use jarvis_db::Database;
//! use jarvis_db::jobs::{EncryptExistingOptions, encrypt_existing};
//!
//! mod schema {
//!     diesel::table! {
//!         patients (id) {
//!             id -> BigInt,
//!             ssn -> Nullable<Text>,
//!             encrypted_ssn -> Nullable<Binary>,
//!             ssn_iv -> Nullable<Binary>,
//!             ssn_auth_tag -> Nullable<Binary>,
//!             ssn_data_key -> Nullable<Binary>,
//!         }
//!     }
//! }
//!
//! #[derive(Encrypted)]
//! #[encrypted(table = crate::schema::patients, bind = id)]
//! struct Patient {
//!     id: i64,
//!     #[encrypted(migrating_from = ssn)]
//!     ssn: String,
//! }
//!
//! # async fn run() -> Result<(), jarvis_db::ModelError> {
//! let db = Database::connect("clinic.db", 4).await?;
//! let encryptor = Encryptor::builder(Arc::new(LocalKeyProvider::from_env()?)).build();
//! let options = EncryptExistingOptions::new("patients", "ssn", Arc::new(NoAudit));
//! let report = encrypt_existing(&db, &encryptor, &[Patient::table()], &options, &|_| {}).await?;
//! println!("{} rows encrypted, {} left", report.rows_encrypted, report.rows_remaining);
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! [`EncryptedTable::table`]: jarvis_crypt::EncryptedTable::table

pub mod encrypt_existing;
pub mod rotate;
mod runner;

use jarvis_crypt::Encryptor;

use crate::Database;

pub use encrypt_existing::{
    EncryptExistingOptions, EncryptExistingReport, encrypt_existing, migrating_columns,
};
pub use rotate::{RotateMode, RotateOptions, RotateReport, TableReport, rotate};
pub use runner::Progress;

/// What a job runs with: the database and the encryptor.
#[derive(Clone, Copy)]
struct Context<'a> {
    db: &'a Database,
    encryptor: &'a Encryptor,
}

impl<'a> Context<'a> {
    fn database(&self) -> &'a Database {
        self.db
    }

    fn encryptor(&self) -> &'a Encryptor {
        self.encryptor
    }
}
