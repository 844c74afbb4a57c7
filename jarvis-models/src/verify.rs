//! Verification and key usage over the seed's tables: [`jarvis_db::verify`] (re-exported
//! here) with the seed's descriptions ([`seed_tables`]).

use std::collections::BTreeSet;

use jarvis_crypt::{Encryptor, MasterKeyRef, SearchKey};

pub use jarvis_db::verify::*;

use crate::Database;
use crate::error::ModelError;
use crate::models::seed_tables;

/// The tables `verify` knows, with their encrypted (ciphertext) columns: the seed's
/// ([`seed_tables`] describes them).
pub const TABLES: [(&str, &[&str]); 4] = [
    ("users", &["encrypted_email"]),
    ("api_keys", &["encrypted_key"]),
    (
        "oauth_tokens",
        &["encrypted_access_token", "encrypted_refresh_token"],
    ),
    ("encrypted_backups", &["encrypted_data"]),
];

/// Verifies every table of the seed, or only `only`, checking search hashes under the
/// encryptor's search key (not at all without one).
pub async fn verify(
    db: &Database,
    encryptor: &Encryptor,
    only: Option<&str>,
) -> Result<VerifyReport, ModelError> {
    verify_with_search_key(db, encryptor, only, None).await
}

/// [`verify`], checking search hashes under `search_key` when one is given (for instance the
/// key stored in `jarvis_keys`, [`load_search_key`](crate::keys::load_search_key)), else under
/// the encryptor's.
pub async fn verify_with_search_key(
    db: &Database,
    encryptor: &Encryptor,
    only: Option<&str>,
    search_key: Option<&SearchKey>,
) -> Result<VerifyReport, ModelError> {
    verify_tables(db, encryptor, &seed_tables(), only, search_key).await
}

/// Counts what still needs the master key `key_id` (an id or ARN as stored in wrapped keys)
/// in the seed's tables, the stored search key and the recorded backups, reading the
/// envelopes only: nothing is decrypted and no provider is called.
pub async fn key_usage(db: &Database, key_id: &str) -> Result<KeyUsage, ModelError> {
    key_usage_in(db, &seed_tables(), key_id).await
}

/// The master keys that the rows of the seed's tables need ([`master_keys_in_use_in`] over
/// [`seed_tables`]).
pub async fn master_keys_in_use(db: &Database) -> Result<BTreeSet<MasterKeyRef>, ModelError> {
    master_keys_in_use_in(db, &seed_tables()).await
}
