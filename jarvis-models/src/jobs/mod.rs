//! Long-running jobs over a [`Store`](crate::Store), written as library functions that the
//! `jarvis` CLI calls: safe to interrupt, resumable, observable through a progress callback
//! and audit events, and able to run as several workers.
//!
//! - [`encrypt_existing`](encrypt_existing::encrypt_existing): encrypt the plaintext column of
//!   a table in the migrating state (`jarvis encrypt-existing`).
//! - [`rotate`](rotate::rotate): re-encrypt values, re-wrap data keys under another master
//!   key, upgrade legacy rows, or recompute search hashes under a new search key
//!   (`jarvis rotate`).

pub mod encrypt_existing;
pub mod rotate;
mod runner;

pub use encrypt_existing::{
    EncryptExistingOptions, EncryptExistingReport, encrypt_existing, encrypt_existing_in,
    migrating_columns,
};
pub use rotate::{RotateMode, RotateOptions, RotateReport, TableReport, rotate, rotate_in};
pub use runner::Progress;
