//! Long-running jobs over a [`Store`](crate::Store), written as library functions that the
//! operations commands call: safe to interrupt, resumable, observable through a progress
//! callback and audit events, and able to run as several workers.
//!
//! - [`encrypt_existing_in`]: encrypt the plaintext column of a field in the migrating state
//!   (`encrypt-existing`).
//! - [`rotate_in`]: re-encrypt values, re-wrap data keys under another master key, upgrade
//!   legacy rows, or recompute search hashes under a new search key (`rotate`).
//!
//! Both take the descriptions of the tables to work on ([`EncryptedTable::table`] of each
//! model), so they work on an application's own tables as on the seed's;
//! [`encrypt_existing()`] and [`rotate()`] are the same jobs over the seed's tables. The store
//! supplies the database, the encryptor and the audit sink; its repositories are not used.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use jarvis_crypt::{Encrypted, EncryptedTable, Encryptor, LocalKeyProvider, NoAudit};
//! use jarvis_models::jobs::{EncryptExistingOptions, encrypt_existing_in};
//! use jarvis_models::{Database, Store};
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
//! # async fn run() -> Result<(), jarvis_models::ModelError> {
//! let db = Database::connect("clinic.db", 4).await?;
//! let encryptor = Encryptor::builder(Arc::new(LocalKeyProvider::from_env()?)).build();
//! let store = Store::new(db, encryptor, Arc::new(NoAudit));
//! let options = EncryptExistingOptions::new("patients", "ssn", Arc::new(NoAudit));
//! let report = encrypt_existing_in(&store, &[Patient::table()], &options, &|_| {}).await?;
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

pub use encrypt_existing::{
    EncryptExistingOptions, EncryptExistingReport, encrypt_existing, encrypt_existing_in,
    migrating_columns,
};
pub use rotate::{RotateMode, RotateOptions, RotateReport, TableReport, rotate, rotate_in};
pub use runner::Progress;
