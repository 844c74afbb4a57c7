//! Data-key references and the key vault (see DESIGN.md, "Data-key references").
//!
//! An encryptor built with a [`KeyVault`] stores each new data key's wrapped form once, in the
//! vault, before it seals a value under it; the `<field>_data_key` column of each value then
//! holds a 20-byte reference to it instead of the wrapped key itself:
//!
//! ```text
//! offset  size  field
//! 0       3     magic: EC 4A 4B (as the inline envelope)
//! 3       1     format version: 02 = reference (01 is the inline envelope)
//! 4       16    data key id: random, chosen when the data key is generated
//! ```
//!
//! The id is bound to the wrapped key by its provider (the local provider's associated data,
//! the KMS encryption context), so a vault row cannot be swapped for another id's row. The
//! value's own associated data is unchanged: a wrong key fails its tag. Inline envelopes and
//! references mix freely in one column; an encryptor without a vault writes inline
//! envelopes, and reads a reference as a configuration error.

use std::fmt;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::keys::{KeyPurpose, WRAPPED_KEY_MAGIC};
use crate::stored::WrappedKey;

/// Format version of a data-key reference.
pub const REFERENCE_VERSION: u8 = 2;
/// Length of a data-key reference: magic, version, 16-byte id.
pub const REFERENCE_LEN: usize = 4 + DATA_KEY_ID_LEN;
/// Length of a data key's id.
pub const DATA_KEY_ID_LEN: usize = 16;

/// The id of a data key in the vault: 16 random bytes. Not a secret (it is stored beside
/// every value sealed under the key); shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataKeyId([u8; DATA_KEY_ID_LEN]);

impl DataKeyId {
    /// A fresh random id.
    pub fn generate() -> Result<Self> {
        let mut id = [0u8; DATA_KEY_ID_LEN];
        crate::cipher::fill_random(&mut id)?;
        Ok(DataKeyId(id))
    }

    /// The id of these bytes.
    pub fn from_bytes(bytes: [u8; DATA_KEY_ID_LEN]) -> Self {
        DataKeyId(bytes)
    }

    /// The id of a slice of 16 bytes (`None` for any other length).
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(DataKeyId)
    }

    /// The id a data-key reference (`<field>_data_key` bytes: magic, version 02, id) holds;
    /// `None` for anything else (an inline envelope, a legacy blob, a malformed reference).
    pub fn from_reference(bytes: &[u8]) -> Option<Self> {
        check_reference(bytes).and_then(Result::ok)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; DATA_KEY_ID_LEN] {
        &self.0
    }

    /// The id in lower-case hex, as the KMS encryption context and messages show it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKeyId({})", self.to_hex())
    }
}

impl fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether `bytes` have the shape of a reference (magic and version 02); a reference of the
/// wrong length is an invalid stored form.
pub(crate) fn check_reference(bytes: &[u8]) -> Option<Result<DataKeyId>> {
    if !bytes.starts_with(&WRAPPED_KEY_MAGIC) || bytes.get(3) != Some(&REFERENCE_VERSION) {
        return None;
    }
    Some(DataKeyId::try_from_slice(&bytes[4..]).ok_or_else(|| {
        Error::stored(format!(
            "data-key reference is {} bytes, expected {REFERENCE_LEN}",
            bytes.len()
        ))
    }))
}

/// The bytes of the reference to `id`.
pub(crate) fn reference_bytes(id: DataKeyId) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(REFERENCE_LEN);
    bytes.extend_from_slice(&WRAPPED_KEY_MAGIC);
    bytes.push(REFERENCE_VERSION);
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

/// A wrapped data key as the vault keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VaultKey {
    /// The key's id, referenced by the values sealed under it.
    pub id: DataKeyId,
    /// What the key is for (bound to the wrapped key with the id).
    pub purpose: KeyPurpose,
    /// The inline envelope: provider, master key and the provider's payload. `None` once the
    /// key is revoked (the id stays, so nothing can reuse it).
    pub wrapped: Option<WrappedKey>,
}

impl VaultKey {
    /// A key to store.
    pub fn new(id: DataKeyId, purpose: KeyPurpose, wrapped: WrappedKey) -> Self {
        VaultKey {
            id,
            purpose,
            wrapped: Some(wrapped),
        }
    }

    /// A revoked key: its id, no wrapped bytes.
    pub fn revoked(id: DataKeyId, purpose: KeyPurpose) -> Self {
        VaultKey {
            id,
            purpose,
            wrapped: None,
        }
    }
}

/// Where an encryptor keeps its wrapped data keys: a table of the database (jarvis-db's
/// `DbKeyVault`, the `jarvis_data_keys` table), append-only.
///
/// Implementations write through a connection of their own, in autocommit: a key is
/// committed when [`store`](Self::store) returns, never inside a transaction of the caller,
/// and never waiting on a connection the caller holds.
#[async_trait]
pub trait KeyVault: Send + Sync + fmt::Debug {
    /// Stores a new key, committed when this returns. Idempotent on the id: storing the same
    /// key again succeeds; another key under a stored id is an error.
    async fn store(&self, key: &VaultKey) -> Result<()>;

    /// The keys of `ids` that the vault holds, in any order; an id it does not hold is left
    /// out (the caller reports it as [`Error::UnknownDataKey`]). One query for the whole
    /// slice.
    async fn fetch(&self, ids: &[DataKeyId]) -> Result<Vec<VaultKey>>;
}
