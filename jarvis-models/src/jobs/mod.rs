//! Long-running jobs over a [`Store`](crate::Store), written as library functions that the
//! `jarvis` CLI calls: safe to interrupt, resumable, observable through a progress callback
//! and audit events, and able to run as several workers.
//!
//! - [`encrypt_existing`](encrypt_existing::encrypt_existing): encrypt the plaintext column of
//!   a table in the migrating state (`jarvis encrypt-existing`).

pub mod encrypt_existing;

pub use encrypt_existing::{
    EncryptExistingOptions, EncryptExistingReport, Progress, encrypt_existing,
};
